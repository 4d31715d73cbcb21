"""Typed errors: each says what went wrong and what to do about it."""
from __future__ import annotations

import difflib
from typing import Iterable


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
  """Closest candidates to `word` (difflib), best first; substring hits count too."""
  candidates = sorted(set(candidates))
  hits = difflib.get_close_matches(word, candidates, n=n, cutoff=0.5)
  for c in candidates:
    if len(hits) >= n:
      break
    if c not in hits and word and word.lower() in c.lower():
      hits.append(c)
  return hits


def article(word: str) -> str:
  """ "an" before a vowel ("an int", "an object"), else "a" ("a float")."""
  return "an" if word[:1].lower() in "aeio" else "a"


class ZooError(Exception):
  """Base of every error zoo raises on purpose."""


class _MessageKeyError(KeyError):
  """A KeyError whose str() is the message itself, not its repr."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


class UnknownModelError(ZooError, _MessageKeyError):
  """`zoo.get` was given a name that is not registered (or not a string)."""

  def __init__(self, name: str, registered: Iterable[str]):
    self.name = name
    if not isinstance(name, str):
      self.suggestions = []
      super().__init__(f"model name must be a string, got {name!r} "
                       f"({type(name).__name__}). Run `zoo list` to see every "
                       "registered model.")
      return
    self.suggestions = close_matches(name, registered)
    hint = (f" Did you mean: {', '.join(self.suggestions)}?" if self.suggestions
            else "")
    super().__init__(f"unknown model {name!r}.{hint} "
                     "Run `zoo list` to see every registered model.")


class ConfigError(ZooError, ValueError):
  """A configuration value is malformed (wrong type, bad value)."""


class ConfigValueError(ConfigError):
  """A configuration value has the right type but is out of its range."""

  def __init__(self, key: str, value, allowed: str, hint: str = ""):
    self.key, self.value, self.allowed, self.hint = key, value, allowed, hint
    super().__init__(f"{key} must be {allowed}, got {value!r}"
                     + (f": {hint}." if hint else "."))


class UnknownConfigKeyError(ConfigError, _MessageKeyError):
  """A configuration key does not exist (often a typo)."""

  def __init__(self, key: str, valid: Iterable[str], where: str = "config"):
    self.key = key
    valid = sorted(valid)
    self.suggestions = close_matches(key.rsplit(".", 1)[-1], valid)
    hint = (f" Did you mean: {', '.join(self.suggestions)}?"
            if self.suggestions else "")
    super().__init__(f"unknown key {key!r} in {where}.{hint} "
                     f"Valid keys: {', '.join(valid)}.")

  def __str__(self) -> str:
    return str(self.args[0])


class InputError(ZooError, ValueError):
  """An input array has the wrong shape or dtype for the model."""


class CheckpointError(ZooError, ValueError):
  """A checkpoint or weights file is corrupt, unsafe or does not fit."""


class WeightsNotFoundError(ZooError, FileNotFoundError):
  """A weights file, Hub repo or run's checkpoint that was asked for is
  missing."""


class DistributedError(ZooError, ValueError):
  """Multi-host flags are inconsistent, or the processes could not meet."""


class PeerTimeoutError(DistributedError):
  """Not every process of a multi-host job joined within the timeout."""


class PeerLostError(DistributedError):
  """A collective with the other processes of a job failed: one was lost."""


class MissingExtraError(ZooError, ImportError):
  """An optional part of zoo was used without the extra that installs it
  (TensorFlow and TFDS are not in the core install)."""

  def __init__(self, what: str, extra: str, package: str):
    self.extra, self.package = extra, package
    super().__init__(f"{what} needs {package}, which zoo's core install "
                     f"leaves out: pip install 'zoo[{extra}]'.")


def require(module: str, what: str, extra: str, package: str):
  """Imports and returns `module`, or raises MissingExtraError naming the
  extra when it (or one of its own imports) is not installed."""
  import importlib
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise MissingExtraError(what, extra, package) from e


def installed(module: str) -> bool:
  """Whether `module` can be imported, without importing it (cheap)."""
  import importlib.util
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False
