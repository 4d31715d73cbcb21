"""Training speed of the small CNN under other convolution lowerings and layouts.

Every variant is the same plain Haiku CNN (zoo's `cnn_fashion_mnist`
architecture, ReLU, zoo's max pooling) with the same parameters and the same
jitted Adam step on real Fashion-MNIST batches, in a Python loop; only how
the convolutions are written differs:

- `lax NHWC` (the reference, what hk.Conv2D runs): one
  `lax.conv_general_dilated` per layer, images as (batch, height, width,
  channels);
- `zoo.conv` (what zoo runs): `zoo.conv.conv2d_same`, on the CPU the
  forward pass of the second convolution and both kernel gradients as
  matrix products of the input's patches (im2col), the input gradient and
  the first forward pass XLA's;
- `lax NCHW`: the same convolutions with channels first (the layout PyTorch
  uses), transposed back before the dense layer;
- `conv_0 shifted`: the first convolution (one input channel) as nine shifted
  copies of the image times the kernel's taps, its kernel gradient as one
  matrix product of the nine copies (im2col) with the output gradient; the
  second stays `lax`;
- `im2col`: both convolutions as one matrix product of the image patches.

    python bench/conv_lowering.py                     # batch 128
    python bench/conv_lowering.py --batch-sizes 128 512

On the CPU, zoo's malloc settings (zoo/training/host_memory.py) are set for
the whole process, as zoo.train sets them, unless ZOO_HOST_MALLOC=system.
Prints images/s per variant, the ratio to `lax NHWC` measured in the same
run, and how far each variant's gradients on a real batch are from the
reference (0 means bit-identical; anything else changes trained weights, so
adopting it would mean measuring the baselines again).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from zoo import conv, data
from zoo.pooling import max_pool

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pooling as pooling_bench  # noqa: E402  (bench/pooling.py: the step)


def _shifts(x):
  """The nine 3x3 SAME-padded shifts of NHWC `x`, in kernel tap order."""
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return [xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)]


lax_nhwc = conv.lax_conv2d_same  # what hk.Conv2D runs


def lax_nchw(x, w):  # x is (N, C, H, W) here
  return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                  dimension_numbers=("NCHW", "HWIO", "NCHW"))


def im2col(x, w):
  n, h, wd, c = x.shape
  return (conv.patches(x, 3, 3) @ w.reshape(9 * c, -1)).reshape(n, h, wd, -1)


@jax.custom_vjp
def shifted(x, w):
  """A 3x3 SAME convolution as a sum over the kernel's taps."""
  taps = w.reshape(9, w.shape[2], w.shape[3])
  terms = [s * taps[k, 0] if w.shape[2] == 1 else s @ taps[k]
           for k, s in enumerate(_shifts(x))]
  return sum(terms[1:], terms[0])


def _shifted_fwd(x, w):
  return shifted(x, w), (x, w)


def _shifted_bwd(res, g):
  x, w = res
  dw = (conv.patches(x, 3, 3).T @ g.reshape(-1, w.shape[3])).reshape(w.shape)
  return jax.vjp(lambda v: lax_nhwc(v, w), x)[1](g)[0], dw


shifted.defvjp(_shifted_fwd, _shifted_bwd)

# variant -> (conv of layer 0, conv of layer 1, channels first?)
VARIANTS = {"lax NHWC": (lax_nhwc, lax_nhwc, False),
            "zoo.conv": (conv.conv2d_same, conv.conv2d_same, False),
            "lax NCHW": (lax_nchw, lax_nchw, True),
            "conv_0 shifted": (shifted, lax_nhwc, False),
            "im2col": (im2col, im2col, False)}


def cnn(variant):
  """conv3x3x32-pool-conv3x3x64-pool-dense128-dense10 with `variant`'s
  convolutions; parameters named and shaped alike in every variant."""
  convs = VARIANTS[variant][:2]
  nchw = VARIANTS[variant][2]

  def forward(x):
    if nchw:
      x = x.transpose(0, 3, 1, 2)
    for i, (c, conv) in enumerate(zip((32, 64), convs)):
      cin = x.shape[1 if nchw else 3]
      w = hk.get_parameter(f"w{i}", (3, 3, cin, c), init=hk.initializers
                           .TruncatedNormal(1.0 / np.sqrt(9 * cin)))
      b = hk.get_parameter(f"b{i}", (c,), init=jnp.zeros)
      x = jax.nn.relu(conv(x, w) + (b[:, None, None] if nchw else b))
      window = (1, 1, 2, 2) if nchw else (1, 2, 2, 1)
      x = max_pool(x, window, window, "VALID")
    if nchw:
      x = x.transpose(0, 2, 3, 1)
    x = jax.nn.relu(hk.Linear(128)(hk.Flatten()(x)))
    return hk.Linear(10)(x)
  return hk.without_apply_rng(hk.transform(forward))


def _loss(net):
  """The loss of bench/pooling.py's step (softmax cross-entropy)."""
  return pooling_bench.make_step(net, optax.adam(1e-3))[1]


def make_run(variant, params, images, labels, batch, steps):
  """A warmed-up function running `steps` jitted Adam steps of `variant`."""
  tx = optax.adam(1e-3)
  step = jax.jit(pooling_bench.make_step(cnn(variant), tx)[0])

  def run():
    carry = (params, tx.init(params))
    for i in range(steps):
      carry, _ = step(carry, (images[i * batch:(i + 1) * batch],
                              labels[i * batch:(i + 1) * batch]))
    return carry
  jax.block_until_ready(run())  # compile and warm up
  return run


def images_per_second(runs: dict, images_per_run: int,
                      repeats: int) -> dict[str, float]:
  """Best images/s of each run, the variants taking turns in each repeat so
  that a slow stretch of the machine hits all of them."""
  best = dict.fromkeys(runs, 0.0)
  for _ in range(repeats):
    for v, run in runs.items():
      t = time.perf_counter()
      jax.block_until_ready(run())
      best[v] = max(best[v], images_per_run / (time.perf_counter() - t))
  return best


def gradient_distance(params, images, labels, batch) -> dict[str, float]:
  """Max |grad - reference grad| / max |reference grad| per variant."""
  grads = {v: jax.jit(jax.grad(_loss(cnn(v))))(params, images[:batch],
                                               labels[:batch])
           for v in VARIANTS}
  ref = grads["lax NHWC"]
  return {v: max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                 for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref)))
          for v, g in grads.items()}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch-sizes", nargs="+", type=int, default=[128])
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                 default=list(VARIANTS))
  args = p.parse_args(argv)
  if "lax NHWC" not in args.variants:
    args.variants.insert(0, "lax NHWC")
  from zoo.training import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.keep_step_buffers()  # as zoo.train runs (ZOO_HOST_MALLOC)
  split = data.load("fashion_mnist", "train")
  images = np.asarray(data.to_float(split.images))
  labels = split.labels
  params = cnn("lax NHWC").init(jax.random.PRNGKey(0), images[:1])
  device = jax.local_devices()[0]
  print(f"# {device.device_kind} ({device.platform}), jax {jax.__version__}")
  dist = gradient_distance(params, images, labels, 128)
  rows = {}
  print(f"{'batch':>5} {'variant':<16} {'img/s':>8} {'vs lax NHWC':>11} "
        f"{'grad rel. diff':>14}")
  for batch in args.batch_sizes:
    runs = {v: make_run(v, params, images, labels, batch, args.steps)
            for v in args.variants}
    ips = images_per_second(runs, batch * args.steps, args.repeats)
    for v in args.variants:
      rows[(batch, v)] = {"images_per_second": ips[v],
                          "ratio": ips[v] / ips["lax NHWC"],
                          "grad_rel_diff": dist[v]}
      print(f"{batch:>5} {v:<16} {ips[v]:>8,.0f} "
            f"{ips[v] / ips['lax NHWC']:>11.2f} {dist[v]:>14.1e}", flush=True)
  return rows


if __name__ == "__main__":
  main()
