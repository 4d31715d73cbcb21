"""Training on your own arrays: a real run on a 3-class Fashion-MNIST subset
passed as arrays (a 3-way head), float images quantised like the catalog
data, resume bit-exact after an interruption and refused with other arrays,
the CLI's --data form, and every validation error (one line, exit 2,
before any device work or workdir write). Bad or hostile .npz files:
test_own_data_files.py."""
import json

import numpy as np
import pytest

import zoo
from zoo import cli
from zoo.data import arrays
from zoo.errors import ConfigError, ZooError
from zoo.training import loop, strategies

MODEL = "mlp_fashion_mnist"
HEAD = "mlp_classifier/~/mlp/~/linear_2"
CLASSES = (0, 2, 6)  # T-shirt, Pullover, Shirt: relabelled 0, 1, 2
RUN = dict(epochs=2, batch_size=64, devices=1, progress=False)


@pytest.fixture(scope="module")
def arrays3(fashion_classes):
  return (fashion_classes("train[:4000]", CLASSES),
          fashion_classes("test[:1500]", CLASSES))


def _npz(path, train, test, **extra):
  np.savez(path, train_images=train[0], train_labels=train[1],
           test_images=test[0], test_labels=test[1], **extra)
  return path


def test_real_run_on_three_classes_sizes_the_head(arrays3, tmp_path):
  (train, test) = arrays3
  # README "Train on your own data" (near-)verbatim:
  out = zoo.train("mlp_fashion_mnist", data=train, test_data=test,
                  workdir=tmp_path / "run", epochs=2, batch_size=64,
                  devices=1, progress=False)
  r = out.result
  assert out.entry.num_classes == 3 and out.entry.class_names == ("0", "1", "2")
  assert out.entry.input_shape == (28, 28, 1)
  assert out.params[HEAD]["w"].shape == (128, 3)
  assert r["test_accuracy"] >= 0.6, r["test_accuracy"]  # chance: 1/3
  assert r["test_examples"] == len(test[1])
  assert sorted(r["per_class_accuracy"]) == ["0", "1", "2"]
  saved = json.loads((tmp_path / "run" / "result.json").read_text())
  assert saved["config"]["data"]["dataset"] == "custom"
  assert saved["config"]["data"]["class_names"] == ["0", "1", "2"]
  assert len(saved["config"]["data"]["sha256"]) == 64


def test_float_images_are_quantised_like_the_catalog(arrays3):
  (train, test) = arrays3
  small = (train[0][:640], train[1][:640])
  as_float = (small[0].astype(np.float32) / 255, small[1])
  run = dict(RUN, epochs=1)
  a = zoo.train(MODEL, data=small, test_data=test, **run)
  b = zoo.train(MODEL, data=as_float, test_data=test, **run)
  assert a.result["params_sha256"] == b.result["params_sha256"]
  tr, _, _ = arrays.splits(as_float, test, (28, 28, 1))
  np.testing.assert_array_equal(tr.images, small[0])


def test_explicit_num_classes_and_class_names(arrays3):
  (train, test) = arrays3
  names = ("T-shirt", "Pullover", "Shirt")
  tr, te, cfg = arrays.splits(train, test, (28, 28, 1), class_names=names)
  assert tr.class_names == names and te.num_classes == 3
  assert cfg["data.class_names"] == list(names)
  _, _, cfg = arrays.splits(train, test, (28, 28, 1), num_classes=5)
  assert cfg["data.class_names"] == ["0", "1", "2", "3", "4"]
  out = zoo.train(MODEL, data=train, test_data=test, num_classes=5,
                  **dict(RUN, steps=1))
  assert out.params[HEAD]["w"].shape == (128, 5)


def test_resume_after_interruption_is_bit_exact_and_other_data_refused(
    arrays3, tmp_path, sigterm_when_epoch_starts):
  (train, test) = arrays3
  train = (train[0][:1280], train[1][:1280])  # 20 steps per epoch
  run = dict(RUN, checkpoint_every=8, **{"train.loop": "python"})
  ref = zoo.train(MODEL, data=train, test_data=test, **run)
  with sigterm_when_epoch_starts(1), pytest.raises(loop.Preempted):
    zoo.train(MODEL, data=train, test_data=test, workdir=tmp_path, **run)
  assert not (tmp_path / "result.json").exists()
  other = (train[0][::-1].copy(), train[1][::-1].copy())
  with pytest.raises(ConfigError, match=r"changed: data\.sha256"):
    zoo.train(MODEL, data=other, test_data=test, workdir=tmp_path, **run)
  out = zoo.train(MODEL, data=train, test_data=test, workdir=tmp_path, **run)
  assert out.result["params_sha256"] == ref.result["params_sha256"]
  assert ([h["test_accuracy"] for h in out.history]
          == [h["test_accuracy"] for h in ref.history])


def test_cli_data_form(arrays3, tmp_path, capsys):
  (train, test) = arrays3
  path = _npz(tmp_path / "mydata.npz", (train[0][:1280], train[1][:1280]),
              test)
  workdir = tmp_path / "run"
  rc = cli.main(["train", MODEL, "--data", str(path), "--epochs", "1",
                 "--batch-size", "64", "--devices", "1", "--no-progress",
                 "--workdir", str(workdir)])
  assert rc == 0, capsys.readouterr().err
  out = capsys.readouterr().out
  assert "test accuracy" in out and ") after 1 epoch, " in out, out
  result = json.loads((workdir / "result.json").read_text())
  assert result["config"]["data"]["dataset"] == "custom"
  assert len(result["per_class_accuracy"]) == 3
  assert result["test_accuracy"] > 0.6


# --- validation: one ZooError naming the fix, before any device work ------

def _bad_cases():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (10, 28, 28, 1), dtype=np.uint8)
  lab = np.arange(10) % 3
  f = img.astype(np.float32) / 255
  nan = f.copy()
  nan[0, 0, 0, 0] = np.nan
  return [
      ("shape", (img[:, :, :20], lab), "shape (10, 28, 20, 1)"),
      ("no channel", (img[..., 0], lab), "images[..., None]"),
      ("dtype", (img.astype(np.uint16), lab), "uint16"),
      ("nan", (nan, lab), "NaN"),
      ("range", (f * 255, lab), "must be in [0, 1]"),
      ("float labels", (img, lab.astype(np.float32)), "integer class ids"),
      ("negative label", (img, lab - 1), "(>= 0)"),
      ("lengths", (img, lab[:9]), "expected (10,)"),
      ("empty", (img[:0], lab[:0]), "empty"),
      ("one class", (img, lab * 0), "two or more classes"),
  ]


@pytest.fixture
def no_work(monkeypatch, tmp_path):
  """Fails the test if training gets as far as devices or the workdir."""
  def no(*args, **kwargs):
    raise AssertionError("device work before validation")
  monkeypatch.setattr(strategies, "make", no)
  monkeypatch.setattr(loop, "Workdir", no)


@pytest.mark.parametrize("name,train,words", _bad_cases(),
                         ids=[c[0] for c in _bad_cases()])
def test_bad_arrays_are_refused_before_device_work(no_work, arrays3, name,
                                                   train, words, tmp_path,
                                                   capsys):
  test = (train[0], np.arange(len(train[1])) % 3)
  if name in ("one class",):
    test = (train[0], train[1])
  with pytest.raises(arrays.DataArraysError) as e:
    zoo.train(MODEL, data=train, test_data=test, workdir=tmp_path / "w",
              **RUN)
  assert words in str(e.value)
  # The CLI: one line, status 2, nothing written.
  path = tmp_path / "bad.npz"
  np.savez(path, train_images=train[0], train_labels=train[1],
           test_images=test[0], test_labels=test[1])
  err = _one_line_error(capsys, "train", MODEL, "--data", str(path),
                        "--workdir", str(tmp_path / "w"))
  assert words in err
  assert not (tmp_path / "w").exists()


def _one_line_error(capsys, *argv) -> str:
  code = cli.main(list(argv))
  out, err = capsys.readouterr()
  assert code == 2, err
  assert err.startswith("zoo: error: ") and err.count("\n") == 1, err
  return err


def test_other_data_mistakes(no_work, arrays3, capsys):
  (train, test) = arrays3
  with pytest.raises(ZooError, match="pass test_data"):
    zoo.train(MODEL, data=train, **RUN)
  with pytest.raises(ZooError, match="labels must be in 0..1"):
    zoo.train(MODEL, data=train, test_data=test, num_classes=2, **RUN)
  with pytest.raises(ZooError, match="pass them with data="):
    zoo.train(MODEL, num_classes=3, **RUN)
  with pytest.raises(ZooError, match="set by zoo.train"):
    zoo.train(MODEL, **{"data.sha256": "x"}, **RUN)
  with pytest.raises(ZooError, match="exactly two classes"):
    zoo.train("logreg_binary_fashion_mnist", data=train, test_data=test, **RUN)
  with pytest.raises(ZooError, match="does not keep"):
    zoo.data.load("custom", "test")
  assert "--num-classes" in _one_line_error(capsys, "train", MODEL,
                                            "--num-classes", "3")
