"""load() on the real Fashion-MNIST (Debian IDX files): counts, caching, slicing,
class filtering, source-independent order, and the not-found message."""

import gzip
import os
import re
import subprocess
import sys
import time

import chex
import numpy as np
import pytest

from zoo.data import cache
from zoo.data import CacheWarning, clear_memory_cache, load, DataNotFoundError
from zoo.data import ordering
from zoo.data import sources
from zoo.data import splits
from zoo.data import tfds_source
from zoo.data.errors import CorruptDataError, SplitError, UnknownDatasetError
from zoo.errors import ConfigError, ZooError

DEBIAN = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN, "train-images-idx3-ubyte.gz")),
    reason="needs Fashion-MNIST: apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module", autouse=True)
def isolated_env(tmp_path_factory):
  """A private cache and an empty TFDS dir, so only the Debian IDX files count."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("ZOO_CACHE_DIR", str(tmp_path_factory.mktemp("zoo_cache")))
    mp.setenv("TFDS_DATA_DIR", str(tmp_path_factory.mktemp("empty_tfds")))
    mp.delenv("ZOO_DATA_DIR", raising=False)
    clear_memory_cache()
    yield
    clear_memory_cache()


@pytest.fixture(scope="module")
def train():
  return load("fashion_mnist", "train", download=False)


@pytest.fixture(scope="module")
def test_split():
  return load("fashion_mnist", "test", download=False)


def test_counts_shapes_and_values(train, test_split):
  for split, n, per_class in ((train, 60000, 6000), (test_split, 10000, 1000)):
    assert len(split) == n
    chex.assert_shape(split.images, (n, 28, 28, 1))
    chex.assert_type(split.images, np.uint8)
    chex.assert_shape(split.labels, (n,))
    chex.assert_type(split.labels, np.int32)
    np.testing.assert_array_equal(np.bincount(split.labels, minlength=10),
                                  [per_class] * 10)
    assert split.images.min() == 0 and split.images.max() == 255
    assert split.num_classes == 10 and split.class_names[9] == "Ankle boot"
    assert split.source == "idx:" + DEBIAN
    assert not split.images.flags.writeable and not split.labels.flags.writeable


def test_order_is_tfds_order(test_split):
  """IDX examples come reordered exactly as TFDS stores them (md5 key hash)."""
  raw = np.frombuffer(gzip.open(
      os.path.join(DEBIAN, "t10k-labels-idx1-ubyte.gz")).read()[8:], np.uint8)
  np.testing.assert_array_equal(test_split.labels,
                                raw[ordering.tfds_order("test", 10000)])
  # First labels of tfds.load("fashion_mnist", split="test") (TFDS 4.9, v3.0.1).
  np.testing.assert_array_equal(test_split.labels[:10], [4, 4, 9, 7, 5, 1, 0, 5, 7, 4])


def test_second_load_uses_disk_cache(train):
  clear_memory_cache()
  start = time.perf_counter()
  again = load("fashion_mnist", "train", download=False)
  assert time.perf_counter() - start < 1.0
  np.testing.assert_array_equal(again.images, train.images)
  np.testing.assert_array_equal(again.labels, train.labels)
  start = time.perf_counter()
  load("fashion_mnist", "train", download=False)  # in-process memo
  assert time.perf_counter() - start < 0.1


def test_damaged_cache_entry_is_rebuilt(test_split):
  key = cache.source_key("fashion_mnist/test/idx", [
      os.path.join(DEBIAN, f) for f in ("t10k-images-idx3-ubyte.gz",
                                        "t10k-labels-idx1-ubyte.gz")])
  entry = os.path.join(cache.entry_dir("fashion_mnist", key), "test.labels.npy")
  assert os.path.isfile(entry)
  with open(entry, "wb") as f:
    f.write(b"garbage")
  clear_memory_cache()
  with pytest.warns(CacheWarning, match=f"cache entry {entry}: .*decoding again"):
    again = load("fashion_mnist", "test", download=False)
  np.testing.assert_array_equal(again.labels, test_split.labels)
  assert np.load(entry).shape == (10000,)


def test_percent_slices_partition_train(train):
  head = load("fashion_mnist", "train[:90%]", download=False)
  tail = load("fashion_mnist", "train[90%:]", download=False)
  assert (len(head), len(tail)) == (54000, 6000)
  np.testing.assert_array_equal(np.concatenate([head.labels, tail.labels]),
                                train.labels)
  np.testing.assert_array_equal(np.concatenate([head.images, tail.images]),
                                train.images)


def test_absolute_slice_and_concatenation(train, test_split):
  first = load("fashion_mnist", "train[:1000]", download=False)
  np.testing.assert_array_equal(first.images, train.images[:1000])
  both = load("fashion_mnist", "train[-10:]+test[:5]", download=False)
  np.testing.assert_array_equal(
      both.labels, np.concatenate([train.labels[-10:], test_split.labels[:5]]))


_SPECS = ["train", "test", "all", "train[:90%]", "train[90%:]", "train[33%:67%]",
          "test[-10:]", "test[:-5%]+train[40%:60%]", "train[0.5%:99.5%]",
          "train[-99.5%:]", "train[1_0:2_0]", "train[0shard]", "train[-1shard:]",
          "train[:0shard]", "train[5:5]", "test[:0]", "train[-0%:]+test[90%:90%]",
          "train+test", "train + test", "bogus", "validation[:5]", "train[:200%]",
          "train[::2]", "", "train+", "all[:5]", "train[5.5:]", "train[:70000]",
          "train[-70000:]", "train[5]", "bogus+train[::2]", "train[x:]",
          "tra-in", "train[%:]"]


@pytest.mark.parametrize("n_train, n_test", [(60000, 10000), (60, 300), (7, 3)])
def test_split_slices_are_exactly_tfds(n_train, n_test):
  """zoo's own parser (the core install has no TFDS) against TFDS's
  ReadInstruction: the same ranges for every valid spec, an error for every
  spec TFDS refuses (and zoo refuses empty selections besides)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  counts = {"train": n_train, "test": n_test}
  infos = {k: tfds.core.SplitInfo(name=k, shard_lengths=[n], num_bytes=0)
           for k, n in counts.items()}
  for spec in _SPECS:
    try:
      want = [(i.splitname, i.from_ or 0,
               counts[i.splitname] if i.to is None else i.to)
              for i in tfds.core.ReadInstruction.from_spec(spec)
              .to_absolute(infos)]
    except (ValueError, AssertionError, NotImplementedError, KeyError,
            TypeError):
      want = None
    if want is None or any(hi <= lo for _, lo, hi in want):
      with pytest.raises(SplitError):
        splits.resolve(spec, counts)
    else:
      assert splits.resolve(spec, counts) == want, spec


def test_split_parsing_reads_tfds_syntax_without_tfds(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # not installed
  assert splits.resolve("train[:90%]", {"train": 60000, "test": 10000}) == [
      ("train", 0, 54000)]
  assert splits.resolve("test[1%:2%]+train[5:7]", {"train": 60, "test": 300}) == [
      ("test", 3, 6), ("train", 5, 7)]
  for bad in ("validation", "train[:200%]", "train[5:5]", "train[::2]"):
    with pytest.raises(ValueError):
      splits.resolve(bad, {"train": 60000, "test": 10000})


@pytest.mark.parametrize("bad, reason", [
    ("bogus", "Unknown split 'bogus'"),
    ("validation[:5]", "Unknown split 'validation'"),
    ("train[:200%]", "percent slice boundaries should be in"),
    ("train[::2]", "Unrecognized split format"),
    ("", "Unrecognized split format"),
    ("train+", "Unrecognized split format"),
    ("train[5:5]", "selects no examples of 'train'"),
    ("test[:0]", "selects no examples of 'test'"),
    ("train[-0%:]+test[90%:90%]", "selects no examples of 'test'"),
    (5, "split must be a string, got int 5"),
    (None, "split must be a string, got NoneType"),
])
def test_split_errors_are_typed_one_line_and_show_the_syntax(bad, reason):
  counts = {"train": 60000, "test": 10000}
  for call in (splits.check, splits.resolve):
    with pytest.raises(SplitError) as e:
      call(bad, counts)
    msg = str(e.value)
    assert isinstance(e.value, ZooError) and isinstance(e.value, ValueError)
    assert reason in msg and "\n" not in msg
    assert repr(bad) in msg
    assert "'train[:90%]'" in msg and "'train[:1000]+test'" in msg


def test_split_check_accepts_valid_specs_without_data():
  counts = {"train": 60000, "test": 10000}
  for good in ("train", "test", "train[:90%]", "train[90%:]", "train[:1000]+test",
               "test[-10:]"):
    assert splits.check(good, counts) is None
  assert "check(" in splits.__doc__


def test_bad_split_fails_before_looking_for_data(tmp_path, monkeypatch):
  """load() rejects the split string before touching any source."""
  def must_not_look(*args):
    raise AssertionError("looked for data although the split is invalid")
  monkeypatch.setattr(sources, "_find", must_not_look)
  with pytest.raises(SplitError, match="bad split 'bogus'"):
    load("fashion_mnist", "bogus")
  with pytest.raises(SplitError, match="selects no examples"):
    load("fashion_mnist", "train[10:10]")


def test_data_errors_are_zoo_errors_and_pickle():
  import pickle  # pylint: disable=g-import-not-at-top
  corrupt = CorruptDataError("/x/f.gz", "truncated\nreally", "reinstall it")
  assert isinstance(corrupt, ZooError) and isinstance(corrupt, ValueError)
  assert str(corrupt) == "/x/f.gz: truncated really; reinstall it"
  missing = DataNotFoundError("ds", ["here: no", "there: no"], ["get it", "or buy it"])
  assert isinstance(missing, ZooError) and isinstance(missing, FileNotFoundError)
  assert str(missing) == ("ds not found: get it, or or buy it; looked in: "
                          "here: no, there: no")
  assert missing.tried == ("here: no", "there: no")
  assert missing.hints == ("get it", "or buy it")
  named = DataNotFoundError("fashion_mnist", ["/a", "/b (empty)"], ["fix it"],
                            "Fashion-MNIST")
  assert str(named) == "Fashion-MNIST not found: fix it; looked in: /a, /b (empty)"
  for err in (corrupt, missing, named, SplitError("bad split")):
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err) and str(again) == str(err)


def test_classes_filter_and_relabel(test_split):
  binary = load("fashion_mnist", "test", classes=(7, 9), download=False)
  assert len(binary) == 2000
  assert binary.num_classes == 2
  assert binary.class_names == ("Sneaker", "Ankle boot")
  np.testing.assert_array_equal(np.bincount(binary.labels), [1000, 1000])
  keep = np.isin(test_split.labels, [7, 9])
  np.testing.assert_array_equal(binary.images, test_split.images[keep])
  np.testing.assert_array_equal(binary.labels,
                                np.where(test_split.labels[keep] == 7, 0, 1))
  reversed_ = load("fashion_mnist", "test", classes=(9, 7), download=False)
  np.testing.assert_array_equal(reversed_.labels, 1 - binary.labels)
  for bad in ((), (7, 7), (10,)):
    with pytest.raises(ValueError):
      load("fashion_mnist", "test", classes=bad, download=False)
  for bad in ((), (7, 7), (10,), ("x",)):
    with pytest.raises(ConfigError):
      load("fashion_mnist", "test", classes=bad, download=False)
  # A slice holding none of the classes is an error, not an empty dataset.
  first = test_split.labels[:3]
  missing = [c for c in range(10) if c not in first][:1]
  with pytest.raises(ConfigError, match=re.escape(
      f"classes {missing} select no examples of fashion_mnist split 'test[:3]'")):
    load("fashion_mnist", "test[:3]", classes=missing, download=False)


def test_missing_data_lists_every_place(tmp_path, monkeypatch):
  """Without data_dir: TFDS_DATA_DIR, ZOO_DATA_DIR (and its subfolders) and the
  system folders are all searched, and all listed, on one line."""
  empty_zoo, empty_tfds = tmp_path / "z", tmp_path / "t"
  for d in (empty_zoo, empty_tfds):
    d.mkdir()
  monkeypatch.setenv("ZOO_DATA_DIR", str(empty_zoo))
  monkeypatch.setenv("TFDS_DATA_DIR", str(empty_tfds))
  with pytest.raises(DataNotFoundError) as e:
    load("fashion_mnist", "train", download=False,
         system_dirs=[str(tmp_path / "no_debian")])
  msg = str(e.value)
  assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ZooError)
  # The fix first, then the places, paths only, in the order searched.
  places = [empty_tfds / "fashion_mnist", empty_zoo / "fashion_mnist",
            empty_zoo / "fashion-mnist", empty_zoo, tmp_path / "no_debian"]
  assert msg == (
      "Fashion-MNIST not found: sudo apt-get install dataset-fashion-mnist, or "
      "pass --data-dir DIR holding the four IDX files, or load with "
      "download=True to download it; looked in: "
      + ", ".join(map(str, places)))
  assert e.value.tried == tuple(map(str, places))
  # A folder holding some of the files says which are missing.
  (empty_zoo / "train-images-idx3-ubyte.gz").write_bytes(b"")
  with pytest.raises(DataNotFoundError) as e:
    load("fashion_mnist", "train", download=False, system_dirs=[])
  assert str(e.value).endswith(
      f"{empty_zoo} (missing train-labels-idx1-ubyte[.gz])")


def test_the_usual_missing_data_message_is_short(tmp_path, monkeypatch):
  """A new user without the data gets one short line, the fix first."""
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tensorflow_datasets"))
  monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
  monkeypatch.setattr(sources.tfds_source, "available", lambda: False)
  with pytest.raises(DataNotFoundError) as e:
    load("fashion_mnist", "train", system_dirs=[
        "/usr/share/datasets/fashion-mnist-absent"])
  msg = str(e.value)
  assert msg.startswith("Fashion-MNIST not found: sudo apt-get install "
                        "dataset-fashion-mnist, or pass --data-dir DIR")
  assert "pip install 'zoo[tfds]' to download it; looked in: " in msg
  # Besides the paths looked in (about 80 characters at their defaults).
  assert len(msg) - len(", ".join(e.value.tried)) < 220, msg


def test_explicit_empty_data_dir_is_the_only_place(tmp_path, monkeypatch):
  """An existing data_dir without the data is an error listing what was looked
  for there; it does not fall back to ZOO_DATA_DIR or the system folders (the
  real Debian files are there and must not be used)."""
  empty_data = tmp_path / "d"
  empty_data.mkdir()
  monkeypatch.setenv("ZOO_DATA_DIR", DEBIAN)
  with pytest.raises(DataNotFoundError) as e:
    load("fashion_mnist", "train", data_dir=empty_data, download=False)
  msg = str(e.value)
  assert msg == (
      f"Fashion-MNIST not found: put the four IDX files in --data-dir "
      f"{empty_data}, or load with download=True to download it, or leave out "
      "--data-dir to search TFDS_DATA_DIR, ZOO_DATA_DIR and the system "
      f"folders; looked in: {empty_data / 'fashion_mnist'}, "
      f"{empty_data / 'fashion-mnist'}, {empty_data}")
  assert DEBIAN not in msg


@pytest.mark.parametrize("kind", ["missing", "file", "loop"])
def test_explicit_data_dir_must_be_a_folder(tmp_path, kind):
  """A mistyped --data-dir is an error, never silently replaced by another source."""
  path = tmp_path / "data"
  if kind == "file":
    path.write_text("not a folder")
  elif kind == "loop":
    os.symlink(path, path)  # a link to itself: ELOOP
  with pytest.raises(DataNotFoundError) as e:
    load("fashion_mnist", "train", data_dir=path)  # download allowed: still an error
  msg = str(e.value)
  problem = {"missing": "does not exist", "file": "is not a directory",
             "loop": "is a broken symbolic link (or a link loop)"}[kind]
  assert msg == (f"Fashion-MNIST not found: check --data-dir (data_dir) "
                 f"{path}, or leave out --data-dir to search TFDS_DATA_DIR, "
                 "ZOO_DATA_DIR and the system folders; looked in: "
                 f"{path} ({problem})")
  assert isinstance(e.value, ZooError)


@pytest.mark.skipif(not tfds_source.available(), reason="the TFDS download path needs zoo[tfds] (test_extras covers its absence)")
def test_failed_download_is_reported(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  def offline(name, root):
    raise ConnectionError("simulated: DNS lookup failed")
  monkeypatch.setattr(sources.tfds_source, "download_and_prepare", offline)
  monkeypatch.setattr(sources.tfds_source, "network_problem", lambda name: None)
  with pytest.raises(DataNotFoundError) as e:
    load("cifar10", "train")
  assert str(e.value) == (
      f"CIFAR-10 not found: retry the download into {tmp_path} "
      "(ConnectionError: simulated: DNS lookup failed), or pass --data-dir "
      f"DIR holding a TFDS-prepared copy; looked in: {tmp_path / 'cifar10'}")


@pytest.mark.skipif(not tfds_source.available(), reason="the TFDS download path needs zoo[tfds] (test_extras covers its absence)")
def test_offline_skips_download_without_waiting(tmp_path, monkeypatch):
  """TFDS would retry ~3.5 min offline; an unreachable host skips it at once."""
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  def unreachable(address, timeout):
    raise OSError(f"simulated: {address[0]} unreachable")
  def must_not_run(name, root):
    raise AssertionError("download attempted although offline")
  monkeypatch.setattr(sources.tfds_source.socket, "create_connection", unreachable)
  monkeypatch.setattr(sources.tfds_source, "download_and_prepare", must_not_run)
  start = time.perf_counter()
  with pytest.raises(DataNotFoundError) as e:
    load("cifar10", "train")
  assert time.perf_counter() - start < 10
  assert str(e.value).startswith(
      "CIFAR-10 not found: connect to the network to download it (cannot "
      "reach www.cs.toronto.edu (OSError)), or pass --data-dir")


def test_unknown_dataset():
  with pytest.raises(ValueError, match="fashion_mnist"):
    load("imagenet", "train")
  with pytest.raises(UnknownDatasetError, match="Unknown dataset 'imagenet'"):
    load("imagenet", "train")
  with pytest.raises(UnknownDatasetError):
    load(["fashion_mnist"], "train")  # unhashable: not a TypeError traceback


def test_import_does_not_import_tensorflow():
  code = ("import sys, zoo.data; "
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
          "assert not bad, bad")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, "-c", code], check=True, cwd=repo)
