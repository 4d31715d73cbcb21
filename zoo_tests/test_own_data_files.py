"""`zoo train NAME --data FILE.npz` with hostile or broken files: a zip bomb
is refused without allocating and a member that inflates past its declared
size yields no more than that (peak memory measured in a subprocess),
pickles are refused with nothing executed, and every other bad file (empty,
truncated, a lone .npy, duplicate, missing or extra members...) gets one
DataArraysError line saying what to do, also from the CLI (exit 2). A file
numpy.savez wrote reads back bit for bit."""
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from zoo import cli
from zoo.data.arrays import DataArraysError, read_npz
from zoo.errors import InputError
from zoo.training import loop, strategies

REPO = Path(__file__).resolve().parent.parent
MODEL = "mlp_fashion_mnist"
BOMB_BYTES = 2 << 30  # the 2 GiB of zeros a bomb inflates to
N_TRAIN, N_TEST = 16, 8


def _good():
  """{member key: array}: a small valid dataset for MODEL."""
  rng = np.random.default_rng(0)
  return {"train_images": rng.integers(0, 256, (N_TRAIN, 28, 28, 1), np.uint8),
          "train_labels": np.arange(N_TRAIN) % 3,
          "test_images": rng.integers(0, 256, (N_TEST, 28, 28, 1), np.uint8),
          "test_labels": np.arange(N_TEST) % 3}


# --- hand-made zips (members may lie about their sizes or share a name) ----

def _header(shape, descr="<f4") -> bytes:
  """A valid .npy (1.0) header for an array of `shape` and `descr`."""
  f = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      f, {"descr": descr, "fortran_order": False, "shape": shape})
  return f.getvalue()


def _npy(a: np.ndarray) -> bytes:
  f = io.BytesIO()
  np.lib.format.write_array(f, a, allow_pickle=True)
  return f.getvalue()


def _member(name, data, *, file_size=None, crc=None, raw=None):
  """One stored zip member holding `data`, or `raw` instead (data cut
  short); file_size and crc default to data's and may lie."""
  return dict(name=name.encode(), raw=data if raw is None else raw,
              method=zipfile.ZIP_STORED,
              size=len(data) if file_size is None else file_size,
              crc=zlib.crc32(data) if crc is None else crc)


def _bomb_member(name, header: bytes, zeros: int, *, file_size=None,
                 crc_of=None):
  """A deflated member: `header` then `zeros` zero bytes, compressed to about
  zeros / 1000 bytes without ever holding them (identical 1 MiB blocks after
  full flushes). Its CRC covers the first `crc_of` bytes (default: all)."""
  block = 1 << 20
  assert zeros % block == 0
  c = zlib.compressobj(9, zlib.DEFLATED, -15)
  head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
  one = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
  assert c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH) == one
  raw = head + one * (zeros // block) + c.flush(zlib.Z_FINISH)
  crc_of = len(header) + zeros if crc_of is None else crc_of
  crc, left = zlib.crc32(header[:crc_of]), crc_of - len(header)
  while left > 0:
    crc = zlib.crc32(bytes(min(block, left)), crc)
    left -= block
  return dict(name=name.encode(), raw=raw, method=zipfile.ZIP_DEFLATED,
              size=len(header) + zeros if file_size is None else file_size,
              crc=crc)


def _zip(path: Path, members) -> Path:
  """Writes a zip of `members` (from _member or _bomb_member) by hand."""
  out, central = bytearray(), bytearray()
  for m in members:
    offset = len(out)
    fields = (20, 0, m["method"], 0, 0x21, m["crc"], len(m["raw"]), m["size"],
              len(m["name"]), 0)
    out += struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields) + m["name"]
    out += m["raw"]
    central += struct.pack("<IH", 0x02014B50, 20) + struct.pack(
        "<HHHHHIIIHH", *fields) + struct.pack("<HHHII", 0, 0, 0, 0, offset)
    central += m["name"]
  end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members),
                    len(central), len(out), 0)
  path.write_bytes(bytes(out + central + end))
  return path


def _dataset(path: Path, **replace) -> Path:
  """The good dataset as a hand-made zip, with members replaced (a dict
  from _member/_bomb_member), dropped (None) or added."""
  members = {k: _member(k + ".npy", _npy(a)) for k, a in _good().items()}
  members.update(replace)
  return _zip(path, [m for m in members.values() if m is not None])


class Hostile:
  """Unpickling this creates the file `marker`: proof that pickle ran."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (open, (self.marker, "w"))


TRAIN_NBYTES = N_TRAIN * 28 * 28  # uint8 train_images data bytes
TRAIN_HEADER = _header((N_TRAIN, 28, 28, 1), "|u1")


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
  """{kind: path} of zip bombs, built once: all would inflate to 2 GiB."""
  d = tmp_path_factory.mktemp("bombs")
  return {
      # 2 GiB of zeros as train_images; the directory says so.
      "bomb": _dataset(d / "bomb.npz", train_images=_bomb_member(
          "train_images.npy", _header((BOMB_BYTES // 4,)), BOMB_BYTES)),
      # The directory and header say 12 KiB; the stream inflates to 2 GiB
      # (the CRC covers it all, so the cut-off read fails its CRC check).
      "long_stream": _dataset(d / "long_stream.npz", train_images=_bomb_member(
          "train_images.npy", TRAIN_HEADER, BOMB_BYTES,
          file_size=len(TRAIN_HEADER) + TRAIN_NBYTES)),
      # The same with a CRC of the declared bytes only: it reads as valid
      # zeros, and the 2 GiB after them are never inflated.
      "long_stream_crc_ok": _dataset(
          d / "long_stream_crc_ok.npz", train_images=_bomb_member(
              "train_images.npy", TRAIN_HEADER, BOMB_BYTES,
              file_size=len(TRAIN_HEADER) + TRAIN_NBYTES,
              crc_of=len(TRAIN_HEADER) + TRAIN_NBYTES)),
      # A header claiming 10^12 float32 values, and no data.
      "huge_header": _dataset(d / "huge_header.npz", train_images=_member(
          "train_images.npy", _header((10**12,)))),
  }


def _refused(path, *words, cls=DataArraysError) -> str:
  """read_npz(path)'s error: of type `cls`, one line naming the file and
  the fix, containing `words`."""
  with pytest.raises(cls) as info:
    read_npz(path)
  msg = str(info.value)
  assert isinstance(info.value, InputError)
  assert "\n" not in msg and str(path) in msg, msg
  assert "np.savez(" in msg or "check the path" in msg, msg
  for w in words:
    assert w in msg, (w, msg)
  return msg


# --- good files ----------------------------------------------------------------

@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_numpy_savez_file_reads_back_bit_exactly(tmp_path, save):
  good = _good()
  path = tmp_path / "mine.npz"
  save(path, **good)
  (tri, trl), (tei, tel) = read_npz(path)
  for got, key in ((tri, "train_images"), (trl, "train_labels"),
                   (tei, "test_images"), (tel, "test_labels")):
    want = good[key]
    assert got.dtype == want.dtype and got.shape == want.shape, key
    assert got.tobytes() == want.tobytes(), key
  # The hand-made builder makes valid files too (so the hostile ones below
  # are refused for what they change, not for the builder).
  (tri, _), _ = read_npz(_dataset(tmp_path / "built.npz"))
  assert tri.tobytes() == good["train_images"].tobytes()


def test_bomb_is_small_on_disk_and_inflates_to_2_gib(bombs):
  assert bombs["bomb"].stat().st_size < 3 << 20
  with zipfile.ZipFile(bombs["bomb"]) as z:
    info = z.getinfo("train_images.npy")
    assert info.file_size == BOMB_BYTES + 128
    with z.open(info) as f:
      assert np.lib.format.read_magic(f) == (1, 0)
      assert f.read(1 << 20)[-1024:] == bytes(1024)


def test_the_bomb_builder_makes_files_numpy_would_inflate(tmp_path):
  """The same construction at 32 MiB: numpy itself reads it in full, so the
  2 GiB one is a real bomb, not a broken file."""
  path = _zip(tmp_path / "b.npz", [_bomb_member(
      "x.npy", _header((8 << 20,)), 32 << 20)])
  assert path.stat().st_size < 100_000
  with np.load(path) as z:
    a = z["x"]
  assert a.shape == (8 << 20,) and not a.any()


# --- hostile and broken files: one line each, saying what to do -------------

def test_zip_bomb_is_refused_from_the_directory(bombs):
  _refused(bombs["bomb"], "refused: its members would inflate to 21474",
           "a zip bomb?")


def test_inflating_past_the_declared_size_yields_only_that(bombs):
  # Cut off at the declared size, then the CRC (of the whole stream) fails.
  _refused(bombs["long_stream"], "member train_images cannot be read",
           "CRC", "truncated or damaged")
  (images, _), _ = read_npz(bombs["long_stream_crc_ok"])
  assert images.shape == (N_TRAIN, 28, 28, 1) and not images.any()


def test_header_claiming_more_than_the_directory_is_refused(bombs):
  _refused(bombs["huge_header"], "member train_images declares 128 bytes",
           "shape (1000000000000,)", "damaged or crafted")


def test_pickle_renamed_npz_is_refused_and_never_run(tmp_path):
  marker = tmp_path / "pwned"
  payload = pickle.dumps({"train_images": Hostile(marker)})
  path = tmp_path / "evil.npz"
  path.write_bytes(payload)
  _refused(path, "is a pickle", "refused", "arbitrary code")
  assert not marker.exists()
  pickle.loads(payload)  # the payload is live: unpickling it would run it
  assert marker.exists()


def test_object_member_is_refused_and_never_unpickled(tmp_path):
  marker = tmp_path / "pwned"
  data = _npy(np.array([Hostile(marker)], dtype=object))
  path = _dataset(tmp_path / "obj.npz",
                  train_labels=_member("train_labels.npy", data))
  _refused(path, "member train_labels holds Python objects", "pickle",
           "save numeric arrays")
  assert not marker.exists()
  with np.load(path, allow_pickle=True) as z:  # the payload is live
    z["train_labels"]
  assert marker.exists()


def test_missing_path_directory_and_empty_file(tmp_path):
  _refused(tmp_path / "nope.npz", "does not exist", "check the path")
  _refused(tmp_path, "is a directory", "pass the .npz file itself")
  empty = tmp_path / "empty.npz"
  empty.write_bytes(b"")
  _refused(empty, "empty (0 bytes)")


def test_single_npy_and_other_files_say_what_they_are(tmp_path):
  single = tmp_path / "single.npz"
  with single.open("wb") as f:
    np.save(f, _good()["train_images"])
  _refused(single, "single .npy array, not an .npz")
  for name, data in (("text", b"train_images,train_labels\n"),
                     ("spanned", b"PK\x07\x08" + bytes(40))):
    (tmp_path / name).write_bytes(data)
    _refused(tmp_path / name, "not an .npz (zip) archive")


def test_truncated_and_damaged_files(tmp_path):
  good = tmp_path / "good.npz"
  np.savez(good, **_good())
  data = good.read_bytes()
  for n in (len(data) // 2, len(data) - 10, 30):  # the directory is cut
    cut = tmp_path / f"cut{n}.npz"
    cut.write_bytes(data[:n])
    _refused(cut, "truncated or damaged", "zip directory")
  npy = _npy(_good()["train_images"])
  # The directory is whole but the member's data is cut short.
  short = _dataset(tmp_path / "short.npz", train_images=_member(
      "train_images.npy", npy, raw=npy[:1000]))
  _refused(short, "member train_images cannot be read", "truncated or damaged")
  bad_crc = _dataset(tmp_path / "crc.npz", train_images=_member(
      "train_images.npy", npy, crc=zlib.crc32(npy) ^ 1))
  _refused(bad_crc, "member train_images cannot be read", "CRC")
  not_npy = _dataset(tmp_path / "text_member.npz", test_labels=_member(
      "test_labels.npy", b"0,1,2,0,1,2,0,1"))
  _refused(not_npy, "member test_labels is not a readable .npy array")


def test_duplicate_missing_and_extra_members(tmp_path):
  good = _good()
  dup = _zip(tmp_path / "dup.npz",
             [_member(k + ".npy", _npy(a)) for k, a in good.items()]
             + [_member("train_labels.npy", _npy(good["train_labels"][::-1]))])
  _refused(dup, "member train_labels.npy appears twice", "ambiguous")
  missing = tmp_path / "missing.npz"
  np.savez(missing, **{k: a for k, a in good.items() if k != "test_labels"})
  _refused(missing, "missing test_labels. Save the four arrays under these "
           "names")
  extra = tmp_path / "extra.npz"
  np.savez(extra, **good, labels=good["train_labels"])
  _refused(extra, "unexpected labels. Save the four arrays")
  both = _dataset(tmp_path / "both.npz", test_images=None,
                  notes=_member("notes.txt", b"hi"))
  _refused(both, "missing test_images; unexpected notes.txt")
  zipfile.ZipFile(tmp_path / "none.npz", "w").close()
  _refused(tmp_path / "none.npz", "missing train_images, train_labels, "
           "test_images, test_labels. Save")
  renamed = tmp_path / "renamed.npz"
  np.savez(renamed, x_train=good["train_images"], y_train=good["train_labels"],
           x_test=good["test_images"], y_test=good["test_labels"])
  msg = _refused(renamed, "missing train_images, train_labels, test_images, "
                 "test_labels; unexpected x_train, y_train, x_test, y_test")
  assert msg.count("np.savez(") == 1


def test_unreadable_file_says_check_permissions(tmp_path, monkeypatch):
  path = tmp_path / "locked.npz"
  np.savez(path, **_good())
  real_open = Path.open

  def deny(self, *a, **k):  # as chmod 0 would, even when running as root
    if self == path:
      raise PermissionError(13, "Permission denied", str(self))
    return real_open(self, *a, **k)
  monkeypatch.setattr(Path, "open", deny)
  _refused(path, "cannot be read", "Permission denied", "permissions")


# --- through the CLI: exit 2, one line, no device work ------------------------

@pytest.fixture
def no_work(monkeypatch):
  """Fails the test if training gets as far as devices or the workdir."""
  def no(*args, **kwargs):
    raise AssertionError("device work before validation")
  monkeypatch.setattr(strategies, "make", no)
  monkeypatch.setattr(loop, "Workdir", no)


def test_cli_refuses_each_bad_file_in_one_line(no_work, bombs, tmp_path,
                                               capsys):
  evil = tmp_path / "evil.npz"
  evil.write_bytes(pickle.dumps({"x": Hostile(tmp_path / "pwned")}))
  empty = tmp_path / "empty.npz"
  empty.write_bytes(b"")
  dup_member = _member("test_labels.npy", _npy(_good()["test_labels"]))
  dup = _zip(tmp_path / "dup.npz", [
      _member(k + ".npy", _npy(a)) for k, a in _good().items()] + [dup_member])
  good = _good()
  missing = tmp_path / "missing.npz"
  np.savez(missing, **{k: a for k, a in good.items() if k != "test_labels"})
  extra = tmp_path / "extra.npz"
  np.savez(extra, **good, labels=good["train_labels"])
  cases = {bombs["bomb"]: "a zip bomb?", evil: "is a pickle",
           missing: "missing test_labels", extra: "unexpected labels",
           bombs["long_stream"]: "CRC", bombs["huge_header"]: "declares",
           empty: "empty (0 bytes)", dup: "appears twice",
           tmp_path: "is a directory", tmp_path / "nope.npz": "does not exist"}
  for path, words in cases.items():
    workdir = tmp_path / "w"
    code = cli.main(["train", MODEL, "--data", str(path),
                     "--workdir", str(workdir)])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("zoo: error: ") and err.count("\n") == 1, err
    assert words in err and str(path) in err and "Traceback" not in err, err
    assert not workdir.exists()
  assert not (tmp_path / "pwned").exists()


# --- memory: refusing bombs allocates nothing --------------------------------

_MEASURE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from zoo.data.arrays import DataArraysError, read_npz

    def peak_mb():  # this process's peak resident memory (VmHWM)
      for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024

    good, *hostile = sys.argv[1:]
    read_npz(good)  # warm: imports and a real read
    before = peak_mb()
    out = {}
    for path in hostile:
      try:
        (images, _), _ = read_npz(path)
        out[path] = f"loaded {images.shape}"
      except DataArraysError as e:
        out[path] = str(e)
    growth = peak_mb() - before
    control = np.ones(256 << 18, np.float32)  # 256 MiB, touched
    print(json.dumps({"growth_mb": growth, "results": out,
                      "control_mb": peak_mb() - before - growth}))
    """)


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="reads the peak RSS from /proc/self/status")
def test_bombs_never_exhaust_memory(bombs, tmp_path):
  """A fresh process's peak RSS grows by less than 100 MB while it reads
  every bomb (each would inflate to 2 GiB); a 256 MiB allocation in the same
  process does show up, so the measure is live. (VmHWM, not ru_maxrss: a
  child's ru_maxrss starts at its parent's, the whole pytest process.)"""
  good = tmp_path / "good.npz"
  np.savez(good, **_good())
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
      [sys.executable, "-c", _MEASURE, str(good), *map(str, bombs.values())],
      capture_output=True, text=True, env=env, timeout=120)
  assert proc.returncode == 0, proc.stderr
  res = json.loads(proc.stdout.strip().splitlines()[-1])
  got = {kind: res["results"][str(p)] for kind, p in bombs.items()}
  assert "a zip bomb?" in got["bomb"], got
  assert "CRC" in got["long_stream"], got
  assert got["long_stream_crc_ok"] == f"loaded ({N_TRAIN}, 28, 28, 1)", got
  assert "declares 128 bytes" in got["huge_header"], got
  assert res["growth_mb"] < 100, res
  assert res["control_mb"] > 200, res
