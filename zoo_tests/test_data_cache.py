"""The decoded-data cache is checked, not trusted: a tampered, stale or half-written
entry is never used (CacheWarning naming the file, then decoded again); hostile
files (pickles, huge headers, FIFOs) are never unpickled, allocated or waited on;
an unwritable cache only costs speed."""

import contextlib
import errno
import hashlib
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import warnings

import numpy as np
from numpy.lib import format as npy_format
import pytest

from zoo.data import cache
from zoo.data import CacheWarning, CorruptDataError, clear_memory_cache, load
from zoo.data.catalog import DATASETS

DEBIAN = "/usr/share/datasets/fashion-mnist"
TEST_FILES = [os.path.join(DEBIAN, f) for f in ("t10k-images-idx3-ubyte.gz",
                                                "t10k-labels-idx1-ubyte.gz")]
needs_debian = pytest.mark.skipif(
    not os.path.isfile(TEST_FILES[0]),
    reason="needs Fashion-MNIST: apt-get install dataset-fashion-mnist")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def no_memo(monkeypatch, tmp_path):
  """Each test: its own cache dir, no in-process memo, only the Debian files."""
  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds"))
  monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
  clear_memory_cache()
  yield
  clear_memory_cache()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The test split decoded once, and a cache folder holding its entry."""
  if not os.path.isfile(TEST_FILES[0]):
    pytest.skip("needs Fashion-MNIST: apt-get install dataset-fashion-mnist")
  primed = tmp_path_factory.mktemp("primed")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("ZOO_CACHE_DIR", str(primed))
    mp.setenv("TFDS_DATA_DIR", str(primed / "no_tfds"))
    mp.delenv("ZOO_DATA_DIR", raising=False)
    clear_memory_cache()
    split = load("fashion_mnist", "test", download=False)
    clear_memory_cache()
  return split, primed


@pytest.fixture
def entry(reference, tmp_path):
  """A private copy of the primed cache; returns the test split's entry folder."""
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(reference[1], tmp_path / "cache")
  key = cache.source_key("fashion_mnist/test/idx", TEST_FILES)
  directory = pathlib.Path(cache.entry_dir("fashion_mnist", key))
  assert (directory / cache.RECORD).is_file()
  return directory


def load_test(**kwargs):
  return load("fashion_mnist", "test", download=False, **kwargs)


def assert_equal_split(got, reference):
  np.testing.assert_array_equal(got.images, reference[0].images)
  np.testing.assert_array_equal(got.labels, reference[0].labels)


def load_without_warning():
  with warnings.catch_warnings():
    warnings.simplefilter("error", CacheWarning)
    clear_memory_cache()
    return load_test()


def npy_bytes(array, allow_pickle=False) -> bytes:
  buf = io.BytesIO()
  np.save(buf, array, allow_pickle=allow_pickle)
  return buf.getvalue()


def rewrite_consistently(directory, name, data: bytes, **fields):
  """What a determined tamperer does: replace a .npy file AND fix its record."""
  (directory / (name + ".npy")).write_bytes(data)
  record = json.loads((directory / cache.RECORD).read_text())
  record["arrays"][name].update(bytes=len(data),
                                sha256=hashlib.sha256(data).hexdigest(), **fields)
  (directory / cache.RECORD).write_text(json.dumps(record))


# --- what the record holds, and that a good entry is used without a warning ---


@needs_debian
def test_record_holds_source_and_array_digests(entry, reference):
  record = json.loads((entry / cache.RECORD).read_text())
  assert record["format"] == cache.FORMAT_VERSION
  expected = DATASETS["fashion_mnist"].idx_sha256
  for path in TEST_FILES:
    stem = os.path.basename(path)[:-3]
    assert record["sources"][path]["sha256"] == expected[stem]
    assert record["sources"][path]["size"] == os.stat(path).st_size
  for name in ("test.images", "test.labels"):
    data = (entry / (name + ".npy")).read_bytes()
    assert record["arrays"][name]["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["arrays"][name]["bytes"] == len(data)
  assert record["arrays"]["test.labels"]["shape"] == [10000]
  got = load_without_warning()  # from the cache: no decode, no warning
  assert_equal_split(got, reference)
  assert not got.labels.flags.writeable


# --- tampered, stale and half-written entries: warned about, never used ---


@needs_debian
def test_edited_labels_are_detected_and_redecoded(entry, reference):
  """The adversarial case: shuffled labels (valid .npy, same size) used to give
  exit 0 and chance accuracy. Now the digest differs: warning, fresh decode."""
  labels_file = entry / "test.labels.npy"
  labels = np.load(labels_file)
  labels_file.write_bytes(npy_bytes(np.roll(labels, 1)))
  with pytest.warns(CacheWarning, match=(
      f"cache entry {re.escape(str(labels_file))}: content sha256 .* does not match its "
      "record's .* not used, decoding again from the source")):
    got = load_test()
  assert_equal_split(got, reference)
  assert_equal_split(load_without_warning(), reference)  # rewritten, verifies


@needs_debian
def test_out_of_range_label_with_forged_record_is_not_used(entry, reference):
  """Even with a record recomputed to match, a label outside the 10 classes is
  caught by the range check (so it can never reach the loss as a NaN)."""
  labels = np.load(entry / "test.labels.npy")
  labels[123] = 200
  rewrite_consistently(entry, "test.labels", npy_bytes(labels))
  with pytest.warns(CacheWarning, match=(
      f"cache entry {re.escape(str(entry / 'test.labels.npy'))}: label 200 at "
      r"example 123 \(1 such\) is outside fashion_mnist's 10 classes 0\.\.9; "
      "not used")):
    got = load_test()
  assert_equal_split(got, reference)


@needs_debian
def test_record_from_other_source_content_is_stale(entry, reference):
  """The record says what the arrays were decoded from; a digest that is not the
  catalog's (e.g. decoded by an older zoo from another file) is stale."""
  record = json.loads((entry / cache.RECORD).read_text())
  record["sources"][TEST_FILES[1]]["sha256"] = "0" * 64
  (entry / cache.RECORD).write_text(json.dumps(record))
  with pytest.warns(CacheWarning, match=(
      f"cache entry {re.escape(str(entry / cache.RECORD))}: stale: decoded from "
      f"{re.escape(TEST_FILES[1])} "
      "with sha256 0{64}, the catalog expects 0402a96d")):
    got = load_test()
  assert_equal_split(got, reference)
  load_without_warning()


@needs_debian
@pytest.mark.parametrize("damage", ["delete", "garbage", "truncate", "old_format"])
def test_damaged_record_is_not_used(entry, reference, damage):
  record = entry / cache.RECORD
  if damage == "delete":  # a crash between the arrays and the record
    record.unlink()
    message = re.escape(f"{entry / 'test.images.npy'}: has no record.json")
  elif damage == "garbage":
    record.write_bytes(b"\x00\xff not json")
    message = re.escape(f"{record}: malformed")
  elif damage == "truncate":
    record.write_bytes(record.read_bytes()[:50])
    message = re.escape(f"{record}: malformed")
  else:
    record.write_text(record.read_text().replace(
        f'"format": {cache.FORMAT_VERSION}', '"format": 1'))
    message = re.escape(
        f"{record}: format 1, this zoo writes {cache.FORMAT_VERSION}")
  with pytest.warns(CacheWarning, match=message):
    got = load_test()
  assert_equal_split(got, reference)
  load_without_warning()


def test_crash_between_arrays_and_record_never_matches(tmp_path):
  """A writer that dies after replacing the arrays but before the record leaves
  the old record, whose digests do not match the new arrays: entry unused."""
  old = {"a": np.arange(10, dtype=np.int32)}
  cache.save("ds", "k", old, {})
  real_write = cache._write_atomic

  def die_on_record(directory, name, data):
    if name == cache.RECORD:
      raise KeyboardInterrupt("killed")
    real_write(directory, name, data)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(cache, "_write_atomic", die_on_record)
    with pytest.raises(KeyboardInterrupt):
      cache.save("ds", "k", {"a": np.arange(10, dtype=np.int32)[::-1]}, {})
  path = os.path.join(cache.entry_dir("ds", "k"), "a.npy")
  with pytest.warns(CacheWarning, match=re.escape(f"{path}: content sha256")):
    assert cache.load("ds", "k", ["a"], {}) is None


def test_crash_inside_a_write_leaves_no_partial_file(tmp_path):
  """Killed while writing the temp file: the old entry stays whole and valid,
  and the temp file is removed."""
  good = {"a": np.arange(1000, dtype=np.int32)}
  cache.save("ds", "k", good, {})

  real_open = open

  def dying_open(path, mode="r", *args, **kwargs):
    f = real_open(path, mode, *args, **kwargs)
    if "x" in mode:
      f.write(b"partial")
      f.close()
      raise KeyboardInterrupt("killed mid-write")
    return f

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr("builtins.open", dying_open)
    with pytest.raises(KeyboardInterrupt):
      cache.save("ds", "k", {"a": np.zeros(1000, np.int32)}, {})
  directory = cache.entry_dir("ds", "k")
  assert not [n for n in os.listdir(directory) if n.endswith(".tmp")]
  with warnings.catch_warnings():
    warnings.simplefilter("error", CacheWarning)
    np.testing.assert_array_equal(cache.load("ds", "k", ["a"], {})["a"], good["a"])


def test_concurrent_writers_in_threads(tmp_path):
  """Many writers of the same entry at once: every file is whole, the entry
  verifies, and no temp file is left."""
  arrays = {"x": np.arange(200000, dtype=np.uint8).reshape(-1, 4),
            "y": np.arange(50000, dtype=np.int32)}
  errors = []

  def write():
    try:
      cache.save("ds", "k", arrays, {})
    except BaseException as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=write) for _ in range(8)]
  with warnings.catch_warnings():
    warnings.simplefilter("error", CacheWarning)
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    assert not errors
    got = cache.load("ds", "k", ["x", "y"], {})
  for name in arrays:
    np.testing.assert_array_equal(got[name], arrays[name])
  assert not [n for n in os.listdir(cache.entry_dir("ds", "k"))
              if n.endswith(".tmp")]


@needs_debian
def test_two_processes_decoding_at_once(tmp_path, reference):
  """Two processes load the same split into an empty cache at the same time:
  both get the right data and the entry they leave verifies."""
  code = ("import sys, zoo.data as d; s = d.load('fashion_mnist', 'test', "
          "download=False); print(int(s.labels.astype('int64').sum()), "
          "s.images.sum(dtype='int64'))")
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for _ in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  want = (f"{int(reference[0].labels.astype(np.int64).sum())} "
          f"{reference[0].images.sum(dtype=np.int64)}")
  assert [o[0].strip() for o in outs] == [want, want]
  assert_equal_split(load_without_warning(), reference)


# --- hostile files: never unpickled, never allocated, never waited on ---


@needs_debian
def test_pickled_object_array_is_never_unpickled(entry, reference, tmp_path):
  marker = tmp_path / "unpickled"

  class Payload:
    def __reduce__(self):
      return (pathlib.Path.touch, (pathlib.Path(marker),))

  hostile = np.empty(1, dtype=object)
  hostile[0] = Payload()
  rewrite_consistently(entry, "test.labels", npy_bytes(hostile, allow_pickle=True),
                       dtype="|O", shape=[1])
  with pytest.warns(CacheWarning, match="never unpickled"):
    got = load_test()
  assert not marker.exists()
  assert_equal_split(got, reference)


@needs_debian
def test_huge_shape_in_header_allocates_nothing(entry, reference):
  """A forged .npy header (and record) claiming 10**12 labels: rejected from the
  header alone (allocating it would need 4 TB and fail with MemoryError)."""
  buf = io.BytesIO()
  npy_format.write_array_header_1_0(buf, {"descr": "<i4", "fortran_order": False,
                                          "shape": (10**12,)})
  data = buf.getvalue() + np.zeros(10000, np.int32).tobytes()
  rewrite_consistently(entry, "test.labels", data, shape=[10**12])
  with pytest.warns(CacheWarning, match=(
      rf"header declares <i4 \(1000000000000,\), which does not fit its "
      f"{len(data)} bytes")):
    got = load_test()
  assert_equal_split(got, reference)


@needs_debian
def test_record_claiming_huge_arrays_is_rejected_before_reading(entry, reference):
  record = json.loads((entry / cache.RECORD).read_text())
  record["arrays"]["test.images"]["bytes"] = 10**13
  (entry / cache.RECORD).write_text(json.dumps(record))
  with pytest.warns(CacheWarning, match="claims 10000000040128 bytes of arrays"):
    got = load_test()
  assert_equal_split(got, reference)


@needs_debian
@pytest.mark.parametrize("what", ["garbage", "empty", "directory", "fifo"])
def test_unreadable_npy_is_not_used(entry, reference, what):
  path = entry / "test.images.npy"
  path.unlink()
  if what == "garbage":
    path.write_bytes(os.urandom(1000))
    message = "1000 bytes, its record says"
  elif what == "empty":
    path.write_bytes(b"")
    message = "0 bytes, its record says"
  elif what == "directory":
    path.mkdir()
    message = "not a regular file"
  else:  # a FIFO: opening it for reading would block forever without O_NONBLOCK
    os.mkfifo(path)
    message = "not a regular file"
  with contextlib.ExitStack() as stack:
    if what == "directory":  # os.replace cannot put the new file over it
      stack.enter_context(pytest.warns(CacheWarning, match="could not write"))
    stack.enter_context(pytest.warns(
        CacheWarning, match=f"{re.escape(str(path))}: .*{message}"))
    got = load_test()
  assert_equal_split(got, reference)


@needs_debian
def test_fifo_as_record_does_not_hang(entry, reference):
  (entry / cache.RECORD).unlink()
  os.mkfifo(entry / cache.RECORD)
  with pytest.warns(CacheWarning, match="not a regular file"):
    got = load_test()
  assert_equal_split(got, reference)


# --- unusable cache folders: the data still loads, with a warning ---


@needs_debian
def test_cache_dir_is_a_file(tmp_path, monkeypatch, reference):
  blocker = tmp_path / "blocker"
  blocker.write_text("a file where the cache folder should be")
  monkeypatch.setenv("ZOO_CACHE_DIR", str(blocker))
  with pytest.warns(CacheWarning, match=re.escape(
      f"could not write cache entry {blocker}")):
    got = load_test()
  assert_equal_split(got, reference)
  assert blocker.read_text() == "a file where the cache folder should be"


@needs_debian
def test_cache_dir_is_a_symlink_loop(tmp_path, monkeypatch, reference):
  loop = tmp_path / "loop"
  os.symlink(loop, loop)
  monkeypatch.setenv("ZOO_CACHE_DIR", str(loop))
  with pytest.warns(CacheWarning, match=re.escape(
      f"could not write cache entry {loop}")):
    got = load_test()
  assert_equal_split(got, reference)


@needs_debian
def test_read_only_cache(entry, reference, monkeypatch):
  """A read-only file system (tests run as root, so chmod would not stop writes:
  os.replace fails as on EROFS): a valid entry is still used, a missing one is
  decoded with a warning, and no temp file is left behind."""
  def read_only(src, dst):
    raise OSError(errno.EROFS, "Read-only file system", dst)
  monkeypatch.setattr(os, "replace", read_only)
  assert_equal_split(load_without_warning(), reference)  # reading needs no write
  for f in entry.iterdir():
    f.unlink()
  clear_memory_cache()
  with pytest.warns(CacheWarning, match=(
      f"could not write cache entry {re.escape(str(entry))}: .*Read-only file system.*decoded "
      "again next time")):
    got = load_test()
  assert_equal_split(got, reference)
  assert list(entry.iterdir()) == []


def test_stale_temp_files_are_cleaned_up(tmp_path):
  directory = pathlib.Path(cache.entry_dir("ds", "k"))
  directory.mkdir(parents=True)
  old, fresh = directory / ".a.npy.1.x.tmp", directory / ".a.npy.2.y.tmp"
  old.write_bytes(b"left by a killed writer")
  fresh.write_bytes(b"another writer, still running")
  os.utime(old, (0, 0))
  cache.save("ds", "k", {"a": np.zeros(3, np.int32)}, {})
  assert not old.exists() and fresh.exists()


@needs_debian
def test_cache_check_is_cheap(tmp_path):
  """Loading the 47 MB train split from a verified cache entry stays well under
  a second (measured ~0.07 s: ~0.05 s of it sha256)."""
  import time  # pylint: disable=g-import-not-at-top
  load("fashion_mnist", "train", download=False)  # decodes and caches
  clear_memory_cache()
  start = time.perf_counter()
  with warnings.catch_warnings():
    warnings.simplefilter("error", CacheWarning)
    load("fashion_mnist", "train", download=False)
  assert time.perf_counter() - start < 1.0


@needs_debian
def test_decode_error_is_not_cached(tmp_path, monkeypatch):
  """A corrupt source raises; nothing is written to the cache for it."""
  data = tmp_path / "data"
  data.mkdir()
  for f in TEST_FILES:
    os.symlink(f, data / os.path.basename(f))
  (data / "t10k-labels-idx1-ubyte.gz").unlink()
  (data / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"\0" * 4)
  with pytest.raises(CorruptDataError):
    load("fashion_mnist", "test", data_dir=data, download=False)
  assert not (tmp_path / "cache").exists() or not any(
      (tmp_path / "cache").rglob("*.npy"))
