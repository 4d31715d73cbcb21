"""Training throughput of zoo against a plain jitted Haiku + optax loop.

Both run in this process, on the same data (real Fashion-MNIST), the same
architecture, optimizer (Adam) and batch size. The reference is what a user
would write first: a Python loop calling a jitted step on numpy batches. zoo
is measured through `zoo.train` itself (data on device, the loop kind it
picks for this backend), in steady state with compilation timed apart.

    python bench/train_speed.py                      # all families, batch 128
    python bench/train_speed.py --models mlp_fashion_mnist --batch-sizes 128 512
    python bench/train_speed.py --time-to-accuracy   # + time to a target accuracy
    python bench/train_speed.py --json out.json      # machine-readable results

Prints images/s and the ratio zoo/reference per model and batch size, the
pmap-on-one-device/jit ratio, compile times and peak memory.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

import zoo
from zoo import data
from zoo.train.loop import train

DEFAULT_MODELS = ["logreg_fashion_mnist", "mlp_fashion_mnist",
                  "cnn_fashion_mnist"]
TARGETS = {"cnn_fashion_mnist": 0.91, "mlp_fashion_mnist": 0.88,
           "logreg_fashion_mnist": 0.84}


def reference_images_per_second(entry, images, labels, batch, steps,
                                warmup=5, seed=0):
  """A plain loop: jitted Haiku/optax step fed numpy batches each step."""
  def forward(x):
    return entry.module()(x, is_training=True)
  net = hk.without_apply_rng(hk.transform(forward))
  tx = optax.adam(entry.config["optimizer"]["learning_rate"])
  x0 = images[:batch]
  params = net.init(jax.random.PRNGKey(seed), x0)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = net.apply(p, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  order = rng.permutation(len(labels))
  n_batches = len(labels) // batch

  def batch_at(i):
    idx = order[(i % n_batches) * batch:((i % n_batches) + 1) * batch]
    return images[idx], labels[idx]

  t = time.perf_counter()
  params, opt_state, loss = step(params, opt_state, *batch_at(0))
  jax.block_until_ready(loss)
  compile_s = time.perf_counter() - t
  for i in range(1, warmup):
    params, opt_state, loss = step(params, opt_state, *batch_at(i))
  jax.block_until_ready(loss)
  t = time.perf_counter()
  for i in range(steps):
    params, opt_state, loss = step(params, opt_state, *batch_at(warmup + i))
  jax.block_until_ready(loss)
  return steps * batch / (time.perf_counter() - t), compile_s


def zoo_run(name, batch, n_train, **kwargs):
  out = train(name, progress=False, epochs=kwargs.pop("epochs", 1),
              batch_size=batch,
              **{"data.train_split": f"train[:{n_train}]",
                 "data.test_split": "test[:1000]",
                 "optimizer.name": "adam", "schedule.name": "constant"},
              **kwargs)
  return out.result


def time_to_accuracy(name, target, t_process_start):
  """Seconds from process start until the end of the first epoch whose test
  accuracy reaches `target` (a full run with the model's own config)."""
  t_call = time.perf_counter()
  out = train(name, progress=False)
  for row in out.history:
    if row["test_accuracy"] >= target:
      return {"reached": True, "epoch": row["epoch"],
              "accuracy": row["test_accuracy"],
              "seconds_from_process_start":
                  (t_call - t_process_start) + row["wall_seconds"]}
  return {"reached": False,
          "best_accuracy": max(r["test_accuracy"] for r in out.history)}


def peak_memory_mb(device) -> float | None:
  stats = getattr(device, "memory_stats", lambda: None)()
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
  t_process_start = time.perf_counter()
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
  p.add_argument("--batch-sizes", nargs="+", type=int, default=[128])
  p.add_argument("--steps", type=int, default=0,
                 help="timed steps per run (default: by backend and model)")
  p.add_argument("--time-to-accuracy", action="store_true")
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)

  device = jax.local_devices()[0]
  train_split = data.load("fashion_mnist", "train")
  images = np.asarray(data.to_float(train_split.images))
  labels = train_split.labels
  rows = []
  print(f"# {device.device_kind} ({device.platform}) x{len(jax.local_devices())}"
        f", {platform.machine()}, jax {jax.__version__}, haiku {hk.__version__}")
  print(f"{'model':<22} {'batch':>5} {'reference img/s':>16} {'zoo img/s':>12} "
        f"{'zoo/ref':>8} {'loop':>6} {'pmap1/jit':>9} {'compile s':>9}")
  for name in args.models:
    for batch in args.batch_sizes:
      slow = device.platform == "cpu" and "cnn" in name
      steps = args.steps or (60 if slow else 400)
      ref_ips, ref_compile = reference_images_per_second(
          zoo.get(name), images, labels, batch, steps)
      n_train = min(60000, batch * (steps + 1))
      jit_r = zoo_run(name, batch, n_train, devices=1, strategy="jit")
      pmap_r = zoo_run(name, batch, n_train, devices=1, strategy="pmap")
      row = {"model": name, "batch": batch,
             "reference_images_per_second": ref_ips,
             "zoo_images_per_second": jit_r["train_images_per_second"],
             "ratio": jit_r["train_images_per_second"] / ref_ips,
             "pmap1_over_jit": (pmap_r["train_images_per_second"]
                                / jit_r["train_images_per_second"]),
             "loop": jit_r["loop"], "zoo_compile_seconds":
                 jit_r["compile_seconds"],
             "reference_compile_seconds": ref_compile,
             "device_kind": device.device_kind}
      rows.append(row)
      print(f"{name:<22} {batch:>5} {ref_ips:>16,.0f} "
            f"{row['zoo_images_per_second']:>12,.0f} {row['ratio']:>8.2f} "
            f"{row['loop']:>6} {row['pmap1_over_jit']:>9.2f} "
            f"{row['zoo_compile_seconds']:>9.2f}", flush=True)
  extra = {"peak_memory_mb": peak_memory_mb(device)}
  if args.time_to_accuracy:
    for name in args.models:
      if name in TARGETS:
        extra[f"time_to_{TARGETS[name]}_{name}"] = time_to_accuracy(
            name, TARGETS[name], t_process_start)
        print(name, extra[f"time_to_{TARGETS[name]}_{name}"], flush=True)
  print(f"peak memory: {extra['peak_memory_mb']:.0f} MiB")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"rows": rows, **extra, "argv": sys.argv,
                 "jax": jax.__version__}, f, indent=1)


if __name__ == "__main__":
  main()
