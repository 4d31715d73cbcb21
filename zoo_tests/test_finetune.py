"""Fine-tuning on real Fashion-MNIST: starting from the pretrained CNN
beats training from scratch for the same steps on a 3-class subset; the
head (whatever its name) is re-initialised when its shape differs; with
train.trainable="head" only the head's parameters change; a weights file
works like "pretrained"; mistakes are one-line errors before device work."""
import logging

import jax
import numpy as np
import optax
import pytest

import zoo
from zoo import cli, registry, weights
from zoo.errors import CheckpointError, WeightsNotFoundError
from zoo.data import arrays
from zoo.errors import ConfigError, ZooError
from zoo.pretrained import PretrainedNotAvailableError
from zoo.training import strategies
from zoo.training import state as state_lib
from zoo.training.state import head_modules

CNN = "cnn_fashion_mnist"
CLASSES = (0, 2, 6)  # T-shirt, Pullover, Shirt: the hardest to tell apart
# 593 training images of those classes / 32 = 18 steps per epoch, 72 in all.
RUN = dict(epochs=4, batch_size=32, devices=1, progress=False)


@pytest.fixture(scope="module")
def subset(fashion_classes):
  return (fashion_classes("train[:2000]", CLASSES),
          fashion_classes("test[:2000]", CLASSES))


def _start(overrides, data=None):
  """The parameters a run of CNN with `overrides` (on `data`) starts from,
  as zoo.train makes them before its first step (it trains >= 1 epoch)."""
  entry = registry.with_config(zoo.get(CNN), overrides)
  if data is not None:
    entry = registry.with_config(
        entry, arrays.splits(*data, entry.input_shape)[2])
  return state_lib.init_state(entry, optax.identity(),
                              entry.config["train"]["seed"],
                              state_lib.init_weights(entry)).params


@pytest.fixture(scope="module")
def pretrained():
  return zoo.get(CNN, pretrained=True)


def test_head_is_the_layer_producing_the_logits():
  heads = {name: sorted(head_modules(zoo.get(name))) for name in (
      "mlp_fashion_mnist", "cnn_fashion_mnist", "cnn_bn_fashion_mnist",
      "logreg_binary_fashion_mnist", "lstm_fashion_mnist",
      "vit_tiny_fashion_mnist")}
  assert heads == {
      "mlp_fashion_mnist": ["mlp_classifier/~/mlp/~/linear_2"],
      "cnn_fashion_mnist": ["small_cnn/logits"],
      "cnn_bn_fashion_mnist": ["batch_norm_cnn/logits"],
      "logreg_binary_fashion_mnist": ["logistic_regression/linear"],
      "lstm_fashion_mnist": ["lstm_classifier/head"],
      "vit_tiny_fashion_mnist": ["vit/head"]}


def test_finetune_beats_training_from_scratch(subset, caplog):
  train, test = subset
  scratch = zoo.train(CNN, data=train, test_data=test, **RUN)
  with caplog.at_level(logging.INFO, logger="zoo.train"):
    # README "Fine-tune" (near-)verbatim:
    tuned = zoo.train("cnn_fashion_mnist", data=train, test_data=test,
                      init_from="pretrained", epochs=4, batch_size=32,
                      devices=1, progress=False)
  assert "re-initialised (another shape): small_cnn/logits/b, " \
         "small_cnn/logits/w" in caplog.text
  assert scratch.result["steps"] == tuned.result["steps"] == 72
  a, b = scratch.result["test_accuracy"], tuned.result["test_accuracy"]
  assert b >= a + 0.03, (a, b)   # measured: 0.752 from scratch, 0.834 tuned
  assert tuned.result["config"]["train"]["init_from"] == "pretrained"


def test_trainable_head_changes_only_the_head(subset, pretrained):
  train, test = subset
  out = zoo.train(CNN, data=train, test_data=test, init_from="pretrained",
                  trainable="head", **dict(RUN, epochs=1))
  assert out.result["steps"] == 18
  head = "small_cnn/logits"
  assert out.params[head]["w"].shape == (128, 3)
  for module, leaves in pretrained.params.items():
    for name, want in leaves.items():
      if module != head:
        np.testing.assert_array_equal(out.params[module][name], want,
                                      err_msg=f"{module}/{name} changed")
  # The head itself trained away from its fresh initialisation.
  fresh = _start({"train.init_from": "pretrained",
                  "train.trainable": "head"}, subset)
  assert not np.array_equal(fresh[head]["w"], out.params[head]["w"])


def test_weights_file_and_same_shaped_head(subset, pretrained, tmp_path):
  path = weights.save(tmp_path / "cnn.safetensors", pretrained.params)
  # 10 classes, the registered data: every leaf is taken, none re-initialised.
  same = _start({"train.init_from": str(path)})
  jax.tree.map(np.testing.assert_array_equal, same, pretrained.params)
  # 3 classes: the head starts fresh, the rest is the file's.
  three = _start({"train.init_from": str(path)}, subset)
  np.testing.assert_array_equal(three["small_cnn/dense"]["w"],
                                pretrained.params["small_cnn/dense"]["w"])
  assert three["small_cnn/logits"]["w"].shape == (128, 3)


def test_resume_refuses_another_init_from(subset, tmp_path):
  train, test = subset
  run = dict(RUN, epochs=1, data=train, test_data=test, workdir=tmp_path)
  zoo.train(CNN, **run)
  with pytest.raises(ConfigError, match=r"changed: train\.init_from"):
    zoo.train(CNN, init_from="pretrained", **run)


def test_cli_init_from_with_data(subset, tmp_path, capsys):
  train, test = subset
  path = tmp_path / "mydata.npz"
  np.savez(path, train_images=train[0], train_labels=train[1],
           test_images=test[0], test_labels=test[1])
  rc = cli.main(["train", CNN, "--data", str(path), "--init-from",
                 "pretrained", "--set", "train.trainable=head", "--epochs",
                 "1", "--batch-size", "32", "--devices", "1",
                 "--no-progress"])
  assert rc == 0, capsys.readouterr().err
  assert "test accuracy" in capsys.readouterr().out


@pytest.fixture
def no_work(monkeypatch):
  def no(*args, **kwargs):
    raise AssertionError("device work before validation")
  monkeypatch.setattr(strategies, "make", no)


def _one_line_error(capsys, *argv) -> str:
  code = cli.main(list(argv))
  out, err = capsys.readouterr()
  assert code == 2, err
  assert err.startswith("zoo: error: ") and err.count("\n") == 1, err
  return err


def test_mistakes_are_one_line_errors(no_work, tmp_path, capsys):
  assert "no such file" in _one_line_error(
      capsys, "train", CNN, "--init-from", str(tmp_path / "nope.safetensors"))
  with pytest.raises(WeightsNotFoundError, match="is not a file"):
    zoo.train(CNN, init_from=str(tmp_path / "nope.safetensors"), **RUN)
  assert "train.init_from" in _one_line_error(
      capsys, "train", CNN, "--init-from", "imagenet")
  assert "train.trainable" in _one_line_error(
      capsys, "train", CNN, "--set", "train.trainable=tail")
  with pytest.raises(PretrainedNotAvailableError):
    zoo.train("cnn_mnist", init_from="pretrained", **RUN)
  # Weights of another architecture: only the head may differ.
  mlp = weights.save(tmp_path / "mlp.safetensors",
                     zoo.get("mlp_fashion_mnist", pretrained=True).params)
  with pytest.raises(CheckpointError, match="only the head"):
    zoo.train(CNN, init_from=str(mlp), **RUN)
  evil = tmp_path / "evil.safetensors"
  evil.write_bytes(b"\x80\x04K\x01.")  # a pickle
  with pytest.raises(ZooError, match="pickle"):
    zoo.train(CNN, init_from=str(evil), **RUN)
