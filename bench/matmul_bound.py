"""How close MLP training comes to this machine's matrix-multiply speed.

A dense network's train step is mostly matrix products, so their speed alone
bounds how fast any implementation can train it. For a registered MLP, at
each batch size and in one process on real Fashion-MNIST, this times:

- `matmuls only`: one jitted `lax.scan` whose step is just the step's matrix
  products (forward, weight gradients, hidden-layer input gradients), chained
  through an SGD-like update so that XLA can neither hoist nor drop any. No
  activation, loss, optimizer state or batch gather: a ceiling, not a model.
- `plain scan`: bench/train_speed.py's fast hand-written reference.
- `zoo`: `zoo.train`'s steady state (its second epoch).

and prints images/s, the matmul GFLOP/s each implies, and zoo / matmuls-only.

    python bench/matmul_bound.py                      # mlp_fashion_mnist, batch 128
    python bench/matmul_bound.py --batch-sizes 128 512 --json out.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_speed  # noqa: E402  (bench/train_speed.py, beside this file)

from zoo import data  # noqa: E402


def layer_sizes(entry) -> list[int]:
  """[input, hidden..., classes] of a registered MLP."""
  if entry.arch != "mlp":
    raise ValueError(f"{entry.name} is a {entry.arch!r} model; this bound is "
                     "for dense networks (arch 'mlp')")
  return [math.prod(entry.input_shape), *entry.config["model"]["hidden_sizes"],
          entry.num_classes]


def matmul_flops_per_image(sizes: list[int]) -> int:
  """Multiply-adds x 2 per image in one train step: every layer's forward
  product and weight gradient, and the input gradient of every layer but the
  first (the images need none)."""
  pairs = list(zip(sizes[:-1], sizes[1:]))
  forward = sum(i * o for i, o in pairs)
  input_grads = sum(i * o for i, o in pairs[1:])
  return 2 * (2 * forward + input_grads)


def matmuls_only_step(sizes):
  """(initial weights, step): a scan step that is only the train step's
  matrix products, each weight moved by its gradient so every product feeds
  the next step."""
  keys = jax.random.split(jax.random.PRNGKey(0), len(sizes) - 1)
  ws = [jax.random.normal(k, (i, o)) * (2.0 / i) ** 0.5
        for k, i, o in zip(keys, sizes[:-1], sizes[1:])]

  def step(ws, x):
    acts = [x]
    for w in ws:
      acts.append(acts[-1] @ w)
    g = acts[-1] / x.shape[0]  # stands in for the loss's cotangent
    grads = [None] * len(ws)
    for i in reversed(range(len(ws))):
      grads[i] = acts[i].T @ g
      if i:
        g = g @ ws[i].T
    return [w - 1e-6 * gw for w, gw in zip(ws, grads)], None

  return ws, step


def matmuls_only_images_per_second(sizes, xs, repeats=3) -> float:
  """Images/s of a scan over `xs` (steps, batch, features) of
  `matmuls_only_step` (best of `repeats`, compilation excluded)."""
  ws, step = matmuls_only_step(sizes)
  run = jax.jit(lambda ws, xs: jax.lax.scan(step, ws, xs)[0])
  jax.block_until_ready(run(ws, xs))
  best = math.inf
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(run(ws, xs))
    best = min(best, time.perf_counter() - t)
  return xs.shape[0] * xs.shape[1] / best


def measure(name: str, batch: int, steps: int, images, labels,
            repeats: int) -> dict:
  """One row: matmuls-only, plain scan and zoo images/s for `name`."""
  entry = train_speed.bench_entry(name)
  sizes = layer_sizes(entry)
  idx = np.resize(np.random.default_rng(0).permutation(len(labels)),
                  steps * batch)
  xs = jax.device_put(images[idx].reshape(steps, batch, -1))
  bound, plain, zoo_ips = 0.0, 0.0, 0.0
  for _ in range(repeats):  # interleaved: every side sees the same noise
    bound = max(bound, matmuls_only_images_per_second(sizes, xs))
    plain = max(plain, train_speed.reference_scan_images_per_second(
        entry, images, labels, batch, steps))
    zoo_ips = max(zoo_ips, train_speed.zoo_run(
        entry, batch, steps, devices=1,
        strategy="jit")["train_images_per_second"])
  flops = matmul_flops_per_image(sizes)
  return {"model": name, "batch": batch, "layer_sizes": sizes,
          "matmul_flops_per_image": flops,
          "matmuls_only_images_per_second": bound,
          "plain_scan_images_per_second": plain,
          "zoo_images_per_second": zoo_ips,
          "zoo_over_matmuls_only": zoo_ips / bound,
          "plain_scan_over_matmuls_only": plain / bound}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="mlp_fashion_mnist")
  p.add_argument("--batch-sizes", nargs="+", type=int, default=[128])
  p.add_argument("--steps", type=int, default=400)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)

  train_split = data.load("fashion_mnist", "train")
  images = np.asarray(data.to_float(train_split.images))
  device = jax.local_devices()[0]
  print(f"# {device.device_kind} ({device.platform}), {platform.machine()}, "
        f"jax {jax.__version__}")
  print(f"{'model':<20} {'batch':>5} {'matmuls only':>13} {'plain scan':>11} "
        f"{'zoo img/s':>10} {'zoo/matmuls':>11} {'GFLOP/s (matmuls, zoo)':>23}")
  rows = []
  for batch in args.batch_sizes:
    r = measure(args.model, batch, args.steps, images, train_split.labels,
                args.repeats)
    rows.append(r)
    gflops = lambda ips: ips * r["matmul_flops_per_image"] / 1e9  # noqa: E731
    print(f"{r['model']:<20} {batch:>5} "
          f"{r['matmuls_only_images_per_second']:>13,.0f} "
          f"{r['plain_scan_images_per_second']:>11,.0f} "
          f"{r['zoo_images_per_second']:>10,.0f} "
          f"{r['zoo_over_matmuls_only']:>11.2f} "
          f"{gflops(r['matmuls_only_images_per_second']):>11.0f}, "
          f"{gflops(r['zoo_images_per_second']):.0f}", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"rows": rows, "argv": sys.argv, "jax": jax.__version__,
                 "device_kind": device.device_kind}, f, indent=1)


if __name__ == "__main__":
  main()
