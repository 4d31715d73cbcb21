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
- checks a checkpoint's stored shapes and dtypes against the model before
  reading any data, then the data against the integrity record (orbax does
  not checksum data);
- moves a checkpoint that fails those checks (or that orbax cannot
  decode) twice, a delay apart, aside to `damaged_step_<N>` (a name orbax
  ignores) with a warning, and resumes from the one before; it deletes
  nothing but what orbax prunes;
- retries a read that fails with an I/O error (READ_RETRY_DELAYS), then
  stops with one line, changing nothing: a storage fault never sends a run
  back to an older step;
- refuses a symlink named like a step, and a file or foreign directory so
  named that is newer than the step resumed from; never writes below a
  newer step.
Saves are synchronous: orbax's background save, measured, reports a write
fault (a file over the size limit) in some runs as `RuntimeError: Event
loop is closed`, losing the cause that zoo's one-line error must name.

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
import re
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from zoo.errors import ZooError
from zoo.training.workdir import (WorkdirError, as_path, fs_errors, is_link,
                                  move_tree, remote_errors)
from zoo.errors import CheckpointError  # noqa: F401  (re-exported)

log = logging.getLogger("zoo.checkpoint")

STATE, META_ITEM, INTEGRITY = "state", "meta", "integrity"
_VERIFY_MAX_BYTES = 4 << 30
FORMAT = "zoo-orbax-1"
# Where zoo moves damaged checkpoints (a name orbax's steps never match), and
# the checkpoints of a run that started over (next to the directory).
DAMAGED, PREVIOUS = "damaged_", "previous_"
# Seconds before each retry of a read that failed with an I/O error.
READ_RETRY_DELAYS = (0.5, 1.0)
# Tensorstore's errors are ValueErrors "STATUS: ..."; these are I/O faults.
_IO_STATUS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED",
              "RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "UNAUTHENTICATED")
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)  # damage, not I/O
# Storage clients whose own exceptions are network faults.
_CLIENTS = ("aiohttp", "gcsfs", "google.auth", "google.api_core", "requests",
            "urllib3")
_LINK = "a symbolic link"


class UnreadableCheckpointError(WorkdirError):
  """A checkpoint could not be read for an I/O error that outlasted the
  retries; nothing was changed."""


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
  """The exception in one line of at most ~300 characters: without the
  request tensorstore appends, and keeping a long message's end, where
  tensorstore puts the cause."""
  text = (str(e).strip().splitlines() or [""])[0]
  text = text.split(" [tensorstore_spec")[0]
  if len(text) > 300:
    text = f"{text[:60]} ... {text[-230:]}"
  return f"{type(e).__name__}: {text}"


def _is_io_error(e: BaseException) -> bool:
  """An I/O fault, worth a retry, rather than data that cannot be decoded:
  an OSError other than a missing file, a storage client's network error,
  or a tensorstore error with an I/O status or an OS error other than ENOENT
  (measured: a failed local read is `UNKNOWN: ... [os_error_code='40']`, an
  unreachable GCS `ABORTED: All N retry attempts failed: CURL error ...`)."""
  if isinstance(e, OSError):
    return e.errno not in _MISSING and not isinstance(
        e, (FileNotFoundError, NotADirectoryError, IsADirectoryError))
  if any(c.__module__.startswith(_CLIENTS) for c in type(e).__mro__):
    return True
  text = str(e)
  os_error = re.search(r"\[os_error_code='(\d+)'\]", text)
  if os_error:
    return int(os_error.group(1)) not in _MISSING
  return isinstance(e, ValueError) and (text.startswith(_IO_STATUS)
                                        or "[curl_code=" in text)


def _read(what: str, fn):
  """fn(), retried after an I/O error (READ_RETRY_DELAYS); one that lasts
  raises UnreadableCheckpointError, data orbax cannot decode (a ValueError,
  KeyError, TypeError or missing file) CheckpointError naming `what`."""
  for delay in (*READ_RETRY_DELAYS, None):
    try:
      return fn()
    except ZooError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (classified here)
      if not _is_io_error(e):
        if isinstance(e, (ValueError, KeyError, TypeError, OSError)):
          raise CheckpointError(f"{what} cannot be decoded ({_first_line(e)})"
                                ) from None
        raise
      if delay is None:
        raise UnreadableCheckpointError(
            f"could not read {what}: {_first_line(e)} (tried "
            f"{len(READ_RETRY_DELAYS) + 1} times). Nothing was changed: "
            "re-run when the storage is back.") from e
      log.info("reading %s failed (%s); retrying in %g s", what,
               _first_line(e), delay)
      time.sleep(delay)


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


def _on_process_0(what: str, fn) -> None:
  """fn() on process 0 only; every process goes on once it is done."""
  if jax.process_index() == 0:
    fn()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"zoo: {what}")


class _ZooStepNames(ocp.step.NameFormat):
  """Orbax's standard `step_<9 digits>` names, restricted to checkpoints
  (`_what` says ""). Orbax thus never counts a symlink or foreign directory
  as its latest step (it would refuse to save below it, and prune real
  checkpoints in its favour)."""

  def __init__(self):
    self._std = ocp.step.standard_name_format(step_prefix="step",
                                              step_format_fixed_length=9)

  def build_name(self, step: int) -> str:
    return self._std.build_name(step)

  def find_all(self, base_path):
    return (m for m in self._std.find_all(base_path) if not _what(m.path))

  def find_step(self, base_path, step: int):
    metadata = self._std.find_step(base_path, step)
    if _what(metadata.path):
      raise ValueError(f"{metadata.path} is not a zoo checkpoint")
    return metadata


def _what(path) -> str:
  """"" for a checkpoint: a real directory that orbax committed, holding an
  item of zoo's; else what stands there. Read from a listing, which raises
  on a storage fault (exists() on gs:// answers False)."""
  path = as_path(str(path))
  if is_link(path):
    return _LINK
  if not path.is_dir():
    return "a file"
  names = {p.name for p in path.iterdir()}
  if not isinstance(path, Path) and "commit_success.txt" not in names:
    return "an unfinished save"  # orbax's, on gs://: not a step yet
  if not names & {INTEGRITY, META_ITEM, STATE}:
    return "a directory zoo did not write"
  return ""


class CheckpointManager:
  """Saves and restores training states under `directory` (every process
  of a multi-host run constructs one and calls save/restore alike)."""

  def __init__(self, directory, keep: int = 3):
    self.directory = as_path(directory)  # local, or gs://... (see workdir)
    self.keep = max(1, keep)
    self._orbax = None
    self._records: dict[int, dict[str, Any]] = {}  # step -> integrity record

  @property
  def orbax(self):
    """The orbax CheckpointManager (made on first use: it creates the
    directory)."""
    if self._orbax is None:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=self.keep, create=True, step_name_format=_ZooStepNames(),
          enable_async_checkpointing=False,  # see the module docstring
          # On gs:// orbax takes a step without its commit file for a
          # leftover and deletes it, and fsspec reports a storage fault as
          # no file: zoo ignores an unfinished save there instead (orbax
          # writes over it when that step is saved again).
          cleanup_tmp_directories=isinstance(self.directory, Path))
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
      orbax, self._orbax = self._orbax, None
      with _quiet_orbax(), contextlib.suppress(Exception):
        orbax.close()  # it raises a failed save again: reported already

  def _scan(self) -> tuple[list[int], dict[int, str]]:
    """(steps of the checkpoints, oldest first; {step: what} of anything
    else named like a step), read with retries."""
    def scan():
      steps, others = [], {}
      if not self.directory.is_dir():
        return steps, others
      for p in self.directory.iterdir():
        if not (p.name[:5] == "step_" and p.name[5:].isdigit()
                and p.name == self.path(int(p.name[5:])).name):
          continue
        what = _what(p)
        if not what:
          steps.append(int(p.name[5:]))
        elif what != "an unfinished save":
          others[int(p.name[5:])] = what
      return sorted(steps), others
    return _read(f"the checkpoints in {self.directory}", scan)

  def steps(self) -> list[int]:
    """Steps of the checkpoints present, oldest first: real directories
    named step_<N> that orbax committed with zoo's items."""
    return self._scan()[0]

  def path(self, step: int):
    return self.directory / f"step_{step:09d}"

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
    steps, others = self._scan()
    newer = [s for s in (*steps, *others) if s > step]
    if newer:
      raise CheckpointError(
          f"{self.path(max(newer))} is newer than the step being saved "
          f"({step}); refusing to write below it. Was it copied in from "
          "another run? Move it away and re-run.")
    meta = {**meta, "step": step}
    integrity = {"format": FORMAT, "state_sha256": state_digest(tree),
                 "meta_sha256": meta_digest(meta)}
    if step in steps:  # the same step again: replace it
      self.orbax.delete(step)
    with _quiet_orbax():  # a failure is reported once, by the caller
      self.orbax.save(step, force=True, args=ocp.args.Composite(**{
          STATE: ocp.args.StandardSave(tree),
          META_ITEM: ocp.args.JsonSave(meta),
          INTEGRITY: ocp.args.JsonSave(integrity)}))
      self.orbax.wait_until_finished()
    return self.path(step)

  def read_meta(self, step: int) -> dict[str, Any]:
    """Checkpoint `step`'s meta, checked against its integrity record: a
    JSON object for this step, else CheckpointError."""
    path = self.path(step)
    if INTEGRITY not in _read(f"checkpoint {path}",
                              lambda: {p.name for p in path.iterdir()}):
      raise CheckpointError(f"{path}: no zoo integrity record.")
    items = _read(f"checkpoint {path} (meta)", lambda: self.orbax.restore(
        step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore(),
                                         INTEGRITY: ocp.args.JsonRestore()})))
    meta, integrity = items[META_ITEM], items[INTEGRITY]
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
    stored = _read(f"checkpoint {self.path(step)} (state metadata)",
                   lambda: self.orbax.item_metadata(step)[STATE])
    return plain_paths(getattr(stored, "tree", stored))

  def _restore_state(self, step: int, template=None):
    """`step`'s state (into `template`'s structure, or as orbax restores it
    without one), checked against its integrity record (read_meta first)."""
    state = _read(f"checkpoint {self.path(step)} (state)",
                  lambda: self.orbax.restore(step, args=ocp.args.Composite(**{
                      STATE: ocp.args.StandardRestore(template)}))[STATE])
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

  def restore(self, step: int, template, check_meta=None
              ) -> tuple[Any, dict[str, Any]]:
    """Checkpoint `step` in `template`'s structure and its meta, verified
    (`check_meta(meta)` before any array is read)."""
    meta = self.read_meta(step)
    if check_meta is not None:
      check_meta(meta)
    template = jax.tree.map(np.asarray, template)
    self._check_stored(step, template)
    return self._restore_state(step, template), meta

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

  def restore_latest(self, template, check_meta=None
                     ) -> tuple[Any, dict[str, Any]] | None:
    """The newest good checkpoint (state in `template`'s structure, meta),
    or None if there is none; damaged ones above it are moved aside with a
    warning. Raises, changing nothing, if all are damaged, if a symlink is
    named like a step, or a file or foreign directory so named is newer.

    `check_meta(meta)` runs on a verified checkpoint's meta before its
    arrays are read (e.g. to refuse a changed config with its own error,
    rather than a shape mismatch); what it raises propagates.
    """
    steps, others = self._scan()
    for step, what in others.items():
      if what == _LINK:
        raise CheckpointError(
            f"{self.path(step)} is a symbolic link named like a checkpoint: "
            "zoo neither follows nor replaces it. Replace it by a copy of "
            "the checkpoint it points to, or remove it, and re-run.")
    found, damaged = None, {}
    for step in reversed(steps):
      try:
        found = step, self._verified(step, template, check_meta)
        break
      except CheckpointError as e:
        damaged[step] = str(e)
    newest = found[0] if found else -1
    for step, what in sorted(others.items()):
      if step > newest:
        raise CheckpointError(
            f"{self.path(step)} is {what}, named like a checkpoint newer "
            + (f"than step {newest}, the newest good one" if found else
               "than any good one")
            + ": zoo does not train below it. Move it away and re-run.")
      log.warning("ignoring %s: %s, not a checkpoint zoo wrote",
                  self.path(step), what)
    _agree(f"the checkpoints in {self.directory}",
           [newest, *sorted(damaged)])
    if found is None:
      if damaged:
        raise CheckpointError(
            f"all {len(damaged)} checkpoint(s) in {self.directory} failed "
            f"their integrity check ({'; '.join(damaged.values())}); nothing "
            "was changed. To start over, run with --fresh (resume=False), "
            "which moves them aside to "
            f"{self.directory.parent / (PREVIOUS + self.directory.name)}.")
      return None
    if damaged:
      _on_process_0("damaged checkpoints moved aside",
                    lambda: self._move_damaged(damaged))
      self.orbax.reload()
    return found[1]

  def _verified(self, step: int, template, check_meta):
    """(state, meta) of `step`, read again after a delay before it counts as
    damaged: orbax and fsspec answer some storage faults as a missing file."""
    for delay in (READ_RETRY_DELAYS[0], None):
      try:
        return self.restore(step, template, check_meta)
      except CheckpointError:
        if delay is None:
          raise
        time.sleep(delay)

  def _move_damaged(self, damaged: dict[int, str]) -> None:
    for step, why in damaged.items():
      src = self.path(step)
      dest = _free(self.directory / f"{DAMAGED}{src.name}")
      with _storage_errors(f"move the damaged checkpoint {src} aside", src):
        move_tree(src, dest)
      log.warning("moved the damaged checkpoint %s aside to %s: %s", src,
                  dest.name, why)

  def move_all_aside(self) -> None:
    """Renames the directory to `previous_<name>` (or -2, -3, ...) next to
    it: resume=False starts over, losing nothing. Process 0 moves, the
    others wait."""
    def move():
      with _storage_errors(f"move {self.directory} aside", self.directory):
        if self.directory.is_dir() and any(self.directory.iterdir()):
          dest = _free(self.directory.parent
                       / f"{PREVIOUS}{self.directory.name}")
          move_tree(self.directory, dest)
          log.warning("starting over: moved %s aside to %s", self.directory,
                      dest)
    self.close()  # orbax is made again, on a new directory
    _on_process_0("checkpoints moved aside", move)


def _free(path):
  """`path`, or path-2, path-3, ...: the first name that is free."""
  dest, n = path, 1
  while dest.exists() or is_link(dest):
    n += 1
    dest = path.parent / f"{path.name}-{n}"
  return dest


@contextlib.contextmanager
def _storage_errors(what: str, path):
  """A filesystem fault (or any remote client's error) as one WorkdirError."""
  with remote_errors(what, not isinstance(path, Path)), fs_errors(what):
    yield


def _agree(what: str, row: list[int]) -> None:
  """With several processes: raises on every one, before any moves, unless
  all found the same `row` (the step resumed, the damaged ones)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    digest = int(hashlib.sha256(repr(row).encode()).hexdigest()[:15], 16)
    seen = np.asarray(multihost_utils.process_allgather(
        np.array([row[0], digest], np.int64))).reshape(-1, 2).tolist()
    if len({tuple(r) for r in seen}) > 1:
      raise CheckpointError(
          f"the processes found different good checkpoints in {what} "
          f"(steps {', '.join(str(r[0]) for r in seen)}, by process); "
          "nothing was changed. Their storage must be shared and consistent.")
