"""A run's working directory: owned by one run at a time, written safely.

A workdir is a local directory or a URI that etils.epath and orbax accept
(gs://bucket/run, s3://...; `as_path`).

Local: `Workdir` holds an exclusive `fcntl.flock` on `.zoo-lock-p<process>`
for the whole run, so a second run launched on a busy workdir refuses at
once, naming the holder, and touches nothing of the first. The kernel drops
the lock when its process dies, so a crashed run never blocks the next one;
its leftover holder record is recognised and reported.

Remote (object storage has no locks): a lease, `.zoo-lease-p<process>`,
holding a random token, renewed every LEASE_SECONDS / 4 by a thread and read
back after writing; a fresh lease of another run refuses the start, a stale
one (its run killed) is taken over after LEASE_SECONDS, and a run that finds
its lease taken stops before its next checkpoint (`ensure_held`).

Every write goes through `write_text` / `write_bytes`, which are atomic
(local: temporary file + rename; remote: one object upload, visible only
once complete) and turn filesystem faults (no space, read-only, a file where
a directory belongs) into one-line `WorkdirError`s.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

from zoo.errors import ZooError

log = logging.getLogger("zoo.train")

LOCK_PREFIX = ".zoo-lock-p"
LEASE_PREFIX = ".zoo-lease-p"
# How long a remote run's lease stays valid without renewal (ZOO_LEASE_SECONDS
# overrides it): a killed run's workdir is free again after this long.
LEASE_SECONDS = 60.0


def is_remote(path) -> bool:
  """True for a URI (gs://bucket/dir, s3://...), False for a local path."""
  return "://" in str(path)


def as_path(path):
  """A local `pathlib.Path`, or an `etils.epath.Path` for a URI (the paths
  orbax itself takes: gs://, s3://, ... through TensorFlow's gfile or
  fsspec)."""
  if is_remote(path):
    from etils import epath
    scheme = str(path).split("://", 1)[0]
    try:
      remote = epath.Path(str(path))
    except (KeyError, NotImplementedError):  # epath's words for "unknown"
      raise WorkdirError(
          f"{path}: no storage is known for {scheme}://; give a local path "
          "or a URI etils.epath reads (gs://, s3://, az://, hf://).") from None
    _no_listing_cache(scheme)
    return remote
  return Path(path)


def _no_listing_cache(scheme: str) -> None:
  """fsspec filesystems (gcsfs, s3fs) cache directory listings per process,
  so one process would miss a checkpoint or marker another just wrote;
  zoo turns the cache off for the scheme unless fsspec's config sets it."""
  try:
    import fsspec.config
  except ImportError:  # then epath reaches the scheme through TensorFlow
    return
  fsspec.config.conf.setdefault(scheme, {}).setdefault(
      "use_listings_cache", False)


def is_link(path) -> bool:
  """A local symbolic link (object storage has none)."""
  return isinstance(path, Path) and path.is_symlink()


def rmtree(path) -> None:
  """Deletes a directory tree, local or remote."""
  if isinstance(path, Path):
    import shutil
    shutil.rmtree(path)
  else:
    path.rmtree()


def move_tree(src, dest) -> None:
  """Renames the directory `src` to `dest` (not existing). Local: one
  rename. Remote, where a rename is a copy and a delete: every object is
  copied, orbax's commit_success.txt files last, then the source deleted,
  those first, so that a crash leaves a committed source or a committed
  copy whole (orbax drops an uncommitted directory)."""
  if isinstance(src, Path):
    os.rename(src, dest)
    return

  def files(path, prefix=""):
    for child in path.iterdir():
      if child.is_dir():
        yield from files(child, f"{prefix}{child.name}/")
      else:
        yield prefix + child.name
  names = sorted(files(src), key=lambda n: n.endswith("commit_success.txt"))
  for name in names:
    (src / name).copy(dest / name)
  for name in reversed(names):
    if name.endswith("commit_success.txt"):
      (src / name).unlink()
  rmtree(src)


def write_atomic(path, data: bytes) -> None:
  """Replaces the file `path` with `data`, never leaving it half-written:
  local, through a temporary file and a rename; remote, as one object
  upload (visible only once complete)."""
  if not isinstance(path, Path):
    path.write_bytes(data)
    return
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    tmp.write_bytes(data)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


class WorkdirError(ZooError):
  """The workdir cannot be used: busy, not a directory, not writable, full."""


class WorkdirBusyError(WorkdirError):
  """Another zoo run holds the workdir."""


# What usually fixes a filesystem fault, by errno.
_FS_HINTS = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space (disk quota exceeded)",
    errno.EROFS: "the filesystem is read-only: use a writable --workdir",
    errno.EACCES: "fix the permissions or use another --workdir",
    errno.EPERM: "fix the permissions or use another --workdir",
    errno.ENOTDIR: "a file stands where a directory belongs: move it away or "
                   "use another --workdir",
    errno.EISDIR: "a directory stands where a file belongs: move it away or "
                  "use another --workdir",
    errno.EEXIST: "move the existing file away or use another --workdir",
    errno.EFBIG: "raise the file size limit (ulimit -f) or use another "
                 "--workdir",
}


def describe_os_error(e: OSError) -> str:
  """One line for a filesystem fault, with what usually fixes it."""
  hint = _FS_HINTS.get(e.errno, "check the filesystem")
  where = f" ({e.filename})" if e.filename else ""
  return f"{e.strerror or e}{where}; {hint}"


@contextlib.contextmanager
def fs_errors(what: str, after: str = ""):
  """Re-raises an OSError inside as a one-line WorkdirError: `what` failed,
  the fault and its fix, then `after` (e.g. which checkpoint is intact)."""
  try:
    yield
  except WorkdirError:
    raise
  except OSError as e:
    raise WorkdirError(f"could not {what}: {describe_os_error(e)}"
                       + (f". {after}" if after else ".")) from e


class Workdir:
  """The directory of one run, held for as long as the `with` block runs."""

  def __init__(self, path: str | os.PathLike, process_index: int = 0):
    self.path = as_path(path)
    self.remote = is_remote(path)
    self.lock_path = self.path / f"{LOCK_PREFIX}{process_index}"
    self._fd: int | None = None
    self._lease: _Lease | None = None
    if self.remote:
      self._lease = _Lease(self.path / f"{LEASE_PREFIX}{process_index}")

  def __enter__(self) -> "Workdir":
    with remote_errors(f"open the workdir {self.path}", self.remote):
      if self.path.exists() and not self.path.is_dir():
        raise WorkdirError(f"--workdir {self.path} is a file, not a "
                           "directory: name a directory (it is created if "
                           "missing).")
      with fs_errors(f"create the workdir {self.path}"):
        self.path.mkdir(parents=True, exist_ok=True)
      for child in ("checkpoints",):
        if (self.path / child).exists() and not (self.path / child).is_dir():
          raise WorkdirError(
              f"{self.path / child} is a file, but zoo keeps its checkpoints "
              "in a directory of that name: move the file away or use "
              "another --workdir.")
      if self._lease is not None:
        self._lease.acquire(_holder_record())
        return self
    self._lock()
    return self

  def _lock(self) -> None:
    with fs_errors(f"lock the workdir {self.path}"):
      fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _read_holder(fd)
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise WorkdirBusyError(
            f"{self.path} is in use by another zoo run ({holder}); wait for "
            "it to finish, stop it, or use another --workdir.") from None
      raise WorkdirError(f"could not lock the workdir {self.path}: "
                         f"{describe_os_error(e)}.") from e
    previous = _read_holder(fd)
    if previous != "holder unknown":
      log.warning("%s: the previous run (%s) ended without releasing it "
                  "(killed?); taking over and resuming from its last good "
                  "checkpoint.", self.path, previous)
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(_holder_record()).encode(), 0)
    except OSError as e:  # read-only or full: the lock itself still holds
      os.close(fd)
      raise WorkdirError(f"could not write to the workdir {self.path}: "
                         f"{describe_os_error(e)}.") from e
    self._fd = fd

  def __exit__(self, *exc) -> None:
    if self._lease is not None:
      self._lease.release()
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)  # empty = released cleanly
    except OSError:
      pass
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def ensure_held(self) -> None:
    """Raises WorkdirBusyError if another run took this run's lease (remote
    workdirs: this run stalled past its lease); a no-op for local ones,
    whose lock cannot be taken while the process lives."""
    if self._lease is not None:
      self._lease.ensure_held()

  def write_bytes(self, name: str, data: bytes, after: str = ""):
    """Atomically replaces `name` in the workdir with `data`."""
    path = self.path / name
    with remote_errors(f"write {path}", self.remote, after), \
        fs_errors(f"write {path}", after):
      write_atomic(path, data)
    return path

  def write_text(self, name: str, text: str, after: str = ""):
    """Atomically replaces `name` in the workdir with `text`."""
    return self.write_bytes(name, text.encode(), after)

  def write_json(self, name: str, obj, after: str = ""):
    return self.write_text(
        name, json.dumps(obj, indent=1, sort_keys=True, default=str), after)


@contextlib.contextmanager
def remote_errors(what: str, remote: bool, after: str = ""):
  """For a remote workdir, re-raises whatever its client raises
  (authentication, HTTP, an unreachable host, a missing bucket: its
  network errors are OSErrors without an errno) as one WorkdirError."""
  if not remote:
    yield
    return
  try:
    yield
  except ZooError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (any client's error)
    if isinstance(e, OSError) and e.errno in _FS_HINTS:
      cause = describe_os_error(e)
    else:
      line = (str(e).strip().splitlines() or [""])[0][:300]
      cause = (f"{type(e).__name__}: {line}; check the URI, your credentials "
               "and the network")
    raise WorkdirError(f"could not {what}: {cause}"
                       + (f". {after}" if after else ".")) from e


def _holder_record() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "since": datetime.datetime.now().isoformat(timespec="seconds"),
          "command": " ".join(sys.argv)[:500]}


def lease_seconds() -> float:
  """LEASE_SECONDS, or ZOO_LEASE_SECONDS from the environment."""
  raw = os.environ.get("ZOO_LEASE_SECONDS", "")
  try:
    value = float(raw) if raw else LEASE_SECONDS
  except ValueError:
    raise WorkdirError(f"ZOO_LEASE_SECONDS={raw!r} is not a number of "
                       "seconds.") from None
  if not 0 < value < float("inf"):  # NaN fails both
    raise WorkdirError(f"ZOO_LEASE_SECONDS={raw!r} must be a positive number "
                       "of seconds.")
  return value


class _Lease:
  """A remote workdir's ownership: a record (token, holder, renewal time)
  that this run writes, reads back, and renews from a daemon thread.

  Object storage has no lock or exclusive create common to every scheme, so
  two runs starting within the read-back delay of each other could in
  principle both proceed; the read-back makes that need two starts within
  about a second. Hosts' clocks must agree to well within the lease time."""

  SETTLE = 1.0  # seconds between writing the record and reading it back

  def __init__(self, path):
    self.path = path
    self.token = secrets.token_hex(16)
    self.seconds = lease_seconds()
    self.lost: str | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._record: dict = {}

  def _read(self) -> dict | None:
    try:
      record = json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except ValueError:
      return {}
    return record if isinstance(record, dict) else {}

  def _write(self) -> None:
    self._record["renewed"] = time.time()
    write_atomic(self.path, json.dumps(self._record).encode())

  def acquire(self, holder: dict) -> None:
    other = self._read()
    now = time.time()
    if other and other.get("token") and not other.get("released"):
      age = now - _renewed(other)
      if age < self.seconds:
        raise WorkdirBusyError(
            f"{self.path.parent} is in use by another zoo run "
            f"({_describe(other)}; lease renewed {age:.0f}s ago); wait for "
            "it to finish, stop it, or use another --workdir. If that run "
            f"is dead, its lease expires {self.seconds - age:.0f}s from now "
            f"(or delete {self.path}).")
      log.warning("%s: the previous run (%s) ended without releasing it "
                  "(killed?); taking over and resuming from its last good "
                  "checkpoint.", self.path.parent, _describe(other))
    self._record = {**holder, "token": self.token}
    with fs_errors(f"write to the workdir {self.path.parent}"):
      self._write()
    time.sleep(self.SETTLE)
    now_held = self._read() or {}
    if now_held.get("token") != self.token:
      raise WorkdirBusyError(
          f"{self.path.parent} was taken by another zoo run starting at the "
          f"same time ({_describe(now_held)}); use another --workdir or "
          "start one run.")
    self._thread = threading.Thread(target=self._renew, daemon=True,
                                    name="zoo-lease")
    self._thread.start()

  def _renew(self) -> None:
    while not self._stop.wait(self.seconds / 4):
      try:
        current = self._read() or {}
        if current.get("token") != self.token:
          self.lost = _describe(current)
          return
        self._write()
      except Exception as e:  # pylint: disable=broad-except  (retry later)
        log.warning("could not renew the lease on %s: %s", self.path, e)

  def ensure_held(self) -> None:
    current = self.lost
    if current is None:
      try:
        record = self._read() or {}
      except Exception as e:  # pylint: disable=broad-except  (transient)
        log.warning("could not read the lease on %s (%s); going on", self.path,
                    e)
        return
      if record.get("token") != self.token:
        current = _describe(record) if record else "the lease is gone"
    if current is not None:
      raise WorkdirBusyError(
          f"{self.path.parent} was taken over by another zoo run ({current}) "
          f"after this run went {self.seconds:.0f}s without renewing its "
          "lease; stopped without writing. Run one job per workdir.")

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=30)
      self._thread = None
    try:
      if (self._read() or {}).get("token") == self.token:
        self._record["released"] = True
        self._write()
    except Exception as e:  # pylint: disable=broad-except  (best effort)
      log.warning("could not release the lease on %s: %s", self.path, e)


def _renewed(record: dict) -> float:
  """When a lease record was last renewed (0, i.e. long stale, if it does
  not say in a number)."""
  try:
    return float(record.get("renewed", 0) or 0)
  except (TypeError, ValueError):
    return 0.0


def _describe(record: dict) -> str:
  return (f"host {record.get('host')}, pid {record.get('pid')}, since "
          f"{record.get('since')}: {record.get('command', '')}").rstrip(": ")


def _read_holder(fd: int) -> str:
  """Who holds (or last held) a lock file, as 'host H, pid P, since T'."""
  try:
    raw = os.pread(fd, 4096, 0)
    record = json.loads(raw) if raw.strip() else None
  except (OSError, ValueError):
    record = None
  if not isinstance(record, dict):
    return "holder unknown"
  return _describe(record)
