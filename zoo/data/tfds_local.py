"""Prepare TFDS's fashion_mnist offline from local IDX .gz files (Debian's package).

Debian's .gz files hold upstream's exact deflate streams, but their gzip headers
lost the original file name and mtime, so TFDS's registered checksums reject
them. Restoring those two header fields gives back upstream's files byte for
byte; TFDS then takes them from `manual_dir` and verifies its own checksums, so
nothing about TFDS is patched or bypassed.

Usage: python -m zoo.data.tfds_local [--data-dir DIR] [--source-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile

from zoo.data import catalog
from zoo.data import tfds_source
from zoo.data.errors import CorruptDataError, DataNotFoundError, UnknownDatasetError
from zoo.errors import ZooError

# mtime fields of upstream's gzip headers (found by matching TFDS's checksums).
UPSTREAM_GZIP_MTIME = {
    "fashion_mnist": {
        "train-images-idx3-ubyte": 1504176606,
        "train-labels-idx1-ubyte": 1504176606,
        "t10k-images-idx3-ubyte": 1504176627,
        "t10k-labels-idx1-ubyte": 1504176627,
    },
}
_FNAME = 0x08  # gzip header flag: an original file name follows.
_SOURCE_HINT = "pass --source-dir DIR holding the four upstream .gz files"


def restore_gzip_header(src: str, dst: str, name: str, mtime: int) -> None:
  """Writes `src` to `dst` with the gzip header's FNAME=`name` and MTIME=`mtime`."""
  try:
    with open(src, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise
  except OSError as e:  # EISDIR, EACCES, ...
    raise CorruptDataError(src, f"cannot be read: {e}",
                           "check that it is a regular file you may read") from e
  if len(raw) < 18 or raw[:3] != b"\x1f\x8b\x08":
    raise CorruptDataError(src, "not a gzip (deflate) file")
  flags = raw[3]
  if flags == _FNAME:  # Already carries a name: assume it is the upstream file.
    data = raw
  elif flags == 0:
    data = (raw[:3] + bytes([_FNAME]) + struct.pack("<I", mtime) + raw[8:10]
            + name.encode("latin-1") + b"\0" + raw[10:])
  else:
    raise CorruptDataError(src, f"unexpected gzip header flags 0x{flags:02x}")
  with open(dst, "wb") as f:
    f.write(data)


def _find_source_dir(info) -> str:
  stems = UPSTREAM_GZIP_MTIME[info.name]
  for d in info.system_dirs:
    if all(os.path.isfile(os.path.join(d, s + ".gz")) for s in stems):
      return d
  raise DataNotFoundError(
      info.name, info.system_dirs,
      ([f"sudo apt-get install {info.apt_package}"] if info.apt_package
       else []) + [_SOURCE_HINT], info.title)


def prepare_tfds_from_idx(dataset: str = "fashion_mnist",
                          data_dir: str | os.PathLike | None = None,
                          source_dir: str | os.PathLike | None = None, *,
                          progress: bool = True) -> str:
  """Prepares `dataset` in the TFDS data dir from local .gz IDX files, offline.

  data_dir: TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).
  source_dir: folder with the four .gz files (default: the Debian package's).
  progress: False turns TFDS's progress bars off (for logs, not terminals).
  Returns the prepared version folder. Afterwards `load(dataset, ...)` and
  `tfds.load(dataset, data_dir=...)` read it like any prepared dataset.
  """
  info = catalog.get(dataset)
  if dataset not in UPSTREAM_GZIP_MTIME:
    raise UnknownDatasetError(f"offline TFDS preparation supports "
                              f"{sorted(UPSTREAM_GZIP_MTIME)}, not {dataset!r}")
  source_dir = os.fspath(source_dir) if source_dir else _find_source_dir(info)
  missing = [s + ".gz" for s in UPSTREAM_GZIP_MTIME[dataset]
             if not os.path.isfile(os.path.join(source_dir, s + ".gz"))]
  if missing:
    raise DataNotFoundError(
        dataset, [f"{source_dir} (missing {', '.join(missing)})"],
        [_SOURCE_HINT] + ([f"sudo apt-get install {info.apt_package} (into "
                           f"{info.system_dirs[0]})"] if info.apt_package
                          else []), info.title)
  root = tfds_source.data_dir(data_dir)
  tfds = tfds_source.import_tfds()
  if not progress:
    tfds.disable_progress_bar()
  builder = tfds.builder(dataset, data_dir=root)
  with tempfile.TemporaryDirectory(prefix="zoo-tfds-") as tmp:
    manual = os.path.join(tmp, "manual")
    os.makedirs(manual)
    for stem, mtime in UPSTREAM_GZIP_MTIME[dataset].items():
      restore_gzip_header(os.path.join(source_dir, stem + ".gz"),
                          os.path.join(manual, stem + ".gz"), stem, mtime)
    config = tfds.download.DownloadConfig(manual_dir=manual,
                                          try_download_gcs=False)
    try:
      builder.download_and_prepare(download_dir=os.path.join(tmp, "downloads"),
                                   download_config=config)
    except Exception as e:
      if type(e).__name__ == "NonMatchingChecksumError":
        raise CorruptDataError(
            source_dir, "after restoring the gzip headers the files still do "
            f"not match TFDS's registered checksums: {e}") from e
      raise
  return os.fspath(builder.data_dir)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", default="fashion_mnist",
                      choices=sorted(UPSTREAM_GZIP_MTIME))
  parser.add_argument("--data-dir", default=None, help="TFDS data dir")
  parser.add_argument("--source-dir", default=None, help="folder with the .gz files")
  args = parser.parse_args(argv)
  try:
    print(prepare_tfds_from_idx(args.dataset, args.data_dir, args.source_dir,
                                progress=sys.stderr.isatty()))
  except ZooError as e:  # One line, like the zoo CLI.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
