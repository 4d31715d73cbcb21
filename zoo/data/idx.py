"""Strict reader for IDX files (the MNIST file format), gzip-compressed or raw.

Every header field is checked against the file length, so a truncated or
damaged file raises CorruptDataError instead of yielding garbage arrays, and a
header declaring a huge count allocates nothing beyond the bytes read.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib

import numpy as np

from zoo.data.errors import CorruptDataError

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (N, rows, cols).
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (N,).
_HEADER_DIMS = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}


def read_bytes(path: os.PathLike | str) -> bytes:
  """Returns the (decompressed, for *.gz) bytes of an IDX file."""
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise
  except OSError as e:  # EISDIR, EACCES, EIO, ELOOP, ...
    raise CorruptDataError(path, f"cannot be read: {e}",
                           "check that it is a regular file you may read "
                           "(permissions), or replace it") from e
  if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
      raise CorruptDataError(
          path, f"damaged gzip stream ({type(e).__name__}: {e})") from e
  elif path.endswith(".gz"):
    raise CorruptDataError(path, "named .gz but is not gzip data")
  return data


def parse(data: bytes, expected_magic: int, path: os.PathLike | str) -> np.ndarray:
  """Parses IDX bytes into a read-only uint8 array after checking the header.

  `path` is only used in error messages.
  """
  ndim = _HEADER_DIMS[expected_magic]
  header_len = 4 + 4 * ndim
  if len(data) < header_len:
    raise CorruptDataError(
        path, f"only {len(data)} bytes, shorter than the {header_len}-byte "
        f"IDX header (truncated?)")
  magic = int.from_bytes(data[:4], "big")
  if magic != expected_magic:
    what = "images" if expected_magic == IMAGES_MAGIC else "labels"
    raise CorruptDataError(
        path, f"bad magic number {magic} (0x{magic:08x}); IDX {what} files "
        f"start with {expected_magic} (0x{expected_magic:08x})")
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
               for i in range(ndim))
  if any(d == 0 for d in dims):
    raise CorruptDataError(path, f"header declares an empty array {dims}")
  # Python ints: an int64 product of three 32-bit dims could wrap around.
  expected_len = header_len + math.prod(dims)
  if len(data) != expected_len:
    problem = "truncated" if len(data) < expected_len else "has trailing bytes"
    raise CorruptDataError(
        path, f"{problem}: header declares shape {dims} = "
        f"{expected_len - header_len} bytes of data, file holds "
        f"{len(data) - header_len}")
  array = np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)
  return array  # frombuffer on bytes is already read-only


def read(path: os.PathLike | str, expected_magic: int,
         sha256: str | None = None) -> np.ndarray:
  """Reads and validates one IDX file; optionally checks the decompressed sha256."""
  return read_with_digest(path, expected_magic, sha256)[0]


def read_with_digest(path: os.PathLike | str, expected_magic: int,
                     sha256: str | None = None) -> tuple[np.ndarray, str]:
  """Like `read`, also returning the decompressed content's sha256 (hex)."""
  data = read_bytes(path)
  array = parse(data, expected_magic, path)  # Structure first: clearer errors.
  digest = hashlib.sha256(data).hexdigest()
  if sha256 is not None and digest != sha256:
    raise CorruptDataError(
        path, f"decompressed content has sha256 {digest}, expected {sha256} "
        "(damaged or a different file under the same name)")
  return array, digest


def read_images(path: os.PathLike | str, sha256: str | None = None) -> np.ndarray:
  """Reads an IDX images file into uint8 (N, rows, cols)."""
  return read(path, IMAGES_MAGIC, sha256)


def read_labels(path: os.PathLike | str, sha256: str | None = None) -> np.ndarray:
  """Reads an IDX labels file into uint8 (N,)."""
  return read(path, LABELS_MAGIC, sha256)


def read_pair(images_path: os.PathLike | str, labels_path: os.PathLike | str,
              images_sha256: str | None = None,
              labels_sha256: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads matching images and labels files and checks their counts agree."""
  images, labels, _ = read_pair_with_digests(images_path, labels_path,
                                             images_sha256, labels_sha256)
  return images, labels


def read_pair_with_digests(
    images_path: os.PathLike | str, labels_path: os.PathLike | str,
    images_sha256: str | None = None, labels_sha256: str | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[str, str]]:
  """Like `read_pair`, also returning both files' decompressed sha256."""
  images, images_digest = read_with_digest(images_path, IMAGES_MAGIC,
                                           images_sha256)
  labels, labels_digest = read_with_digest(labels_path, LABELS_MAGIC,
                                           labels_sha256)
  if images.shape[0] != labels.shape[0]:
    raise CorruptDataError(
        labels_path, f"holds {labels.shape[0]} labels but "
        f"{os.fspath(images_path)} holds {images.shape[0]} images")
  return images, labels, (images_digest, labels_digest)
