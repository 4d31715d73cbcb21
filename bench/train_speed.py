"""Training throughput of zoo against a plain jitted Haiku + optax loop.

All run in this process, on the same data (real Fashion-MNIST), the same
architecture, optimizer (the model's own, at a constant learning rate) and
batch size, for one model of every family. Two plain references: what a
user writes first (a Python loop calling a jitted step on numpy batches) and
the fast hand-written form (batches on the device, all steps in one jitted
`lax.scan`). zoo is measured through
`zoo.train` itself (data on device, the loop kind it picks for this backend),
in steady state (its second epoch) with compilation timed apart.

    python bench/train_speed.py                      # all families, batch 128
    python bench/train_speed.py --models mlp_fashion_mnist --batch-sizes 128 512
    python bench/train_speed.py --time-to-accuracy   # + time to a target accuracy
    python bench/train_speed.py --json out.json      # machine-readable results

Prints images/s and the ratios zoo/plain loop and zoo/best plain per model
and batch size, the pmap-on-one-device/jit ratio, compile times and peak
memory.

On the CPU, zoo's glibc malloc settings (zoo/training/host_memory.py) are
per process, so they are set before anything runs here and every side
runs with them: the ratios compare the loops, not the allocators
(bench/host_memory.py measures the settings themselves).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

# Compilation is timed here (the compile column, the time-to-accuracy runs):
# no persistent compilation cache (zoo/training/compile_cache.py).
os.environ.setdefault("ZOO_COMPILATION_CACHE", "off")

import haiku as hk
import jax
import jmp
import numpy as np
import optax

import zoo
from zoo import data
from zoo.training.loop import train
from zoo.training.optim import optimizer

# One registered model per architecture family (binary logistic regression
# is the multinomial one with one output).
DEFAULT_MODELS = ["logreg_fashion_mnist", "mlp_fashion_mnist",
                  "cnn_fashion_mnist", "cnn_bn_fashion_mnist",
                  "lstm_fashion_mnist", "vit_tiny_fashion_mnist"]
TARGETS = {"cnn_fashion_mnist": 0.91, "mlp_fashion_mnist": 0.88,
           "logreg_fashion_mnist": 0.83}
# Timed steps per run on CPU, where these are slow (elsewhere: 400).
CPU_STEPS = {"cnn": 60, "cnn_bn": 60, "lstm": 150, "vit": 150}


def reference_step(entry):
  """What a user writes first: `hk.transform_with_state` of the same module,
  the model's loss, its optax optimizer (the bench sets a constant learning
  rate), one PRNG split per step (for dropout)."""
  net = hk.transform_with_state(
      lambda x: entry.module()(x, is_training=True))
  policy = jmp.get_policy("params=float32,output=float32,compute="
                          + entry.config["train"]["compute_dtype"])
  # The optax transformation zoo builds from the same config (names and
  # aliases resolved once, in zoo.training.optim).
  tx = optimizer(entry.config, total_steps=1)

  def init(x, seed=0):
    params, state = net.init(jax.random.PRNGKey(seed), x)
    return params, state, tx.init(params), jax.random.PRNGKey(seed + 1)

  def step(carry, batch):
    params, state, opt_state, key = carry
    key, sub = jax.random.split(key)
    x, y = batch

    def loss_fn(p):
      logits, new_state = net.apply(policy.cast_to_compute(p), state, sub,
                                    policy.cast_to_compute(x))
      return entry.loss(policy.cast_to_output(logits), y), new_state
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), state, opt_state, key), loss

  return init, step


def reference_images_per_second(entry, images, labels, batch, steps,
                                warmup=5, seed=0):
  """The plain loop: the jitted step fed numpy batches, one call per step.
  Returns (images/s, compile seconds)."""
  init, step = reference_step(entry)
  carry = init(images[:batch], seed)
  jstep = jax.jit(step, donate_argnums=0)
  order = np.random.default_rng(seed).permutation(len(labels))
  n_batches = len(labels) // batch

  def batch_at(i):
    idx = order[(i % n_batches) * batch:((i % n_batches) + 1) * batch]
    return images[idx], labels[idx]

  t = time.perf_counter()
  carry, loss = jstep(carry, batch_at(0))
  jax.block_until_ready(loss)
  compile_s = time.perf_counter() - t
  for i in range(1, warmup):
    carry, loss = jstep(carry, batch_at(i))
  jax.block_until_ready(loss)
  t = time.perf_counter()
  for i in range(steps):
    carry, loss = jstep(carry, batch_at(warmup + i))
  jax.block_until_ready(loss)
  return steps * batch / (time.perf_counter() - t), compile_s


def reference_scan_images_per_second(entry, images, labels, batch, steps,
                                     seed=0):
  """The plain fast form: batches already on the device as float32 and all
  steps as one jitted `lax.scan` (timed on its second call)."""
  init, step = reference_step(entry)
  carry = init(images[:batch], seed)
  idx = np.resize(np.random.default_rng(seed).permutation(len(labels)),
                  steps * batch)  # wraps around past one epoch
  xs = jax.device_put(images[idx].reshape(steps, batch, *images.shape[1:]))
  ys = jax.device_put(labels[idx].reshape(steps, batch))
  run = jax.jit(lambda c, xs, ys: jax.lax.scan(step, c, (xs, ys)))
  jax.block_until_ready(run(carry, xs, ys))
  t = time.perf_counter()
  jax.block_until_ready(run(carry, xs, ys))
  return steps * batch / (time.perf_counter() - t)


def bench_entry(name, compute_dtype="float32"):
  """`name` as every side trains it here: the model's own optimizer at a
  constant learning rate, in `compute_dtype`."""
  return zoo.registry.with_config(
      zoo.get(name), {"train.compute_dtype": compute_dtype,
                      "schedule.name": "constant",
                      "schedule.warmup_steps": 0})


def zoo_run(entry, batch, steps, **kwargs):
  """`zoo.train` for two epochs of `steps + 1` batches each (at most the
  whole training set); its steady-state images/s is the second epoch's (the
  first pays one-off costs such as the first execution of the compiled
  epoch)."""
  n_train = min(60000, batch * (steps + 1))
  out = train(entry, progress=False, epochs=2, batch_size=batch,
              **{"data.train_split": f"train[:{n_train}]",
                 "data.test_split": "test[:1000]"},
              **kwargs)
  return {**out.result,
          "train_images_per_second": out.history[-1]["images_per_second"]}


def time_to_accuracy(name, target, compute_dtype):
  """Seconds from starting a fresh Python process until the end of the first
  epoch whose test accuracy reaches `target`, imports, data loading and
  compilation included, in a full run of the model's own config (seed 0:
  the run behind its baseline, which `same_as_baseline` checks)."""
  t_spawn = time.time()
  proc = subprocess.run(
      [sys.executable, __file__, "--time-to-accuracy-child", name,
       compute_dtype], capture_output=True, text=True, check=True)
  child = json.loads(proc.stdout.strip().splitlines()[-1])
  out = {"same_as_baseline": child["same_as_baseline"]}
  for row in child["history"]:
    if row["test_accuracy"] >= target:
      return {"reached": True, "epoch": row["epoch"],
              "accuracy": row["test_accuracy"],
              "seconds_from_process_start": round(
                  child["t_train"] + row["wall_seconds"] - t_spawn, 2), **out}
  return {"reached": False,
          "best_accuracy": max(r["test_accuracy"] for r in child["history"]),
          **out}


def _time_to_accuracy_child(name, compute_dtype) -> None:
  """The fresh process of `time_to_accuracy`: trains, prints one JSON line."""
  entry = zoo.registry.with_config(zoo.get(name),
                                   {"train.compute_dtype": compute_dtype})
  t_train = time.time()
  out = train(entry, progress=False)
  baseline = (entry.baseline or {}).get("params_sha256_seed0")
  print(json.dumps({"t_train": t_train, "history": out.history,
                    "same_as_baseline":
                        out.result["params_sha256"] == baseline}))


def peak_memory_mb(device) -> float | None:
  stats = getattr(device, "memory_stats", lambda: None)()
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# The docs page whose results block --docs rewrites.
PAGE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "performance.md"
BEGIN = "<!-- bench:begin (generated by bench/train_speed.py --docs) -->"
END = "<!-- bench:end -->"


def measured_on(device, cmd) -> str:
  """The line that opens a results block: machine, versions, date and
  the command that measured it."""
  return (f"Measured on {device.device_kind} ({device.platform}, "
          f"{platform.machine()}, {os.cpu_count()} cores), jax {jax.__version__}"
          f", {datetime.date.today().isoformat()}, by `{cmd}`:")


def replace_block(lines, begin=BEGIN, end=END) -> None:
  """Replaces what PAGE holds between the markers `begin` and `end`."""
  text = PAGE.read_text()
  head, rest = text.split(begin, 1)
  _, tail = rest.split(end, 1)
  PAGE.write_text(head + begin + "\n" + "\n".join(lines) + "\n" + end + tail)


def update_page(rows, extra, device, cmd) -> None:
  """Replaces the performance page's table with this run's results."""
  lines = [measured_on(device, cmd), "",
           "| model | batch | plain loop img/s | plain scan img/s | zoo img/s "
           "| zoo/plain loop | zoo/best plain | zoo loop | pmap(1 device)/jit "
           "| zoo compile s |",
           "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
  for r in rows:
    lines.append(f"| `{r['model']}` | {r['batch']} | "
                 f"{r['reference_images_per_second']:,.0f} | "
                 f"{r['reference_scan_images_per_second']:,.0f} | "
                 f"{r['zoo_images_per_second']:,.0f} | {r['ratio']:.2f} | "
                 f"{r['ratio_best']:.2f} | {r['loop']} | "
                 f"{r['pmap1_over_jit']:.2f} | {r['zoo_compile_seconds']:.2f} |")
  for key, value in extra.items():
    if key.startswith("time_to_"):
      lines.append("")
      lines.append(f"{key}: {json.dumps(value)}")
  lines.append("")
  lines.append(f"Peak memory: {extra['peak_memory_mb']:.0f} MiB.")
  replace_block(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
  p.add_argument("--batch-sizes", nargs="+", type=int, default=[128])
  p.add_argument("--steps", type=int, default=0,
                 help="timed steps per run (default: by backend and model)")
  p.add_argument("--repeats", type=int, default=2,
                 help="interleaved repeats per side; the best is reported")
  p.add_argument("--compute-dtype", default="float32",
                 choices=["float32", "bfloat16"],
                 help="train.compute_dtype for zoo, the same jmp policy for "
                      "the references")
  p.add_argument("--time-to-accuracy", action="store_true",
                 help="also time, in a fresh process, a full run of each "
                      "model with a target in TARGETS")
  p.add_argument("--time-to-accuracy-child", nargs=2, metavar=("NAME", "DTYPE"),
                 help=argparse.SUPPRESS)
  p.add_argument("--json", default=None)
  p.add_argument("--docs", action="store_true",
                 help="write the table into docs/guides/performance.md")
  args = p.parse_args(argv)
  if args.time_to_accuracy_child:
    return _time_to_accuracy_child(*args.time_to_accuracy_child)

  from zoo.training import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.keep_step_buffers()  # every side alike (see above)
  device = jax.local_devices()[0]
  train_split = data.load("fashion_mnist", "train")
  images = np.asarray(data.to_float(train_split.images))
  labels = train_split.labels
  rows = []
  print(f"# {device.device_kind} ({device.platform}) x{len(jax.local_devices())}"
        f", {platform.machine()}, jax {jax.__version__}, haiku {hk.__version__}")
  print(f"{'model':<22} {'batch':>5} {'plain loop':>11} {'plain scan':>11} "
        f"{'zoo img/s':>10} {'zoo/loop':>8} {'zoo/best':>8} {'loop':>6} "
        f"{'pmap1/jit':>9} {'compile s':>9}")
  for name in args.models:
    entry = bench_entry(name, args.compute_dtype)  # the same for every side
    arch = entry.arch
    for batch in args.batch_sizes:
      cpu = device.platform == "cpu"
      steps = args.steps or (CPU_STEPS.get(arch, 400) if cpu else 400)
      # A scan of conv steps is 25-30x slower on CPU (jax-ml/jax#12868): time
      # only two of them there.
      scan_steps = min(steps, 2) if cpu and arch in ("cnn", "cnn_bn") else steps
      # Interleaved repeats, best of each: every side sees the same noise.
      ref_ips, ref_scan_ips, jit_r = 0.0, 0.0, None
      for _ in range(args.repeats):
        ips, ref_compile = reference_images_per_second(
            entry, images, labels, batch, steps)
        ref_ips = max(ref_ips, ips)
        ref_scan_ips = max(ref_scan_ips, reference_scan_images_per_second(
            entry, images, labels, batch, scan_steps))
        r = zoo_run(entry, batch, steps, devices=1, strategy="jit")
        if jit_r is None or (r["train_images_per_second"]
                             > jit_r["train_images_per_second"]):
          jit_r = r
      pmap_r = zoo_run(entry, batch, steps, devices=1, strategy="pmap")
      zoo_ips = jit_r["train_images_per_second"]
      row = {"model": name, "batch": batch,
             "reference_images_per_second": ref_ips,
             "reference_scan_images_per_second": ref_scan_ips,
             "zoo_images_per_second": zoo_ips,
             "ratio": zoo_ips / ref_ips,
             "ratio_best": zoo_ips / max(ref_ips, ref_scan_ips),
             "pmap1_over_jit": (pmap_r["train_images_per_second"] / zoo_ips),
             "loop": jit_r["loop"], "zoo_compile_seconds":
                 jit_r["compile_seconds"],
             "reference_compile_seconds": ref_compile,
             "steps": steps, "scan_steps": scan_steps,
             "compute_dtype": args.compute_dtype,
             "device_kind": device.device_kind}
      rows.append(row)
      print(f"{name:<22} {batch:>5} {ref_ips:>11,.0f} {ref_scan_ips:>11,.0f} "
            f"{zoo_ips:>10,.0f} {row['ratio']:>8.2f} {row['ratio_best']:>8.2f} "
            f"{row['loop']:>6} {row['pmap1_over_jit']:>9.2f} "
            f"{row['zoo_compile_seconds']:>9.2f}", flush=True)
  extra = {"peak_memory_mb": peak_memory_mb(device)}
  if args.time_to_accuracy:
    for name in args.models:
      if name in TARGETS:
        extra[f"time_to_{TARGETS[name]}_{name}"] = time_to_accuracy(
            name, TARGETS[name], args.compute_dtype)
        print(name, extra[f"time_to_{TARGETS[name]}_{name}"], flush=True)
  print(f"peak memory: {extra['peak_memory_mb']:.0f} MiB")
  if args.docs:
    update_page(rows, extra, device, " ".join(["python", *sys.argv]))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"rows": rows, **extra, "argv": sys.argv,
                 "jax": jax.__version__}, f, indent=1)


if __name__ == "__main__":
  main()
