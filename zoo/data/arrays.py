"""Your own arrays as a dataset: checked, stored like the catalog's data.

`zoo.train(name, data=(images, labels), test_data=(images, labels))` and
`zoo train NAME --data FILE.npz` come here. Every array is checked before
any device work (shape, dtype, lengths, labels >= 0, no empty split, float
images finite and in [0, 1]), then stored as the trainer stores every
dataset: uint8 NHWC images and int32 labels in a `Split`. Float images are
quantised to uint8 with round(x * 255), the form the catalog data has, so
the on-device pipeline (gather uint8, then `to_float`) is the same for
both; the quantisation error is at most 1/510.

What the entry needs to know about the arrays (image shape, class names,
and a sha256 of the arrays, so that resuming with other arrays is refused
as a config change) comes back as config overrides of dataset "custom".
"""
from __future__ import annotations

import collections
import hashlib
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zoo.data.catalog import CUSTOM
from zoo.data.sources import Split
from zoo.errors import InputError

NPZ_MEMBERS = ("train_images", "train_labels", "test_images", "test_labels")
_SAVE_HINT = ("np.savez(FILE, train_images=..., train_labels=..., "
              "test_images=..., test_labels=...)")


class DataArraysError(InputError):
  """Arrays passed as a dataset do not fit the model or are malformed."""


def _pair(pair: Any, what: str) -> tuple[Any, Any]:
  if pair is None:
    raise DataArraysError(
        f"{what} is missing: pass test_data=(images, labels) as well as "
        "data=(images, labels), e.g. holding out 10% of your examples.")
  if not isinstance(pair, (tuple, list)) or len(pair) != 2:
    raise DataArraysError(f"{what} must be a pair (images, labels), got "
                          f"{type(pair).__name__}.")
  return pair[0], pair[1]


def _check_images(images: Any, what: str,
                  input_shape: tuple[int, ...]) -> np.ndarray:
  """`images` as uint8 NHWC, or DataArraysError saying what to change."""
  images = np.asarray(images)
  want = f"(N, {', '.join(map(str, input_shape))})"
  if images.ndim != 4 or tuple(images.shape[1:]) != tuple(input_shape):
    hint = (" Add the channel axis: images[..., None]." if images.ndim == 3
            and tuple(images.shape[1:]) == tuple(input_shape[:2]) else
            " Resize them, or pick a model for that input shape.")
    raise DataArraysError(f"{what} have shape {images.shape}; the model takes "
                          f"NHWC images of shape {want}.{hint}")
  if images.shape[0] == 0:
    raise DataArraysError(f"{what} are empty (0 examples): pass at least one "
                          "example per split.")
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating):
    raise DataArraysError(
        f"{what} have dtype {images.dtype}; pass uint8 (0..255) or float "
        "(0..1) images, e.g. images.astype(np.uint8).")
  x = images.astype(np.float32)
  if not np.isfinite(x).all():
    raise DataArraysError(f"{what} hold {int((~np.isfinite(x)).sum())} NaN or "
                          "infinite value(s): fix or drop those examples.")
  lo, hi = float(x.min()), float(x.max())
  if lo < 0 or hi > 1:
    raise DataArraysError(
        f"{what} are float with values in [{lo:g}, {hi:g}]; float images "
        "must be in [0, 1]: divide by 255, or pass uint8 images.")
  return np.round(x * 255).astype(np.uint8)


def _check_labels(labels: Any, what: str, n: int) -> np.ndarray:
  """`labels` as int32 (n,), or DataArraysError saying what to change."""
  labels = np.asarray(labels)
  if labels.dtype == bool or labels.dtype.kind not in "iu":
    raise DataArraysError(f"{what} have dtype {labels.dtype}; labels must be "
                          "integer class ids 0..k-1, e.g. labels.astype(int).")
  if labels.ndim != 1 or labels.shape[0] != n:
    raise DataArraysError(
        f"{what} have shape {labels.shape}; expected ({n},), one integer "
        "label per image.")
  if labels.min() < 0 or labels.max() >= 2**31:
    bad = labels.min() if labels.min() < 0 else labels.max()
    raise DataArraysError(f"{what} hold {bad}; labels must be class ids "
                          "0..k-1 (>= 0).")
  return labels.astype(np.int32)


def _class_names(max_label: int, num_classes: int | None,
                 class_names: Sequence[str] | None) -> tuple[str, ...]:
  """Class names for labels up to `max_label`: given, "0".."k-1" for an
  explicit `num_classes`, or "0".."max_label"."""
  if class_names is not None:
    names = list(class_names)
    if (not all(isinstance(c, str) and c for c in names)
        or len(set(names)) != len(names)):
      raise DataArraysError(f"class_names must be distinct non-empty strings, "
                            f"got {names!r}.")
    if num_classes is not None and num_classes != len(names):
      raise DataArraysError(f"num_classes={num_classes} but {len(names)} "
                            "class_names: give one, or make them agree.")
  else:
    if num_classes is not None and (not isinstance(num_classes, int)
                                    or isinstance(num_classes, bool)):
      raise DataArraysError(f"num_classes must be an int, got {num_classes!r}.")
    k = max_label + 1 if num_classes is None else num_classes
    names = [str(i) for i in range(max(k, 0))]
  if max_label >= len(names):
    raise DataArraysError(
        f"a label is {max_label}, but there are {len(names)} classes: labels "
        f"must be in 0..{len(names) - 1}; raise num_classes or fix the labels.")
  if len(names) < 2:
    raise DataArraysError(
        f"the labels name {len(names)} class; training needs two or more "
        "classes (labels 0..k-1 with k >= 2).")
  return tuple(names)


def _sha256(*arrays: np.ndarray) -> str:
  """Digest of the arrays' shapes, dtypes and bytes, in order."""
  h = hashlib.sha256()
  for a in arrays:
    h.update(f"{a.shape}{a.dtype.str};".encode())
    h.update(np.ascontiguousarray(a).data)
  return h.hexdigest()


def _readonly(a: np.ndarray) -> np.ndarray:
  """A read-only copy (the caller may change its own arrays later)."""
  a = np.array(a, copy=True)
  a.flags.writeable = False
  return a


def splits(data: Any, test_data: Any, input_shape: tuple[int, ...], *,
           num_classes: int | None = None,
           class_names: Sequence[str] | None = None
           ) -> tuple[Split, Split, dict[str, Any]]:
  """(train Split, test Split, config overrides) for user arrays.

  The overrides make the entry's dataset "custom" with these arrays' image
  shape, class names and sha256 (see the module docstring). Raises
  DataArraysError (a ZooError) naming the array and the fix."""
  checked = {}
  for what, pair in (("train", data), ("test", test_data)):
    images, labels = _pair(pair, "data" if what == "train" else "test_data")
    images = _check_images(images, f"{what} images", input_shape)
    checked[what] = (images, _check_labels(labels, f"{what} labels",
                                           images.shape[0]))
  max_label = max(int(checked[w][1].max()) for w in checked)
  names = _class_names(max_label, num_classes, class_names)
  out = [Split(name=CUSTOM, split=what, images=_readonly(images),
               labels=_readonly(labels), num_classes=len(names),
               class_names=names, source="arrays")
         for what, (images, labels) in checked.items()]
  overrides = {
      "data.dataset": CUSTOM, "data.classes": [],
      "data.train_split": "train", "data.test_split": "test",
      "data.image_shape": list(input_shape), "data.class_names": list(names),
      "data.sha256": _sha256(*checked["train"], *checked["test"]),
  }
  return out[0], out[1], overrides


def read_npz(path: str | os.PathLike) -> tuple[tuple[np.ndarray, np.ndarray],
                                               tuple[np.ndarray, np.ndarray]]:
  """((train_images, train_labels), (test_images, test_labels)) from an .npz.

  numpy reads it (allow_pickle=False: no pickle is ever loaded) once its zip
  directory and .npy headers are checked (see _check_members), so a zip bomb
  or a crafted header is refused before any array is allocated."""
  path = Path(path)
  with _open(path) as f:
    _check_members(path, f)
    f.seek(0)
    out = {}
    with np.load(f, allow_pickle=False) as z:
      for key in NPZ_MEMBERS:
        try:
          out[key] = z[key]
        except Exception as e:  # BadZipFile (bad CRC), zlib.error, EOF...
          raise _damaged(path, key, e) from None
  return ((out["train_images"], out["train_labels"]),
          (out["test_images"], out["test_labels"]))


# The members may declare at most this many bytes in all: 32x the file's
# size plus 64 MiB (numpy.savez writes about 1x; a zip bomb far more).
_INFLATION, _FLOOR = 32, 64 << 20
_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}


def _damaged(path: Path, key: str, e: Exception) -> DataArraysError:
  return DataArraysError(
      f"{path}: member {key} cannot be read ({_reason(e)}): the file is "
      f"truncated or damaged; save the arrays again with {_SAVE_HINT}.")


def _reason(e: Exception) -> str:
  """An exception's message on one line (its type's name if it has none)."""
  return " ".join(str(e).split()) or type(e).__name__


def _open(path: Path):
  """`path` opened for reading, or DataArraysError saying why it cannot be."""
  try:
    return path.open("rb")
  except FileNotFoundError:
    raise DataArraysError(f"{path} does not exist: check the path (write the "
                          f"file with {_SAVE_HINT}).") from None
  except IsADirectoryError:
    raise DataArraysError(f"{path} is a directory: pass the .npz file itself, "
                          f"written with {_SAVE_HINT}.") from None
  except OSError as e:
    raise DataArraysError(f"{path} cannot be read ({_reason(e)}): check the "
                          "path and its permissions.") from None


def _check_members(path: Path, f) -> None:
  """Refuses anything but a zip of the four NPZ_MEMBERS as plain .npy
  arrays, from its directory and headers alone.

  The declared sizes (ZipInfo.file_size) must be within _INFLATION x the
  file's size + _FLOOR and must equal what each .npy header describes.
  zipfile yields no more than a member's declared size (and then checks
  its CRC), and numpy allocates what the header describes, so these bound
  the memory the read takes."""
  def refuse(what: str, do: str = "save the arrays") -> DataArraysError:
    return DataArraysError(f"{path}: {what}; {do} with {_SAVE_HINT}.")

  head = f.read(6)
  f.seek(0)
  if not head:
    raise refuse("the file is empty (0 bytes)")
  if head == b"\x93NUMPY":
    raise refuse("this is a single .npy array, not an .npz of four")
  if head[:1] == b"\x80":
    raise refuse("this is a pickle, not an .npz, and pickles are refused "
                 "(loading one can run arbitrary code)")
  if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # as np.load
    raise refuse("this is not an .npz (zip) archive")
  try:
    z = zipfile.ZipFile(f)
  except Exception as e:  # BadZipFile, or odd errors on a crafted directory
    raise refuse(f"the file is truncated or damaged (its zip directory "
                 f"cannot be read: {_reason(e)})", "save the arrays again"
                 ) from None
  with z:
    infos = z.infolist()
    names = [i.filename for i in infos]
    twice = [n for n, count in collections.Counter(names).items() if count > 1]
    if twice:
      raise refuse(f"refused: member {twice[0]} appears twice, so which one "
                   "is meant is ambiguous (a crafted or damaged file)")
    size = os.fstat(f.fileno()).st_size
    total, limit = sum(i.file_size for i in infos), _INFLATION * size + _FLOOR
    if total > limit:
      raise refuse(f"refused: its members would inflate to {total} bytes, "
                   f"more than the {limit} allowed for a {size}-byte file "
                   "(a zip bomb?)")
    wanted = [k + ".npy" for k in NPZ_MEMBERS]
    missing = [k for k, n in zip(NPZ_MEMBERS, wanted) if n not in names]
    extra = [n.removesuffix(".npy") for n in names if n not in wanted]
    if missing or extra:
      raise DataArraysError(
          f"{path}: " + (f"missing {', '.join(missing)}" if missing else "")
          + ("; " if missing and extra else "")
          + (f"unexpected {', '.join(extra)}" if extra else "")
          + f". Save the four arrays under these names: {_SAVE_HINT}.")
    for info in infos:
      key = info.filename.removesuffix(".npy")
      try:
        with z.open(info) as m:
          version = np.lib.format.read_magic(m)
          if version not in _HEADERS:
            raise ValueError(f".npy format version {version} is not 1.0 or "
                             "2.0, which numpy.savez writes")
          shape, _, dtype = _HEADERS[version](m)
          nbytes = m.tell() + math.prod(shape) * dtype.itemsize
      except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise _damaged(path, key, e) from None
      except Exception as e:  # no .npy magic, a malformed header...
        raise refuse(f"member {key} is not a readable .npy array "
                     f"({_reason(e)})") from None
      if dtype.hasobject:
        raise refuse(f"refused: member {key} holds Python objects (dtype "
                     f"{dtype}); reading it would need pickle, which can run "
                     "arbitrary code, so it is not read", "save numeric arrays")
      if nbytes != info.file_size:
        raise refuse(f"refused: member {key} declares {info.file_size} bytes "
                     f"but its .npy header describes {nbytes} (shape {shape}, "
                     f"dtype {dtype}): the file is damaged or crafted")
