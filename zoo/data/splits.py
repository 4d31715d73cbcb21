"""Turns a split string ("train", "train[:90%]", "train[:1000]+test") into index ranges.

Parsing and rounding are TFDS's own (ReadInstruction.from_spec/to_absolute,
which work offline without TensorFlow), so zoo's slices are exactly the slices
`tfds.load(split=...)` would give.

Public: `resolve(spec, num_examples)` -> [(base_split, start, stop), ...];
`check(spec, num_examples)` validates a split string without loading any data
(for config validation). Both raise SplitError (a ZooError and ValueError)
whose one-line message shows the valid syntax.
"""

from __future__ import annotations

from collections.abc import Mapping

from zoo.data.errors import SplitError, one_line

SYNTAX = ("valid splits look like 'train', 'test', 'train[:90%]', "
          "'train[90%:]', 'train[:1000]+test' "
          "(see https://www.tensorflow.org/datasets/splits)")


def resolve(spec: str, num_examples: Mapping[str, int]) -> list[tuple[str, int, int]]:
  """Returns [(base_split, start, stop), ...] for `spec`; SplitError if invalid.

  `num_examples` maps each base split ('train', 'test') to its size. A spec
  that selects no example of a part (e.g. 'train[5:5]') is an error too.
  """
  names = ", ".join(sorted(num_examples))
  if not isinstance(spec, str):
    raise SplitError(f"split must be a string, got {type(spec).__name__} "
                     f"{spec!r}; {SYNTAX}; base splits: {names}")
  if spec in num_examples:  # Fast path: no TFDS import for plain names.
    ranges = [(spec, 0, num_examples[spec])]
  else:
    from zoo.data.tfds_source import import_tfds  # pylint: disable=g-import-not-at-top
    tfds = import_tfds()
    infos = {name: tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0)
             for name, n in num_examples.items()}
    try:
      instructions = tfds.core.ReadInstruction.from_spec(spec).to_absolute(infos)
    except (ValueError, AssertionError, NotImplementedError, KeyError,
            TypeError) as e:
      # TFDS's message is several lines; its last one is the specific reason.
      reason = (str(e).strip().splitlines() or [type(e).__name__])[-1]
      reason = one_line(reason).rstrip(".")
      raise SplitError(f"bad split {spec!r}: {reason}; {SYNTAX}; "
                       f"base splits: {names}") from e
    ranges = []
    for ins in instructions:
      n = num_examples[ins.splitname]
      start = 0 if ins.from_ is None else ins.from_
      stop = n if ins.to is None else ins.to
      ranges.append((ins.splitname, start, stop))
  for name, start, stop in ranges:
    if stop <= start:
      raise SplitError(f"split {spec!r} selects no examples of {name!r} "
                       f"({num_examples[name]} examples): [{start}:{stop}]; "
                       f"{SYNTAX}")
  return ranges


def check(spec: str, num_examples: Mapping[str, int]) -> None:
  """Raises SplitError if `spec` is not a valid, non-empty split; loads no data.

  Cheap (no TensorFlow; TFDS's parser only for sliced specs, ~0.1 s the first
  time), so config validation can call it before any device work, e.g.
  `check(cfg_split, zoo.data.catalog.get(dataset).num_examples)`.
  """
  resolve(spec, num_examples)
