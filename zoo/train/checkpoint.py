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
    # Steps found damaged by restore_latest: the only ones a save may delete
    # although they are newer than the step it writes.
    self.damaged: set[int] = set()
    self._warned: set[str] = set()

  def steps(self) -> list[int]:
    """Steps of the complete checkpoints present, oldest first: only real
    directories named step_<N> (what save writes); a symlink or file of that
    name is ignored with a warning, never followed or deleted."""
    if not self.directory.is_dir():
      return []
    out = []
    for p in self.directory.iterdir():
      if not (p.name.startswith("step_") and p.name[5:].isdigit()):
        continue
      if p.is_symlink() or not p.is_dir():
        if p.name not in self._warned:
          self._warned.add(p.name)
          log.warning("ignoring %s: not a checkpoint directory zoo wrote (%s)",
                      p, "a symbolic link" if p.is_symlink() else "a file")
        continue
      out.append(int(p.name[5:]))
    return sorted(out)

  def path(self, step: int) -> Path:
    return self.directory / f"step_{step:09d}"

  def _remove_leftovers(self, step: int) -> None:
    """Removes what a killed save left behind (the caller owns the directory:
    see zoo.train.workdir), and checkpoints newer than `step` that
    restore_latest found damaged: the run resumed from before them and must
    not find them again. A newer checkpoint not known to be damaged is never
    deleted: saving below it is refused instead."""
    for p in self.directory.iterdir():
      if p.name.startswith(_TMP_PREFIX) and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    for newer in self.steps():
      if newer <= step:
        continue
      if newer not in self.damaged:
        raise CheckpointError(
            f"{self.path(newer)} is newer than the step being saved ({step}) "
            "and was not found damaged; refusing to write below it. Was it "
            "copied in from another run? Move it away and re-run.")
      log.warning("removing damaged checkpoint %s: the run resumed from "
                  "before it (step %d)", self.path(newer), step)
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
    return self._load(step, template)

  def _load(self, step: int, template) -> tuple[Any, dict[str, Any]]:
    """Checkpoint `step` (already verified) in `template`'s structure."""
    path = self.path(step)
    arrays = read_npz(path / ARRAYS, specs(template))
    return unflatten(template, arrays, str(path)), self.read_meta(step)

  def read_meta(self, step: int) -> dict[str, Any]:
    """Checkpoint `step`'s meta.json (call verify first): a JSON object whose
    step is `step`, else CheckpointError."""
    path = self.path(step)
    try:
      meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as e:
      raise CheckpointError(f"{path}/{META} is not readable JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("step") != step:
      raise CheckpointError(f"{path}/{META} is not the record of step {step} "
                            "that zoo writes.")
    return meta

  def restore_latest(self, template, check_meta=None
                     ) -> tuple[Any, dict[str, Any]] | None:
    """The newest good checkpoint, skipping (with a warning) damaged ones;
    None if there is none. Raises if checkpoints exist but none is good.

    `check_meta(meta)` runs on a verified checkpoint's meta before its arrays
    are read (e.g. to refuse a changed config with its own error, rather than
    a shape mismatch); what it raises propagates.
    """
    steps = self.steps()
    errors = []
    for step in reversed(steps):
      try:
        self.verify(step)
        if check_meta is not None:
          check_meta(self.read_meta(step))
        return self._load(step, template)
      except CheckpointError as e:
        log.warning("skipping checkpoint: %s", e)
        errors.append(str(e))
        self.damaged.add(step)
    if steps:
      raise CheckpointError(
          f"no usable checkpoint in {self.directory} (" + "; ".join(errors)
          + "). Delete that directory (or use a new --workdir) to start over.")
    return None
