"""Weight cards: shipped in each model folder (config.json, and README.md
with Hub metadata front matter), exactly what zoo.cards.build gives now (so
they cannot drift from zoo/baselines.json or the configs), true of the
safetensors file they describe, read only when asked for, and written by
`zoo baselines`."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from safetensors import safe_open

import zoo
from zoo import cards, cli, data, hub, pretrained, registry, weights
from zoo.training import baselines
from zoo.fingerprint import params_sha256

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [n for n in zoo.list_models()
           if (zoo.get(n).baseline or {}).get("pretrained")]


def test_some_cards_ship():
  assert {"cnn_fashion_mnist", "logreg_binary_fashion_mnist"} <= set(SHIPPED)


def _card(name):
  return json.loads(
      (pretrained.folder(name) / hub.CONFIG).read_text())["card"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_folder_is_what_build_gives_now(name, tmp_path):
  """Byte for byte: a change to baselines.json, a config or the card format
  without regenerating (python -m zoo.pretrained) fails here."""
  shutil.copy(pretrained.path(name), tmp_path / hub.WEIGHTS)
  hub.write_meta(tmp_path, zoo.get(name))
  for file in (hub.CONFIG, hub.README):
    assert (pretrained.folder(name) / file).read_text() == (
        tmp_path / file).read_text(), (
            f"{pretrained.folder(name) / file} is stale: run python -m "
            "zoo.pretrained")


def test_every_folder_holds_shipped_weights():
  for folder in pretrained.PRETRAINED_DIR.iterdir():
    assert folder.name in SHIPPED, f"{folder} holds no shipped weights"
    assert sorted(p.name for p in folder.iterdir()) == sorted(hub.FILES)
    assert (pretrained.folder(folder.name) / hub.WEIGHTS).is_file()


@pytest.mark.parametrize("name", SHIPPED)
def test_card_is_true_of_its_weights(name):
  entry = zoo.get(name, pretrained=True)
  card = entry.weights_card
  assert card == _card(name)
  assert json.loads(json.dumps(card)) == card  # plain JSON types only
  record = entry.baseline["pretrained"]
  w = card["weights"]
  assert w["file"] == pretrained.path(name).name == "model.safetensors"
  assert w["path_in_package"] == record["file"]
  assert w["sha256"] == pretrained.sha256(pretrained.path(name))
  assert w["params_sha256"] == params_sha256(entry.params)
  with safe_open(str(pretrained.path(name)), framework="numpy") as f:
    assert {k: f.get_slice(k).get_shape() for k in f.keys()} == w["arrays"]
    assert sorted({str(f.get_tensor(k).dtype) for k in f.keys()}
                  ) == w["dtypes"]
    meta = f.metadata()
  assert meta["zoo.model"] == name
  assert meta["zoo.params_sha256"] == w["params_sha256"]
  assert meta["zoo.config_sha256"] == weights.config_sha256(entry.config)
  assert "small_cnn/conv_0/w" in _card("cnn_fashion_mnist")["weights"][
      "arrays"]
  assert w["parameters"] == entry.param_count()
  assert card["input"]["shape"] == ["batch", *entry.input_shape]
  assert card["input"]["layout"].startswith("NHWC")
  assert card["input"]["dtype"] == "float32"
  assert card["input"]["range"] == [0.0, 1.0]
  assert card["output"]["class_names"] == list(entry.class_names)
  assert card["output"]["shape"] == ["batch", entry.num_outputs]
  assert card["evaluation"]["test_accuracy"] == record["test_accuracy"]
  assert card["evaluation"]["test_loss"] == record["test_loss"]
  b = entry.baseline
  assert card["baseline"]["seeds"] == b["seeds"] == len(
      card["baseline"]["test_accuracy_per_seed"])
  assert card["baseline"]["summary"].startswith(
      f"{100 * b['test_accuracy_mean']:.2f}% ± "
      f"{100 * b['test_accuracy_std']:.2f}")
  assert card["reproduce"]["command"] == b["command"]
  assert card["versions"] == b["versions"]
  assert card["hardware"]["machine"] == b["machine"]
  feats = entry.features(entry.params, entry.example_input(2),
                         entry.model_state)
  assert card["features"]["width"] == feats.shape[1]


@pytest.mark.parametrize("name", SHIPPED)
def test_readme_front_matter_is_a_hub_model_card(name):
  """huggingface_hub reads the README's metadata as the Hub would."""
  from huggingface_hub import ModelCard
  card = _card(name)
  hf = ModelCard.load(pretrained.folder(name) / hub.README)
  data = hf.data.to_dict()
  assert data["library_name"] == "zoo"
  assert data["license"] == "apache-2.0"
  assert data["pipeline_tag"] == "image-classification"
  assert "safetensors" in data["tags"]
  result = hf.data.eval_results[0]
  assert result.metric_type == "accuracy"
  assert result.metric_value == card["evaluation"]["test_accuracy"]
  assert result.dataset_split == "test"
  assert card["weights"]["sha256"] in hf.text
  assert "\n".join(card["weights"]["load_without_zoo"]) in hf.text


def test_licenses_match_the_project_and_the_dataset():
  card = _card("cnn_fashion_mnist")
  assert card["license"]["weights"] == "Apache-2.0"
  assert "Apache License" in (REPO / "LICENSE").read_text()[:200]
  assert "Version 2.0" in (REPO / "LICENSE").read_text()[:200]
  setup = (REPO / "setup.cfg").read_text()
  assert re.search(r"^license = Apache-2.0$", setup, re.M)
  dataset = card["license"]["dataset"]
  assert dataset["name"] == "Fashion-MNIST" and dataset["license"] == "MIT"
  assert "Zalando" in dataset["copyright"]


@pytest.mark.parametrize("name", SHIPPED)
def test_load_without_zoo_recipe(name):
  """The card's safetensors-only lines, as the card shows them, rebuild
  exactly the weights zoo loads."""
  entry = zoo.get(name, pretrained=True)
  namespace = {"path": str(pretrained.path(name))}
  exec("\n".join(entry.weights_card["weights"]["load_without_zoo"]),
       namespace)
  chex.assert_trees_all_equal(namespace["params"], entry.params)
  chex.assert_trees_all_equal(namespace["model_state"],
                              entry.model_state or {})


def _test_images(entry):
  split = data.load(entry.dataset, entry.config["data"]["test_split"])
  classes = entry.config["data"]["classes"]
  if classes:  # keep those classes; label i is the i-th of them
    keep = np.isin(split.labels, classes)
    labels = np.array([classes.index(c) for c in split.labels[keep]])
    return split.images[keep], labels
  return split.images, split.labels


@pytest.mark.parametrize("name", ["logreg_binary_fashion_mnist",
                                  "logreg_fashion_mnist"])
def test_card_preprocessing_and_output_reproduce_its_accuracy(name):
  """Following the card alone (uint8 -> float32 as it says, its reading of
  the logits) gives its test accuracy: exactly with the exact conversion,
  and the simple `/ 255` one agrees to 0.1%."""
  entry = zoo.get(name, pretrained=True)
  card = entry.weights_card
  images, labels = _test_images(entry)
  apply = jax.jit(lambda x: entry.apply_with_state(
      entry.params, entry.model_state, None, x, False)[0])
  if entry.is_binary:  # "logit > 0 means <class_names[1]> (label 1)"
    assert re.match(rf"one logit per image: logit > 0 .* means "
                    rf"'{card['output']['class_names'][1]}' \(label 1",
                    card["output"]["meaning"])
    predict = lambda logits: (np.asarray(logits)[:, 0] > 0).astype(int)
  else:
    predict = lambda logits: np.asarray(logits).argmax(-1)
  exact = images.astype(np.float32) * np.float32(1 / 255)
  assert card["input"]["from_uint8_exact"].startswith(
      "images.astype(np.float32) * np.float32(1 / 255)")
  np.testing.assert_array_equal(exact, data.to_float(images))
  accuracy = float((predict(apply(exact)) == labels).mean())
  assert accuracy == card["evaluation"]["test_accuracy"]
  assert card["input"]["from_uint8"] == "images.astype(np.float32) / 255"
  simple = images.astype(np.float32) / 255
  assert abs(float((predict(apply(simple)) == labels).mean())
             - accuracy) <= 0.001


def test_entry_without_pretrained_weights_has_no_card():
  assert zoo.get("cnn_fashion_mnist").weights_card is None
  with pytest.raises(zoo.ZooError, match="no weights card"):
    cards.build(zoo.get("cnn_mnist"))


def test_missing_card_file_is_built(tmp_path, monkeypatch):
  """An install that left config.json out still gets the same card."""
  name = "logreg_fashion_mnist"
  shipped = _card(name)
  (tmp_path / name).mkdir()
  shutil.copy(pretrained.path(name), tmp_path / name)
  monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
  assert zoo.get(name, pretrained=True).weights_card == cards.build(
      zoo.get(name)) == shipped


def test_weights_and_card_load_lazily():
  """zoo.get(name) reads no weights and builds no card; the card is read
  on first use of .weights_card, once."""
  code = ("import sys, zoo; e = zoo.get('cnn_fashion_mnist'); "
          "assert e.params is None and e.weights_card is None; "
          "bad = {'zoo.pretrained', 'zoo.cards', 'zoo.hub', 'zoo.weights', "
          "'safetensors'} & set(sys.modules); assert not bad, bad; "
          "p = zoo.get('cnn_fashion_mnist', pretrained=True); "
          "assert 'zoo.cards' not in sys.modules and p.params is not None; "
          "assert p.weights_card is p.weights_card; print('ok')")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=REPO)
  assert out.returncode == 0 and out.stdout == "ok\n", out.stderr


def test_zoo_info_shows_the_card(capsys):
  assert cli.main(["info", "logreg_binary_fashion_mnist"]) == 0
  out = capsys.readouterr().out
  card = _card("logreg_binary_fashion_mnist")
  for text in (card["weights"]["sha256"], card["weights"]["params_sha256"],
               "float32 NHWC (batch, 28, 28, 1) in [0, 1]",
               "images.astype(np.float32) / 255",
               "logit > 0 (sigmoid > 0.5) means 'Ankle boot'",
               "94.10% test accuracy", "± 0.12", "over 3 seeds",
               "zoo baselines 'logreg_binary_fashion_mnist' --seeds 3",
               "jax 0.10.2", "weights Apache-2.0",
               "Fashion-MNIST: MIT", "width 784"):
    assert text in out, text
  assert cli.main(["info", "logreg_binary_fashion_mnist", "--card"]) == 0
  assert json.loads(capsys.readouterr().out) == card


def test_zoo_info_card_without_weights_is_one_error_line(capsys):
  assert cli.main(["info", "cnn_mnist", "--card"]) == 2
  out, err = capsys.readouterr()
  assert out == "" and err.count("\n") == 1
  assert err.startswith("zoo: error: no weights card:")


def test_zoo_baselines_writes_the_card(tmp_path, monkeypatch, capsys):
  """`zoo baselines` ships seed 0's weights and their card, built from the
  record it writes (training faked: this is about the files)."""
  name = "logreg_binary_fashion_mnist"
  real = zoo.get(name, pretrained=True)
  shipped = real.baseline

  class FakeRun:
    def __init__(self, seed):
      self.params = jax.tree.map(lambda a: a + seed, real.params)
      self.model_state = {}
      self.result = {
          "test_accuracy": 0.9 + seed / 100, "test_loss": 0.2 - seed / 100,
          "train_images_per_second": 1000.0, "epochs": 2,
          "wall_seconds": 1.0, "device_kind": "cpu", "devices": 1,
          "platform": "cpu", "versions": shipped["versions"],
          "params_sha256": params_sha256(self.params),
          "config": real.config}

  from zoo.training import loop
  monkeypatch.setattr(loop, "train", lambda entry, seed, **kw: FakeRun(seed))
  monkeypatch.setattr(registry, "BASELINES_FILE", tmp_path / "baselines.json")
  monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "pretrained")
  assert cli.main(["baselines", name, "--seeds", "2", "--runs-dir",
                   str(tmp_path / "runs")]) == 0
  capsys.readouterr()
  recorded = json.loads((tmp_path / "baselines.json").read_text())[name]
  folder = tmp_path / "pretrained" / name
  assert sorted(p.name for p in folder.iterdir()) == sorted(hub.FILES)
  card = json.loads((folder / hub.CONFIG).read_text())["card"]
  assert card == cards.build(zoo.get(name), recorded)
  assert (folder / hub.README).read_text() == cards.readme(card)
  assert card["evaluation"]["test_accuracy"] == 0.9
  assert card["baseline"]["seeds"] == 2
  assert card["baseline"]["test_accuracy_per_seed"] == [0.9, 0.91]
  assert card["weights"]["sha256"] == pretrained.sha256(folder / hub.WEIGHTS)
  assert card["weights"]["params_sha256"] == params_sha256(real.params)
  assert card["reproduce"]["command"] == baselines.command(name, 2)
