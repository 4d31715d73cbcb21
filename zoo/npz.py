""".npz weights I/O that never trusts what a file claims.

An .npz is a zip of .npy members. Before any array data is read, every
member's .npy header (shape, dtype, order) is parsed and checked: against
what the model expects when the caller says so (`expected`), against the
size the zip directory declares for the member, and against a bound on the
total; data is then read in chunks into arrays of exactly the checked size.
So a hostile file (a zip bomb, a header claiming 10^12 values, a pickled
object array, duplicate or path-trick names) is refused with CheckpointError
before it can allocate memory or run code. Nothing is ever unpickled.

This module needs only numpy: it sits below both the registry
(zoo.pretrained) and the training package (zoo.training.checkpoint, weights).
"""
from __future__ import annotations

import math
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Mapping

import jax
import numpy as np

from zoo.errors import ZooError


class CheckpointError(ZooError, ValueError):
  """A checkpoint or weights file is corrupt, unsafe or does not fit."""


class WeightsNotFoundError(ZooError, FileNotFoundError):
  """A weights file, or a run's checkpoint, that was asked for is missing."""


# {member key: (shape, dtype)}: what the caller's model expects.
Expected = Mapping[str, tuple[tuple[int, ...], np.dtype]]

# Without `expected`, members may inflate to at most this many times the
# file's size plus _FLOOR bytes in all (numpy's own writers, savez and
# savez_compressed, stay far below it for real weights).
INFLATION = 32
_FLOOR = 64 << 20
_CHUNK = 16 << 20
_KINDS = "biufc"  # bool, signed, unsigned, float, complex
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what numpy writes
_DRIVE = re.compile(r"^[A-Za-z]:")
_NOT_NPZ = ("is not an .npz archive (zoo loads only numpy .npz weights; "
            "pickles are refused because loading one can run arbitrary code)")


def _path_trick(name: str) -> bool:
  """Whether a member name is absolute, climbs ('..'), has an empty part, a
  backslash or a control character (a haiku key like "params['mlp/~/linear_0']
  ['w']" has none of these)."""
  return bool(name.startswith("/") or "\\" in name or _DRIVE.match(name)
              or any(p in ("", ".", "..") for p in name.split("/"))
              or any(ord(c) < 32 for c in name))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
  """Writes arrays uncompressed, in the form read_npz accepts: plain
  names, plain numeric dtypes (object arrays need pickle and are refused),
  little-endian, C order."""
  out = {}
  for key, a in arrays.items():
    if _path_trick(key + ".npy"):
      raise CheckpointError(f"{key!r}: this name could not be read back "
                            "(read_npz refuses it as a path trick).")
    if a.dtype.hasobject:
      raise CheckpointError(f"{key}: object arrays cannot be saved safely.")
    if a.dtype.kind not in _KINDS or a.dtype.fields is not None:
      raise CheckpointError(
          f"{key}: dtype {a.dtype} is not a plain numeric dtype and could not "
          "be read back; cast it (e.g. to float32) before saving.")
    if a.dtype.str[0] == ">":
      a = a.astype(a.dtype.newbyteorder("<"))
    # The same array if already C order (np.ascontiguousarray would make a
    # 0-d array 1-d).
    out[key] = a if a.flags.c_contiguous else a.copy(order="C")
  with Path(path).open("wb") as f:
    np.savez(f, **out)


def read_npz(path: str | os.PathLike, expected: Expected | None = None, *,
             keep: Callable[[str], bool] | None = None,
             max_bytes: int | None = None) -> dict[str, np.ndarray]:
  """{key: array} of an .npz, every member checked from its header before
  any data is read; see NpzReader.read."""
  with NpzReader(path, max_bytes=max_bytes) as reader:
    return reader.read(expected, keep=keep)


class _Recording:
  """A read-only stream that keeps what is taken from it (the header)."""

  def __init__(self, f):
    self.f, self.taken = f, bytearray()

  def read(self, n: int = -1) -> bytes:
    data = self.f.read(n)
    self.taken += data
    return data


class NpzReader:
  """An open .npz whose zip directory has been checked: `keys` are its
  members' names (without ".npy"), unique and free of path tricks."""

  def __init__(self, path: str | os.PathLike, max_bytes: int | None = None):
    self.path = Path(path)
    self._file = _open(self.path)
    try:
      self.size = os.fstat(self._file.fileno()).st_size
      self.max_bytes = max_bytes
      self._zip = self._open_zip()
      self._infos = self._members()
    except BaseException:
      self._file.close()
      raise
    self.keys = list(self._infos)

  def close(self) -> None:
    self._zip.close()
    self._file.close()

  def __enter__(self) -> "NpzReader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _error(self, what: str) -> CheckpointError:
    return CheckpointError(f"{self.path}: {what}")

  def _open_zip(self) -> zipfile.ZipFile:
    head = self._file.read(4)
    if not head:
      raise self._error("the file is empty (0 bytes): it was not written "
                        "completely; save or download it again.")
    if not head.startswith(b"PK"):
      if head.startswith(b"\x93NUM"):
        raise self._error("this is a single .npy array, not an .npz archive: "
                          "save weights with zoo.weights.save.")
      raise CheckpointError(f"{self.path} {_NOT_NPZ}.")
    self._file.seek(0)
    try:
      return zipfile.ZipFile(self._file)
    except Exception as e:  # BadZipFile, or odd errors on a crafted directory
      raise self._error(
          "the file is truncated or damaged: its zip directory cannot be "
          f"read ({e}); save or download it again.") from None

  def _members(self) -> dict[str, zipfile.ZipInfo]:
    """{key: ZipInfo}, refusing duplicates, path tricks, encrypted members
    and compression methods numpy does not write."""
    out = {}
    for info in self._zip.infolist():
      name = info.filename
      if _path_trick(name):
        raise self._error(f"refused: member name {name!r} is a path trick "
                          "(absolute, '..', empty part or backslash); zoo "
                          "writes no such names, so the file was crafted.")
      key = name[:-4] if name.endswith(".npy") else name
      if key in out:
        raise self._error(f"refused: member {name!r} appears twice; which "
                          "one is meant is ambiguous, so the file was "
                          "crafted or damaged.")
      if info.flag_bits & 0x1:
        raise self._error(f"refused: member {name!r} is encrypted.")
      if info.compress_type not in _METHODS:
        raise self._error(
            f"refused: member {name!r} uses zip compression method "
            f"{info.compress_type}; re-save it with numpy.savez or "
            "numpy.savez_compressed.")
      out[key] = info
    return out

  def _header(self, fp, key: str):
    """(shape, dtype, header bytes) of the .npy member open in `fp`,
    refusing anything that is not a plain little-endian C-order array."""
    name = self._infos[key].filename
    if not name.endswith(".npy"):
      raise self._error(f"refused: member {name!r} is not a plain numeric "
                        "array (.npy).")
    taken = _Recording(fp)
    try:
      version = np.lib.format.read_magic(taken)
      if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(taken)
      elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(taken)
      else:
        raise self._error(f"member {key!r}: .npy format version {version} "
                          "is not supported (1.0 and 2.0 are): re-save it "
                          "with numpy.savez.")
    except (CheckpointError, zipfile.BadZipFile, zlib.error, EOFError,
            OSError):
      raise  # the caller says the file is damaged
    except Exception as e:  # a malformed header: ValueError, SyntaxError...
      raise self._error(f"refused: member {key!r} is not a plain numeric "
                        f"array: its .npy header is invalid ({e}).") from None
    if dtype.hasobject:
      raise self._error(
          f"refused: member {key!r} holds Python objects (dtype {dtype}): "
          "loading it would need pickle, which can run arbitrary code, so it "
          "is not read. Save plain numeric arrays.")
    if dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype:
      raise self._error(f"refused: member {key!r} is not a plain numeric "
                        f"array (dtype {dtype}).")
    if dtype.str[0] == ">":
      raise self._error(
          f"refused: member {key!r} is big-endian ({dtype.str}); zoo reads "
          "little-endian arrays only: re-save it with "
          "a.astype(a.dtype.newbyteorder('<')).")
    if fortran:
      raise self._error(
          f"refused: member {key!r} is stored in Fortran order; zoo reads C "
          "order only: re-save it with numpy.ascontiguousarray(a).")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
      raise self._error(f"refused: member {key!r} has an invalid shape "
                        f"{shape}.")
    return tuple(int(d) for d in shape), dtype, bytes(taken.taken)

  def _check(self, key: str, expected: Expected | None):
    """(shape, dtype, data bytes, header bytes) of member `key`, from its
    header alone, checked against `expected` and the size the zip directory
    declares."""
    info = self._infos[key]
    try:
      with self._zip.open(info) as fp:
        shape, dtype, header = self._header(fp, key)
    except CheckpointError:
      raise
    except Exception as e:  # BadZipFile, zlib.error, EOFError, OSError...
      raise self._error(f"the file is damaged: member {key!r} cannot be read "
                        f"({e}); save or download it again.") from None
    if expected is not None:
      if key not in expected:
        raise self._error(
            f"the file does not match the model: unexpected member {key!r}. "
            "Was it saved for another model or config?")
      want_shape, want_dtype = expected[key]
      want_shape, want_dtype = tuple(want_shape), np.dtype(want_dtype)
      if shape != want_shape or dtype != want_dtype:
        raise self._error(
            f"{key} has shape {shape} dtype {dtype}, the model expects shape "
            f"{want_shape} dtype {want_dtype}. Was it saved for another model "
            "or config?")
    nbytes = math.prod(shape) * dtype.itemsize
    if info.file_size != len(header) + nbytes:
      raise self._error(
          f"refused: member {key!r} declares {info.file_size} bytes but its "
          f".npy header describes {len(header) + nbytes} (shape {shape}, "
          f"dtype {dtype}): the file is damaged or crafted.")
    return shape, dtype, nbytes, header

  def read(self, expected: Expected | None = None, *,
           keep: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
    """{key: array} of the members `keep` selects (all by default; the others
    are not opened). With `expected` every selected member must be in it with
    the same shape and dtype, so the arrays take at most the expected bytes;
    without it at most `max_bytes`, by default INFLATION times the file's
    size plus 64 MiB. Everything is checked from the headers before any data
    is read, and no member yields more bytes than its header describes."""
    keys = [k for k in self.keys if keep is None or keep(k)]
    checked = {k: self._check(k, expected) for k in keys}
    total = sum(c[2] for c in checked.values())
    # With `expected` (and unique names) total is at most the model's size.
    if self.max_bytes is not None:
      limit, why = self.max_bytes, "(max_bytes)"
    else:
      limit = _FLOOR + INFLATION * self.size
      why = f"for a {self.size}-byte file (a zip bomb?)"
    if (expected is None or self.max_bytes is not None) and total > limit:
      big = max(checked, key=lambda k: checked[k][2])
      raise self._error(
          f"refused: its arrays would take {total} bytes (member {big!r} "
          f"alone {checked[big][2]}), more than the {limit} allowed {why}. "
          "If you trust the file, read it with a larger max_bytes.")
    return {k: self._data(k, *checked[k]) for k in keys}

  def _data(self, key: str, shape, dtype, nbytes: int,
            header: bytes) -> np.ndarray:
    """Member `key`'s array, read in chunks into a buffer of the checked
    size; refused if the header changed or the data is short or long."""
    out = np.empty(shape, dtype)
    buf = memoryview(out.reshape(-1).view(np.uint8))
    try:
      with self._zip.open(self._infos[key]) as fp:
        if fp.read(len(header)) != header:
          raise self._error(f"member {key!r} changed while being read.")
        pos = 0
        while pos < nbytes:
          chunk = fp.read(min(_CHUNK, nbytes - pos))
          if not chunk:
            raise self._error(
                f"the file is damaged: member {key!r} is truncated ({pos} of "
                f"{nbytes} data bytes); save or download it again.")
          buf[pos:pos + len(chunk)] = chunk
          pos += len(chunk)
        if fp.read(1):
          raise self._error(f"refused: member {key!r} holds more data than "
                            "its header describes.")
    except CheckpointError:
      raise
    except Exception as e:  # BadZipFile (bad CRC), zlib.error, EOFError...
      raise self._error(f"the file is damaged: member {key!r} cannot be read "
                        f"({e}); save or download it again.") from None
    return out


def _open(path: Path):
  """`path` opened for reading, or one clear error saying why it cannot be."""
  try:
    return path.open("rb")
  except FileNotFoundError:
    raise WeightsNotFoundError(f"{path} does not exist: check the path.") \
        from None
  except IsADirectoryError:
    raise CheckpointError(
        f"{path} is a directory, not an .npz file: pass the weights file "
        "itself (for a training run's directory use --workdir).") from None
  except PermissionError:
    raise CheckpointError(f"{path} cannot be read (permission denied): check "
                          "its permissions.") from None
  except OSError as e:
    raise CheckpointError(f"{path} cannot be read: {e}") from None


# --- trees <-> {path: array}, as .npz members are named -----------------

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
