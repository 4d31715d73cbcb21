"""Errors raised by the data layer, with messages that say what to do next."""

from __future__ import annotations

import os
from collections.abc import Sequence


class CorruptDataError(ValueError):
  """A data file exists but its content is wrong (truncated, bad header, bad hash).

  Raised instead of returning arrays built from a damaged file.
  """

  def __init__(self, path: os.PathLike | str, problem: str):
    self.path = os.fspath(path)
    self.problem = problem
    super().__init__(f"{self.path}: {problem}")

  def __reduce__(self):  # Picklable across processes despite the custom __init__.
    return type(self), (self.path, self.problem)


class DataNotFoundError(FileNotFoundError):
  """No usable copy of a dataset was found anywhere we looked.

  The message names the dataset, every place looked (one per line, with why it
  was rejected), and how to get the data.
  """

  def __init__(self, dataset: str, tried: Sequence[str], hints: Sequence[str]):
    self.dataset = dataset
    self.tried = tuple(tried)
    self.hints = tuple(hints)
    lines = [f"Dataset {dataset!r} was not found. Places looked:"]
    lines += [f"  - {place}" for place in self.tried]
    lines.append("How to get it:")
    lines += [f"  - {hint}" for hint in self.hints]
    super().__init__("\n".join(lines))

  def __str__(self) -> str:  # FileNotFoundError would add "[Errno ...]" noise.
    return self.args[0]

  def __reduce__(self):
    return type(self), (self.dataset, self.tried, self.hints)
