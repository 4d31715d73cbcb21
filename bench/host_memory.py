"""Training speed with zoo's glibc malloc settings on the CPU against glibc's
defaults (zoo/training/host_memory.py).

Each run is a fresh process training a model through `zoo.train` for a few
hundred steps, once as zoo runs by default (XLA's step buffers kept mapped)
and once with ZOO_HOST_MALLOC=system (malloc left as it is); the two take
turns in rounds, in alternating order. Per run it prints train images/s,
minor page faults per training step (the faults of a process that trains
2 steps are subtracted, which leaves the steady state), peak resident memory
and the trained parameters' sha256, which must be the same on both sides:
the settings move memory, not numbers.

    python bench/host_memory.py                                # CNN, MLP, batch 128
    python bench/host_memory.py --models cnn_fashion_mnist --batch-sizes 128 512
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

DEFAULT_MODELS = ["cnn_fashion_mnist", "cnn_bn_fashion_mnist",
                  "mlp_fashion_mnist"]
MODES = ("auto", "system")


def _child(name: str, spec: dict) -> None:
  """Trains `name` for spec["steps"] steps; prints one JSON line."""
  import zoo  # pylint: disable=g-import-not-at-top
  out = zoo.train(name, progress=False, steps=spec["steps"],
                  batch_size=spec["batch"],
                  **{"data.train_split": spec["train_split"],
                     "data.test_split": "test[:1000]"})
  use = resource.getrusage(resource.RUSAGE_SELF)
  print(json.dumps({"images_per_second":
                    out.result["train_images_per_second"],
                    "host_malloc": out.result["host_malloc"],
                    "params_sha256": out.result["params_sha256"],
                    "max_rss_mib": round(use.ru_maxrss / 1024, 1),
                    "minor_faults": use.ru_minflt}))


def run(name: str, batch: int, steps: int, mode: str) -> dict:
  """One fresh process of `name` at `batch` for `steps` steps under `mode`."""
  # At most one epoch of Fashion-MNIST's 60,000 images; more steps loop.
  spec = {"steps": steps, "batch": batch,
          "train_split": f"train[:{batch * min(max(steps, 2), 60000 // batch)}]"}
  env = {**os.environ, "ZOO_HOST_MALLOC": mode}
  t = time.time()
  proc = subprocess.run([sys.executable, __file__, "--child", name,
                         json.dumps(spec)], capture_output=True, text=True,
                        env=env)
  if proc.returncode:
    raise SystemExit(f"{name} ({mode}) failed:\n{proc.stderr[-3000:]}")
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  out["process_seconds"] = round(time.time() - t, 2)
  out["load_1min"] = round(os.getloadavg()[0], 2)
  return out


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
  p.add_argument("--batch-sizes", nargs="+", type=int, default=[128])
  p.add_argument("--steps", type=int, default=150)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--json", default=None)
  p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    return _child(args.child[0], json.loads(args.child[1]))
  summary = {}
  print(f"cores {os.cpu_count()}, rounds {args.rounds}, steps {args.steps}")
  for name in args.models:
    for batch in args.batch_sizes:
      base = {m: run(name, batch, 2, m) for m in MODES}  # start-up faults
      runs = {m: [] for m in MODES}
      for rnd in range(args.rounds):
        for mode in (MODES if rnd % 2 == 0 else MODES[::-1]):
          r = run(name, batch, args.steps, mode)
          r["faults_per_step"] = max(0, round(
              (r["minor_faults"] - base[mode]["minor_faults"])
              / (args.steps - 2)))
          runs[mode].append(r)
          print(f"{name:<22} batch {batch:>4} {mode:<6} "
                f"{r['images_per_second']:>9,.0f} img/s  "
                f"faults/step {r['faults_per_step']:>7,}  "
                f"rss {r['max_rss_mib']:>6.0f} MiB  malloc "
                f"{r['host_malloc']}  load {r['load_1min']:.2f}", flush=True)
      same = len({r["params_sha256"] for m in MODES for r in runs[m]}) == 1
      med = {m: statistics.median(r["images_per_second"] for r in runs[m])
             for m in MODES}
      row = {"images_per_second": med,
             "ratio": round(med["auto"] / med["system"], 3),
             "faults_per_step": {m: statistics.median(
                 r["faults_per_step"] for r in runs[m]) for m in MODES},
             "max_rss_mib": {m: max(r["max_rss_mib"] for r in runs[m])
                             for m in MODES},
             "same_params": same, "runs": runs}
      summary[f"{name}@{batch}"] = row
      print(f"{name:<22} batch {batch:>4} kept/system images/s "
            f"{row['ratio']:.2f}  faults/step {row['faults_per_step']['auto']:,.0f}"
            f" vs {row['faults_per_step']['system']:,.0f}  peak rss "
            f"{row['max_rss_mib']['auto']:.0f} vs "
            f"{row['max_rss_mib']['system']:.0f} MiB  same params: {same}",
            flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(summary, f, indent=1)
  return summary


if __name__ == "__main__":
  main()
