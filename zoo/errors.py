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


class DistributedError(ZooError, ValueError):
  """Multi-host flags are inconsistent, or the processes could not meet."""


class PeerTimeoutError(DistributedError):
  """Not every process of a multi-host job joined within the timeout."""


class PeerLostError(DistributedError):
  """A process of a running multi-host job stopped answering, or failed."""
