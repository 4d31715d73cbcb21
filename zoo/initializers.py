"""Weight initializers by name: Xavier/Glorot, He/Kaiming, LeCun, zeros.

All are Haiku `VarianceScaling` initializers, which compute fan-in/fan-out for
dense (in, out) and conv (*kernel, in, out) kernels alike; the `*_normal` ones
draw from a truncated normal whose standard deviation is corrected so the
samples' std equals the textbook formula (sqrt(scale / fan)).
"""
from __future__ import annotations

import haiku as hk

from zoo.errors import ConfigError, close_matches

# name -> (scale, fan mode, distribution)
_VARIANCE_SCALING = {
    "glorot_normal": (1.0, "fan_avg", "truncated_normal"),
    "glorot_uniform": (1.0, "fan_avg", "uniform"),
    "he_normal": (2.0, "fan_in", "truncated_normal"),
    "he_uniform": (2.0, "fan_in", "uniform"),
    "lecun_normal": (1.0, "fan_in", "truncated_normal"),
    "lecun_uniform": (1.0, "fan_in", "uniform"),
}
_ALIASES = {
    "xavier_normal": "glorot_normal",
    "xavier_uniform": "glorot_uniform",
    "kaiming_normal": "he_normal",
    "kaiming_uniform": "he_uniform",
}


def names() -> list[str]:
  """Every accepted initializer name, aliases included."""
  return sorted([*_VARIANCE_SCALING, *_ALIASES, "zeros"])


def get(name: str) -> hk.initializers.Initializer:
  """Returns the Haiku initializer called `name` (e.g. "xavier_uniform")."""
  key = _ALIASES.get(name, name)
  if key == "zeros":
    return hk.initializers.Constant(0.0)
  if key not in _VARIANCE_SCALING:
    hint = close_matches(name, names())
    raise ConfigError(
        f"unknown initializer {name!r}"
        + (f"; did you mean {', '.join(hint)}?" if hint else ".")
        + f" Choose one of: {', '.join(names())}.")
  scale, mode, distribution = _VARIANCE_SCALING[key]
  return hk.initializers.VarianceScaling(scale, mode, distribution)
