"""Everything that touches tensorflow_datasets, imported lazily (TF import is slow).

Reads a dataset already prepared in a TFDS data dir, or asks TFDS to download
and prepare it (needs network).
"""

from __future__ import annotations

import concurrent.futures
import glob
import importlib.resources
import os
import socket
import sys
import urllib.parse

import numpy as np


def import_tfds():
  """Imports tensorflow_datasets (which does not import TensorFlow by itself).

  TFDS 4.9.10 uses the `importlib_resources` backport unconditionally but only
  declares it for Python < 3.9 (tensorflow/datasets#11212), so without it
  `tfds.builder(...)` dies with ModuleNotFoundError. The stdlib module provides
  what TFDS uses (`.abc.Traversable`), so alias it when the backport is absent.
  """
  try:
    import importlib_resources  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    sys.modules.setdefault("importlib_resources", importlib.resources)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


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
  """
  infos = glob.glob(os.path.join(glob.escape(root), name, "*", "dataset_info.json"))
  files = []
  for info in infos:
    version_dir = os.path.dirname(info)
    files += [os.path.join(version_dir, f) for f in sorted(os.listdir(version_dir))
              if os.path.isfile(os.path.join(version_dir, f))]
  return files


def read_split(name: str, root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole prepared split as (uint8 NHWC images, int32 labels), in TFDS order."""
  tfds = import_tfds()
  builder = tfds.builder(name, data_dir=root)
  # Fixed-size batches, not batch_size=-1: that batches by the recorded example
  # count, which is unknown (-> sys.maxsize, a native abort) for mocked data.
  ds = builder.as_dataset(split=split, batch_size=_READ_BATCH,
                          as_supervised=True, shuffle_files=False)
  images, labels = [], []
  for image_batch, label_batch in tfds.as_numpy(ds):
    images.append(image_batch)
    labels.append(label_batch)
  if not images:
    raise ValueError(f"TFDS split {name}/{split} in {root} is empty")
  return np.concatenate(images), np.concatenate(labels).astype(np.int32)


_READ_BATCH = 10000


def network_problem(name: str, timeout: float = 5.0) -> str | None:
  """Why `name`'s download hosts are unreachable, or None if they answer.

  TFDS retries a failed download 10 times with backoff (~3.5 minutes offline),
  so probe the hosts first: one TCP connect each, `timeout` seconds at most.
  """
  tfds = import_tfds()
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
          return f"cannot reach {futures[future]} ({type(e).__name__}: {e})"
    except concurrent.futures.TimeoutError:
      return f"no answer from {', '.join(h for h, _ in hosts)} in {timeout:g} s"
    finally:
      pool.shutdown(wait=False, cancel_futures=True)
  return None


def download_and_prepare(name: str, root: str) -> None:
  """Downloads and prepares `name` into `root` through TFDS (needs network)."""
  tfds = import_tfds()
  tfds.builder(name, data_dir=root).download_and_prepare()
