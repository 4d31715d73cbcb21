"""Weight cards: what a shipped weights file is, and how to use it anywhere.

A card is a plain JSON-serialisable dict, written beside the weights as
zoo/pretrained/<name>.json and attached to `zoo.get(name,
pretrained=True).weights_card`. It says what a user of the file needs and
cannot see in the arrays: the input the weights expect (shape, NHWC layout,
float32 in [0, 1] and how to get there from uint8), what the outputs mean
(class names in logit order; for a binary model what logit > 0 means), how
good these weights are (their test accuracy and loss, and the spread of the
baseline over seeds), how to reproduce them (command, hardware, versions),
how to check them (file and parameter sha256), how to load them without zoo,
and their licenses (the weights' and the training data's).

`build` derives every field from the model's config and its record in
zoo/baselines.json, so a card cannot drift from either: `zoo baselines`
writes it whenever it ships weights, a test checks each shipped card is
exactly what `build` gives now, and `python -m zoo.cards` rewrites them all.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

CARD_VERSION = 1

# The project's license, which the weights it trains and ships carry.
WEIGHTS_LICENSE = "Apache-2.0"

# What we know of each dataset's license; a dataset missing here gets a card
# that says so rather than a guess.
DATASET_LICENSES: dict[str, dict[str, str]] = {
    "fashion_mnist": {
        "name": "Fashion-MNIST",
        "license": "MIT",
        "copyright": "Copyright (c) 2017 Zalando SE",
        "url": "https://github.com/zalandoresearch/fashion-mnist",
    },
}

# Python lines that load a weights file at `path` into Haiku's nested dicts
# with numpy alone (a test runs them).
LOAD_WITHOUT_ZOO = [
    "import re, numpy as np",
    "arrays = np.load(path)  # allow_pickle=False, numpy's default, suffices",
    "tree = {'params': {}, 'model_state': {}}",
    "for key in arrays.files:  # e.g. \"params['<module>']['<name>']\"",
    "  part, module, name = re.fullmatch("
    "r\"(\\w+)\\['([^']+)'\\]\\['([^']+)'\\]\", key).groups()",
    "  tree[part].setdefault(module, {})[name] = arrays[key]",
    "params, model_state = tree['params'], tree['model_state']",
]

# What each built-in architecture's `features` returns (ModelEntry.features).
FEATURES: dict[str, str] = {
    "cnn": "the dense layer after its activation, before dropout and logits",
    "cnn_bn": ("the dense layer after its BatchNorm and activation, before "
               "dropout and logits"),
    "mlp": "the last hidden layer after its activation",
    "lstm": "the top LSTM layer's hidden state after the last valid row",
    "vit": "the CLS token after the final LayerNorm",
    "logistic": "the input itself, flattened",
}


def path(name: str) -> Path:
  """Where model `name`'s card ships: beside its weights."""
  from zoo import pretrained
  return pretrained.PRETRAINED_DIR / f"{name}.json"


# A JSON list of numbers (or "batch"), as json.dumps(indent=1) spreads it.
_FLAT_LIST = re.compile(
    r'\[\n\s*((?:-?[0-9.e+-]+|"batch")(?:,\n\s*(?:-?[0-9.e+-]+|"batch"))*)'
    r'\n\s*\]')


def dumps(card: Mapping[str, Any]) -> str:
  """The card's file text: stable (field order as built, one indent), with
  lists of numbers (shapes, per-seed accuracies) on one line."""
  text = json.dumps(card, indent=1, ensure_ascii=False)
  text = _FLAT_LIST.sub(
      lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",\n"))
      + "]", text)
  return text + "\n"


def load(name: str) -> dict[str, Any]:
  """The shipped card of model `name`."""
  return json.loads(path(name).read_text(encoding="utf-8"))


def write(entry, baseline: Mapping[str, Any] | None = None) -> Path:
  """Builds `entry`'s card and writes it beside its weights, atomically."""
  target = path(entry.name)
  target.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".json",
                             dir=target.parent)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(dumps(build(entry, baseline)))
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return target


def build(entry, baseline: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The weights card of `entry`'s shipped weights.

  Args:
    entry: The registered model (zoo.get(name)).
    baseline: Its record as in zoo/baselines.json (default: `entry.baseline`;
      `zoo baselines` passes the one it is recording). Must hold the
      `pretrained` record of shipped weights.

  Returns:
    A dict of JSON types only (lists, not tuples), equal to its own JSON
    round trip.
  """
  from zoo.errors import ZooError
  b = baseline if baseline is not None else entry.baseline
  if not b or not b.get("pretrained"):
    raise ZooError(f"{entry.name} ships no weights (its baseline has no "
                   "pretrained record), so it has no weights card.")
  # As zoo/baselines.json stores it (sorted keys, lists), whether `baseline`
  # was just measured or read back, so both give the same text.
  b = json.loads(json.dumps(b, sort_keys=True))
  p = b["pretrained"]
  config = b.get("config") or json.loads(json.dumps(entry.config,
                                                    sort_keys=True))
  data = config["data"]
  card = {
      "card_version": CARD_VERSION,
      "model": entry.name,
      "description": config.get("description", ""),
      "weights": _weights(entry, b),
      "input": _input(entry),
      "output": _output(entry),
      "features": _features(entry),
      "evaluation": _evaluation(entry, data, p),
      "baseline": _baseline(b),
      "reproduce": _reproduce(entry, b, config),
      "hardware": {
          "devices": b["devices"],
          "device_kind": b["device_kind"],
          "platform": b["platform"],
          "machine": b["machine"],
      },
      "versions": b["versions"],
      "license": _license(data["dataset"]),
  }
  return json.loads(json.dumps(card))


def _evaluation(entry, data: Mapping[str, Any], p: Mapping[str, Any]
                ) -> dict[str, Any]:
  """Accuracy and loss of these weights, and how to check them."""
  return {
      "dataset": data["dataset"],
      "split": data["test_split"],
      "classes": list(data["classes"]) or "all",
      "seed": p["seed"],
      "test_accuracy": p["test_accuracy"],
      "test_loss": p["test_loss"],
      "check": (
          f"entry = zoo.get({entry.name!r}, pretrained=True); "
          "zoo.evaluate(entry, entry.params, entry.model_state) gives "
          "this accuracy exactly with the hardware and versions below "
          "(tested); elsewhere the last digits may differ"),
  }


def _baseline(b: Mapping[str, Any]) -> dict[str, Any]:
  """The seed spread of the baseline these weights are seed 0 of."""
  return {
      "summary": (f"{100 * b['test_accuracy_mean']:.2f}% ± "
                  f"{100 * b['test_accuracy_std']:.2f} test accuracy "
                  f"(mean ± sample std over {b['seeds']} seeds, "
                  f"{b['epochs']} epochs each)"),
      "seeds": b["seeds"],
      "test_accuracy_mean": b["test_accuracy_mean"],
      "test_accuracy_std": b["test_accuracy_std"],
      "test_accuracy_per_seed": b["test_accuracy_per_seed"],
      "test_loss_mean": b["test_loss_mean"],
      "test_loss_std": b["test_loss_std"],
      "epochs": b["epochs"],
      "date": b.get("date", ""),
  }


def _reproduce(entry, b: Mapping[str, Any], config) -> dict[str, Any]:
  """The command and config that produced these weights."""
  return {
      "command": b["command"],
      "what": (f"trains seeds 0..{b['seeds'] - 1} with the config below "
               "and records the baseline; these weights are seed 0's "
               f"(zoo train {entry.name} --seed 0 --workdir DIR runs "
               "that training alone). params_sha256 identifies the exact "
               "result; reproducing it bit for bit needs the hardware "
               "and versions below"),
      "config": config,
  }


def _weights(entry, b: Mapping[str, Any]) -> dict[str, Any]:
  """The file: format, digests, members and how to load it."""
  from zoo import npz, weights
  params, model_state = weights.template(entry)
  arrays = {f"params{k}": v for k, v in npz.flatten(params).items()}
  arrays.update({f"model_state{k}": v
                 for k, v in npz.flatten(model_state).items()})
  members = {k: list(v.shape) for k, v in arrays.items()}
  p = b["pretrained"]
  return {
      "file": f"{entry.name}.npz",
      "path_in_package": p["file"],
      "format": ("pickle-free .npz: a zip of .npy arrays, one per parameter "
                 "or state array (little-endian, C order; no object arrays, "
                 "nothing to unpickle)"),
      "dtypes": sorted({str(v.dtype) for v in arrays.values()}),
      "sha256": p["sha256"],
      "params_sha256": b["params_sha256_seed0"],
      "params_sha256_is": (
          "zoo.training.fingerprint.params_sha256(params): sha256 over "
          "each parameter's (path, dtype, shape, bytes), sorted by path"),
      "parameters": int(sum(v.size for v in npz.flatten(params).values())),
      "load_with_zoo": (f"entry = zoo.get({entry.name!r}, pretrained=True)"
                        "  # entry.params, entry.model_state"),
      "load_without_zoo": LOAD_WITHOUT_ZOO,
      "member_names": (
          "jax.tree_util.keystr of each leaf's path: \"params['<module>']"
          "['<name>']\" is Haiku's params['<module>']['<name>'], "
          "\"model_state[...]\" likewise its state (BatchNorm statistics)"),
      "members": members,
  }


def _input(entry) -> dict[str, Any]:
  return {
      "shape": ["batch", *entry.input_shape],
      "layout": "NHWC (batch, height, width, channels)",
      "dtype": "float32",
      "range": [0.0, 1.0],
      "from_uint8": "images.astype(np.float32) / 255",
      "from_uint8_exact": (
          "images.astype(np.float32) * np.float32(1 / 255) "
          "(zoo.data.to_float, which the recorded accuracy used; '/ 255' "
          "differs from it by at most 1 ulp in 126 of the 256 values)"),
      "normalization": "none: no mean or std is subtracted",
  }


def _output(entry) -> dict[str, Any]:
  from zoo.data import catalog
  names = list(entry.class_names)
  ids = (list(entry.config["data"]["classes"])
         or list(range(catalog.get(entry.dataset).num_classes)))
  if entry.is_binary:
    meaning = (f"one logit per image: logit > 0 (sigmoid > 0.5) means "
               f"{names[1]!r} (label 1, {entry.dataset} class {ids[1]}); "
               f"logit <= 0 means {names[0]!r} (label 0, {entry.dataset} "
               f"class {ids[0]}); sigmoid(logit) is P({names[1]!r})")
  else:
    meaning = ("unnormalised log-probabilities, one per class in "
               "class_names order: softmax gives probabilities, argmax the "
               "predicted class")
  return {
      "kind": "logits",
      "shape": ["batch", entry.num_outputs],
      "class_names": names,
      "dataset_class_ids": ids,
      "meaning": meaning,
  }


def _features(entry) -> dict[str, Any] | None:
  """Width and meaning of `entry.features` (None for a module without)."""
  import jax
  from zoo import weights
  from zoo.errors import InputError
  params, model_state = weights.template(entry)
  apply = entry.features_transformed.apply
  try:
    out = jax.eval_shape(lambda p, s, x: apply(p, s, None, x, False)[0],
                         params, model_state, entry.example_input())
  except InputError:
    return None
  return {
      "width": out.shape[-1],
      "what": FEATURES.get(entry.arch, "what the module's features returns"),
      "how": ("entry.features(entry.params, images, entry.model_state) -> "
              f"(batch, {out.shape[-1]}); the head applied to it gives the "
              "logits"),
  }


def _license(dataset: str) -> dict[str, Any]:
  data = DATASET_LICENSES.get(dataset)
  return {
      "weights": WEIGHTS_LICENSE,
      "weights_note": ("trained and shipped by the zoo project under its "
                       "own license (see LICENSE); the dataset they were "
                       "trained on has its own, below"),
      "dataset": data or {"name": dataset,
                          "license": "not recorded by zoo: check the "
                                     "dataset's source"},
  }


def main() -> None:
  """`python -m zoo.cards`: rewrites the card of every shipped model."""
  from zoo import pretrained, registry
  for name in registry.list_models():
    entry = registry.get(name)
    if (entry.baseline or {}).get("pretrained") and \
        pretrained.path(name).is_file():
      print(write(entry))


if __name__ == "__main__":
  main()
