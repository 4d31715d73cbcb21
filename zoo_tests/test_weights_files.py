"""Weights files (safetensors) that are hostile, broken or of another
model: each gets one CheckpointError line saying what to do, from the API
and from the CLI (exit 2), and nothing of it runs; zoo's own files round
trip bit for bit, and an old .npz converts once."""
import json
import pickle
import struct
import zipfile

import chex
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import zoo
from zoo import cli, pretrained, weights
from zoo.errors import CheckpointError, WeightsNotFoundError

MODEL = "logreg_fashion_mnist"  # one layer: LIN/w (784, 10), LIN/b (10,)
LIN = "logistic_regression/linear"


@pytest.fixture(scope="module")
def entry():
  return zoo.get(MODEL, pretrained=True)


def _raw(path, header: dict, data: bytes = b"", length: int | None = None):
  """A safetensors-shaped file written by hand: the 8-byte little-endian
  header length (or `length`, to lie), the JSON header, then `data`."""
  text = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(text) if length is None else length)
                   + text + data)
  return path


def _load(entry, path):
  return weights.load(entry, path)


class Marker:
  """Unpickling this would create the file `path` (it must never exist)."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (open, (self.path, "w"))


def test_zoos_own_file_round_trips(entry, tmp_path):
  file = weights.save(tmp_path / "w.safetensors", entry.params,
                      entry.model_state, entry=entry)
  params, state = weights.load(zoo.get(MODEL), file)
  chex.assert_trees_all_equal(params, entry.params)
  arrays = load_file(str(file))  # the plain library reads it as it is
  assert set(arrays) == {f"{LIN}/w", f"{LIN}/b"}
  _, meta = weights.read(file)
  assert meta["zoo.model"] == MODEL
  assert meta["zoo.config_sha256"] == weights.config_sha256(entry.config)


def test_pickle_renamed_is_refused_and_never_run(entry, tmp_path):
  marker = tmp_path / "ran"
  for name, write in (("plain", lambda f: pickle.dump(Marker(marker), f)),
                      ("torch", None)):
    path = tmp_path / f"{name}.safetensors"
    if write:
      with path.open("wb") as f:
        write(f)
    else:  # torch.save's layout: a zip whose archive/data.pkl is the pickle
      with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(Marker(marker)))
    with pytest.raises(CheckpointError, match=r"^refused: .*pickle") as e:
      _load(entry, path)
    assert "\n" not in str(e.value)
  assert not marker.exists()


def test_huge_or_lying_header_is_refused(entry, tmp_path):
  huge = _raw(tmp_path / "huge.safetensors", {}, length=2**62)
  with pytest.raises(CheckpointError, match="header length is larger than "
                     "the file"):
    _load(entry, huge)
  # Within the file, but the JSON is cut off.
  cut = tmp_path / "cut.safetensors"
  cut.write_bytes(struct.pack("<Q", 40) + b'{"a/w": {"dtype": "F32"' +
                  b" " * 20)
  with pytest.raises(CheckpointError, match="refused: .* not a valid "
                     "safetensors file"):
    _load(entry, cut)


def test_overlapping_offsets_are_refused(entry, tmp_path):
  w = np.zeros((784, 10), np.float32).tobytes()
  header = {f"{LIN}/w": {"dtype": "F32", "shape": [784, 10],
                         "data_offsets": [0, len(w)]},
            f"{LIN}/b": {"dtype": "F32", "shape": [10],
                         "data_offsets": [0, 40]}}  # inside LIN/w
  path = _raw(tmp_path / "overlap.safetensors", header, w)
  with pytest.raises(CheckpointError, match="refused: .* not a valid "
                     "safetensors file") as e:
    _load(entry, path)
  assert "\n" not in str(e.value)
  # Offsets past the end of the data.
  header[f"{LIN}/b"]["data_offsets"] = [len(w), len(w) + 40]
  path = _raw(tmp_path / "past.safetensors", header, w)
  with pytest.raises(CheckpointError, match="not a valid safetensors"):
    _load(entry, path)


def test_shape_that_does_not_match_its_bytes_is_refused(entry, tmp_path):
  header = {f"{LIN}/w": {"dtype": "F32", "shape": [784, 10000],
                         "data_offsets": [0, 31360]}}
  path = _raw(tmp_path / "lie.safetensors", header, b"\0" * 31360)
  with pytest.raises(CheckpointError, match="not a valid safetensors"):
    _load(entry, path)


def test_wrong_dtype_or_shape_or_names_say_which_array(entry, tmp_path):
  p = entry.params
  cases = {
      "f64": ({LIN: {"w": np.asarray(p[LIN]["w"], np.float64),
                          "b": p[LIN]["b"]}},
              f"{LIN}/w has shape .* dtype float64, the model expects shape "
              r"\(784, 10\) dtype float32"),
      "shape": ({LIN: {"w": np.zeros((784, 3), np.float32),
                            "b": p[LIN]["b"]}},
                rf"{LIN}/w has shape \(784, 3\)"),
      "missing": ({LIN: {"w": p[LIN]["w"]}}, f"{LIN}/b is missing"),
      "extra": ({LIN: {**p[LIN], "c": np.zeros(3, np.float32)}},
                f"it holds {LIN}/c, which the model lacks"),
  }
  for name, (params, message) in cases.items():
    path = weights.save(tmp_path / f"{name}.safetensors", params)
    with pytest.raises(CheckpointError, match=message) as e:
      _load(entry, path)
    assert "\n" not in str(e.value), name


def test_foreign_dtype_and_names_are_refused(entry, tmp_path):
  bf16 = _raw(tmp_path / "bf16.safetensors",
              {f"{LIN}/w": {"dtype": "BF16", "shape": [2],
                            "data_offsets": [0, 4]}}, b"\0" * 4)
  with pytest.raises(CheckpointError, match="dtype BF16, which zoo does "
                     "not read"):
    _load(entry, bf16)
  keystr = tmp_path / "keystr.safetensors"
  save_file({"['linear']['w']": np.zeros(2, np.float32)}, str(keystr))
  with pytest.raises(CheckpointError, match="is not a weights name"):
    _load(entry, keystr)


def test_damaged_data_fails_its_digest(entry, tmp_path):
  file = weights.save(tmp_path / "w.safetensors", entry.params, entry=entry)
  raw = bytearray(file.read_bytes())
  raw[-8] ^= 0xFF  # a byte of the last array's data
  file.write_bytes(bytes(raw))
  with pytest.raises(CheckpointError, match="do not match the sha256 its "
                     "header records"):
    _load(entry, file)


def test_truncated_empty_missing_and_directory(entry, tmp_path):
  file = weights.save(tmp_path / "w.safetensors", entry.params)
  cut = tmp_path / "cut.safetensors"
  cut.write_bytes(file.read_bytes()[:-100])
  with pytest.raises(CheckpointError, match="not a valid safetensors"):
    _load(entry, cut)
  empty = tmp_path / "empty.safetensors"
  empty.write_bytes(b"")
  with pytest.raises(CheckpointError, match="empty"):
    _load(entry, empty)
  with pytest.raises(WeightsNotFoundError, match="does not exist"):
    _load(entry, tmp_path / "nope.safetensors")
  with pytest.raises(CheckpointError, match="is a directory"):
    _load(entry, tmp_path)


def test_old_npz_says_how_to_convert_and_converts(entry, tmp_path, capsys):
  old = tmp_path / "old.npz"
  np.savez(old, **{f"params['{LIN}']['{k}']": np.asarray(v)
                   for k, v in entry.params[LIN].items()})
  with pytest.raises(CheckpointError, match=r"python -m zoo.weights .*"
                     r"old.npz`, which writes old.safetensors"):
    _load(entry, old)
  assert weights.main([str(old)]) == 0
  assert "old.safetensors" in capsys.readouterr().out
  params, _ = weights.load(zoo.get(MODEL), tmp_path / "old.safetensors")
  chex.assert_trees_all_equal(params, entry.params)
  foreign = tmp_path / "foreign.npz"
  np.savez(foreign, x=np.zeros(2))
  assert weights.main([str(foreign)]) == 2
  assert "only zoo's own .npz files convert" in capsys.readouterr().err


def test_cli_gives_one_line_and_exit_2(entry, tmp_path, capsys):
  evil = tmp_path / "evil.safetensors"
  evil.write_bytes(pickle.dumps(Marker(tmp_path / "ran")))
  f64 = weights.save(tmp_path / "f64.safetensors", {LIN: {
      "w": np.zeros((784, 10)), "b": np.zeros(10)}})
  for path, text in ((evil, "pickle"), (f64, "dtype float64"),
                     (pretrained.path("mlp_fashion_mnist"), "lacks")):
    assert cli.main(["eval", MODEL, "--weights", str(path)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("zoo: error: ") and err.count("\n") == 1, err
    assert text in err, err
  assert not (tmp_path / "ran").exists()
