"""IDX reader: valid files decode exactly; damaged files raise CorruptDataError."""

import dataclasses
import gzip
import os
import shutil

import numpy as np
import pytest

from zoo.data import idx
from zoo.data import load
from zoo.data.catalog import DATASETS
from zoo.data.errors import CorruptDataError, DataNotFoundError
from zoo.errors import ZooError

DEBIAN = "/usr/share/datasets/fashion-mnist"
needs_debian = pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN, "t10k-labels-idx1-ubyte.gz")),
    reason="needs Fashion-MNIST: apt-get install dataset-fashion-mnist")


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
  header = magic.to_bytes(4, "big") + b"".join(
      d.to_bytes(4, "big") for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def images():
  return np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(tmp_path, images, compress):
  data = idx_bytes(images, idx.IMAGES_MAGIC)
  path = tmp_path / ("x.gz" if compress else "x")
  path.write_bytes(gzip.compress(data) if compress else data)
  out = idx.read_images(path)
  np.testing.assert_array_equal(out, images)
  assert out.dtype == np.uint8 and not out.flags.writeable


def test_labels_and_pair(tmp_path, images):
  (tmp_path / "i").write_bytes(idx_bytes(images, idx.IMAGES_MAGIC))
  (tmp_path / "l").write_bytes(idx_bytes(np.array([1, 2, 3]), idx.LABELS_MAGIC))
  got_images, got_labels = idx.read_pair(tmp_path / "i", tmp_path / "l")
  np.testing.assert_array_equal(got_labels, [1, 2, 3])
  assert got_images.shape == (3, 4, 5)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"\0", "trailing bytes"),
    (lambda b: b[:7], "shorter than the 16-byte IDX header"),
    (lambda b: b"\x00\x00\x08\x01" + b[4:], "bad magic number 2049"),
    (lambda b: b[:4] + (0).to_bytes(4, "big") + b[8:], "empty array"),
])
def test_damaged_raw_file(tmp_path, images, damage, message):
  path = tmp_path / "bad-images"
  path.write_bytes(damage(idx_bytes(images, idx.IMAGES_MAGIC)))
  with pytest.raises(CorruptDataError, match=message) as e:
    idx.read_images(path)
  assert str(path) in str(e.value) and isinstance(e.value, ValueError)


def test_damaged_gzip_stream(tmp_path, images):
  blob = gzip.compress(idx_bytes(images, idx.IMAGES_MAGIC))
  (tmp_path / "cut.gz").write_bytes(blob[:-10])
  with pytest.raises(CorruptDataError, match="damaged gzip stream"):
    idx.read_images(tmp_path / "cut.gz")
  (tmp_path / "plain.gz").write_bytes(b"not gzip at all")
  with pytest.raises(CorruptDataError, match="not gzip"):
    idx.read_images(tmp_path / "plain.gz")


def test_count_mismatch_and_hash(tmp_path, images):
  (tmp_path / "i").write_bytes(idx_bytes(images, idx.IMAGES_MAGIC))
  (tmp_path / "l").write_bytes(idx_bytes(np.array([1, 2]), idx.LABELS_MAGIC))
  with pytest.raises(CorruptDataError, match="holds 2 labels but .* 3 images"):
    idx.read_pair(tmp_path / "i", tmp_path / "l")
  with pytest.raises(CorruptDataError, match="sha256"):
    idx.read_images(tmp_path / "i", sha256="0" * 64)


def _copy_test_split(dst):
  for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    shutil.copy(os.path.join(DEBIAN, name), dst / name)


@needs_debian
def test_real_truncated_file_rejected_by_load(tmp_path, monkeypatch):
  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
  data = tmp_path / "data"
  data.mkdir()
  _copy_test_split(data)
  path = data / "t10k-images-idx3-ubyte.gz"
  raw = gzip.decompress(path.read_bytes())
  path.write_bytes(gzip.compress(raw[:-784], compresslevel=1))  # one image short
  with pytest.raises(CorruptDataError, match="truncated") as e:
    load("fashion_mnist", "test", data_dir=data, download=False, system_dirs=())
  assert str(path) in str(e.value)
  # A cut gzip stream (the usual interrupted copy) is caught too.
  path.write_bytes(gzip.compress(raw, compresslevel=1)[:100000])
  with pytest.raises(CorruptDataError, match="damaged gzip"):
    load("fashion_mnist", "test", data_dir=data, download=False, system_dirs=())


@needs_debian
def test_real_flipped_magic_rejected_by_load(tmp_path, monkeypatch):
  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
  data = tmp_path / "data"
  data.mkdir()
  _copy_test_split(data)
  gz = data / "t10k-labels-idx1-ubyte.gz"
  raw = bytearray(gzip.decompress(gz.read_bytes()))
  raw[3] ^= 0x02  # 2049 -> 2051
  gz.unlink()
  (data / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))  # raw file, no .gz
  with pytest.raises(CorruptDataError, match="bad magic number 2051") as e:
    load("fashion_mnist", "test", data_dir=data, download=False, system_dirs=())
  assert "t10k-labels-idx1-ubyte" in str(e.value)


@needs_debian
def test_real_content_change_caught_by_sha256(tmp_path, monkeypatch):
  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
  data = tmp_path / "data"
  data.mkdir()
  _copy_test_split(data)
  gz = data / "t10k-labels-idx1-ubyte.gz"
  raw = bytearray(gzip.decompress(gz.read_bytes()))
  raw[100] = (raw[100] + 1) % 10  # still a valid label: only the hash can tell
  gz.write_bytes(gzip.compress(bytes(raw)))
  with pytest.raises(CorruptDataError, match="sha256"):
    load("fashion_mnist", "test", data_dir=data, download=False, system_dirs=())


def test_huge_count_in_header_allocates_nothing(tmp_path):
  """A header declaring 2**32-1 images of 28x28 (~3 TB) over a few bytes is
  'truncated', decided from the header (allocating would fail with MemoryError)."""
  header = (idx.IMAGES_MAGIC.to_bytes(4, "big") + (2**32 - 1).to_bytes(4, "big")
            + (28).to_bytes(4, "big") * 2)
  (tmp_path / "huge").write_bytes(header + b"\0" * 784)
  with pytest.raises(CorruptDataError, match="truncated: header declares shape "
                     r"\(4294967295, 28, 28\)"):
    idx.read_images(tmp_path / "huge")


def test_header_dims_whose_product_wraps_in_int64(tmp_path):
  """(2**31, 2**31, 4) elements is 2**64, which int64 arithmetic wraps to 0, so a
  header-only file looked complete and reshape raised a bare ValueError."""
  header = (idx.IMAGES_MAGIC.to_bytes(4, "big") + (2**31).to_bytes(4, "big") * 2
            + (4).to_bytes(4, "big"))
  (tmp_path / "wrap").write_bytes(header)
  with pytest.raises(CorruptDataError, match="truncated"):
    idx.read_images(tmp_path / "wrap")


def test_unreadable_path_is_corrupt_data_with_a_fix(tmp_path):
  """EISDIR (as EACCES, EIO: any OSError but a missing file) names the file and
  what to check, as a ZooError."""
  (tmp_path / "dir.gz").mkdir()
  with pytest.raises(CorruptDataError, match="cannot be read") as e:
    idx.read_images(tmp_path / "dir.gz")
  assert str(tmp_path / "dir.gz") in str(e.value)
  assert "permissions" in str(e.value) and isinstance(e.value, ZooError)


def _mnist_from_fashion_test(dst, label_at_0=None):
  """The Fashion-MNIST test files under MNIST's names (MNIST has no catalog
  sha256, so only the structural and range checks stand between a bad file and
  a training run); optionally with label 0 replaced."""
  for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
    raw = gzip.decompress(open(os.path.join(DEBIAN, stem + ".gz"), "rb").read())
    if label_at_0 is not None and "labels" in stem:
      raw = raw[:8] + bytes([label_at_0]) + raw[9:]
    (dst / stem).write_bytes(raw)


@needs_debian
def test_label_out_of_range_is_corrupt_data(tmp_path, monkeypatch):
  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
  data = tmp_path / "data"
  data.mkdir()
  _mnist_from_fashion_test(data, label_at_0=200)
  with pytest.raises(CorruptDataError) as e:
    load("mnist", "test", data_dir=data, download=False)
  msg = str(e.value)
  assert msg.startswith(f"{data / 't10k-labels-idx1-ubyte'}: label 200 at example")
  assert "outside mnist's 10 classes 0..9" in msg
  assert "replace it with an intact copy" in msg and "\n" not in msg
  assert not (tmp_path / "cache").exists() or not any(
      (tmp_path / "cache").rglob("*.npy"))  # nothing cached from a bad source


@needs_debian
def test_system_file_fix_says_reinstall(tmp_path, monkeypatch):
  """A damaged file under the Debian package's folder: the fix is a reinstall."""
  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
  system = tmp_path / "usr_share"
  system.mkdir()
  _copy_test_split(system)
  (system / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b broken")
  info = DATASETS["fashion_mnist"]
  monkeypatch.setitem(DATASETS, "fashion_mnist",
                      dataclasses.replace(info, system_dirs=(str(system),)))
  with pytest.raises(CorruptDataError, match="damaged gzip stream") as e:
    load("fashion_mnist", "test", download=False)
  assert "sudo apt-get install --reinstall dataset-fashion-mnist" in str(e.value)


@needs_debian
@pytest.mark.parametrize("kind", ["directory", "loop", "dangling"])
def test_idx_name_that_is_not_a_file(tmp_path, monkeypatch, kind):
  """A folder, a symlink loop or a dangling link under an IDX name is reported
  as such, not as 'missing' and not as a traceback."""
  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
  data = tmp_path / "data"
  data.mkdir()
  _copy_test_split(data)
  bad = data / "t10k-labels-idx1-ubyte.gz"
  bad.unlink()
  if kind == "directory":
    bad.mkdir()
  elif kind == "loop":
    os.symlink(bad, bad)
  else:
    os.symlink(tmp_path / "gone", bad)
  with pytest.raises(DataNotFoundError) as e:
    load("fashion_mnist", "test", data_dir=data, download=False)
  assert str(e.value).endswith(f"{data} (not a readable regular file: "
                               "t10k-labels-idx1-ubyte[.gz])")
