"""The architecture table, and the argument check every built-in module shares.

An *architecture* is a module constructor `build(num_outputs, **kwargs) ->
hk.Module` registered under a name; for the built-in models it is the
`hk.Module` class itself:

    @architecture("cnn")
    class SmallCNN(hk.Module):
      def __init__(self, num_outputs, channels=(32, 64), ...): ...

The constructor's keyword arguments and defaults are the `[model]` section of
a config (zoo.config.model_schema derives it from the signature), so each
default is written once, in the constructor. zoo.registry reads this table;
the model files register into it and never import the registry.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import haiku as hk

from zoo import config as config_lib
from zoo.errors import ConfigError

Build = Callable[..., hk.Module]


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A registered constructor.

  Attributes:
    name: The name configs use (`model.arch`).
    build: `build(num_outputs, **kwargs) -> hk.Module`: an hk.Module class or
      a function returning one.
    stateful: The module keeps Haiku state (e.g. BatchNorm statistics).
  """
  name: str
  build: Build
  stateful: bool = False


_TABLE: dict[str, Architecture] = {}


def add(name: str, build: Build, *, stateful: bool = False) -> Architecture:
  """Registers `build` under `name` (replacing any architecture of that name:
  callers check for clashes)."""
  if not callable(build):
    raise ConfigError(f"architecture {name!r} must be an hk.Module class or a "
                      f"function returning one, got {build!r}.")
  _TABLE[name] = Architecture(name, build, stateful)
  return _TABLE[name]


def architecture(name: str, *,
                 stateful: bool = False) -> Callable[[Build], Build]:
  """Decorator form of `add`: registers a class (or function) as `name` and
  returns it unchanged. `stateful=True` for modules with Haiku state."""
  def decorator(build: Build) -> Build:
    add(name, build, stateful=stateful)
    return build
  return decorator


def get(name: str) -> Architecture:
  """The architecture called `name`; ConfigError listing the known ones."""
  try:
    return _TABLE[name]
  except (KeyError, TypeError):
    raise ConfigError(f"unknown architecture {name!r}; known: "
                      f"{', '.join(names())}.") from None


def names() -> list[str]:
  """Sorted names of every registered architecture."""
  return sorted(_TABLE)


def remove(name: str) -> None:
  """Drops `name` from the table (no error if absent)."""
  _TABLE.pop(name, None)


def check_args(module: hk.Module, **values: Any) -> None:
  """Range-checks constructor arguments by kind, with the very rules config
  validation applies (zoo.config.MODEL_ARG_KINDS), so that a module built
  directly (`SmallCNN(10, dropout=2.0)` inside hk.transform) fails as clearly
  as a bad config: a ConfigValueError (a ValueError) naming the argument.
  Every argument passed must be of a kind listed there."""
  for arg, value in values.items():
    config_lib.MODEL_ARG_RANGES[arg].check(f"{type(module).__name__}.{arg}",
                                           value)
