"""The TFDS path: plumbing under tfds.testing.mock_data, and a real offline
preparation of fashion_mnist from the Debian files that must equal the IDX path."""

import os

import chex
import numpy as np
import pytest

from zoo.data import clear_memory_cache, load, prepare_tfds_from_idx
from zoo.data import sources
from zoo.data.errors import UnknownDatasetError
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
    from_idx = load("fashion_mnist", split_name, data_dir=tmp_path / "none",
                    download=False)
    assert from_idx.source == "idx:" + DEBIAN
    raw = tfds.as_numpy(tfds.load("fashion_mnist", split=split_name,
                                  data_dir=tfds_dir, batch_size=-1,
                                  as_supervised=True, download=False))
    assert len(raw[1]) == n
    np.testing.assert_array_equal(raw[0], from_idx.images)
    np.testing.assert_array_equal(raw[1], from_idx.labels)
  # zoo's own TFDS path on the prepared copy (test split only: reading 60k
  # PNG-encoded train images again would add ~5 s for no new coverage).
  from_idx = load("fashion_mnist", "test", data_dir=tmp_path / "none",
                  download=False)
  from_tfds = load("fashion_mnist", "test", data_dir=tfds_dir, download=False)
  assert from_tfds.source == f"tfds:{tfds_dir}"
  np.testing.assert_array_equal(from_tfds.images, from_idx.images)
  np.testing.assert_array_equal(from_tfds.labels, from_idx.labels)


def test_tfds_local_errors_are_one_line(tmp_path, capsys):
  """python -m zoo.data.tfds_local: bad input is one line on stderr, exit 2."""
  from zoo.data import tfds_local  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as e:
    tfds_local.main(["--source-dir", str(tmp_path / "none"),
                     "--data-dir", str(tmp_path / "out")])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: Dataset 'fashion_mnist' was not found.")
  assert f"source_dir {tmp_path / 'none'}: missing train-images-idx3-ubyte.gz" in err
  assert err.count("\n") == 1
  with pytest.raises(UnknownDatasetError, match="supports"):
    tfds_local.prepare_tfds_from_idx("cifar10", data_dir=tmp_path / "out")
