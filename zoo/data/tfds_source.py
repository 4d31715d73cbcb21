"""Everything that touches tensorflow_datasets, imported lazily (TF import is slow).

Reads a dataset already prepared in a TFDS data dir, or asks TFDS to download
and prepare it (needs network).
"""

from __future__ import annotations

import concurrent.futures
import glob
import hashlib
import importlib.resources
import os
import socket
import sys
import urllib.parse

import numpy as np

from zoo.data.errors import CorruptDataError
from zoo.errors import installed, require


def import_tfds(tensorflow: bool = True):
  """Imports tensorflow_datasets and (unless `tensorflow` is False: TFDS's
  metadata needs none) the TensorFlow it reads with, quiet and off the GPUs
  (zoo.tfimport); raises MissingExtraError naming zoo[tfds] when either is
  not installed.

  TFDS 4.9.10 uses the `importlib_resources` backport unconditionally but only
  declares it for Python < 3.9 (tensorflow/datasets#11212), so without it
  `tfds.builder(...)` dies with ModuleNotFoundError. The stdlib module provides
  what TFDS uses (`.abc.Traversable`), so alias it when the backport is absent.
  """
  try:
    import importlib_resources  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    sys.modules.setdefault("importlib_resources", importlib.resources)
  what = "reading or preparing TFDS datasets"
  tfds = require("tensorflow_datasets", what, "tfds", "tensorflow-datasets")
  if tensorflow:
    from zoo import tfimport  # TFDS would import TF later, noisily
    tfimport.import_tf(what, "tfds")
  return tfds


def available() -> bool:
  """Whether TFDS (and the TensorFlow it reads with) is installed; a
  filesystem check, no import."""
  return installed("tensorflow_datasets") and installed("tensorflow")


def data_dir(explicit: str | os.PathLike | None = None) -> str:
  """TFDS data dir: the explicit one, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  if explicit:
    return os.path.expanduser(os.fspath(explicit))
  if os.environ.get("TFDS_DATA_DIR"):
    return os.path.expanduser(os.environ["TFDS_DATA_DIR"])
  return os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def prepared_files(name: str, root: str) -> list[str]:
  """Files of every prepared version of `name` under `root` ([] if none).

  A plain filesystem check, so that looking costs no TF/TFDS import.
  CorruptDataError if a version folder exists but cannot be listed.
  """
  infos = glob.glob(os.path.join(glob.escape(root), name, "*", "dataset_info.json"))
  files = []
  for info in sorted(infos):
    version_dir = os.path.dirname(info)
    try:
      files += [os.path.join(version_dir, f) for f in sorted(os.listdir(version_dir))
                if os.path.isfile(os.path.join(version_dir, f))]
    except OSError as e:
      raise CorruptDataError(version_dir, f"cannot be listed ({e})",
                             repair_hint(name, root)) from e
  return files


def repair_hint(name: str, root: str) -> str:
  """What to do about a damaged prepared copy of `name` in `root`."""
  local = (", or offline from the local IDX files: python -m zoo.data.tfds_local "
           f"--dataset {name} --data-dir {root}" if name == "fashion_mnist" else "")
  return (f"delete {os.path.join(root, name)} and prepare it again (load it "
          f"with download allowed{local}); or point --data-dir elsewhere")


def file_sha256(path: str) -> str:
  """sha256 of a file's bytes, read in chunks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


def read_split(name: str, root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole prepared split as (images, labels) as TFDS stores them, in TFDS order.

  Labels keep TFDS's integer dtype: the caller range-checks them before any
  cast. Whatever TFDS raises while reading (damaged records, missing shards,
  a broken dataset_info.json) becomes CorruptDataError naming the folder.
  """
  tfds = import_tfds()
  where = os.path.join(root, name)
  try:
    builder = tfds.builder(name, data_dir=root)
    # Fixed-size batches, not batch_size=-1: that batches by the recorded example
    # count, which is unknown (-> sys.maxsize, a native abort) for mocked data.
    ds = builder.as_dataset(split=split, batch_size=_READ_BATCH,
                            as_supervised=True, shuffle_files=False)
    images, labels = [], []
    for image_batch, label_batch in tfds.as_numpy(ds):
      images.append(np.asarray(image_batch))
      labels.append(np.asarray(label_batch))
  except Exception as e:  # pylint: disable=broad-except  (TF/TFDS error zoo)
    reason = (str(e).strip().splitlines() or [""])[0][:300]
    raise CorruptDataError(
        where, f"TFDS could not read split {split!r} of the prepared {name} "
        f"({type(e).__name__}: {reason})", repair_hint(name, root)) from e
  if not images:
    raise CorruptDataError(where, f"TFDS split {split!r} is empty",
                           repair_hint(name, root))
  return np.concatenate(images), np.concatenate(labels)


_READ_BATCH = 10000


def network_problem(name: str, timeout: float = 5.0) -> str | None:
  """Why `name`'s download hosts are unreachable, or None if they answer.

  TFDS retries a failed download 10 times with backoff (~3.5 minutes offline),
  so probe the hosts first: one TCP connect each, `timeout` seconds at most.
  """
  tfds = import_tfds(tensorflow=False)
  urls = list((tfds.builder_cls(name).url_infos or {}).keys())
  hosts = sorted({(u.hostname, u.port or (443 if u.scheme == "https" else 80))
                  for u in map(urllib.parse.urlparse, urls) if u.hostname})

  def connect(host, port):
    socket.create_connection((host, port), timeout=timeout).close()

  with concurrent.futures.ThreadPoolExecutor(max(1, len(hosts))) as pool:
    futures = {pool.submit(connect, h, p): h for h, p in hosts}
    try:
      for future in concurrent.futures.as_completed(futures, timeout=timeout + 1):
        try:
          future.result()
        except OSError as e:
          return f"cannot reach {futures[future]} ({type(e).__name__})"
    except concurrent.futures.TimeoutError:
      return f"no answer from {', '.join(h for h, _ in hosts)} in {timeout:g} s"
    finally:
      pool.shutdown(wait=False, cancel_futures=True)
  return None


def download_and_prepare(name: str, root: str) -> None:
  """Downloads and prepares `name` into `root` through TFDS (needs network)."""
  tfds = import_tfds()
  tfds.builder(name, data_dir=root).download_and_prepare()
