"""Shipped pretrained weights reproduce their recorded accuracy exactly, are
verified before use, and one cheap baseline re-trains into its recorded
spread."""
import shutil

import chex
import jax
import pytest

import zoo
from zoo import pretrained
from zoo.training.evaluate import evaluate_model
from zoo.training.loop import train

SHIPPED = [n for n in zoo.list_models()
           if (zoo.get(n).baseline or {}).get("pretrained")]


def test_measured_fashion_models_ship_weights():
  for name in ("logreg_fashion_mnist", "mlp_fashion_mnist",
               "logreg_binary_fashion_mnist"):
    assert name in SHIPPED, name


@pytest.mark.parametrize("name", SHIPPED)
def test_pretrained_weights_reproduce_recorded_accuracy(name):
  entry = zoo.get(name, pretrained=True)
  record = entry.baseline["pretrained"]
  fresh, _ = entry.init_with_state(jax.random.PRNGKey(0),
                                   entry.example_input())
  chex.assert_trees_all_equal_shapes(entry.params, fresh)
  result = evaluate_model(entry, entry.params, entry.model_state)
  expected = 2000 if entry.config["data"]["classes"] else 10000
  assert result["examples"] == expected
  assert result["accuracy"] == record["test_accuracy"]
  assert result["loss"] == pytest.approx(record["test_loss"], rel=1e-6)


def test_damaged_weights_are_refused(tmp_path, monkeypatch):
  name = SHIPPED[0]
  shutil.copytree(pretrained.folder(name), tmp_path / name)
  with open(tmp_path / name / "model.safetensors", "r+b") as f:
    f.seek(-40, 2)  # inside the last array's data
    f.write(b"\x00\x01\x02\x03")
  monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
  with pytest.raises(pretrained.PretrainedNotAvailableError, match="sha256"):
    zoo.get(name, pretrained=True)


def test_model_without_weights_says_how_to_get_them():
  with pytest.raises(pretrained.PretrainedNotAvailableError,
                     match="zoo train cnn_mnist"):
    zoo.get("cnn_mnist", pretrained=True)


def test_cheap_baseline_retrains_within_recorded_spread():
  """The logistic-regression baseline, re-trained with its own config."""
  b = zoo.get("logreg_fashion_mnist").baseline
  out = train("logreg_fashion_mnist", progress=False, devices=1, seed=0)
  spread = max(3 * b["test_accuracy_std"], 0.002)
  assert abs(out.result["test_accuracy"] - b["test_accuracy_mean"]) <= spread, (
      out.result["test_accuracy"], b["test_accuracy_mean"], spread)
