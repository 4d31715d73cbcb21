"""Weight initializers by name: Xavier/Glorot, He/Kaiming, LeCun, zeros.

All but `zeros` are Haiku `VarianceScaling` initializers, which compute
fan-in/fan-out for dense (in, out) and conv (*kernel, in, out) kernels alike;
the `*_normal` ones draw from a truncated normal whose standard deviation is
corrected so the samples' std equals the textbook formula (sqrt(scale / fan)).

Modules take initializers themselves (`w_init=initializers.get("he_normal")`,
like Haiku's own modules); a config names them (`initializer = "he_normal"`),
and `get` resolves the name once, when a registered model builds its module.
`get` returns one shared (stateless) instance per name, so `name_of` can state
a constructor's default initializer as a name in the config schema.
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
_INITIALIZERS: dict[str, hk.initializers.Initializer] = {
    **{name: hk.initializers.VarianceScaling(*spec)
       for name, spec in _VARIANCE_SCALING.items()},
    "zeros": hk.initializers.Constant(0.0),
}


def names() -> list[str]:
  """Every accepted initializer name, aliases included."""
  return sorted([*_INITIALIZERS, *_ALIASES])


def name_of(init: hk.initializers.Initializer) -> str | None:
  """The canonical name of an initializer `get` returned (not an alias), or
  None for any other initializer."""
  return next((n for n, i in _INITIALIZERS.items() if i is init), None)


def get(name: str) -> hk.initializers.Initializer:
  """Returns the Haiku initializer called `name` (e.g. "xavier_uniform")."""
  try:
    return _INITIALIZERS[_ALIASES.get(name, name)]
  except (KeyError, TypeError):  # TypeError: unhashable, e.g. a list
    hint = close_matches(name, names()) if isinstance(name, str) else []
    raise ConfigError(
        f"unknown initializer {name!r}"
        + (f"; did you mean {', '.join(hint)}?" if hint else ".")
        + f" Choose one of: {', '.join(names())}.") from None
