"""Max pooling with a cheap gradient: Haiku's values, without select_and_scatter.

`hk.max_pool` lowers to `reduce_window`, whose gradient is XLA's
`select_and_scatter`; on a 2-core CPU that one op made the small CNN's
training step about 1.8x slower (`python bench/pooling.py`). When windows tile
the input exactly (window == stride, VALID padding, sizes divisible: the
2x2/2 pooling of every zoo CNN), pooling is a reshape and a max, and its
gradient a few elementwise ops. Values and gradients are bit for bit those of
`hk.max_pool`: on ties the whole gradient goes to the window's first maximum
in row-major order, as `select_and_scatter` does (a plain `jnp.max` would
split it). Any other geometry falls back to `hk.max_pool`.

POOLS names the pooling functions a config may choose (`pool = "avg"`);
modules take the functions themselves.
"""
from __future__ import annotations

import functools
import itertools
from typing import Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from zoo.errors import ConfigError, close_matches


def _tiles(x: jax.Array, window: Sequence[int], strides: Sequence[int],
           padding: str) -> tuple[int, ...] | None:
  """The reshaped shape (d0/w0, w0, d1/w1, w1, ...) when windows tile `x`."""
  if (padding != "VALID" or len(window) != x.ndim
      or tuple(window) != tuple(strides)
      or any(d % w for d, w in zip(x.shape, window))):
    return None
  shape: list[int] = []
  for d, w in zip(x.shape, window):
    shape += [d // w, w]
  return tuple(shape)


def _window_axes(shape: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(range(1, len(shape), 2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiled_max(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return x.reshape(shape).max(axis=_window_axes(shape))


def _tiled_max_fwd(x, shape):
  out = _tiled_max(x, shape)
  return out, (x, out)


def _tiled_max_bwd(shape, res, g):
  """Each window position is a strided slice of `x` the size of `g`; walking
  them in row-major order, the first slice equal to the maximum takes `g`.
  The slices' gradients are then interleaved back into `x`'s layout by one
  stack, transpose and reshape. The same result as a mask over the reshaped
  windows (zoo's earlier backward), at about half its cost on CPU: 2.3
  against 4.4 ms for ReLU + pooling of a (128, 28, 28, 32) batch."""
  x, out = res
  window = tuple(shape[a] for a in _window_axes(shape))
  zero = jnp.zeros((), g.dtype)
  taken = None
  parts = []
  for offset in itertools.product(*(range(w) for w in window)):
    part = x[tuple(slice(o, None, w) for o, w in zip(offset, window))]
    hit = part == out
    parts.append(jnp.where(hit if taken is None else hit & ~taken, g, zero))
    taken = hit if taken is None else taken | hit
  # (w0, w1, ..., d0, d1, ...) -> (d0, w0, d1, w1, ...) -> x's shape.
  n = len(window)
  stacked = jnp.stack(parts).reshape(window + g.shape)
  perm = [i for a in range(n) for i in (n + a, a)]
  return (stacked.transpose(perm).reshape(x.shape),)


_tiled_max.defvjp(_tiled_max_fwd, _tiled_max_bwd)


def max_pool(x: jax.Array, window_shape: Sequence[int],
             strides: Sequence[int], padding: str = "VALID") -> jax.Array:
  """`hk.max_pool` with full-rank `window_shape`/`strides`; a reshape and a
  max when the windows tile the input."""
  shape = _tiles(x, window_shape, strides, padding)
  if shape is None:
    return hk.max_pool(x, window_shape, strides, padding)
  return _tiled_max(x, shape)


# Pooling functions by name: (x, window_shape, strides, padding) -> pooled x.
POOLS: dict[str, Callable[..., jax.Array]] = {"max": max_pool,
                                              "avg": hk.avg_pool}


def names() -> list[str]:
  """Every pooling name a config may use, in POOLS order."""
  return list(POOLS)


def name_of(fn: Callable[..., jax.Array]) -> str | None:
  """The name of a pooling function in POOLS, or None."""
  return next((n for n, f in POOLS.items() if f is fn), None)


def get(name: str) -> Callable[..., jax.Array]:
  """The pooling function called `name` ("max" or "avg")."""
  try:
    return POOLS[name]
  except (KeyError, TypeError):
    hint = close_matches(name, POOLS) if isinstance(name, str) else []
    raise ConfigError(
        f"unknown pooling {name!r}"
        + (f"; did you mean {', '.join(hint)}?" if hint else ".")
        + f" Choose one of: {', '.join(POOLS)}.") from None
