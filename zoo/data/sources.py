"""`load()`: find a dataset (prepared TFDS, local IDX files, TFDS download) and return a Split.

Whatever the source, examples come in TFDS's order (see ordering.py), so a
split string like "train[:90%]" selects the same examples everywhere.
Decoded arrays are cached on disk (cache.py) and memoised in-process.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence

import numpy as np

from zoo.data import cache
from zoo.data import catalog
from zoo.data import idx
from zoo.data import ordering
from zoo.data import splits
from zoo.data import tfds_source
from zoo.data.errors import CacheWarning, CorruptDataError, DataNotFoundError
from zoo.errors import ConfigError


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """A whole split in host memory. Arrays are read-only.

  images: uint8 (N, H, W, C), NHWC; labels: int32 (N,) in [0, num_classes).
  `source` says where the data came from (for logs).
  """
  name: str
  split: str
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]
  source: str = ""

  def __post_init__(self):
    if self.images.dtype != np.uint8 or self.images.ndim != 4:
      raise ValueError(f"images must be uint8 (N, H, W, C), got "
                       f"{self.images.dtype} {self.images.shape}")
    if self.labels.dtype != np.int32 or self.labels.shape != self.images.shape[:1]:
      raise ValueError(f"labels must be int32 ({self.images.shape[0]},), got "
                       f"{self.labels.dtype} {self.labels.shape}")
    if len(self.class_names) != self.num_classes:
      raise ValueError("class_names must have num_classes entries")

  def __len__(self) -> int:
    return self.labels.shape[0]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])


@dataclasses.dataclass(frozen=True)
class _Source:
  """Where a dataset was found: a TFDS data dir ('tfds') or an IDX folder ('idx')."""
  kind: str
  location: str

  def files(self, info: catalog.DatasetInfo, split: str) -> list[str]:
    if self.kind == "tfds":
      return tfds_source.prepared_files(info.name, self.location)
    return [_idx_file(self.location, stem) for stem in catalog.IDX_FILES[split]]

  def describe(self) -> str:
    return f"{self.kind}:{self.location}"


_MEMO: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def clear_memory_cache() -> None:
  """Forgets the in-process memo (the on-disk cache stays)."""
  _MEMO.clear()


def load(dataset: str, split: str = "train", *,
         data_dir: str | os.PathLike | None = None,
         classes: Sequence[int] | None = None,
         download: bool = True,
         system_dirs: Sequence[str] | None = None) -> Split:
  """Loads `split` of `dataset` ("mnist", "fashion_mnist", "kmnist", "cifar10").

  Every source's images and labels are checked (dtype, shape, labels in
  0..num_classes-1) before they are returned or cached.

  Args:
    dataset: A catalog dataset name.
    split: "train", "test", or TFDS slicing like "train[:90%]",
      "train[:1000]+test".
    data_dir: A TFDS data dir and/or a folder with IDX files (like
      --data-dir). An explicit choice: it must exist, and it is the only
      place searched (then downloaded into, if allowed); $ZOO_DATA_DIR,
      $TFDS_DATA_DIR and the system folders are searched only without it.
    classes: E.g. (7, 9) keeps only those classes, relabelled 0..k-1 in that
      order.
    download: Allow TFDS to download (network) when nothing local is found.
    system_dirs: IDX folders installed system-wide; default: the catalog's
      (e.g. /usr/share/datasets/fashion-mnist). Pass () to ignore them.

  Returns:
    A Split: uint8 NHWC `images` and int32 `labels`, in TFDS's order.

  Raises:
    DataNotFoundError: Nothing found; the message lists every place looked.
    CorruptDataError: A file or cache entry fails its checks.
    SplitError: A split string TFDS would not accept, or an empty split.
    UnknownDatasetError: A dataset not in the catalog.
  """
  info = catalog.get(dataset)
  counts = dict(info.num_examples)
  bases = list(dict.fromkeys(s for s, _, _ in splits.resolve(split, counts)))
  source = _find(info, bases, data_dir, download, system_dirs)
  arrays = {b: _base_split(info, source, b) for b in bases}
  counts.update({b: len(labels) for b, (_, labels) in arrays.items()})
  parts = [(arrays[b][0][start:stop], arrays[b][1][start:stop])
           for b, start, stop in splits.resolve(split, counts)]
  if len(parts) == 1:
    images, labels = parts[0]
  else:
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
  class_names = info.class_names
  if classes is not None:
    images, labels, class_names = _select_classes(images, labels, classes,
                                                  class_names)
    if not len(labels):
      raise ConfigError(f"classes {list(classes)} select no examples of "
                        f"{dataset} split {split!r}")
  return Split(name=dataset, split=split, images=_readonly(images),
               labels=_readonly(labels), num_classes=len(class_names),
               class_names=tuple(class_names), source=source.describe())


def _select_classes(images, labels, classes, class_names):
  """Keeps examples of `classes` (in their original order), relabelled 0..k-1."""
  try:
    classes = [int(c) for c in classes]
  except (TypeError, ValueError):
    raise ConfigError(f"classes must be a list of class ids, got {classes!r}") from None
  if not classes or len(set(classes)) != len(classes):
    raise ConfigError(f"classes must be distinct class ids, got {classes}")
  if any(not 0 <= c < len(class_names) for c in classes):
    raise ConfigError(f"classes {classes} out of range 0..{len(class_names) - 1}")
  relabel = np.full(len(class_names), -1, dtype=np.int32)
  relabel[classes] = np.arange(len(classes), dtype=np.int32)
  keep = relabel[labels] >= 0
  return images[keep], relabel[labels[keep]], [class_names[c] for c in classes]


def _readonly(a: np.ndarray) -> np.ndarray:
  a = a.view()
  a.flags.writeable = False
  return a


def _base_split(info, source: _Source, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A whole, checked base split ('train'/'test'), from memo, disk cache, or decoding."""
  files = source.files(info, split)
  if not files:  # Nothing to key a cache entry on (e.g. TFDS mocked in tests).
    images, labels, _ = _read(info, source, split)
    return _readonly(images), _readonly(labels)
  try:
    key = cache.source_key(f"{info.name}/{split}/{source.kind}", files)
  except OSError as e:  # A source file vanished or became unreadable since _find.
    raise CorruptDataError(e.filename or source.location,
                           f"cannot be read ({e.strerror or e})",
                           _fix(info, source, e.filename or "")) from e
  memo_key = (info.name, split, source.kind, source.location, key)
  if memo_key in _MEMO:
    return _MEMO[memo_key]
  names = [f"{split}.images", f"{split}.labels"]
  expected = {f: _catalog_sha256(info, source, f) for f in files}
  example_bytes = int(np.prod(info.image_shape)) + 4  # uint8 pixels, int32 label
  max_bytes = info.num_examples[split] * example_bytes + (1 << 16)
  cached = cache.load(info.name, key, names, expected, max_bytes)
  if cached is not None:
    images, labels = cached[names[0]], cached[names[1]]
    problem = _problem(info, images, labels)
    if not problem and labels.dtype != np.int32:
      problem = ("labels", f"labels are {labels.dtype}, not int32")
    if problem:  # Only a forged record can get here: the digests matched.
      path = os.path.join(cache.entry_dir(info.name, key),
                          names[problem[0] == "labels"] + ".npy")
      warnings.warn(f"zoo.data: cache entry {path}: {problem[1]}; not used, "
                    "decoding again from the source", CacheWarning, stacklevel=2)
      cached = None
  if cached is None:
    images, labels, digests = _read(info, source, split)
    cache.save(info.name, key, {names[0]: images, names[1]: labels}, digests)
  result = (_readonly(images), _readonly(labels))
  _MEMO[memo_key] = result
  return result


def _catalog_sha256(info, source: _Source, path: str) -> str | None:
  """The catalog's sha256 for a source file's decompressed content, if known."""
  if source.kind != "idx":
    return None
  name = os.path.basename(path)
  return info.idx_sha256.get(name[:-3] if name.endswith(".gz") else name)


def _read(info, source: _Source, split: str):
  """Decodes a base split: (images, int32 labels, {source file: sha256}), checked."""
  if source.kind == "tfds":
    images, labels = tfds_source.read_split(info.name, source.location, split)
    where = os.path.join(source.location, info.name)
    _check(info, images, labels, where, where, _fix(info, source, where))
    files = source.files(info, split)
    try:
      digests = {f: tfds_source.file_sha256(f) for f in files}
    except OSError as e:
      raise CorruptDataError(e.filename or where, f"cannot be read ({e})",
                             _fix(info, source, where)) from e
    return images, labels.astype(np.int32), digests
  return _decode_idx(info, source, split)


def _problem(info, images, labels) -> tuple[str, str] | None:
  """('images'|'labels', what is wrong) if the arrays are not a valid split."""
  height, width, channels = info.image_shape
  if (images.dtype != np.uint8 or images.ndim != 4
      or images.shape[1:] != info.image_shape):
    return "images", (f"images are {images.dtype} {images.shape}, expected "
                      f"uint8 (N, {height}, {width}, {channels})")
  if not images.shape[0]:
    return "images", "holds no examples"
  if labels.ndim != 1 or labels.dtype.kind not in "iu":
    return "labels", f"labels are {labels.dtype} {labels.shape}, expected integers (N,)"
  if labels.shape[0] != images.shape[0]:
    return "labels", (f"{labels.shape[0]} labels for {images.shape[0]} images")
  n = info.num_classes
  if labels.min() < 0 or labels.max() >= n:
    bad = np.flatnonzero((labels < 0) | (labels >= n))
    return "labels", (f"label {labels[bad[0]]} at example {bad[0]} "
                      f"({len(bad)} such) is outside {info.name}'s {n} classes "
                      f"0..{n - 1}")
  return None


def _check(info, images, labels, images_where, labels_where, fix) -> None:
  """Raises CorruptDataError (naming the file and the fix) if the arrays are invalid."""
  problem = _problem(info, images, labels)
  if problem:
    which, what = problem
    raise CorruptDataError(images_where if which == "images" else labels_where,
                           what, fix)


def _fix(info, source: _Source, path: str) -> str:
  """What to do about a damaged file of `source`."""
  if source.kind == "tfds":
    return tfds_source.repair_hint(info.name, source.location)
  system = [d for d in info.system_dirs
            if os.path.abspath(path).startswith(os.path.abspath(d) + os.sep)]
  if system and info.apt_package:
    return (f"reinstall the data package (sudo apt-get install --reinstall "
            f"{info.apt_package}), or point --data-dir at a good copy")
  return ("replace it with an intact copy of the upstream IDX file (download "
          "it again), or remove it and point --data-dir at a good copy")


def _decode_idx(info, source: _Source, split: str):
  """Decodes and fully checks one split's IDX files; returns TFDS-ordered arrays."""
  directory = source.location
  image_stem, label_stem = catalog.IDX_FILES[split]
  image_path = _idx_file(directory, image_stem)
  label_path = _idx_file(directory, label_stem)
  try:
    images, labels, digests = idx.read_pair_with_digests(
        image_path, label_path, info.idx_sha256.get(image_stem),
        info.idx_sha256.get(label_stem))
  except CorruptDataError as e:
    if e.fix:
      raise
    raise CorruptDataError(e.path, e.problem, _fix(info, source, e.path)) from e
  except FileNotFoundError as e:  # Vanished since _find looked.
    raise DataNotFoundError(
        info.name, [f"{directory} ({e.filename} disappeared while it was "
                    "being read)"], _hints(info, None), info.title) from e
  expected = info.num_examples[split]
  if images.shape[0] != expected:
    raise CorruptDataError(image_path, f"holds {images.shape[0]} examples, "
                           f"{info.name} {split} has {expected}",
                           _fix(info, source, image_path))
  height, width, channels = info.image_shape
  if images.shape[1:] != (height, width):
    raise CorruptDataError(image_path, f"images are {images.shape[1:]}, "
                           f"expected {(height, width)}",
                           _fix(info, source, image_path))
  order = ordering.tfds_order(split, expected)
  images = images[order].reshape(expected, height, width, channels)
  labels = labels[order]
  _check(info, images, labels, image_path, label_path,
         _fix(info, source, label_path))
  return images, labels.astype(np.int32), {image_path: digests[0],
                                           label_path: digests[1]}


def _idx_file(directory: str, stem: str) -> str:
  """Path of `stem` in `directory`, raw preferred over .gz; the .gz name if neither."""
  raw = os.path.join(directory, stem)
  return raw if os.path.isfile(raw) else raw + ".gz"


def _idx_dirs(info, data_dir, system_dirs) -> list[str]:
  """Folders searched for IDX files, in order, without duplicates.

  With an explicit data_dir, only it (and its dataset subfolders).
  """
  if data_dir:
    roots = [os.fspath(data_dir)]
  else:
    roots = [os.environ["ZOO_DATA_DIR"]] if os.environ.get("ZOO_DATA_DIR") else []
  dirs = []
  for root in roots:
    root = os.path.expanduser(root)
    dirs += [os.path.join(root, d) for d in info.dir_names] + [root]
  if not data_dir:
    dirs += list(info.system_dirs if system_dirs is None else system_dirs)
  return list(dict.fromkeys(os.path.abspath(d) for d in dirs))


def _missing_reason(directory: str, stems: Sequence[str]) -> str | None:
  """Why `directory` cannot provide the IDX files `stems`, or None if it can;
  "" if it does not exist or holds none of them (nothing worth saying)."""
  if not os.path.isdir(directory):
    return ""
  missing, unusable = [], []
  for stem in stems:
    if os.path.isfile(_idx_file(directory, stem)):
      continue
    raw = os.path.join(directory, stem)
    if os.path.lexists(raw) or os.path.lexists(raw + ".gz"):
      unusable.append(stem)  # a folder, a broken link, a link loop, ...
    else:
      missing.append(stem)
  if len(missing) == len(stems):
    return ""
  parts = []
  if missing:
    parts.append("missing " + ", ".join(f"{s}[.gz]" for s in missing))
  if unusable:
    parts.append("not a readable regular file: "
                 + ", ".join(f"{s}[.gz]" for s in unusable))
  return ", ".join(parts) or None


def _check_data_dir(info, data_dir) -> str:
  """The explicit data_dir, expanded; DataNotFoundError if it is not a folder."""
  path = os.path.expanduser(os.fspath(data_dir))
  if os.path.isdir(path):
    return path
  if os.path.exists(path):
    problem = "is not a directory"
  elif os.path.lexists(path):
    problem = "is a broken symbolic link (or a link loop)"
  else:
    problem = "does not exist"
  raise DataNotFoundError(
      info.name, [f"{path} ({problem})"],
      [f"check --data-dir (data_dir) {path}", _LEAVE_OUT], info.title)


def _find(info, bases, data_dir, download, system_dirs) -> _Source:
  """Resolution order: prepared TFDS, local IDX files, TFDS download; else raise.

  An explicit data_dir must be a folder, and is then the only place searched.
  """
  if data_dir:
    data_dir = _check_data_dir(info, data_dir)
  tried = []
  root = tfds_source.data_dir(data_dir)
  have_tfds = tfds_source.available()
  if tfds_source.prepared_files(info.name, root):
    if have_tfds:
      return _Source("tfds", root)
    tried.append(f"{os.path.join(root, info.name)} (prepared by TFDS: reading "
                 "it needs pip install 'zoo[tfds]')")
  else:
    tried.append(os.path.join(root, info.name))

  if info.idx:
    needed = [stem for b in bases for stem in catalog.IDX_FILES[b]]
    for directory in _idx_dirs(info, data_dir, system_dirs):
      reason = _missing_reason(directory, needed)
      if reason is None:
        return _Source("idx", directory)
      tried.append(f"{directory} ({reason})" if reason else directory)

  if download and not have_tfds:
    how = "pip install 'zoo[tfds]' to download it"
  elif download:
    try:
      offline = tfds_source.network_problem(info.name)
      if not offline:
        tfds_source.download_and_prepare(info.name, root)
        return _Source("tfds", root)
      how = f"connect to the network to download it ({offline})"
    except Exception as e:  # pylint: disable=broad-except  (offline, DNS, ...)
      reason = (str(e).strip().splitlines() or [""])[0][:200]
      how = f"retry the download into {root} ({type(e).__name__}: {reason})"
  else:
    how = "load with download=True to download it"
  raise DataNotFoundError(info.name, list(dict.fromkeys(tried)),
                          _hints(info, data_dir, how), info.title)


_LEAVE_OUT = ("leave out --data-dir to search TFDS_DATA_DIR, ZOO_DATA_DIR and "
              "the system folders")


def _hints(info, data_dir, download: str = "") -> list[str]:
  """Ways to get `info`'s data, likeliest first; `download`: how TFDS could
  download it (and why it did not)."""
  files = "the four IDX files" if info.idx else "a TFDS-prepared copy"
  local = (f"put {files} in --data-dir {data_dir}" if data_dir
           else f"pass --data-dir DIR holding {files}")
  hints = [f"sudo apt-get install {info.apt_package}"] if (
      info.apt_package and not data_dir) else []
  hints += [h for h in ((local, download) if info.idx else (download, local))
            if h]
  return hints + ([_LEAVE_OUT] if data_dir else [])
