"""What `zoo train` and `zoo eval` share: the model, data and workdir
arguments, and `--set key=value` parsing."""
from __future__ import annotations

import argparse

from zoo import config as config_lib


def plural(n, noun: str) -> str:
  """ "1 epoch", "2 epochs" (messages count things)."""
  return f"{n} {noun}" + ("" if n == 1 else "s")


def parse_sets(items) -> dict:
  """`--set key=value` items as dotted-key overrides (values as TOML)."""
  out = {}
  for item in items or []:
    if "=" not in item:
      raise config_lib.ConfigError(
          f"--set {item!r}: write key=value, e.g. optimizer.learning_rate=3e-4")
    key, value = item.split("=", 1)
    out[key.strip()] = config_lib.parse_value(value.strip())
  return out


def add_common(p: argparse.ArgumentParser) -> None:
  """NAME, --data-dir and --workdir."""
  p.add_argument("name", help="registered model (see `zoo list`)")
  p.add_argument("--data-dir", default=None,
                 help="TFDS data dir or folder with IDX files "
                      "(default: $ZOO_DATA_DIR, $TFDS_DATA_DIR, system paths)")
  p.add_argument("--workdir", default=None, help="run directory")


def flat_overrides(cfg: dict, prefix: str = "") -> dict:
  """A resolved config as dotted-key overrides ({"train.epochs": 2, ...})."""
  out = {}
  for key, value in cfg.items():
    if isinstance(value, dict):
      out.update(flat_overrides(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def entry_for_run(entry, workdir, command: str):
  """`entry_for_config(cfg)` for loading a run of `entry`: the run's own
  resolved config (model settings, split, classes), refusing a run of
  another model with the command to use instead."""
  from zoo import registry

  def entry_for_config(cfg: dict):
    if cfg.get("name") and cfg["name"] != entry.name:
      raise config_lib.ConfigError(
          f"{workdir} holds a run of {cfg['name']!r}, not {entry.name!r}: "
          f"run `zoo {command} {cfg['name']} --workdir {workdir}`.")
    return registry.with_config(entry, flat_overrides(cfg))
  return entry_for_config


def check_workdir(workdir) -> None:
  """A --workdir to read must be an existing directory."""
  from zoo.training.workdir import as_path
  if workdir and not as_path(workdir).is_dir():
    raise config_lib.ConfigError(f"--workdir {workdir}: no such directory; "
                                 "give the --workdir of a zoo train run.")


WEIGHTS_HELP = ("'pretrained' (the shipped weights), a .safetensors weights "
                "file, a model folder or Hub repo id (owner/name), or a "
                "checkpoint directory (DIR/checkpoints/step_N)")


def entry_and_weights(name: str, weights, workdir, command: str):
  """(entry, params, model_state, source) named by `zoo eval|export`'s
  --weights and --workdir: the shipped weights ("pretrained"), a weights file
  or checkpoint directory, or the newest good checkpoint of a run; a run's
  own resolved config (model overrides included) builds its entry, also when
  --weights names a file to evaluate with it. `source` says which weights:
  {"weights": "pretrained" or a path, "step": N for a checkpoint}."""
  from zoo import registry
  from zoo.training import run_weights
  if weights == "pretrained":
    if workdir:
      raise config_lib.ConfigError(
          f"--weights pretrained takes the registered config of {name!r}, "
          "not a run's: drop --workdir (zoo eval writes to --out).")
    from zoo import pretrained
    entry = pretrained.attach(registry.get(name))
    return entry, entry.params, entry.model_state, {"weights": "pretrained"}
  entry = registry.get(name)
  params = model_state = source = None
  if workdir:
    check_workdir(workdir)
    entry, params, model_state, weights_dir = run_weights.load_run(
        workdir, entry_for_run(entry, workdir, command))
    source = {"weights": str(weights_dir), "step": _step(weights_dir)}
  if weights and is_folder_source(weights):  # its own config builds it
    from zoo import pretrained
    entry = pretrained.attach(entry, str(weights))
    params, model_state = entry.params, entry.model_state
    source = {"weights": str(weights)}
  elif weights:
    params, model_state = load_weights(entry, weights)
    source = {"weights": str(weights)}
    if run_weights.is_checkpoint_dir(weights):
      source["step"] = _step(weights)
  return entry, params, model_state, source


def _step(checkpoint_dir) -> int:
  """N of a checkpoint directory DIR/checkpoints/step_N."""
  from zoo.training.workdir import as_path
  return int(as_path(checkpoint_dir).name[5:])


def is_folder_source(path) -> bool:
  """Whether --weights PATH names a model folder: a local directory that is
  not a checkpoint, or (no such local path) a Hub repo id owner/name."""
  from zoo import hub
  from zoo.training import run_weights
  from zoo.training.workdir import as_path
  local = as_path(path)
  if run_weights.is_checkpoint_dir(path):
    return False
  if local.is_dir():
    return True
  return (not local.exists() and "://" not in str(path).replace("hf://", "")
          and hub.parse_repo_id(str(path)) is not None
          and not str(path).endswith((".safetensors", ".npz")))


def load_weights(entry, path):
  """(params, model_state) for `entry` from --weights PATH: a checkpoint
  directory (DIR/checkpoints/step_N), a model folder or Hub repo id
  (zoo.hub), or a .safetensors weights file, verified."""
  from zoo import pretrained, weights
  from zoo.training import run_weights
  if run_weights.is_checkpoint_dir(path):
    return run_weights.load_checkpoint(entry, path)
  from zoo.training.workdir import as_path
  if is_folder_source(path):
    loaded = pretrained.attach(entry, str(path))
    return loaded.params, loaded.model_state
  if not as_path(path).is_file():
    raise config_lib.ConfigError(
        f"--weights {path}: no such file; give 'pretrained' (the shipped "
        "weights), a .safetensors weights file (zoo.weights.save writes "
        "one), a model folder, a Hub repo id (owner/name) or a checkpoint "
        "directory (DIR/checkpoints/step_N).")
  return weights.load(entry, path)
