"""Activation functions by name (jax.nn underneath).

Modules take the functions themselves (`activation=jax.nn.gelu`); a config
names them (`activation = "gelu"`), and `get` resolves the name once, when a
registered model builds its module. `name_of` is the way back, used to state a
constructor's default function as a name in the config schema.
"""
from __future__ import annotations

from typing import Callable

import jax

from zoo.errors import ConfigError, close_matches

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "celu": jax.nn.celu,
    "leaky_relu": jax.nn.leaky_relu,
    "tanh": jax.nn.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "soft_sign": jax.nn.soft_sign,
    "log_sigmoid": jax.nn.log_sigmoid,
    "mish": jax.nn.mish,
    "identity": lambda x: x,
}


def names() -> list[str]:
  """Every accepted activation name."""
  return sorted(_ACTIVATIONS)


def name_of(fn: Callable[..., object]) -> str | None:
  """The name `get` resolves to `fn` (the first listed, e.g. "silu" rather
  than its alias "swish"), or None if `fn` has no name here."""
  return next((n for n, f in _ACTIVATIONS.items() if f is fn), None)


def get(name: str) -> Callable[[jax.Array], jax.Array]:
  """Returns the activation function called `name` (e.g. "gelu")."""
  try:
    return _ACTIVATIONS[name]
  except KeyError:
    hint = close_matches(name, names())
    raise ConfigError(
        f"unknown activation {name!r}"
        + (f"; did you mean {', '.join(hint)}?" if hint else ".")
        + f" Choose one of: {', '.join(names())}.") from None
