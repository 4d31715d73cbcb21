"""The TFDS path: plumbing under tfds.testing.mock_data, and a real offline
preparation of fashion_mnist from the Debian files that must equal the IDX path."""

import os
import subprocess
import sys
from pathlib import Path

import chex
import numpy as np
import pytest

from zoo.data import clear_memory_cache, load, prepare_tfds_from_idx
from zoo.data import sources, tfds_local
from zoo.data.errors import CorruptDataError, UnknownDatasetError
from zoo.data.tfds_source import import_tfds

tfds = import_tfds()
DEBIAN = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
  clear_memory_cache()
  yield
  clear_memory_cache()


@pytest.mark.parametrize("name, shape", [("cifar10", (32, 32, 3)),
                                         ("kmnist", (28, 28, 1))])
def test_mock_download_path(tmp_path, monkeypatch, name, shape):
  """Nothing local: load() asks TFDS to download_and_prepare, then reads it."""
  monkeypatch.setattr(sources.tfds_source, "network_problem", lambda name: None)
  (tmp_path / "tfds").mkdir()  # an explicit data_dir must exist
  with tfds.testing.mock_data(num_examples=20):
    split = load(name, "train", data_dir=tmp_path / "tfds")
    half = load(name, "test[:50%]", data_dir=tmp_path / "tfds")
    binary = load(name, "train", classes=(3, 1), data_dir=tmp_path / "tfds")
  chex.assert_shape(split.images, (20,) + shape)
  chex.assert_type(split.images, np.uint8)
  chex.assert_type(split.labels, np.int32)
  assert split.labels.min() >= 0 and split.labels.max() < 10
  assert split.source == f"tfds:{tmp_path / 'tfds'}"
  assert split.num_classes == 10 and len(half) == 10
  assert binary.num_classes == 2 and set(binary.labels) <= {0, 1}
  assert len(binary) == int(np.isin(split.labels, [3, 1]).sum())


def test_mock_prepared_path_is_preferred(tmp_path, monkeypatch):
  """A prepared version in the TFDS data dir wins over IDX files and downloads."""
  version_dir = tmp_path / "tfds" / "fashion_mnist" / "3.0.1"
  version_dir.mkdir(parents=True)
  (version_dir / "dataset_info.json").write_text("{}")  # what the lookup checks

  def no_download(name, root):
    raise AssertionError("must not download when a prepared copy exists")
  monkeypatch.setattr(sources.tfds_source, "download_and_prepare", no_download)
  with tfds.testing.mock_data(num_examples=7):
    split = load("fashion_mnist", "test", system_dirs=[DEBIAN])
    again = load("fashion_mnist", "test", system_dirs=[DEBIAN])  # memo
  assert split.source == f"tfds:{tmp_path / 'tfds'}"
  chex.assert_shape(split.images, (7, 28, 28, 1))
  np.testing.assert_array_equal(again.images, split.images)
  assert split.class_names[7] == "Sneaker"


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN, "train-images-idx3-ubyte.gz")),
    reason="needs Fashion-MNIST: apt-get install dataset-fashion-mnist")
def test_tfds_prepared_offline_from_debian_equals_idx(tmp_path):
  """TFDS accepts the Debian files once their gzip headers are restored (its own
  checksums pass), and what it prepares equals the IDX reader's, in order."""
  tfds_dir = tmp_path / "prepared"
  version_dir = prepare_tfds_from_idx("fashion_mnist", data_dir=tfds_dir)
  assert os.path.isfile(os.path.join(version_dir, "dataset_info.json"))
  for split_name, n in (("train", 60000), ("test", 10000)):
    from_idx = load("fashion_mnist", split_name, download=False)
    assert from_idx.source == "idx:" + DEBIAN
    raw = tfds.as_numpy(tfds.load("fashion_mnist", split=split_name,
                                  data_dir=tfds_dir, batch_size=-1,
                                  as_supervised=True, download=False))
    assert len(raw[1]) == n
    np.testing.assert_array_equal(raw[0], from_idx.images)
    np.testing.assert_array_equal(raw[1], from_idx.labels)
  # zoo's own TFDS path on the prepared copy (test split only: reading 60k
  # PNG-encoded train images again would add ~5 s for no new coverage).
  from_idx = load("fashion_mnist", "test", download=False)
  from_tfds = load("fashion_mnist", "test", data_dir=tfds_dir, download=False)
  assert from_tfds.source == f"tfds:{tfds_dir}"
  np.testing.assert_array_equal(from_tfds.images, from_idx.images)
  np.testing.assert_array_equal(from_tfds.labels, from_idx.labels)
  # A cut record file (an interrupted copy) is CorruptDataError, not TF's
  # DataLossError traceback, and the cached entry of the intact file is not used.
  record, = [f for f in os.listdir(version_dir) if "test.tfrecord" in f]
  path = os.path.join(version_dir, record)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  clear_memory_cache()
  with pytest.raises(CorruptDataError) as e:
    load("fashion_mnist", "test", data_dir=tfds_dir, download=False)
  assert str(e.value).startswith(
      f"{tfds_dir / 'fashion_mnist'}: TFDS could not read split 'test'")
  assert f"delete {tfds_dir / 'fashion_mnist'} and prepare it again" in str(e.value)


def _fake_prepared(tmp_path, name="fashion_mnist", info="{}"):
  version_dir = tmp_path / "tfds" / name / "3.0.1"
  version_dir.mkdir(parents=True)
  (version_dir / "dataset_info.json").write_text(info)
  return version_dir


@pytest.mark.parametrize("info", ["{}", "not json {", ""])
def test_unreadable_prepared_copy_is_corrupt_data(tmp_path, info):
  """A prepared folder TFDS cannot read (here: no records, a broken
  dataset_info.json) is CorruptDataError naming it and how to redo it, not a
  TF/TFDS traceback."""
  _fake_prepared(tmp_path, info=info)
  with pytest.raises(CorruptDataError) as e:
    load("fashion_mnist", "test", download=False)
  msg = str(e.value)
  where = tmp_path / "tfds" / "fashion_mnist"
  assert msg.startswith(f"{where}: TFDS could not read split 'test'")
  assert f"delete {where} and prepare it again" in msg
  assert "python -m zoo.data.tfds_local" in msg and "\n" not in msg


@pytest.mark.parametrize("labels, images, problem", [
    (np.array([0, 200, 3], np.int64), None, "label 200 at example 1"),
    (np.array([0, -1, 3], np.int64), None, "label -1 at example 1"),
    # int64 2**32 + 1 would become 1 if cast to int32 before the check.
    (np.array([0, 2**32 + 1, 3], np.int64), None, "label 4294967297 at example 1"),
    (np.array([0, 1, 2], np.int64), np.zeros((3, 32, 32, 3), np.uint8),
     "images are uint8 (3, 32, 32, 3), expected uint8 (N, 28, 28, 1)"),
    (np.array([0, 1, 2], np.int64), np.zeros((3, 28, 28, 1), np.float32),
     "images are float32"),
    (np.array([0.5, 1, 2]), None, "labels are float64"),
    (np.array([0, 1], np.int64), None, "2 labels for 3 images"),
])
def test_prepared_data_is_checked(tmp_path, monkeypatch, labels, images, problem):
  """Whatever TFDS returns is range- and shape-checked before use or caching."""
  _fake_prepared(tmp_path)
  if images is None:
    images = np.zeros((3, 28, 28, 1), np.uint8)
  monkeypatch.setattr(sources.tfds_source, "read_split",
                      lambda name, root, split: (images, labels))
  with pytest.raises(CorruptDataError) as e:
    load("fashion_mnist", "test", download=False)
  where = tmp_path / "tfds" / "fashion_mnist"
  assert str(e.value).startswith(f"{where}: {problem}")
  assert f"delete {where} and prepare it again" in str(e.value)
  assert not (tmp_path / "cache").exists() or not any(
      (tmp_path / "cache").rglob("*.npy"))


def test_tfds_local_prints_only_its_own_lines(tmp_path):
  """`python -m zoo.data.tfds_local` as a command: no runpy warning about the
  module being imported before it runs, and TensorFlow (imported, its GPUs
  looked up) prints none of its C++ log lines; bad files give one line."""
  source = tmp_path / "source"
  source.mkdir()
  for stem in tfds_local.UPSTREAM_GZIP_MTIME["fashion_mnist"]:
    (source / f"{stem}.gz").write_bytes(b"not a gzip file at all")
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}
  env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
  proc = subprocess.run(
      [sys.executable, "-m", "zoo.data.tfds_local", "--source-dir",
       str(source), "--data-dir", str(tmp_path / "tfds")],
      env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-3000:]
  assert proc.stderr == (f"error: {source / 'train-images-idx3-ubyte.gz'}: "
                         "not a gzip (deflate) file\n")


def test_tfds_local_errors_are_one_line(tmp_path, capsys):
  """python -m zoo.data.tfds_local: bad input is one line on stderr, exit 2."""
  from zoo.data import tfds_local  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as e:
    tfds_local.main(["--source-dir", str(tmp_path / "none"),
                     "--data-dir", str(tmp_path / "out")])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: Fashion-MNIST not found: pass --source-dir "
                        "DIR holding the four upstream .gz files")
  assert f"looked in: {tmp_path / 'none'} (missing train-images-idx3-ubyte.gz" in err
  assert err.count("\n") == 1
  with pytest.raises(UnknownDatasetError, match="supports"):
    tfds_local.prepare_tfds_from_idx("cifar10", data_dir=tmp_path / "out")
