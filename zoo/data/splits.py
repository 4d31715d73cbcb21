"""Turns a split string ("train", "train[:90%]", "train[:1000]+test") into index ranges.

The grammar and rounding are TFDS's (`ReadInstruction.from_spec` and
`to_absolute`: percents rounded to the closest example, negative bounds from
the end, `+` to join, `all`), so zoo's slices are exactly the slices
`tfds.load(split=...)` would give; zoo_tests/test_data_sources.py checks that
against TFDS itself. It lives here so that the core install, which has no
TFDS, reads the same split strings.

Public: `resolve(spec, num_examples)` -> [(base_split, start, stop), ...];
`check(spec, num_examples)` validates a split string without loading any data
(for config validation). Both raise SplitError (a ZooError and ValueError)
whose one-line message shows the valid syntax.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from zoo.data.errors import SplitError

SYNTAX = ("valid splits look like 'train', 'test', 'train[:90%]', "
          "'train[90%:]', 'train[:1000]+test' "
          "(see https://www.tensorflow.org/datasets/splits)")

# TFDS's own patterns (tensorflow_datasets/core/splits.py).
_SUB_SPEC = re.compile(r"^(?P<name>[\w-]+)(\[(?P<selector>[\d\w%:.-]+)\])?$")
_BOUND = re.compile(r"^((?P<val>-?[\d_.]+)(?P<unit>(?:%|shard))?)?$")
_PLUS = re.compile(r"\s*\+\s*")


def resolve(spec: str, num_examples: Mapping[str, int]) -> list[tuple[str, int, int]]:
  """Returns [(base_split, start, stop), ...] for `spec`; SplitError if invalid.

  `num_examples` maps each base split ('train', 'test') to its size. A spec
  that selects no example of a part (e.g. 'train[5:5]') is an error too.
  """
  names = ", ".join(sorted(num_examples))
  if not isinstance(spec, str):
    raise SplitError(f"split must be a string, got {type(spec).__name__} "
                     f"{spec!r}; {SYNTAX}; base splits: {names}")
  try:
    parts = [_parse(part) for part in _PLUS.split(spec)]  # all, then sizes
    ranges = [r for part in parts for r in _to_ranges(part, num_examples)]
  except ValueError as e:
    raise SplitError(f"bad split {spec!r}: {e}; {SYNTAX}; "
                     f"base splits: {names}") from None
  for name, start, stop in ranges:
    if stop <= start:
      raise SplitError(f"split {spec!r} selects no examples of {name!r} "
                       f"({num_examples[name]} examples): [{start}:{stop}]; "
                       f"{SYNTAX}")
  return ranges


def _parse(part: str) -> tuple[str, object, object, str]:
  """(name, lo, hi, unit) of one `+`-separated part; ValueError with TFDS's
  reason if it is malformed."""
  match = _SUB_SPEC.match(part)
  unrecognized = f"Unrecognized split format: {part!r}"
  if not match:
    raise ValueError(unrecognized)
  name, selector = match["name"], match["selector"]
  if name == "all" and selector:
    raise ValueError("'all' does not support slice")
  if selector is None:
    return name, None, None, "abs"
  bounds = [_BOUND.match(b) for b in selector.split(":")]
  if not all(bounds) or not any(b.group(0) for b in bounds):
    raise ValueError(unrecognized)
  if len(bounds) == 1:  # 'train[x]': shards only
    if (bounds[0]["unit"] or "abs") != "shard":
      raise ValueError("Absolute or percent only support slice syntax")
    lo, hi, unit = bounds[0]["val"], int(bounds[0]["val"]) + 1, "shard"
  elif len(bounds) == 2:
    lo, hi = bounds[0]["val"], bounds[1]["val"]
    unit = bounds[0]["unit"] or bounds[1]["unit"] or "abs"
  else:
    raise ValueError(unrecognized)
  number = float if unit == "%" else int
  lo, hi = (None if v is None else number(v) for v in (lo, hi))
  if unit == "%" and (abs(lo or 0) > 100 or abs(hi or 0) > 100):
    raise ValueError(f"when unit=%, percent slice boundaries should be in "
                     f"[-100, 100], got {part!r}")
  return name, lo, hi, unit


def _to_ranges(part, num_examples: Mapping[str, int]):
  """The (base, start, stop) ranges of a parsed part, as TFDS's
  `to_absolute` computes them (each zoo split is a single shard)."""
  name, lo, hi, unit = part
  if name == "all":
    return [(base, 0, n) for base, n in num_examples.items()]
  if name not in num_examples:
    raise ValueError(f"Unknown split {name!r}. Should be one of "
                     f"{list(num_examples)}")
  n = num_examples[name]
  if unit == "%":
    lo = 0 if lo is None else int(round(lo * n / 100.0))
    hi = n if hi is None else int(round(hi * n / 100.0))
  elif unit == "shard":
    shard_lengths = [n]
    lo = 0 if lo is None else sum(shard_lengths[:lo])
    if hi is not None and hi <= 0:
      hi = len(shard_lengths) + hi
    hi = n if hi is None else sum(shard_lengths[:hi])
  else:
    lo = 0 if lo is None else lo
    hi = n if hi is None else hi
  if abs(lo) > n or abs(hi) > n:
    raise ValueError(f"Requested slice [{lo or ''}:{hi or ''}] incompatible "
                     f"with {n} examples")
  return [(name, n + lo if lo < 0 else lo, n + hi if hi < 0 else hi)]


def check(spec: str, num_examples: Mapping[str, int]) -> None:
  """Raises SplitError if `spec` is not a valid, non-empty split; loads no data.

  Cheap (no TFDS, no data), so config validation can call it before any
  device work, e.g.
  `check(cfg_split, zoo.data.catalog.get(dataset).num_examples)`.
  """
  resolve(spec, num_examples)
