"""Checkpoints: pickle-free, atomic, verified.

A checkpoint is a directory `step_<N>/` holding `arrays.npz` (every leaf of
the state by its tree path, saved with numpy and read with
allow_pickle=False), `meta.json` (step, epoch position, config, versions) and
`sha256.json` (digest of both files). It is written under a temporary name
and renamed into place, so a crash never leaves a half-written checkpoint
visible (leftover temporary directories of a killed save are removed by the
next save); the newest K are kept. Loading checks the digests and the tree
structure, shapes and dtypes against the model before using anything.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

# The .npz reading and writing live in zoo.npz; re-exported here.
from zoo.npz import CheckpointError, read_npz, write_npz  # noqa: F401

log = logging.getLogger("zoo.checkpoint")

ARRAYS, META, DIGESTS = "arrays.npz", "meta.json", "sha256.json"
_TMP_PREFIX = ".tmp_step_"


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def flatten(tree) -> dict[str, np.ndarray]:
  """{tree path: numpy leaf} for any pytree of arrays."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): np.asarray(leaf) for p, leaf in flat}


def specs(tree) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{tree path: (shape, dtype)} of `tree`'s leaves, keyed like `flatten`:
  what read_npz checks each member's header against before reading it."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  out = {}
  for p, leaf in flat:
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
      leaf = np.asarray(leaf)
    out[jax.tree_util.keystr(p)] = (tuple(leaf.shape), np.dtype(leaf.dtype))
  return out


def unflatten(template, arrays: dict[str, np.ndarray], what: str):
  """Rebuilds `template`'s structure from `arrays`, checking every path,
  shape and dtype; raises CheckpointError naming the first mismatch."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(template)
  expected = {jax.tree_util.keystr(p) for p, _ in flat}
  missing = sorted(expected - set(arrays))
  extra = sorted(set(arrays) - expected)
  if missing or extra:
    raise CheckpointError(
        f"{what} does not match the model: missing {missing[:5]}, "
        f"unexpected {extra[:5]}. Was it saved for another model or config?")
  leaves = []
  for path, leaf in flat:
    key = jax.tree_util.keystr(path)
    got = arrays[key]
    want = np.asarray(leaf)
    if got.shape != want.shape or got.dtype != want.dtype:
      raise CheckpointError(
          f"{what}: {key} has shape {got.shape} dtype {got.dtype}, the model "
          f"expects shape {want.shape} dtype {want.dtype}.")
    leaves.append(got)
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _fsync_dir(path: Path) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


class CheckpointManager:
  """Saves and restores training states under `directory`."""

  def __init__(self, directory: str | Path, keep: int = 3):
    self.directory = Path(directory)
    self.keep = max(1, keep)

  def steps(self) -> list[int]:
    """Steps of the complete checkpoints present, oldest first."""
    if not self.directory.is_dir():
      return []
    out = []
    for p in self.directory.iterdir():
      if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit():
        out.append(int(p.name[5:]))
    return sorted(out)

  def path(self, step: int) -> Path:
    return self.directory / f"step_{step:09d}"

  def _remove_leftovers(self, step: int) -> None:
    """Removes what a killed save left behind, and checkpoints newer than
    `step`: a run saving `step` resumed from before them because they were
    damaged, and must not find them again (nor keep them over good ones)."""
    for p in self.directory.iterdir():
      if p.name.startswith(_TMP_PREFIX):
        shutil.rmtree(p, ignore_errors=True)
    for newer in self.steps():
      if newer > step:
        log.warning("removing checkpoint %s: it is newer than the step being "
                    "saved (%d), so the run resumed from before it",
                    self.path(newer), step)
        shutil.rmtree(self.path(newer), ignore_errors=True)

  def save(self, step: int, tree, meta: dict[str, Any]) -> Path:
    """Atomically writes checkpoint `step` and prunes old ones."""
    self.directory.mkdir(parents=True, exist_ok=True)
    self._remove_leftovers(step)
    final = self.path(step)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{step}_",
                                dir=self.directory))
    try:
      write_npz(tmp / ARRAYS, flatten(tree))
      (tmp / META).write_text(json.dumps({**meta, "step": step}, indent=1,
                                         sort_keys=True))
      digests = {name: _sha256(tmp / name) for name in (ARRAYS, META)}
      (tmp / DIGESTS).write_text(json.dumps(digests, indent=1))
      for name in (ARRAYS, META, DIGESTS):
        with (tmp / name).open("rb") as f:
          os.fsync(f.fileno())
      old = None
      if final.exists():  # the same step again: move the old one aside first
        old = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{step}_old_",
                                    dir=self.directory))
        os.replace(final, old / "ckpt")
      os.replace(tmp, final)
      _fsync_dir(self.directory)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
    for old in self.steps()[:-self.keep]:
      shutil.rmtree(self.path(old), ignore_errors=True)
    return final

  def verify(self, step: int) -> None:
    """Raises CheckpointError unless checkpoint `step` matches its digests."""
    path = self.path(step)
    try:
      digests = json.loads((path / DIGESTS).read_text())
    except (OSError, ValueError) as e:
      raise CheckpointError(f"{path}: no readable integrity record ({e})") from None
    if not isinstance(digests, dict):
      raise CheckpointError(f"{path}/{DIGESTS} is not an integrity record.")
    for name in (ARRAYS, META):
      if not (path / name).is_file() or _sha256(path / name) != digests.get(name):
        raise CheckpointError(f"{path}/{name} does not match its sha256: "
                              "the file is damaged or truncated.")

  def restore(self, step: int, template) -> tuple[Any, dict[str, Any]]:
    """Loads checkpoint `step` into `template`'s structure, verified."""
    self.verify(step)
    path = self.path(step)
    arrays = read_npz(path / ARRAYS, specs(template))
    try:
      meta = json.loads((path / META).read_text())
    except ValueError as e:
      raise CheckpointError(f"{path}/{META} is not valid JSON: {e}") from None
    return unflatten(template, arrays, str(path)), meta

  def restore_latest(self, template) -> tuple[Any, dict[str, Any]] | None:
    """The newest good checkpoint, skipping (with a warning) damaged ones;
    None if there is none. Raises if checkpoints exist but none is good."""
    steps = self.steps()
    errors = []
    for step in reversed(steps):
      try:
        return self.restore(step, template)
      except CheckpointError as e:
        log.warning("skipping checkpoint: %s", e)
        errors.append(str(e))
    if steps:
      raise CheckpointError(
          f"no usable checkpoint in {self.directory} (" + "; ".join(errors)
          + "). Delete that directory (or use a new --workdir) to start over.")
    return None
