"""Weights of a training run: its newest good checkpoint, or one checkpoint
directory. Used by `zoo eval --workdir` and `--weights DIR/checkpoints/step_N`.
"""
from __future__ import annotations

import logging
import os
from zoo import weights
from zoo.errors import WeightsNotFoundError
from zoo.training import checkpoint as ckpt_lib
from zoo.training.workdir import as_path, is_link

log = logging.getLogger("zoo.checkpoint")


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
  """Whether `path` names a step directory (`.../step_N`)."""
  path = as_path(path)
  return (path.is_dir() and not is_link(path)
          and path.name.startswith("step_") and path.name[5:].isdigit())


def load_checkpoint(entry, path: str | os.PathLike):
  """(params, model_state) for `entry` from one checkpoint directory."""
  path = as_path(path)
  manager = ckpt_lib.CheckpointManager(path.parent)
  try:
    if not is_checkpoint_dir(path) or int(path.name[5:]) not in manager.steps():
      raise ckpt_lib.CheckpointError(f"{path} is not a zoo checkpoint "
                                     "directory.")
    return _load_step(manager, int(path.name[5:]), lambda config: entry)[1:]
  finally:
    manager.close()


def _newest(workdir: str | os.PathLike, entry_for_config):
  """(entry, params, model_state, its directory) from the newest checkpoint
  of a run that loads and verifies (damaged ones are skipped with a warning,
  and left in place: evaluating changes nothing), where entry =
  entry_for_config(the run's resolved config)."""
  manager = ckpt_lib.CheckpointManager(as_path(workdir) / "checkpoints")
  steps = manager.steps()
  if not steps:
    raise WeightsNotFoundError(
        f"no checkpoint in {workdir}/checkpoints: train first (zoo train "
        f"NAME --workdir {workdir}).")
  errors = []
  try:
    for step in reversed(steps):
      try:
        return (*_load_step(manager, step, entry_for_config),
                manager.path(step))
      except ckpt_lib.CheckpointError as e:
        log.warning("skipping checkpoint: %s", e)
        errors.append(str(e))
  finally:
    manager.close()
  raise ckpt_lib.CheckpointError(f"every checkpoint in {workdir} is damaged: "
                                 + "; ".join(errors))


def _load_step(manager, step: int, entry_for_config):
  """One checkpoint's entry and weights."""
  meta = manager.read_meta(step)
  if not isinstance(meta.get("config"), dict):
    raise ckpt_lib.CheckpointError(f"{manager.path(step)} holds no config.")
  entry = entry_for_config(meta["config"])
  # With train.ema_decay, the moving average is what the run evaluated.
  params, model_state = manager.restore_weights(
      step, *weights.template(entry),
      params_key=("ema_params" if entry.config["train"].get("ema_decay")
                  else "params"))
  return entry, params, model_state


def load_run(workdir: str | os.PathLike, entry_for_config):
  """Loads a run's newest good checkpoint once: returns (entry, params,
  model_state, its directory), where entry = entry_for_config(the run's
  resolved config)."""
  return _newest(workdir, entry_for_config)


def from_workdir(entry, workdir: str | os.PathLike):
  """(params, model_state) from the newest good checkpoint of a run."""
  return _newest(workdir, lambda config: entry)[1:3]
