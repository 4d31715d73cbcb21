"""zoo against PyTorch on the CPU: the same CNN and MLP, trained side by side.

Each run is a fresh process (imports, data, compilation and all), zoo's
through `zoo.train` with the model's own config, PyTorch's through
bench/peer_torch.py, the same network, init, optimizer, schedule, batch
size, thread count and data (zoo's own Fashion-MNIST arrays, handed over as
.npy). The sides alternate, in rounds, in alternating order, so a slow
stretch of the machine hits both; beside each run stands the machine's load
and the CPU share other processes took while it ran. A round where others
took more than --busy of the CPU is marked busy and left out of the medians
(PyTorch's threads slow down badly under contention).

    python bench/peer_cpu.py --torch-python .venv-torch/bin/python
    python bench/peer_cpu.py --models cnn_fashion_mnist --rounds 5 --epochs 2
    python bench/peer_cpu.py --zoo-xla-flags=--xla_cpu_use_onednn=true  # try a flag
    python bench/peer_cpu.py --tuned-pytorch   # also PyTorch with zoo's malloc settings
    python bench/peer_cpu.py --zoo-cache cold  # zoo's first run: nothing compiled yet

Prints, per run, train images/s (the training loop only), the process wall
time, the seconds from process start to the first epoch reaching the
model's target accuracy, the accuracy per epoch, peak resident memory and
minor page faults; per round the zoo/PyTorch ratios, and their medians over
the idle rounds.

zoo keeps XLA's step buffers mapped on the CPU (zoo/training/host_memory.py:
glibc malloc settings, set inside its own process). PyTorch runs as its
users run it, with glibc's defaults; `--tuned-pytorch` adds a third side,
PyTorch started with the same settings (GLIBC_TUNABLES), so the table shows
what they are worth to either framework.

zoo keeps compiled steps in JAX's persistent compilation cache
(zoo/training/compile_cache.py), so its first run of a model compiles and
later runs load. `--zoo-cache warm` (the default) measures the later runs: a
fresh cache folder for this benchmark, filled by one untimed zoo run per
model before the rounds. `--zoo-cache cold` gives every zoo run an empty
folder, as on a first run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
DEFAULT_MODELS = ["cnn_fashion_mnist", "mlp_fashion_mnist"]
# Test accuracy each model reaches in its first epoch on either side; the
# time to it is the time to a useful model, start-up included.
TARGETS = {"cnn_fashion_mnist": 0.87, "mlp_fashion_mnist": 0.84}


def _zoo_child(name: str, spec: dict) -> None:
  """A fresh process training `name` with zoo; prints one JSON line."""
  t_start = time.time()
  import jax  # pylint: disable=g-import-not-at-top
  import zoo  # pylint: disable=g-import-not-at-top
  hits = []  # executables JAX loaded from the compilation cache
  jax.monitoring.register_event_listener(
      lambda event, **_: hits.append(1)
      if event == "/jax/compilation_cache/cache_hits" else None)
  t_train = time.time()
  out = zoo.train(name, progress=False, epochs=spec["epochs"],
                  **{"data.train_split": spec["train_split"],
                     "data.test_split": spec["test_split"]})
  use = resource.getrusage(resource.RUSAGE_SELF)
  print(json.dumps({
      "side": "zoo", "version": zoo.__version__, "jax": jax.__version__,
      "host_malloc": out.result["host_malloc"],
      "cache_hits": len(hits),
      "t_start": t_start, "t_train": t_train,
      "history": [{"epoch": r["epoch"], "test_accuracy": r["test_accuracy"],
                   "images_per_second": r["images_per_second"],
                   "end": t_train + r["wall_seconds"]}
                  for r in out.history if not r.get("eval")],
      "max_rss_mib": round(use.ru_maxrss / 1024, 1),
      "minor_faults": use.ru_minflt}))


def torch_spec(entry, epochs: int, threads: int) -> dict:
  """What peer_torch.py needs to build and train `entry`'s twin."""
  c = entry.config
  if c["model"]["arch"] not in ("cnn", "mlp"):
    raise SystemExit(f"{entry.name}: peer_torch.py has twins of the cnn and "
                     f"mlp architectures only, not {c['model']['arch']!r}")
  if c["optimizer"]["name"] != "adam" or c["schedule"]["name"] != "cosine" \
      or c["schedule"]["warmup_steps"] or c["schedule"]["end_factor"] \
      or c["model"]["initializer"] != "he_normal" \
      or c["model"].get("dropout") or c["model"]["activation"] != "relu":
    raise SystemExit(f"{entry.name}: peer_torch.py trains Adam + cosine to 0, "
                     "He-normal, ReLU, no dropout only")
  return {**{k: c["model"][k] for k in ("arch", "channels", "hidden_size",
                                         "hidden_sizes") if k in c["model"]},
          "learning_rate": c["optimizer"]["learning_rate"],
          "batch_size": c["train"]["batch_size"], "epochs": epochs,
          "threads": threads, "seed": c["train"]["seed"]}


def _cpu_busy_seconds() -> float:
  """Seconds all CPUs of this machine have been busy since boot."""
  fields = [float(v) for v in Path("/proc/stat").read_text().split("\n")[0]
            .split()[1:]]
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
  return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_child(cmd: list[str], env: dict, target: float) -> dict:
  """Runs one side in a fresh process and times it, with the machine's load."""
  load = os.getloadavg()[0]
  busy0 = _cpu_busy_seconds()
  own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
  t_spawn = time.time()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  wall = time.time() - t_spawn
  own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
  busy = _cpu_busy_seconds() - busy0
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd[:3])}... failed:\n{proc.stderr[-3000:]}")
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  child_cpu = (own1.ru_utime - own0.ru_utime) + (own1.ru_stime - own0.ru_stime)
  others = max(0.0, busy - child_cpu) / (wall * os.cpu_count())
  reached = [r for r in out["history"] if r["test_accuracy"] >= target]
  first = out["history"][0]
  return {"side": out["side"], "load_1min": round(load, 2),
          "others_cpu_share": round(others, 3),
          "images_per_second": round(statistics.median(
              r["images_per_second"] for r in out["history"]), 1),
          "first_epoch_images_per_second": round(first["images_per_second"], 1),
          "process_seconds": round(wall, 2),
          "seconds_to_target": (round(reached[0]["end"] - t_spawn, 2)
                                if reached else None),
          "accuracy": [round(r["test_accuracy"], 4) for r in out["history"]],
          "max_rss_mib": out["max_rss_mib"],
          "minor_faults": out["minor_faults"],
          "versions": {k: out[k] for k in ("version", "jax", "threads",
                                           "onednn", "host_malloc",
                                           "cache_hits", "glibc_tunables")
                       if k in out}}


def write_arrays(directory: Path, train_split: str, test_split: str) -> None:
  """zoo's Fashion-MNIST splits as the .npy files peer_torch.py reads."""
  from zoo import data  # pylint: disable=g-import-not-at-top
  for part, split in (("train", train_split), ("test", test_split)):
    s = data.load("fashion_mnist", split)
    np.save(directory / f"{part}_images.npy", np.asarray(s.images))
    np.save(directory / f"{part}_labels.npy", np.asarray(s.labels))


def _median(values):
  """The median of the values that are not None; None if there are none."""
  known = [v for v in values if v is not None]
  return statistics.median(known) if known else None


def _fmt(ratio) -> str:
  return "n/a" if ratio is None else f"{ratio:.2f}"


def _seconds(value) -> str:
  return "   n/a " if value is None else f"{value:>6.1f}s"


def _check_torch(python: str) -> None:
  """One line and exit 2 when `python` is missing or has no torch."""
  try:
    probe = subprocess.run([python, "-c", "import torch, numpy"],
                           capture_output=True, text=True)
  except OSError as e:
    probe = None
    why = f"cannot be run ({e.strerror})"
  if probe is None or probe.returncode:
    if probe is not None:
      why = "cannot import torch"
    print(f"peer_cpu: error: {python} {why}: pip install -e '.[bench]' "
          "there, or pass --torch-python with a Python that has torch (e.g. "
          "a venv with `pip install torch==2.13.0 numpy`)", file=sys.stderr)
    raise SystemExit(2)


RATIOS = ("images_per_second", "process_time", "time_to_target")


def ratios(z: dict, peer: dict) -> dict:
  """zoo/peer speed ratios of one round (> 1: zoo is faster)."""
  return {"images_per_second": round(
              z["images_per_second"] / peer["images_per_second"], 3),
          "process_time": round(
              peer["process_seconds"] / z["process_seconds"], 3),
          "time_to_target": (round(
              peer["seconds_to_target"] / z["seconds_to_target"], 3)
              if z["seconds_to_target"] and peer["seconds_to_target"]
              else None)}


def _round(rnd: int, name: str, sides: dict, busy: float) -> dict:
  """One round of `name`: every side once, the order rotated each round."""
  target = TARGETS.get(name, 0.0)
  order = list(sides)
  order = order[rnd % len(order):] + order[:rnd % len(order)]
  runs = {}
  for side in order:
    runs[side] = r = run_child(*sides[side], target)
    print(f"round {rnd + 1} {name:<20} {side:<13} "
          f"{r['images_per_second']:>8.0f} img/s  process "
          f"{r['process_seconds']:>6.1f}s  to {target:.0%} "
          f"{_seconds(r['seconds_to_target'])}  acc {r['accuracy']}  "
          f"rss {r['max_rss_mib']:.0f} MiB  faults {r['minor_faults']:,}  "
          f"load {r['load_1min']:.2f} others {r['others_cpu_share']:.0%}",
          flush=True)
  row = {"round": rnd + 1, "model": name, "order": order, **runs,
         "busy": max(r["others_cpu_share"] for r in runs.values()) > busy,
         "ratios": {peer: ratios(runs["zoo"], runs[peer])
                    for peer in order if peer != "zoo"}}
  for peer, q in row["ratios"].items():
    print(f"round {rnd + 1} {name:<20} zoo/{peer}: images/s "
          f"{q['images_per_second']:.2f}, speed by process time "
          f"{q['process_time']:.2f}, by time to target "
          f"{_fmt(q['time_to_target'])}"
          + ("  (busy: left out)" if row["busy"] else ""), flush=True)
  return row


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--epochs", type=int, default=1)
  p.add_argument("--threads", type=int, default=os.cpu_count(),
                 help="PyTorch's intra-op threads (default: every core)")
  p.add_argument("--torch-python", default=os.environ.get(
      "ZOO_TORCH_PYTHON", sys.executable),
                 help="the Python that runs the PyTorch side")
  p.add_argument("--zoo-xla-flags", default=None,
                 help="XLA_FLAGS for the zoo side (default: as inherited)")
  p.add_argument("--train-split", default="train")
  p.add_argument("--test-split", default="test")
  p.add_argument("--zoo-cache", choices=("warm", "cold"), default="warm",
                 help="zoo's compilation cache: filled before the rounds "
                      "(a later run), or empty for every run (a first run)")
  p.add_argument("--tuned-pytorch", action="store_true",
                 help="also run PyTorch with zoo's glibc malloc settings")
  p.add_argument("--busy", type=float, default=0.10,
                 help="others' CPU share above which a round is busy")
  p.add_argument("--json", default=None)
  p.add_argument("--zoo-child", nargs=2, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.zoo_child:
    return _zoo_child(args.zoo_child[0], json.loads(args.zoo_child[1]))
  _check_torch(args.torch_python)
  import zoo  # pylint: disable=g-import-not-at-top
  from zoo.training import host_memory  # pylint: disable=g-import-not-at-top
  env = dict(os.environ)
  zoo_env = dict(env) if args.zoo_xla_flags is None else {
      **env, "XLA_FLAGS": args.zoo_xla_flags}
  zoo_spec = {"epochs": args.epochs, "train_split": args.train_split,
              "test_split": args.test_split}
  rows = []
  print(f"cores {os.cpu_count()}, rounds {args.rounds}, epochs "
        f"{args.epochs}, PyTorch threads {args.threads}, zoo XLA_FLAGS "
        f"{zoo_env.get('XLA_FLAGS', '')!r}, zoo compilation cache "
        f"{args.zoo_cache}")
  with tempfile.TemporaryDirectory() as tmp:
    write_arrays(Path(tmp), args.train_split, args.test_split)
    # The zoo side's own JAX cache folder (zoo keeps one set by JAX).
    zoo_env = {**zoo_env, "ZOO_COMPILATION_CACHE": "auto",
               "JAX_COMPILATION_CACHE_DIR": str(Path(tmp) / "jax-cache")}
    commands = {}
    for name in args.models:
      torch_cmd = [args.torch_python, str(BENCH / "peer_torch.py"), tmp,
                   json.dumps(torch_spec(zoo.get(name), args.epochs,
                                         args.threads))]
      commands[name] = {
          "zoo": ([sys.executable, __file__, "--zoo-child", name,
                   json.dumps(zoo_spec)], zoo_env),
          "pytorch": (torch_cmd, env)}
      if args.tuned_pytorch:
        commands[name]["pytorch_tuned"] = (torch_cmd, {
            **env, "GLIBC_TUNABLES": host_memory.GLIBC_TUNABLES})
    if args.zoo_cache == "warm":
      for name in args.models:
        run_child(*commands[name]["zoo"], TARGETS.get(name, 0.0))
        print(f"warm-up  {name:<20} zoo           (untimed: fills the "
              "compilation cache)", flush=True)
    for rnd in range(args.rounds):
      for name in args.models:
        if args.zoo_cache == "cold":
          shutil.rmtree(Path(tmp) / "jax-cache", ignore_errors=True)
        rows.append(_round(rnd, name, commands[name], args.busy))
  print("\nzoo/PyTorch over idle rounds (median; > 1 means zoo is faster):")
  summary = {}
  for name in args.models:
    idle = [r for r in rows if r["model"] == name and not r["busy"]]
    summary[name] = {"idle_rounds": len(idle)}
    for peer in [s for s in commands[name] if s != "zoo"]:
      summary[name][peer] = {k: _median(r["ratios"][peer][k] for r in idle)
                             for k in RATIOS}
      m = summary[name][peer]
      print(f"  {name:<20} vs {peer:<14} images/s "
            f"{_fmt(m['images_per_second'])}"
            f"  process time {_fmt(m['process_time'])}"
            f"  time to target {_fmt(m['time_to_target'])}"
            f"  ({len(idle)} idle rounds of {args.rounds})")
  if args.json:
    Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary},
                                          indent=1))
  return rows


if __name__ == "__main__":
  main()
