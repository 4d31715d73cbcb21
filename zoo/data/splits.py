"""Turns a split string ("train", "train[:90%]", "train[:1000]+test") into index ranges.

Parsing and rounding are TFDS's own (ReadInstruction.from_spec/to_absolute,
which work offline without TensorFlow), so zoo's slices are exactly the slices
`tfds.load(split=...)` would give.
"""

from __future__ import annotations

from collections.abc import Mapping


def resolve(spec: str, num_examples: Mapping[str, int]) -> list[tuple[str, int, int]]:
  """Returns [(base_split, start, stop), ...] for `spec`; ValueError if invalid."""
  if not isinstance(spec, str):
    raise TypeError(f"split must be a string like 'train[:90%]', got {spec!r}")
  if spec in num_examples:  # Fast path: no TFDS import for plain names.
    return [(spec, 0, num_examples[spec])]
  from zoo.data.tfds_source import import_tfds  # pylint: disable=g-import-not-at-top
  tfds = import_tfds()
  infos = {name: tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0)
           for name, n in num_examples.items()}
  try:
    instructions = tfds.core.ReadInstruction.from_spec(spec).to_absolute(infos)
  except (ValueError, AssertionError, NotImplementedError) as e:
    raise ValueError(
        f"Bad split {spec!r} (splits: {sorted(num_examples)}): {e}") from e
  ranges = []
  for ins in instructions:
    n = num_examples[ins.splitname]
    start = 0 if ins.from_ is None else ins.from_
    stop = n if ins.to is None else ins.to
    if stop <= start:
      raise ValueError(f"Split {spec!r} selects no examples of {ins.splitname!r} "
                       f"({n} examples): [{start}:{stop}]")
    ranges.append((ins.splitname, start, stop))
  return ranges
