"""On-disk cache of decoded uint8 arrays, so that only the first load decodes.

Entries are .npy files keyed by the source files' path, size and mtime; each
file is written to a temp file and os.replace'd, so readers never see a
partial entry. A missing or unreadable entry is simply rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import warnings
from collections.abc import Iterable

import numpy as np

FORMAT_VERSION = 1  # Bump when what is stored (e.g. example order) changes.


def cache_dir() -> str:
  """$ZOO_CACHE_DIR, else $XDG_CACHE_HOME/zoo, else ~/.cache/zoo."""
  if os.environ.get("ZOO_CACHE_DIR"):
    return os.path.expanduser(os.environ["ZOO_CACHE_DIR"])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "zoo")


def source_key(kind: str, files: Iterable[os.PathLike | str]) -> str:
  """A short key that changes when any source file is replaced or edited."""
  h = hashlib.sha256(f"v{FORMAT_VERSION}:{kind}".encode())
  for path in sorted(os.path.abspath(os.fspath(p)) for p in files):
    st = os.stat(path)
    h.update(f"\0{path}\0{st.st_size}\0{st.st_mtime_ns}".encode())
  return h.hexdigest()[:20]


def entry_dir(dataset: str, key: str) -> str:
  return os.path.join(cache_dir(), dataset, key)


def load(dataset: str, key: str, names: Iterable[str]) -> dict[str, np.ndarray] | None:
  """Returns {name: array} if every named array is cached, else None."""
  out = {}
  for name in names:
    path = os.path.join(entry_dir(dataset, key), name + ".npy")
    try:
      out[name] = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):  # missing or damaged: rebuild
      return None
  return out


def save(dataset: str, key: str, arrays: dict[str, np.ndarray]) -> None:
  """Atomically writes each array; cache failures never fail a load."""
  directory = entry_dir(dataset, key)
  try:
    os.makedirs(directory, exist_ok=True)
    for name, array in arrays.items():
      # open(..., "xb") rather than mkstemp: the file gets the umask's
      # permissions (mkstemp's 0600 would hide a shared cache from others).
      tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
      try:
        with open(tmp, "xb") as f:
          np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, os.path.join(directory, name + ".npy"))
      except BaseException:
        if os.path.exists(tmp):
          os.unlink(tmp)
        raise
  except OSError as e:  # Read-only or full disk: the arrays are still in memory.
    warnings.warn(f"zoo.data: could not write cache entry {directory}: {e}")
