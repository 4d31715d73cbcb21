"""Pretrained weights shipped inside the package (zoo/pretrained/<name>.npz).

They are the seed-0 parameters of each measured baseline, written by
`zoo baselines` in the pickle-free .npz format, with their sha256 and test
accuracy recorded in zoo/baselines.json. Loading is offline, checks the
digest, and checks every array's path, shape and dtype against the model.
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
  """`entry` with `.params` (and `.model_state`) set to its shipped weights."""
  from zoo.train import weights
  record = (entry.baseline or {}).get("pretrained")
  file = path(entry.name)
  if not record or not file.is_file():
    raise PretrainedNotAvailableError(
        f"no pretrained weights ship for {entry.name!r}"
        + ("" if entry.baseline else " (its baseline was not measured here)")
        + f". Train them: zoo train {entry.name} --workdir DIR, then load with "
        "zoo.train.weights.from_workdir, or measure the baseline with "
        f"zoo baselines {entry.name}.")
  digest = sha256(file)
  if digest != record["sha256"]:
    raise PretrainedNotAvailableError(
        f"{file} does not match its recorded sha256 ({digest} != "
        f"{record['sha256']}): the file is damaged; reinstall zoo.")
  params, model_state = weights.load(entry, file)
  return dataclasses.replace(entry, params=params, model_state=model_state)
