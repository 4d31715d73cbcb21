"""Stride-1 SAME convolutions (NHWC images, HWIO kernels) that run as matrix
products on the CPU.

XLA computes a convolution's kernel gradient as a convolution of the input
with the output gradient, and on the CPU that is slow: 18.7 of the small
CNN's 37 ms training step on JAX 0.12.1, 35.8 of 72 ms on JAX 0.10.2 (JAX
profiler, batch 128, 2-core x86 VM). On the CPU `conv2d_same` computes it as
one matrix product of the input's patches (im2col) with the output
gradient, and the forward pass of an input with several channels as one
product of the patches with the kernel; the input gradient stays XLA's. The
CNN's training at batch 128: 1.05x on JAX 0.12.1, 1.60x on 0.10.2
(`python bench/conv_lowering.py`; 1.60x and 2.44x at batch 512). Values agree with XLA's to float32
rounding, not bit for bit; the kernel gradient is at least as close to a
float64 reference as XLA's (4e-7 against 2e-6 relative on JAX 0.12).

Other platforms (`lax.platform_dependent`: the choice is made when the step
is compiled for a device), other geometries (strides, dilation, groups, even
kernels), forward patch blocks above IM2COL_MAX_BYTES (an evaluation
batch of 1000) and forward passes of a symbolic batch size (an exported
model) run `lax.conv_general_dilated`, as `hk.Conv2D` does.
`Conv2D` is `hk.Conv2D` for this case: the same parameters (names, shapes,
initializers, creation order), computed with `conv2d_same`.
"""
from __future__ import annotations

import math

import haiku as hk
import jax
import jax.numpy as jnp
from jax import lax

# The forward pass builds its patches only up to this size (float32 bytes);
# the backward pass always does (training batches are small enough).
IM2COL_MAX_BYTES = 128 << 20
_DIMS = ("NHWC", "HWIO", "NHWC")


def lax_conv2d_same(x: jax.Array, w: jax.Array) -> jax.Array:
  """XLA's stride-1 SAME convolution, as `hk.Conv2D` runs it."""
  return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                  dimension_numbers=_DIMS)


def patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
  """(B*H*W, kh*kw*C): the SAME-padded window of every output position,
  taps in the kernel's row-major order and channels fastest, so that row r
  meets row r of `w.reshape(kh * kw * C, O)`."""
  b, h, wd, c = x.shape
  xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  taps = [xp[:, i:i + h, j:j + wd, :] for i in range(kh) for j in range(kw)]
  return jnp.concatenate(taps, axis=-1).reshape(b * h * wd, kh * kw * c)


def _forward(x, w):
  """(output, the patches if the forward pass built them, else None)."""
  kh, kw, c, o = w.shape
  if (c == 1  # one channel: a product with K = 9 gains nothing
      or not all(isinstance(d, int) for d in x.shape)  # a symbolic batch
      or math.prod(x.shape[:3]) * kh * kw * c * x.dtype.itemsize
      > IM2COL_MAX_BYTES):
    return lax_conv2d_same(x, w), None
  p = patches(x, kh, kw)
  out = p @ w.reshape(kh * kw * c, o)
  return out.reshape(*x.shape[:3], o), p


@jax.custom_vjp
def _im2col_conv(x, w):
  return _forward(x, w)[0]


def _im2col_fwd(x, w):
  out, p = _forward(x, w)
  return out, (x, w, p)


def _im2col_bwd(res, g):
  x, w, p = res
  kh, kw, _, o = w.shape
  dx = jax.vjp(lambda v: lax_conv2d_same(v, w), x)[1](g)[0]
  if p is None:
    p = patches(x, kh, kw)
  dw = lax.dot_general(p, g.reshape(-1, o), (((0,), (0,)), ((), ())))
  return dx, dw.reshape(w.shape).astype(w.dtype)


_im2col_conv.defvjp(_im2col_fwd, _im2col_bwd)


def fits(x_shape, w_shape) -> bool:
  """Whether `conv2d_same` can use its matrix products for these shapes:
  a rank-4 input, odd kernel sizes, matching channels."""
  return (len(x_shape) == 4 and len(w_shape) == 4
          and w_shape[0] % 2 == 1 and w_shape[1] % 2 == 1
          and x_shape[3] == w_shape[2])


def conv2d_same(x: jax.Array, w: jax.Array) -> jax.Array:
  """`lax.conv_general_dilated(x, w, (1, 1), "SAME")` for NHWC `x` and HWIO
  `w` (odd kernel sizes); matrix products on the CPU, XLA's convolution
  elsewhere."""
  if not fits(x.shape, w.shape):
    return lax_conv2d_same(x, w)
  return lax.platform_dependent(x, w, cpu=_im2col_conv,
                                default=lax_conv2d_same)


class Conv2D(hk.Module):
  """`hk.Conv2D(output_channels, kernel_shape, padding="SAME")` on batched
  NHWC images: the same parameters ("w" (k, k, C, O), then "b" (O,) when
  `with_bias`; the same initializers, so the same initial values), computed
  with `conv2d_same`."""

  def __init__(self, output_channels: int, kernel_shape: int = 3,
               with_bias: bool = True,
               w_init: hk.initializers.Initializer | None = None,
               b_init: hk.initializers.Initializer | None = None,
               name: str | None = None):
    """Constructs the layer.

    Args:
      output_channels: O, the output's channels.
      kernel_shape: k, an odd kernel size (k x k).
      with_bias: Whether to add a learned bias.
      w_init: The kernel's initializer; default, as Haiku's, a truncated
        normal with stddev 1 / sqrt(k * k * C).
      b_init: The bias's initializer (default zeros).
      name: Module name.
    """
    super().__init__(name=name)
    if kernel_shape % 2 != 1:
      raise ValueError(f"kernel_shape must be odd for SAME padding here, "
                       f"got {kernel_shape}; use hk.Conv2D")
    self.output_channels = output_channels
    self.kernel_shape = kernel_shape
    self.with_bias = with_bias
    self.w_init = w_init
    self.b_init = b_init or jnp.zeros

  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H, W, output_channels)."""
    if x.ndim != 4:
      raise ValueError(f"Conv2D takes batched NHWC images (rank 4), got "
                       f"shape {x.shape}")
    k, c = self.kernel_shape, x.shape[-1]
    w_init = self.w_init or hk.initializers.TruncatedNormal(
        stddev=1.0 / math.sqrt(k * k * c))
    w = hk.get_parameter("w", (k, k, c, self.output_channels), x.dtype,
                         init=w_init)
    out = conv2d_same(x, w)
    if self.with_bias:
      b = hk.get_parameter("b", (self.output_channels,), x.dtype,
                           init=self.b_init)
      out = out + jnp.broadcast_to(b, out.shape)
    return out
