"""Errors raised by the data layer, with messages that say what to do next.

Each is a `zoo.errors.ZooError` (the CLI prints it as one line and exits 2) and
keeps its historical builtin base (ValueError, FileNotFoundError) so existing
`except` clauses still catch it. Messages are single lines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from zoo.errors import ZooError


def one_line(text: str) -> str:
  """`text` with its lines joined by spaces (messages are printed as one line)."""
  return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


class CorruptDataError(ZooError, ValueError):
  """A data file exists but its content is wrong (truncated, bad header, bad hash).

  Raised instead of returning arrays built from a damaged file. `fix` says what
  to do (reinstall, delete and prepare again, ...); it ends the message.
  """

  def __init__(self, path: os.PathLike | str, problem: str, fix: str = ""):
    self.path = os.fspath(path)
    self.problem = problem
    self.fix = fix
    message = f"{self.path}: {one_line(problem)}"
    if fix:
      message += f"; {one_line(fix)}"
    super().__init__(message)

  def __reduce__(self):  # Picklable across processes despite the custom __init__.
    return type(self), (self.path, self.problem, self.fix)


class DataNotFoundError(ZooError, FileNotFoundError):
  """No usable copy of a dataset was found anywhere we looked.

  One line, the fix first: "<title> not found: <hints, or ...>; looked
  in: <tried>". `.hints` are ways to get it, likeliest first; `.tried` the
  places looked, paths with a short note only where one helps.
  """

  def __init__(self, dataset: str, tried: Sequence[str], hints: Sequence[str],
               title: str = ""):
    self.dataset = dataset
    self.tried = tuple(tried)
    self.hints = tuple(hints)
    self.title = title  # the dataset's name for people, e.g. "Fashion-MNIST"
    message = (f"{title or dataset} not found: "
               + ", or ".join(one_line(h) for h in self.hints)
               + "; looked in: " + ", ".join(one_line(p) for p in self.tried))
    super().__init__(message)

  def __str__(self) -> str:  # FileNotFoundError would add "[Errno ...]" noise.
    return self.args[0]

  def __reduce__(self):
    return type(self), (self.dataset, self.tried, self.hints, self.title)


class SplitError(ZooError, ValueError):
  """A split string is malformed, names an unknown split, or selects nothing."""


class UnknownDatasetError(ZooError, ValueError):
  """The dataset name is not in zoo's catalog."""


class CacheWarning(UserWarning):
  """The decoded-data cache was unusable (tampered, stale, unwritable); not fatal."""
