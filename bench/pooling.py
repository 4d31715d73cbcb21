"""Training speed of the small CNN with `hk.max_pool` against zoo's pooling.

Both sides are the same plain Haiku CNN (zoo's `cnn_fashion_mnist`
architecture) and the same jitted Adam step on real Fashion-MNIST batches; the
only difference is the pooling function. Before timing, the script checks
that both give bit-identical gradients on a real batch, so the speed-up costs
nothing in the numbers.

    python bench/pooling.py                 # batch 128, Python loop of jitted steps
    python bench/pooling.py --batch-sizes 128 512 --scan
"""
from __future__ import annotations

import argparse
import time

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from zoo import data
from zoo.pooling import max_pool

POOLS = {"hk.max_pool": hk.max_pool, "zoo.pooling.max_pool": max_pool}


def cnn(pool):
  """conv3x3x32-pool-conv3x3x64-pool-dense128-dense10, ReLU."""
  def forward(x):
    for c in (32, 64):
      x = jax.nn.relu(hk.Conv2D(c, 3, padding="SAME")(x))
      x = pool(x, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    x = jax.nn.relu(hk.Linear(128)(hk.Flatten()(x)))
    return hk.Linear(10)(x)
  return hk.without_apply_rng(hk.transform(forward))


def make_step(net, tx):
  def loss_fn(params, x, y):
    logits = net.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(carry, batch):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss
  return step, loss_fn


def images_per_second(pool, images, labels, batch, steps, scan, repeats):
  net, tx = cnn(pool), optax.adam(1e-3)
  params = net.init(jax.random.PRNGKey(0), images[:batch])
  carry = (params, tx.init(params))
  step, _ = make_step(net, tx)
  xs = images[:steps * batch].reshape(steps, batch, *images.shape[1:])
  ys = labels[:steps * batch].reshape(steps, batch)
  if scan:
    run = jax.jit(lambda c, x, y: jax.lax.scan(step, c, (x, y)))
    xs, ys = jax.device_put((xs, ys))
  else:
    one = jax.jit(step)

    def run(c, x, y):
      for i in range(steps):
        c, loss = one(c, (x[i], y[i]))
      return c, loss
  jax.block_until_ready(run(carry, xs, ys))  # compile and warm up
  best = 0.0
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(run(carry, xs, ys))
    best = max(best, steps * batch / (time.perf_counter() - t))
  return best


def check_same_gradients(images, labels, batch) -> None:
  grads = []
  for pool in POOLS.values():
    net = cnn(pool)
    params = net.init(jax.random.PRNGKey(0), images[:batch])
    _, loss_fn = make_step(net, optax.adam(1e-3))
    grads.append(jax.jit(jax.grad(loss_fn))(params, images[:batch],
                                            labels[:batch]))
  same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), *grads)
  if not all(jax.tree.leaves(same)):
    raise SystemExit(f"gradients differ: {same}")
  print("gradients on a real batch: bit-identical")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch-sizes", nargs="+", type=int, default=[128])
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--scan", action="store_true",
                 help="also time one lax.scan over the steps")
  args = p.parse_args(argv)
  split = data.load("fashion_mnist", "train")
  images = np.asarray(data.to_float(split.images))
  labels = split.labels
  device = jax.local_devices()[0]
  print(f"# {device.device_kind} ({device.platform}), jax {jax.__version__}")
  check_same_gradients(images, labels, 128)
  loops = ["python", "scan"] if args.scan else ["python"]
  print(f"{'batch':>5} {'loop':>6} " + " ".join(f"{k + ' img/s':>28}"
                                                for k in POOLS) + "   ratio")
  for batch in args.batch_sizes:
    for loop in loops:
      ips = [images_per_second(pool, images, labels, batch, args.steps,
                               loop == "scan", args.repeats)
             for pool in POOLS.values()]
      print(f"{batch:>5} {loop:>6} " + " ".join(f"{v:>28,.0f}" for v in ips)
            + f"   {ips[1] / ips[0]:.2f}", flush=True)


if __name__ == "__main__":
  main()
