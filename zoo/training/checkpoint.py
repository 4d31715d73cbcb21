"""Training checkpoints: orbax-checkpoint underneath, zoo's integrity
record and config check on top.

A checkpoint is orbax's step directory `step_<N>/` (N in 9 digits) holding
three items: `state` (the TrainState through `StandardSave`: tensorstore
files, nothing pickled), `meta` (JSON: step, epoch position, the unfinished
epoch's running sums, history, config, versions) and `integrity` (JSON: the
sha256 of every state leaf and of the meta). Orbax writes a save under a
temporary name and renames it into place once complete, every process taking
part and the library deciding who writes, so a crash never leaves a
half-written checkpoint visible (on gs:// it writes in place and commits
with a `commit_success.txt`, which zoo also requires); it keeps the newest K.
On top, zoo:
- trusts only real directories that orbax committed with zoo's integrity
  item: a symlink, a file or a foreign directory named like a step is
  ignored with a warning, never followed or deleted;
- checks a checkpoint's stored shapes and dtypes against the model before
  reading any data, then the data against the integrity record (orbax does
  not checksum data), and skips a damaged checkpoint for the previous one;
- never writes below a newer checkpoint it has not found damaged.
Checkpoints of zoo before orbax (`arrays.npz` + `meta.json`) are refused
for resuming with a message; their weights still load (`zoo eval --weights
DIR/checkpoints/step_N/arrays.npz`).

A zoo checkpoint restores with orbax alone, as nested dicts of numpy arrays
(params, model_state, opt_state, step, rng, nonfinite_step, skipped):

    import orbax.checkpoint as ocp
    state = ocp.StandardCheckpointer().restore(
        "DIR/checkpoints/step_000000100/state")
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import resource
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from zoo.errors import ZooError
from zoo.training.workdir import as_path, is_link, rmtree
# The .npz reading and writing live in zoo.npz; re-exported here.
from zoo.npz import (CheckpointError, flatten, read_npz, specs,  # noqa: F401
                     unflatten, write_npz)

log = logging.getLogger("zoo.checkpoint")

def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


class LegacyCheckpointError(ZooError):
  """The newest checkpoint was written by zoo before it used orbax."""


STATE, META_ITEM, INTEGRITY = "state", "meta", "integrity"
_VERIFY_MAX_BYTES = 4 << 30
FORMAT = "zoo-orbax-1"
# What older zoo versions wrote into a step directory.
LEGACY_ARRAYS, LEGACY_META, LEGACY_DIGESTS = "arrays.npz", "meta.json", "sha256.json"


def plain_paths(tree) -> dict[tuple, Any]:
  """{(name, ...): leaf} with attribute, key and index steps alike, so that a
  TrainState and the dicts/lists orbax restores without a target (or its
  metadata tree) give the same paths."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = []
    for k in path:
      for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
          names.append(getattr(k, attr))
          break
      else:
        names.append(str(k))
    out[tuple(names)] = leaf
  return out


def _name(path: tuple) -> str:
  """A plain path as jax.tree_util.keystr writes dict paths: ['a']['b']."""
  return "".join(f"[{k!r}]" for k in path)


def state_digest(tree) -> str:
  """sha256 over every leaf's path, dtype, shape and bytes (in path order)."""
  h = hashlib.sha256()
  for path, leaf in sorted(plain_paths(tree).items(), key=lambda kv: str(kv[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{path}\0{a.dtype.str}\0{a.shape}\0".encode())
    h.update(memoryview(a).cast("B") if a.size else b"")
  return h.hexdigest()


def meta_digest(meta: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _first_line(e: BaseException) -> str:
  text = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {text[:300]}"


def _check_room(directory, nbytes: int) -> None:
  """Raises OSError (ENOSPC, EFBIG) before a save that cannot fit: free
  space or this process's file size limit below the state's size. Failing
  inside orbax works too, but leaves its worker threads' tracebacks.
  (Remote storage has neither to check.)"""
  if not isinstance(directory, Path):
    return
  try:
    free = shutil.disk_usage(directory if directory.exists()
                             else directory.parent).free
  except OSError:
    free = None
  if free is not None and nbytes > free:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                  f"{directory}: {nbytes:,} bytes needed, {free:,} free")
  limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
  if limit != resource.RLIM_INFINITY and nbytes > limit:
    raise OSError(errno.EFBIG, os.strerror(errno.EFBIG),
                  f"{directory}: {nbytes:,} bytes to write, the file size "
                  f"limit is {limit:,}")


@contextlib.contextmanager
def _quiet_orbax():
  """Silences absl's ERROR lines (with tracebacks) from orbax's threads
  while a save runs; the save's own exception still propagates."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


class _ZooStepNames(ocp.step.NameFormat):
  """Orbax's standard `step_<9 digits>` names, restricted to what zoo wrote:
  real directories holding the integrity item. Orbax thus never counts a
  symlink or foreign directory as its latest step (it would refuse to save
  below it, and prune real checkpoints in its favour)."""

  def __init__(self):
    self._std = ocp.step.standard_name_format(step_prefix="step",
                                              step_format_fixed_length=9)

  def build_name(self, step: int) -> str:
    return self._std.build_name(step)

  def find_all(self, base_path):
    return (m for m in self._std.find_all(base_path) if _is_zoo_step(m.path))

  def find_step(self, base_path, step: int):
    metadata = self._std.find_step(base_path, step)
    if not _is_zoo_step(metadata.path):
      raise ValueError(f"{metadata.path} is not a zoo checkpoint")
    return metadata


def _is_zoo_step(path) -> bool:
  """A real directory holding zoo's integrity item; on remote storage also
  one orbax finalized (it writes there in place, then a commit file)."""
  path = as_path(str(path))
  if is_link(path) or not path.is_dir() or not (path / INTEGRITY).is_dir():
    return False
  return isinstance(path, Path) or ocp.step.is_path_finalized(str(path))


def verify_legacy(path: Path) -> dict[str, Any]:
  """The meta of an older zoo's checkpoint directory after checking its
  files against its sha256.json; CheckpointError if they do not match."""
  try:
    digests = json.loads((path / LEGACY_DIGESTS).read_text())
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: no readable integrity record ({e})"
                          ) from None
  if not isinstance(digests, dict):
    raise CheckpointError(f"{path}/{LEGACY_DIGESTS} is not an integrity "
                          "record.")
  for name in (LEGACY_ARRAYS, LEGACY_META):
    if (not (path / name).is_file()
        or _sha256(path / name) != digests.get(name)):
      raise CheckpointError(f"{path}/{name} does not match its sha256: the "
                            "file is damaged or truncated.")
  try:
    meta = json.loads((path / LEGACY_META).read_text())
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}/{LEGACY_META} is not readable JSON: {e}"
                          ) from None
  if not isinstance(meta, dict):
    raise CheckpointError(f"{path}/{LEGACY_META} is not a zoo record.")
  return meta


class CheckpointManager:
  """Saves and restores training states under `directory` (every process
  of a multi-host run constructs one and calls save/restore alike)."""

  def __init__(self, directory, keep: int = 3):
    self.directory = as_path(directory)  # local, or gs://... (see workdir)
    self.keep = max(1, keep)
    # Steps found damaged by restore_latest: the only ones a save may delete
    # although they are newer than the step it writes.
    self.damaged: set[int] = set()
    self._warned: set[str] = set()
    self._orbax = None
    self._records: dict[int, dict[str, Any]] = {}  # step -> integrity record

  @property
  def orbax(self):
    """The orbax CheckpointManager (made on first use: it creates the
    directory)."""
    if self._orbax is None:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=self.keep, create=True, step_name_format=_ZooStepNames(),
          enable_async_checkpointing=False, cleanup_tmp_directories=True)
      where = (os.fspath(self.directory.absolute())
               if isinstance(self.directory, Path) else str(self.directory))
      self._orbax = ocp.CheckpointManager(
          where, options=options,
          item_handlers={STATE: ocp.StandardCheckpointHandler(),
                         META_ITEM: ocp.JsonCheckpointHandler(),
                         INTEGRITY: ocp.JsonCheckpointHandler()})
    return self._orbax

  def close(self) -> None:
    if self._orbax is not None:
      self._orbax.close()
      self._orbax = None

  def steps(self) -> list[int]:
    """Steps of the checkpoints present, oldest first: real directories
    named step_<N> holding a zoo checkpoint (orbax's, or an older zoo's);
    anything else of that name is ignored with a warning, never followed or
    deleted."""
    if not self.directory.is_dir():
      return []
    out = []
    for p in self.directory.iterdir():
      if not (p.name.startswith("step_") and p.name[5:].isdigit()):
        continue
      if _is_zoo_step(p) or (not is_link(p) and self.is_legacy_path(p)):
        out.append(int(p.name[5:]))
      elif p.name not in self._warned:
        self._warned.add(p.name)
        kind = ("a symbolic link" if is_link(p) else
                "a file" if not p.is_dir() else "no integrity record")
        log.warning("ignoring %s: not a checkpoint directory zoo wrote (%s)",
                    p, kind)
    return sorted(out)

  def path(self, step: int):
    return self.directory / f"step_{step:09d}"

  @staticmethod
  def is_legacy_path(path: Path) -> bool:
    return path.is_dir() and (path / LEGACY_ARRAYS).is_file()

  def is_legacy(self, step: int) -> bool:
    """Written by zoo before orbax (arrays.npz + meta.json + sha256.json)."""
    return not _is_zoo_step(self.path(step)) and self.is_legacy_path(
        self.path(step))

  def save(self, step: int, tree, meta: dict[str, Any]) -> Path:
    """Writes checkpoint `step` through orbax (returns when it is committed)
    and prunes old ones. Every process must call it."""
    tree = jax.tree.map(np.asarray, tree)
    empty = [_name(p) for p, x in plain_paths(tree).items() if x.size == 0]
    if empty:  # orbax cannot store them
      raise CheckpointError(
          f"cannot checkpoint zero-size arrays ({', '.join(empty[:3])}): "
          "give them at least one element.")
    _check_room(self.directory, sum(x.nbytes for x in jax.tree.leaves(tree)))
    self._clear_above(step)
    meta = {**meta, "step": step}
    integrity = {"format": FORMAT, "state_sha256": state_digest(tree),
                 "meta_sha256": meta_digest(meta)}
    if step in self.orbax.all_steps():  # the same step again: replace it
      self.orbax.delete(step)
    with _quiet_orbax():  # a failure is reported once, by the caller
      self.orbax.save(step, force=True, args=ocp.args.Composite(**{
          STATE: ocp.args.StandardSave(tree),
          META_ITEM: ocp.args.JsonSave(meta),
          INTEGRITY: ocp.args.JsonSave(integrity)}))
      self.orbax.wait_until_finished()
    return self.path(step)

  def _clear_above(self, step: int) -> None:
    """Deletes checkpoints newer than `step` that restore_latest found
    damaged (the run resumed from before them); refuses to write below a
    newer one not known to be damaged."""
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
      if newer in self.orbax.all_steps():
        self.orbax.delete(newer)
      else:
        try:
          rmtree(self.path(newer))
        except OSError as e:
          log.warning("could not remove %s: %s", self.path(newer), e)
    self.orbax.reload()

  def read_meta(self, step: int) -> dict[str, Any]:
    """Checkpoint `step`'s meta, checked against its integrity record: a
    JSON object for this step, else CheckpointError."""
    if self.is_legacy(step):
      raise self._legacy_error(step)
    path = self.path(step)
    try:
      items = self.orbax.restore(step, args=ocp.args.Composite(**{
          META_ITEM: ocp.args.JsonRestore(),
          INTEGRITY: ocp.args.JsonRestore()}))
      meta, integrity = items[META_ITEM], items[INTEGRITY]
    except Exception as e:  # pylint: disable=broad-except  (any damage)
      raise CheckpointError(f"{path}: meta or integrity record unreadable "
                            f"({_first_line(e)})") from None
    if not isinstance(integrity, dict) or integrity.get("format") != FORMAT:
      raise CheckpointError(f"{path}: no zoo integrity record.")
    if meta_digest(meta) != integrity.get("meta_sha256"):
      raise CheckpointError(f"{path}/{META_ITEM} does not match its sha256: "
                            "the record is damaged.")
    if not isinstance(meta, dict) or meta.get("step") != step:
      raise CheckpointError(f"{path}/{META_ITEM} is not the record of step "
                            f"{step} that zoo writes.")
    self._records[step] = integrity
    return meta

  def _stored(self, step: int) -> dict[tuple, Any]:
    """{plain path: orbax ArrayMetadata} of `step`'s state: shapes and
    dtypes as stored, read before any data."""
    try:
      stored = self.orbax.item_metadata(step)[STATE]
      return plain_paths(getattr(stored, "tree", stored))
    except Exception as e:  # pylint: disable=broad-except  (any damage)
      raise CheckpointError(f"{self.path(step)}/{STATE}: metadata unreadable "
                            f"({_first_line(e)})") from None

  def _restore_state(self, step: int, template=None):
    """`step`'s state (into `template`'s structure, or as orbax restores it
    without one), checked against its integrity record (read_meta first)."""
    try:
      state = self.orbax.restore(step, args=ocp.args.Composite(**{
          STATE: ocp.args.StandardRestore(template)}))[STATE]
    except Exception as e:  # pylint: disable=broad-except  (any damage)
      raise CheckpointError(f"{self.path(step)}/{STATE} unreadable "
                            f"({_first_line(e)})") from None
    if state_digest(state) != self._records[step].get("state_sha256"):
      raise CheckpointError(f"{self.path(step)}/{STATE} does not match its "
                            "sha256: the data is damaged or truncated.")
    return state

  def _check_stored(self, step: int, template) -> None:
    """The stored leaves' paths, shapes and dtypes equal `template`'s; read
    from orbax's metadata, before any data."""
    path = self.path(step)
    got = {p: (tuple(m.shape), np.dtype(m.dtype))
           for p, m in self._stored(step).items()}
    want = {p: (tuple(np.shape(x)), np.asarray(x).dtype)
            for p, x in plain_paths(template).items()}
    if set(got) != set(want):
      missing = sorted(map(_name, set(want) - set(got)))[:3]
      extra = sorted(map(_name, set(got) - set(want)))[:3]
      raise CheckpointError(
          f"{path} does not match the model: missing {missing}, unexpected "
          f"{extra}. Was it saved for another model or config?")
    for p, spec in want.items():
      if got[p] != spec:
        raise CheckpointError(
            f"{path}: {_name(p)} has shape {got[p][0]} dtype "
            f"{got[p][1]}, the model expects shape {spec[0]} dtype {spec[1]}.")

  def restore(self, step: int, template) -> tuple[Any, dict[str, Any]]:
    """Checkpoint `step` in `template`'s structure and its meta, verified."""
    meta = self.read_meta(step)
    return self._load(step, template), meta

  def _load(self, step: int, template):
    """The state of `step` (meta already read), checked before and after
    reading its data."""
    template = jax.tree.map(np.asarray, template)
    self._check_stored(step, template)
    return self._restore_state(step, template)

  def restore_weights(self, step: int, params, model_state,
                      params_key: str = "params"):
    """(params, model_state) of checkpoint `step`, shaped like the given
    templates, without knowing the optimizer: the other leaves are bounded
    by size from the metadata, then the whole state is read and verified.
    `params_key="ema_params"` takes the parameters' moving average."""
    self.read_meta(step)
    path = self.path(step)
    stored = self._stored(step)
    weights = {params_key: params, "model_state": model_state}
    want = {(params_key, *p): x for p, x in plain_paths(params).items()}
    want.update({("model_state", *p): x
                 for p, x in plain_paths(model_state).items()})
    for p, x in want.items():
      m = stored.get(p)
      if m is None or (tuple(m.shape), np.dtype(m.dtype)) != (
          tuple(np.shape(x)), np.asarray(x).dtype):
        raise CheckpointError(
            f"{path}: {_name(p)} is "
            + ("missing" if m is None else
               f"shape {tuple(m.shape)} dtype {m.dtype}")
            + f", the model expects shape {np.shape(x)} dtype "
            f"{np.asarray(x).dtype}. Was it saved for another model?")
    own = sum(np.asarray(x).nbytes for x in want.values())
    rest = sum(int(np.prod(m.shape)) * np.dtype(m.dtype).itemsize
               for p, m in stored.items() if p not in want)
    if rest > 16 * own + (1 << 20):  # optimizers keep a few copies at most
      raise CheckpointError(f"{path}: holds {rest:,} bytes besides the "
                            "weights, far more than any optimizer keeps; "
                            "refused.")
    flat = plain_paths(self._restore_state(step))
    return tuple(
        jax.tree_util.tree_unflatten(
            jax.tree.structure(weights[name]),
            [np.asarray(flat[(name, *p)])
             for p in plain_paths(weights[name])])
        for name in (params_key, "model_state"))

  def verify(self, step: int, template=None) -> None:
    """Raises CheckpointError unless checkpoint `step` reads back whole and
    matches its integrity record (and `template`'s shapes, if given; without
    one, its arrays may total at most `max_bytes`)."""
    if template is not None:
      self.restore(step, template)
      return
    self.read_meta(step)
    size = sum(int(np.prod(m.shape)) * np.dtype(m.dtype).itemsize
               for m in self._stored(step).values())
    if size > _VERIFY_MAX_BYTES:
      raise CheckpointError(f"{self.path(step)}: declares {size:,} bytes of "
                            "arrays; verify it with a template instead.")
    self._restore_state(step)

  def _legacy_error(self, step: int) -> LegacyCheckpointError:
    path = self.path(step)
    return LegacyCheckpointError(
        f"{path} was written by an older zoo (arrays.npz, before orbax "
        "checkpoints): it cannot be resumed. Its weights still load: zoo eval "
        f"NAME --weights {path / LEGACY_ARRAYS}. To train, start over: move "
        f"{self.directory} away or use a new --workdir.")

  def restore_latest(self, template, check_meta=None
                     ) -> tuple[Any, dict[str, Any]] | None:
    """The newest good checkpoint, skipping (with a warning) damaged ones;
    None if there is none. Raises if checkpoints exist but none is good, or
    if the newest is an older zoo's.

    `check_meta(meta)` runs on a verified checkpoint's meta before its
    arrays are read (e.g. to refuse a changed config with its own error,
    rather than a shape mismatch); what it raises propagates.
    """
    steps = self.steps()
    errors = []
    for step in reversed(steps):
      if self.is_legacy(step):
        raise self._legacy_error(step)
      try:
        meta = self.read_meta(step)
        if check_meta is not None:
          check_meta(meta)
        return self._load(step, template), meta
      except CheckpointError as e:
        log.warning("skipping checkpoint: %s", e)
        errors.append(str(e))
        self.damaged.add(step)
    if steps:
      raise CheckpointError(
          f"no usable checkpoint in {self.directory} (" + "; ".join(errors)
          + "). Delete that directory (or use a new --workdir) to start over.")
    return None
