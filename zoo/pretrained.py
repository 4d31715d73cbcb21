"""Pretrained weights: shipped inside the package, or any model folder.

`zoo.get(name, pretrained=...)` comes here (zoo.attach). The shipped weights are the
seed-0 parameters of each measured baseline, written by `zoo baselines` as
a Hub-style folder, zoo/pretrained/<name>/ (config.json, model.safetensors,
README.md; see zoo.hub), with their sha256 and test accuracy recorded in
zoo/baselines.json; loading them is offline. A local folder or a Hub repo
id loads the same way. Weights are read when asked for, and checked (file
sha256, every array's name, shape and dtype, the arrays' digests); the
weights card is read only when `entry.weights_card` is.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

from zoo import hub, registry, weights
from zoo.errors import ZooError
from zoo.hub import sha256  # noqa: F401  (zoo.pretrained.sha256)

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


class PretrainedNotAvailableError(ZooError, LookupError):
  """No shipped weights for this model (or they do not match its config)."""


def folder(name: str) -> Path:
  """Where model `name`'s shipped folder lives."""
  return PRETRAINED_DIR / name


def path(name: str) -> Path:
  """Model `name`'s shipped weights file."""
  return folder(name) / hub.WEIGHTS


def attach(entry, source=True):
  """`entry` with `.params` and `.model_state` read from `source`: True for
  the shipped weights, a model folder's path, or a Hub repo id ("owner/name",
  "owner/name@revision", "hf://owner/name"); and `.weights_card` that reads
  their card on first use."""
  if source is True:
    return _attach_shipped(entry)
  if not isinstance(source, (str, os.PathLike)) or isinstance(source, bool):
    raise ZooError(f"pretrained={source!r}: pass True (the shipped weights), "
                   "a model folder's path, or a Hub repo id such as "
                   "'owner/name'.")
  local = Path(source).expanduser()
  if local.exists() or isinstance(source, os.PathLike):
    return load_folder(entry, local)
  repo = hub.parse_repo_id(str(source))
  if repo is None:
    raise hub.WeightsNotFoundError(
        f"pretrained={str(source)!r}: no such folder, and not a Hub repo id "
        "(owner/name[@revision]); check the path.")
  return load_folder(entry, hub.download(*repo), where=str(source))


def _attach_shipped(entry):
  record = (entry.baseline or {}).get("pretrained")
  file = path(entry.name)
  if not record or not file.is_file():
    raise PretrainedNotAvailableError(_not_available(entry))
  digest = sha256(file)
  if digest != record["sha256"]:
    raise PretrainedNotAvailableError(
        f"{file} does not match its recorded sha256 ({digest} != "
        f"{record['sha256']}): the file is damaged; reinstall zoo.")
  params, model_state = weights.load(entry, file)
  return _with_weights(entry, params, model_state, folder(entry.name))


def load_folder(entry, local: str | os.PathLike, where: str | None = None):
  """`entry` with the weights of the model folder at `local` (checked to
  be of the same model; its config, where it differs, becomes the entry's)."""
  local = Path(local)
  record = hub.read_config(local)
  where = where or str(local)
  if record.get("model") != entry.name:
    raise PretrainedNotAvailableError(
        f"{where} holds weights of {record.get('model')!r}, not "
        f"{entry.name!r}: load it with zoo.get({record.get('model')!r}, "
        f"pretrained={where!r}).")
  from zoo import config as config_lib
  changed = config_lib.changes(entry.config, record["config"])
  if changed:
    entry = registry.with_config(entry, {k: b for k, _, b in changed})
  params, model_state = weights.load(entry, hub.verify(local, record))
  return _with_weights(entry, params, model_state, local)


def _with_weights(entry, params, model_state, local: Path):
  return dataclasses.replace(
      entry, params=params, model_state=model_state,
      card_loader=functools.partial(read_card, local, entry))


def read_card(local: Path, entry) -> dict | None:
  """The weights card of the folder at `local` (the one config.json holds;
  built anew from the records if an install left config.json out)."""
  file = Path(local) / hub.CONFIG
  if file.is_file():
    return json.loads(file.read_text(encoding="utf-8")).get("card")
  from zoo import cards
  return cards.build(entry)


def shipped_card(entry) -> dict | None:
  """The weights card of `entry`'s shipped weights (None if none ship),
  without reading the weights."""
  if not (entry.baseline or {}).get("pretrained") or \
      not path(entry.name).is_file():
    return None
  return read_card(folder(entry.name), entry)


def _not_available(entry) -> str:
  """Why `entry` has no shipped weights, and what to do instead."""
  from zoo import config as config_lib
  registered = registry.get(entry.name)
  changed = config_lib.changes(registered.config, entry.config)
  if changed and (registered.baseline or {}).get("pretrained"):
    what = ("the architecture" if any(k.startswith("model.")
                                      for k, _, _ in changed) else "the config")
    keys = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed)
    sets = " ".join(_set_flag(k, b) for k, _, b in changed)
    return (f"the shipped pretrained weights of {entry.name!r} are for its "
            f"registered config; your overrides change {what} ({keys}), "
            "which those weights were not trained for. Drop the overrides to "
            f"load them, or train the changed model: zoo train {entry.name} "
            f"{sets} --workdir DIR, then load it with "
            "zoo.training.run_weights.from_workdir.")
  return (f"no pretrained weights ship for {entry.name!r}"
          + ("" if entry.baseline else " (its baseline was not measured here)")
          + f". Train them: zoo train {entry.name} --workdir DIR, then load "
          "with zoo.training.run_weights.from_workdir, or measure the baseline with "
          f"zoo baselines {entry.name}.")


def _set_flag(key: str, value) -> str:
  """`--set key=value` as a shell word (strings bare, lists as [a, b])."""
  text = f"{key}={value if isinstance(value, str) else json.dumps(value)}"
  return f"--set '{text}'" if " " in text else f"--set {text}"


def main() -> None:
  """`python -m zoo.pretrained`: rewrites config.json and README.md (the
  card) of every shipped model folder from zoo/baselines.json and the
  configs, leaving the weights as they are."""
  for name in registry.list_models():
    entry = registry.get(name)
    if (entry.baseline or {}).get("pretrained") and path(name).is_file():
      print(hub.write_meta(folder(name), entry))


if __name__ == "__main__":
  main()
