"""Weight cards: what a weights file is, and how to use it anywhere.

A card is a plain JSON-serialisable dict, kept in a model folder's
config.json (zoo.hub) and, in words with Hub metadata front matter, in its
README.md; `zoo.get(name, pretrained=...).weights_card` reads it. It says
what a user of the file needs and cannot see in the arrays: the input the
weights expect (shape, NHWC layout, float32 in [0, 1] and how to get there
from uint8), what the outputs mean (class names in logit order; for a
binary model what logit > 0 means), how good these weights are (their test
accuracy and loss, and the spread of the baseline over seeds), how to
reproduce them (command, hardware, versions), how to check them (file and
parameter sha256), how to load them without zoo, and their licenses (the
weights' and the training data's).

`build` derives every field from the model's config and its record in
zoo/baselines.json, so a card cannot drift from either: `zoo baselines`
writes it whenever it ships weights, a test checks each shipped card is
exactly what `build` gives now, and `python -m zoo.pretrained` rewrites
them all.
Weights zoo did not measure (an export of your own run) get a card without
the measured parts.
"""
from __future__ import annotations

import json
import re
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
# with the safetensors library alone (a test runs them as the card shows
# them).
LOAD_WITHOUT_ZOO = [
    "from safetensors.numpy import load_file",
    "arrays = load_file(path)  # {'<module>/<name>': array}; nothing to unpickle",
    "tree = {'params': {}, 'model_state': {}}",
    "for key, array in arrays.items():",
    "  part = 'model_state' if key.startswith('model_state/') else 'params'",
    "  module, name = key.removeprefix('model_state/').rsplit('/', 1)",
    "  tree[part].setdefault(module, {})[name] = array",
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


def build(entry, baseline: Mapping[str, Any] | None = None, *,
          file_sha256: str | None = None,
          params_sha256: str | None = None) -> dict[str, Any]:
  """The weights card of `entry`'s weights.

  Args:
    entry: The registered model (zoo.get(name)).
    baseline: Its record as in zoo/baselines.json (default: `entry.baseline`;
      `zoo baselines` passes the one it is recording). Its `pretrained`
      record describes the shipped weights.
    file_sha256, params_sha256: The digests of the file the card goes with
      (default: the shipped file's, from the record). Weights whose
      params_sha256 is not the record's are not the measured ones: their
      card has no evaluation, baseline, hardware or versions.

  Returns:
    A dict of JSON types only (lists, not tuples), equal to its own JSON
    round trip.
  """
  from zoo.errors import ZooError
  b = baseline if baseline is not None else entry.baseline
  # As zoo/baselines.json stores it (sorted keys, lists), whether `baseline`
  # was just measured or read back, so both give the same text.
  b = json.loads(json.dumps(b or {}, sort_keys=True))
  measured = bool(b.get("pretrained")) and params_sha256 in (
      None, b.get("params_sha256_seed0"))
  if not measured and (file_sha256 is None or params_sha256 is None):
    raise ZooError(f"{entry.name} ships no weights (its baseline has no "
                   "pretrained record), so it has no weights card.")
  p = b.get("pretrained") if measured else None
  config = ((measured and b.get("config"))
            or json.loads(json.dumps(entry.config, sort_keys=True)))
  data = config["data"]
  card = {
      "card_version": CARD_VERSION,
      "model": entry.name,
      "description": config.get("description", ""),
      "weights": _weights(entry, file_sha256 or p["sha256"],
                          params_sha256 or b["params_sha256_seed0"],
                          p["file"] if p else None),
      "input": _input(entry),
      "output": _output(entry),
      "features": _features(entry),
      "evaluation": _evaluation(entry, data, p) if p else None,
      "baseline": _baseline(b) if p else None,
      "reproduce": (_reproduce(entry, b, config) if p else {
          "command": None,
          "what": ("not measured by zoo: these weights are not the ones "
                   "zoo shipped for this model, so zoo records no accuracy, "
                   "command or hardware for them; the config below is the "
                   "one they were trained with"),
          "config": config}),
      "hardware": {
          "devices": b["devices"],
          "device_kind": b["device_kind"],
          "platform": b["platform"],
          "machine": b["machine"],
      } if p else None,
      "versions": b["versions"] if p else None,
      "license": _license(data["dataset"], shipped=bool(p)),
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


def _weights(entry, file_sha256: str, params_sha256: str,
             path_in_package: str | None) -> dict[str, Any]:
  """The file: format, digests, array names and how to load it."""
  from zoo import weights
  params, model_state = weights.template(entry)
  arrays = weights.arrays_of(params, model_state)
  return {
      "file": "model.safetensors",
      "path_in_package": path_in_package,
      "format": ("safetensors: a JSON header (names, dtypes, shapes, "
                 "offsets; metadata) and the raw little-endian arrays, "
                 "nothing to unpickle"),
      "dtypes": sorted({str(v.dtype) for v in arrays.values()}),
      "sha256": file_sha256,
      "params_sha256": params_sha256,
      "params_sha256_is": (
          "zoo.fingerprint.params_sha256(params): sha256 over each "
          "parameter's (path, dtype, shape, bytes), sorted by path"),
      "parameters": int(sum(v.size for v in weights.names(params).values())),
      "load_with_zoo": (f"entry = zoo.get({entry.name!r}, pretrained=True)"
                        "  # or pretrained='<folder or Hub repo id>'; "
                        "entry.params, entry.model_state"),
      "load_without_zoo": LOAD_WITHOUT_ZOO,
      "array_names": (
          "'<module>/<name>' is Haiku's params['<module>']['<name>'] (the "
          "module is everything before the last '/'); "
          "'model_state/<module>/<name>' likewise its state (BatchNorm "
          "statistics)"),
      "metadata": ("the header's __metadata__ holds zoo.model, "
                   "zoo.config_sha256 (sha256 of the config's canonical "
                   "JSON), zoo.params_sha256 and zoo.model_state_sha256, "
                   "which zoo checks on load"),
      "arrays": {k: list(v.shape) for k, v in arrays.items()},
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


def _license(dataset: str, shipped: bool = True) -> dict[str, Any]:
  data = DATASET_LICENSES.get(dataset)
  return {
      "weights": WEIGHTS_LICENSE if shipped else None,
      "weights_note": ("trained and shipped by the zoo project under its "
                       "own license (see LICENSE); the dataset they were "
                       "trained on has its own, below" if shipped else
                       "set by whoever trained these weights; the dataset "
                       "they were trained on has its own, below"),
      "dataset": data or {"name": dataset,
                          "license": "not recorded by zoo: check the "
                                     "dataset's source"},
  }


def readme(card: Mapping[str, Any]) -> str:
  """A model folder's README.md: Hub model-card metadata as YAML front
  matter (JSON values, which YAML reads as they are), then the card in
  words."""
  e, w, i, o = card["evaluation"], card["weights"], card["input"], \
      card["output"]
  lic, data = card["license"], card["license"]["dataset"]
  front = {"library_name": "zoo",
           "tags": ["zoo", "jax", "haiku", "safetensors",
                    "image-classification"],
           "pipeline_tag": "image-classification",
           "datasets": [e["dataset"] if e else data["name"]]}
  if lic["weights"]:
    front["license"] = lic["weights"].lower()
  if e:
    front["metrics"] = ["accuracy"]
    front["model-index"] = [{"name": card["model"], "results": [{
        "task": {"type": "image-classification",
                 "name": "Image Classification"},
        "dataset": {"name": data["name"], "type": e["dataset"],
                    "split": e["split"]},
        "metrics": [{"type": "accuracy", "value": e["test_accuracy"],
                     "name": "Test accuracy"}]}]}]
  lines = ["---"] + [f"{k}: {json.dumps(v)}" for k, v in front.items()]
  lines += ["---", "", f"# {card['model']}", "", card["description"], ""]
  if e:
    b = card["baseline"]
    lines += [f"Test accuracy {100 * e['test_accuracy']:.2f}% (loss "
              f"{e['test_loss']:.4f}) on {data['name']} {e['split']}, "
              f"seed {e['seed']}; the baseline is {b['summary']}.", ""]
  else:
    lines += [card["reproduce"]["what"] + ".", ""]
  names = ", ".join(o["class_names"])
  lines += [
      "## Use", "", "```python", "import zoo",
      w["load_with_zoo"].split("  #")[0].replace(
          "pretrained=True", "pretrained='<this folder or Hub repo id>'"),
      "logits, _ = entry.apply_with_state(entry.params, entry.model_state, "
      "None, images, False)",
      "```", "",
      f"- Input: {i['dtype']} {i['layout']}, shape "
      f"({', '.join(map(str, i['shape']))}), values in "
      f"[{i['range'][0]:g}, {i['range'][1]:g}]; from uint8: "
      f"`{i['from_uint8']}`; normalization: {i['normalization']}.",
      f"- Output: {o['kind']}, shape ({', '.join(map(str, o['shape']))}): "
      f"{o['meaning']}. Classes: {names}.",
  ]
  if card.get("features"):
    lines.append(f"- Features: width {card['features']['width']}, "
                 f"{card['features']['what']}.")
  lines += ["", "## Load without zoo", "",
            "With the safetensors library alone, into Haiku's nested dicts:",
            "", "```python", "path = 'model.safetensors'",
            *w["load_without_zoo"], "```", "",
            f"Array names: {w['array_names']}. Header: {w['metadata']}.", "",
            "## Files", "",
            f"- model.safetensors: sha256 `{w['sha256']}`, "
            f"{w['parameters']:,} parameters ({', '.join(w['dtypes'])})",
            f"- params_sha256 `{w['params_sha256']}` "
            f"({w['params_sha256_is']})",
            "- config.json: the model's name and zoo config, the digests, "
            "and this card as JSON (`entry.weights_card`)", ""]
  if e:
    h, r = card["hardware"], card["reproduce"]
    versions = ", ".join(f"{k} {v}" for k, v in card["versions"].items())
    lines += ["## Reproduce", "", f"`{r['command']}`: {r['what']}.", "",
              f"Measured on {h['devices']}x {h['device_kind']} "
              f"({h['machine']}, {h['platform']}); {versions}.", ""]
  lines += ["## License", "",
            f"Weights: {lic['weights'] or 'not set by zoo'} "
            f"({lic['weights_note']}).",
            f"Data: {data['name']}, {data['license']}"
            + (f", {data['copyright']}" if data.get("copyright") else "")
            + (f" ({data['url']})" if data.get("url") else "") + ".", ""]
  return "\n".join(lines)
