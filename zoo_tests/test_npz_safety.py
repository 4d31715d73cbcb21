"""Hostile .npz files are refused from their headers, before any data is
read: zip bombs and headers claiming huge arrays never allocate (peak memory
measured in a subprocess), pickles never run, odd members (duplicates, path
tricks, wrong dtype, Fortran order, big-endian, truncated) each get one
clear error; real weights and checkpoints still load bit for bit."""
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

import jax
import numpy as np
import pytest

import zoo
from zoo import cli, npz, pretrained, registry
from zoo.errors import ZooError
from zoo.training import checkpoint as ckpt_lib
from zoo import weights
from zoo.training import run_weights

REPO = Path(__file__).resolve().parent.parent
MODEL = "logreg_fashion_mnist"  # params: .../linear w (784, 10), b (10,)
BOMB_BYTES = 2 << 30  # the 2 GiB of zeros the bomb inflates to
SHIPPED = [n for n in zoo.list_models()
           if (zoo.get(n).baseline or {}).get("pretrained")]


def _keys():
  params, _ = weights.template(registry.get(MODEL))
  module = next(iter(params))
  return f"params['{module}']['w']", f"params['{module}']['b']"


W, B = _keys()


def _header(shape, descr="<f4", fortran=False) -> bytes:
  """A valid .npy (1.0) header for an array of `shape` and `descr`."""
  f = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      f, {"descr": descr, "fortran_order": fortran, "shape": shape})
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


def _zip(path: Path, members) -> Path:
  """Writes a zip by hand, so members may lie about their sizes, share a
  name, or hold precompressed data."""
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


def _bomb_member(name, shape, zeros: int, file_size=None):
  """A deflated member: an .npy header for `shape` float32 followed by
  `zeros` zero bytes, compressed to about zeros / 1000 bytes without ever
  holding them (identical 1 MiB blocks after full flushes)."""
  header = _header(shape)
  block = 1 << 20
  assert zeros % block == 0
  c = zlib.compressobj(9, zlib.DEFLATED, -15)
  head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
  one = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
  assert c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH) == one
  raw = head + one * (zeros // block) + c.flush(zlib.Z_FINISH)
  crc = zlib.crc32(header)
  for _ in range(zeros // block):
    crc = zlib.crc32(bytes(block), crc)
  size = len(header) + zeros if file_size is None else file_size
  return dict(name=name.encode(), raw=raw, method=zipfile.ZIP_DEFLATED,
              size=size, crc=crc)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
  """{kind: path} of hostile files built once for the whole module."""
  d = tmp_path_factory.mktemp("bombs")
  n = BOMB_BYTES // 4
  big = _bomb_member(W + ".npy", (n,), BOMB_BYTES)
  small_w = len(_header((784, 10))) + 784 * 10 * 4
  return {
      # 2 GiB of zeros under the model's own parameter name.
      "bomb": _zip(d / "bomb.npz", [big]),
      # The header says the model's shape; the directory says 2 GiB.
      "bomb_lying_size": _zip(d / "bomb_lying_size.npz", [_bomb_member(
          W + ".npy", (784, 10), 1 << 20, file_size=BOMB_BYTES + 128)]),
      # Honest header and size for the model, but the stream inflates on.
      "bomb_long_stream": _zip(d / "bomb_long_stream.npz", [
          _bomb_member(W + ".npy", (784, 10), BOMB_BYTES, file_size=small_w)]),
      # A header claiming 10^12 float32 values, and no data.
      "huge_header": _zip(d / "huge_header.npz", [
          _member(W + ".npy", _header((10**12,)))]),
  }


def _refused(path, *patterns, load=True):
  """Loads `path` as MODEL's weights (or reads it with no expectation) and
  returns the CheckpointError's message, which names the file."""
  with pytest.raises(npz.CheckpointError) as info:
    if load:
      weights.load(registry.get(MODEL), path)
    else:
      npz.read_npz(path)
  msg = str(info.value)
  assert str(path) in msg, msg
  for p in patterns:
    assert p in msg, (p, msg)
  return msg


# --- zip bombs and huge claims ------------------------------------------------

def test_bomb_is_small_on_disk_and_would_inflate_to_2_gib(bombs):
  path = bombs["bomb"]
  assert path.stat().st_size < 3 << 20
  with zipfile.ZipFile(path) as z:
    (info,) = z.infolist()
    assert info.file_size == BOMB_BYTES + 128
    with z.open(info) as f:  # a valid .npy header, then zeros
      assert np.lib.format.read_magic(f) == (1, 0)
      shape, _, dtype = np.lib.format.read_array_header_1_0(f)
      assert shape == (BOMB_BYTES // 4,) and dtype == np.float32
      assert f.read(1 << 20) == bytes(1 << 20)


def test_the_bomb_builder_makes_files_numpy_would_inflate(tmp_path):
  """The same construction at 32 MiB: numpy itself reads it in full, so the
  2 GiB one is a real bomb, not a broken file."""
  path = _zip(tmp_path / "b.npz", [_bomb_member("x.npy", (8 << 20,), 32 << 20)])
  assert path.stat().st_size < 100_000
  with np.load(path) as z:
    a = z["x"]
  assert a.shape == (8 << 20,) and a.dtype == np.float32 and not a.any()


def test_bombs_and_huge_headers_are_refused_from_the_header(bombs):
  _refused(bombs["bomb"], W, "has shape (536870912,)",
           "expects shape (784, 10)", "another model")
  _refused(bombs["bomb"], W, "would take 2147483648 bytes", "max_bytes",
           load=False)
  _refused(bombs["bomb_lying_size"], W, "declares", "damaged or crafted")
  _refused(bombs["huge_header"], W, "has shape (1000000000000,)",
           "expects shape (784, 10)")
  _refused(bombs["huge_header"], W, "declares 128 bytes", load=False)
  # Only the declared bytes come out; the CRC then fails.
  _refused(bombs["bomb_long_stream"], W, "damaged", "CRC")
  _refused(bombs["bomb_long_stream"], W, "CRC", load=False)
  assert bombs["huge_header"].stat().st_size < 1000


_MEASURE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from zoo import npz, registry
    from zoo import weights

    def peak_mb():  # this process's peak resident memory (VmHWM)
      for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024

    good, *hostile = sys.argv[1:]
    entry = registry.get("logreg_fashion_mnist")
    weights.load(entry, good)  # warm: imports, tracing, a real read
    npz.read_npz(good)
    before = peak_mb()
    out = {}
    for path in hostile:
      for how, read in (("load", lambda p: weights.load(entry, p)),
                        ("read", npz.read_npz)):
        try:
          read(path)
          out[f"{how} {path}"] = "loaded"
        except npz.CheckpointError as e:
          out[f"{how} {path}"] = str(e)
    growth = peak_mb() - before
    control = np.ones(256 << 18, np.float32)  # 256 MiB, touched
    print(json.dumps({"growth_mb": growth, "results": out,
                      "control_mb": peak_mb() - before - growth}))
    """)


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="reads the peak RSS from /proc/self/status")
def test_bombs_never_exhaust_memory(bombs, tmp_path):
  """The peak RSS of a fresh process grows by less than 200 MB while it
  refuses every bomb both ways; a 256 MiB allocation in the same process
  does show up, so the measure is live. (VmHWM, not ru_maxrss: a child's
  ru_maxrss starts at its parent's, the whole pytest process, which would
  hide any growth.)"""
  params, _ = weights.template(registry.get(MODEL))
  good = weights.save(tmp_path / "good.npz", params)
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
      [sys.executable, "-c", _MEASURE, str(good), *map(str, bombs.values())],
      capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr
  res = json.loads(proc.stdout.strip().splitlines()[-1])
  assert len(res["results"]) == 2 * len(bombs)
  for how, msg in res["results"].items():  # refused, naming the member
    assert msg != "loaded" and W in msg and "not a plain" not in msg, how
  assert res["growth_mb"] < 200, res
  assert res["control_mb"] > 200, res


def test_bomb_gives_one_line_from_the_cli(bombs, capsys):
  assert cli.main(["eval", MODEL, "--weights", str(bombs["bomb"])]) == 2
  err = capsys.readouterr().err
  assert err.startswith("zoo: error: ") and err.count("\n") == 1, err
  assert "bomb.npz" in err and "Traceback" not in err


def test_highly_compressed_real_file_loads_when_expected(tmp_path):
  """The inflation cap guards only reads with no expectation: an 80 MiB
  array of zeros compressed to ~80 KB is refused plain, read with the
  shapes expected or an explicit max_bytes."""
  path = tmp_path / "zeros.npz"
  np.savez_compressed(path, x=np.zeros(20 << 20, np.float32))
  assert path.stat().st_size < 200_000
  _refused(path, "'x'", "would take 83886080 bytes", "larger max_bytes",
           load=False)
  for got in (npz.read_npz(path, {"x": ((20 << 20,), np.float32)}),
              npz.read_npz(path, max_bytes=80 << 20)):
    assert got["x"].shape == (20 << 20,) and not got["x"].any()
  with pytest.raises(npz.CheckpointError, match=r"\(max_bytes\)"):
    npz.read_npz(path, max_bytes=(80 << 20) - 1)


# --- odd members --------------------------------------------------------------

def test_wrong_dtype_is_refused_before_reading_data(tmp_path):
  """The header says float64; there is no data at all, and the error is
  still about the dtype: nothing past the header was read."""
  path = _zip(tmp_path / "f64.npz",
              [_member(W + ".npy", _header((784, 10), "<f8"))])
  _refused(path, W, "dtype float64", "expects shape (784, 10) dtype float32")


def test_unexpected_member_is_refused_before_reading_data(tmp_path):
  path = _zip(tmp_path / "extra.npz", [
      _member(W + ".npy", _npy(np.zeros((784, 10), np.float32))),
      _member("params['evil']['w'].npy", _header((10**9,)))])
  _refused(path, "params['evil']['w']", "unexpected", "another model")


def test_duplicate_names_are_refused(tmp_path):
  w = _npy(np.zeros((784, 10), np.float32))
  path = _zip(tmp_path / "dup.npz", [_member(W + ".npy", w),
                                     _member(B + ".npy", _npy(np.zeros(10))),
                                     _member(W + ".npy", w)])
  _refused(path, W, "appears twice")
  _refused(path, "appears twice", load=False)


@pytest.mark.parametrize("name", ["../evil.npy", "/etc/evil.npy",
                                  "a\\..\\evil.npy", "a//b.npy", "C:evil.npy"])
def test_path_tricks_are_refused(tmp_path, name):
  path = _zip(tmp_path / "trick.npz", [_member(name, _npy(np.zeros(3)))])
  _refused(path, repr(name), "path trick", load=False)
  _refused(path, "path trick")
  with pytest.raises(npz.CheckpointError, match="path trick"):
    npz.write_npz(tmp_path / "w.npz", {name[:-4]: np.zeros(3)})


def test_object_member_is_refused_and_never_unpickled(tmp_path):
  marker = tmp_path / "pwned"

  class Hostile:
    def __reduce__(self):
      return (open, (str(marker), "w"))
  hostile = np.array([Hostile()], dtype=object)
  path = _zip(tmp_path / "obj.npz", [_member(W + ".npy", _npy(hostile))])
  for load in (True, False):
    _refused(path, W, "refused", "Python objects", "pickle", load=load)
  assert not marker.exists()
  # A bare pickle (not a zip at all) is refused as before.
  bare = tmp_path / "w.npz"
  bare.write_bytes(pickle.dumps({"x": 1}))
  _refused(bare, "not an .npz archive", "pickle")


def test_fortran_order_and_big_endian_are_refused(tmp_path):
  w = np.arange(7840, dtype=np.float32).reshape(784, 10)
  fortran = _zip(tmp_path / "f.npz",
                 [_member(W + ".npy", _npy(np.asfortranarray(w)))])
  _refused(fortran, W, "Fortran order", "ascontiguousarray")
  big = _zip(tmp_path / "be.npz", [_member(W + ".npy", _npy(w.astype(">f4")))])
  _refused(big, W, "big-endian", "newbyteorder")
  # write_npz never produces either: it stores such arrays as C-order
  # little-endian, and they read back equal.
  path = tmp_path / "ok.npz"
  npz.write_npz(path, {"f": np.asfortranarray(w), "be": w.astype(">f4")})
  back = npz.read_npz(path)
  for a in back.values():
    np.testing.assert_array_equal(a, w)
    assert a.dtype == np.float32 and a.flags.c_contiguous


def test_truncated_member_and_lying_sizes_are_refused(tmp_path):
  data = _npy(np.ones((784, 10), np.float32))
  short = _zip(tmp_path / "short.npz", [_member(
      W + ".npy", data, raw=data[:1000], crc=zlib.crc32(data[:1000]))])
  _refused(short, W, "truncated (872 of 31360", "download it again")
  cut = _zip(tmp_path / "cut.npz",
             [_member(W + ".npy", data, raw=data[:1000])])
  _refused(cut, W, "damaged", "CRC", "download it again")
  long = _zip(tmp_path / "long.npz",
              [_member(W + ".npy", data + bytes(64), file_size=len(data) + 64)])
  _refused(long, W, "declares", "damaged or crafted")
  bad_crc = _zip(tmp_path / "crc.npz",
                 [_member(W + ".npy", data, crc=zlib.crc32(data) ^ 1)])
  _refused(bad_crc, W, "CRC", "damaged")


def test_other_odd_members_are_refused(tmp_path):
  text = _zip(tmp_path / "text.npz", [_member("params.txt", b"hello")])
  _refused(text, "not a plain numeric array")
  bz2 = tmp_path / "bz2.npz"
  with zipfile.ZipFile(bz2, "w", zipfile.ZIP_BZIP2) as z:
    z.writestr(W + ".npy", _npy(np.zeros((784, 10), np.float32)))
  _refused(bz2, "compression method", "numpy.savez")
  garbage = _zip(tmp_path / "garbage.npz",
                 [_member(W + ".npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': ")])
  _refused(garbage, W, "header is invalid")
  strings = _zip(tmp_path / "str.npz",
                 [_member(W + ".npy", _npy(np.array(["a", "b"])))])
  _refused(strings, W, "not a plain numeric array", load=False)


# --- files that are not there, or not weights ---------------------------------

def test_missing_file_is_a_zoo_error_saying_what_to_do(tmp_path):
  path = tmp_path / "missing.npz"
  with pytest.raises(npz.WeightsNotFoundError) as info:
    weights.load(registry.get(MODEL), path)
  assert isinstance(info.value, ZooError)
  assert isinstance(info.value, FileNotFoundError)
  assert str(path) in str(info.value) and "zoo train" in str(info.value)
  with pytest.raises(npz.WeightsNotFoundError, match="zoo train"):
    run_weights.from_workdir(registry.get(MODEL), tmp_path)


def test_directory_empty_truncated_and_npy_each_say_so(tmp_path):
  _refused(tmp_path, "is a directory", "--workdir")
  empty = tmp_path / "empty.npz"
  empty.write_bytes(b"")
  _refused(empty, "empty (0 bytes)", "save or download it again")
  params, _ = weights.template(registry.get(MODEL))
  good = weights.save(tmp_path / "good.npz", params)
  cut = tmp_path / "cut.npz"
  cut.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
  _refused(cut, "truncated or damaged", "save or download it again")
  single = tmp_path / "single.npz"
  with single.open("wb") as f:
    np.save(f, np.zeros(3))
  _refused(single, "single .npy array", "weights.save")


def test_unreadable_file_says_check_permissions(tmp_path, monkeypatch):
  params, _ = weights.template(registry.get(MODEL))
  path = weights.save(tmp_path / "w.npz", params)
  if os.geteuid() != 0:  # root reads anything: simulate below instead
    path.chmod(0)
    _refused(path, "permission denied", "check its permissions")
    path.chmod(0o644)
  real_open = Path.open

  def deny(self, *a, **k):
    if self == path:
      raise PermissionError(13, "Permission denied", str(self))
    return real_open(self, *a, **k)
  monkeypatch.setattr(Path, "open", deny)
  _refused(path, "permission denied", "check its permissions")


# --- real files still load, bit for bit ---------------------------------------

@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_bit_exactly(name):
  entry = zoo.get(name, pretrained=True)
  flat = {f"params{k}": v for k, v in ckpt_lib.flatten(entry.params).items()}
  flat.update({f"model_state{k}": v for k, v in
               ckpt_lib.flatten(entry.model_state).items()})
  with np.load(pretrained.path(name), allow_pickle=False) as z:
    reference = {k: z[k] for k in z.files}
  assert flat.keys() == reference.keys()
  for k, a in reference.items():
    assert flat[k].dtype == a.dtype and flat[k].shape == a.shape, k
    assert flat[k].tobytes() == a.tobytes(), k


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
  rng = np.random.default_rng(0)
  tree = {"f32": rng.normal(size=(5, 3)).astype(np.float32),
          "f16": rng.normal(size=7).astype(np.float16),
          "f64": np.array([np.nan, -0.0, np.inf, 1e-310]),
          "c64": (rng.normal(size=2) + 1j).astype(np.complex64),
          "i8": np.array([-128, 127], np.int8), "u32": np.array(7, np.uint32),
          "i32": np.arange(6, dtype=np.int32).reshape(2, 3, 1),
          "bool": np.array([[True, False]])}
  manager = ckpt_lib.CheckpointManager(tmp_path)
  with pytest.raises(npz.CheckpointError, match=r"zero-size arrays \(\['e'\]"):
    manager.save(1, {**tree, "e": np.zeros((0, 4), np.float32)}, {})
  manager.save(1, tree, {})
  back, _ = manager.restore(1, jax.tree.map(np.zeros_like, tree))
  for k, a in tree.items():
    assert back[k].dtype == a.dtype and back[k].shape == a.shape, k
    assert back[k].tobytes() == a.tobytes(), k
  # orbax alone reads back the same bytes.
  import orbax.checkpoint as ocp
  raw = ocp.StandardCheckpointer().restore(manager.path(1) / "state")
  for k, a in tree.items():
    assert raw[k].tobytes() == a.tobytes() and raw[k].dtype == a.dtype, k
