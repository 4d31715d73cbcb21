"""A run's working directory: owned by one run at a time, written safely.

`Workdir` holds an exclusive `fcntl.flock` on `.zoo-lock-p<process>` for the
whole run, so a second run launched on a busy workdir refuses at once, naming
the holder, and touches nothing of the first. The kernel drops the lock when
its process dies, so a crashed run never blocks the next one; its leftover
holder record is recognised and reported. Every write goes through `write`,
which is atomic (temporary file + rename) and turns filesystem faults (no
space, read-only, a file where a directory belongs) into one-line
`WorkdirError`s.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path

from zoo.errors import ZooError

log = logging.getLogger("zoo.train")

LOCK_PREFIX = ".zoo-lock-p"


class WorkdirError(ZooError):
  """The workdir cannot be used: busy, not a directory, not writable, full."""


class WorkdirBusyError(WorkdirError):
  """Another zoo run holds the workdir."""


def describe_os_error(e: OSError) -> str:
  """One line for a filesystem fault, with what usually fixes it."""
  hint = {errno.ENOSPC: "free some space",
          errno.EDQUOT: "free some space (disk quota exceeded)",
          errno.EROFS: "the filesystem is read-only: use a writable --workdir",
          errno.EACCES: "fix the permissions or use another --workdir",
          errno.EPERM: "fix the permissions or use another --workdir",
          errno.ENOTDIR: "a file stands where a directory belongs: move it "
                         "away or use another --workdir",
          errno.EISDIR: "a directory stands where a file belongs: move it "
                        "away or use another --workdir",
          errno.EEXIST: "move the existing file away or use another --workdir",
          errno.EFBIG: "raise the file size limit (ulimit -f) or use "
                       "another --workdir",
          }.get(e.errno, "check the filesystem")
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
  """The directory of one run, locked for as long as the `with` block runs."""

  def __init__(self, path: str | os.PathLike, process_index: int = 0):
    self.path = Path(path)
    self.lock_path = self.path / f"{LOCK_PREFIX}{process_index}"
    self._fd: int | None = None

  def __enter__(self) -> "Workdir":
    if self.path.exists() and not self.path.is_dir():
      raise WorkdirError(f"--workdir {self.path} is a file, not a directory: "
                         "name a directory (it is created if missing).")
    with fs_errors(f"create the workdir {self.path}"):
      self.path.mkdir(parents=True, exist_ok=True)
    for child in ("checkpoints",):
      if (self.path / child).exists() and not (self.path / child).is_dir():
        raise WorkdirError(
            f"{self.path / child} is a file, but zoo keeps its checkpoints "
            "in a directory of that name: move the file away or use another "
            "--workdir.")
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
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)[:500]}
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(record).encode(), 0)
    except OSError as e:  # read-only or full: the lock itself still holds
      os.close(fd)
      raise WorkdirError(f"could not write to the workdir {self.path}: "
                         f"{describe_os_error(e)}.") from e
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)  # empty = released cleanly
    except OSError:
      pass
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def write_text(self, name: str, text: str, after: str = "") -> Path:
    """Atomically replaces `name` in the workdir with `text`."""
    path = self.path / name
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with fs_errors(f"write {path}", after):
      try:
        tmp.write_text(text)
        os.replace(tmp, path)
      except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path

  def write_json(self, name: str, obj, after: str = "") -> Path:
    return self.write_text(
        name, json.dumps(obj, indent=1, sort_keys=True, default=str), after)


def _read_holder(fd: int) -> str:
  """Who holds (or last held) a lock file, as 'host H, pid P, since T'."""
  try:
    raw = os.pread(fd, 4096, 0)
    record = json.loads(raw) if raw.strip() else None
  except (OSError, ValueError):
    record = None
  if not isinstance(record, dict):
    return "holder unknown"
  return (f"host {record.get('host')}, pid {record.get('pid')}, since "
          f"{record.get('since')}: {record.get('command', '')}").rstrip(": ")
