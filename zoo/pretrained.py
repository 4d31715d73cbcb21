"""Pretrained weights shipped inside the package (zoo/pretrained/<name>.npz).

They are the seed-0 parameters of each measured baseline, written by
`zoo baselines` in the pickle-free .npz format, with their sha256 and test
accuracy recorded in zoo/baselines.json. Loading is offline, checks the
digest, and checks every array's path, shape and dtype against the model.
Each file's weights card (zoo.cards) ships beside it as <name>.json.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from zoo.errors import ZooError

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


class PretrainedNotAvailableError(ZooError, LookupError):
  """No shipped weights for this model (or they do not match its config)."""


def path(name: str) -> Path:
  return PRETRAINED_DIR / f"{name}.npz"


def sha256(file: Path) -> str:
  """The file's digest, read in blocks (never the whole file at once)."""
  with Path(file).open("rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def attach(entry):
  """`entry` with `.params` (and `.model_state`) set to its shipped weights,
  and `.weights_card` to their card (the shipped <name>.json; built from the
  same records if an install left it out)."""
  from zoo import cards, weights
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
  card_file = cards.path(entry.name)
  card = cards.load(entry.name) if card_file.is_file() else cards.build(entry)
  return dataclasses.replace(entry, params=params, model_state=model_state,
                             weights_card=card)


def _not_available(entry) -> str:
  """Why `entry` has no shipped weights, and what to do instead."""
  from zoo import config as config_lib
  from zoo import registry
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
  import json
  text = f"{key}={value if isinstance(value, str) else json.dumps(value)}"
  return f"--set '{text}'" if " " in text else f"--set {text}"
