"""Weights files: parameters (and model state) only, as pickle-free .npz.

Used by `zoo eval --weights`, pretrained weights and exports. A file is
checked against the model (every path, shape and dtype) before use; a pickle,
whatever its name, is refused without being executed.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import jax
import numpy as np

from zoo import npz
from zoo.train import checkpoint as ckpt_lib

log = logging.getLogger("zoo.checkpoint")


def template(entry):
  """(params, model_state) shapes of `entry`, with no device work."""
  params, model_state = jax.eval_shape(entry.init_with_state,
                                       jax.random.PRNGKey(0),
                                       entry.example_input())
  zeros = lambda t: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), t)
  return zeros(params), zeros(model_state)


def save(path: str | os.PathLike, params, model_state=None) -> Path:
  """Atomically writes params (and model state) to an .npz file."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {f"params{k}": v for k, v in ckpt_lib.flatten(params).items()}
  arrays.update({f"model_state{k}": v for k, v in
                 ckpt_lib.flatten(model_state or {}).items()})
  fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".npz", dir=path.parent)
  os.close(fd)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide shared weights
  try:
    ckpt_lib.write_npz(Path(tmp), arrays)
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return path


def _params_and_state(entry, path: Path, where: str):
  """Reads a weights file (or a checkpoint's arrays.npz, whose keys start
  with ".params") for `entry` and rebuilds both trees. Every member used is
  checked against the model from its header before any data is read, so a
  hostile file cannot make this allocate more than the model's own size;
  the other members of a checkpoint (optimizer state...) are not read."""
  with npz.NpzReader(path) as reader:
    ckpt = any(k.startswith(".params") for k in reader.keys)
    p_prefix, s_prefix = ((".params", ".model_state") if ckpt
                          else ("params", "model_state"))
    params_t, state_t = template(entry)
    expected = {p_prefix + k: v for k, v in ckpt_lib.specs(params_t).items()}
    expected.update({s_prefix + k: v
                     for k, v in ckpt_lib.specs(state_t).items()})
    arrays = reader.read(
        expected, keep=lambda k: k.startswith((p_prefix, s_prefix)))
  params = ckpt_lib.unflatten(
      params_t, {k[len(p_prefix):]: v for k, v in arrays.items()
                 if k.startswith(p_prefix)}, where)
  model_state = ckpt_lib.unflatten(
      state_t, {k[len(s_prefix):]: v for k, v in arrays.items()
                if k.startswith(s_prefix)}, where)
  return params, model_state


def load(entry, path: str | os.PathLike):
  """(params, model_state) for `entry` from a weights .npz, a checkpoint
  directory (`DIR/checkpoints/step_N`) or an older zoo checkpoint's
  arrays.npz, verified."""
  path = Path(path)
  if path.is_dir() and not path.is_symlink() and path.name.startswith(
      "step_") and path.name[5:].isdigit():
    manager = ckpt_lib.CheckpointManager(path.parent)
    try:
      if int(path.name[5:]) in manager.steps():
        return _load_step(manager, int(path.name[5:]),
                          lambda config: entry)[1:]
    finally:
      manager.close()
  try:
    return _params_and_state(entry, path, str(path))
  except npz.WeightsNotFoundError:
    raise npz.WeightsNotFoundError(
        f"weights file {path} does not exist: check the path, or train the "
        f"model first (zoo train {entry.name} --workdir DIR) and load the run "
        "with --workdir DIR.") from None


def _newest(workdir: str | os.PathLike, entry_for_config):
  """(entry, params, model_state) from the newest checkpoint of a run that
  loads and verifies (damaged ones are skipped with a warning), where
  entry = entry_for_config(the run's resolved config)."""
  manager = ckpt_lib.CheckpointManager(Path(workdir) / "checkpoints")
  steps = manager.steps()
  if not steps:
    raise npz.WeightsNotFoundError(
        f"no checkpoint in {workdir}/checkpoints: train first (zoo train "
        f"NAME --workdir {workdir}).")
  errors = []
  try:
    for step in reversed(steps):
      try:
        return _load_step(manager, step, entry_for_config)
      except ckpt_lib.CheckpointError as e:
        log.warning("skipping checkpoint: %s", e)
        errors.append(str(e))
  finally:
    manager.close()
  raise ckpt_lib.CheckpointError(f"every checkpoint in {workdir} is damaged: "
                                 + "; ".join(errors))


def _load_step(manager, step: int, entry_for_config):
  """One checkpoint's entry and weights: orbax's, or an older zoo's
  arrays.npz (still readable for evaluation)."""
  path = manager.path(step)
  if manager.is_legacy(step):
    meta = ckpt_lib.verify_legacy(path)
  else:
    meta = manager.read_meta(step)
  if not isinstance(meta.get("config"), dict):
    raise ckpt_lib.CheckpointError(f"{path} holds no config.")
  entry = entry_for_config(meta["config"])
  if manager.is_legacy(step):
    params, model_state = _params_and_state(
        entry, path / ckpt_lib.LEGACY_ARRAYS, str(path))
  else:
    params, model_state = manager.restore_weights(step, *template(entry))
  return entry, params, model_state


def load_run(workdir: str | os.PathLike, entry_for_config):
  """Loads a run's newest good checkpoint once: returns (entry, params,
  model_state), where entry = entry_for_config(the run's resolved config)."""
  return _newest(workdir, entry_for_config)


def from_workdir(entry, workdir: str | os.PathLike):
  """(params, model_state) from the newest good checkpoint of a run."""
  return _newest(workdir, lambda config: entry)[1:]
