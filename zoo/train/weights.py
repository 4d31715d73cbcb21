"""Weights files: parameters (and model state) only, as pickle-free .npz.

Used by `zoo eval --weights`, pretrained weights and exports. A file is
checked against the model (every path, shape and dtype) before use; a pickle,
whatever its name, is refused without being executed.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax
import numpy as np

from zoo.train import checkpoint as ckpt_lib


def template(entry):
  """(params, model_state) shapes of `entry`, with no device work."""
  shapes = jax.eval_shape(entry.transformed.init, jax.random.PRNGKey(0),
                          entry.example_input())
  params, model_state = shapes if entry.stateful else (shapes, {})
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
  try:
    ckpt_lib.write_npz(Path(tmp), arrays)
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return path


def load(entry, path: str | os.PathLike):
  """(params, model_state) for `entry` from a weights .npz, verified."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weights file {path} does not exist.")
  arrays = ckpt_lib.read_npz(path)
  params_t, state_t = template(entry)
  params = ckpt_lib.unflatten(
      params_t, {k[len("params"):]: v for k, v in arrays.items()
                 if k.startswith("params")}, str(path))
  model_state = ckpt_lib.unflatten(
      state_t, {k[len("model_state"):]: v for k, v in arrays.items()
                if k.startswith("model_state")}, str(path))
  return params, model_state


def from_workdir(entry, workdir: str | os.PathLike):
  """(params, model_state) from the newest good checkpoint of a run."""
  manager = ckpt_lib.CheckpointManager(Path(workdir) / "checkpoints")
  steps = manager.steps()
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train "
                            f"first (zoo train {entry.name} --workdir "
                            f"{workdir}).")
  params_t, state_t = template(entry)
  for step in reversed(steps):
    try:
      manager.verify(step)
    except ckpt_lib.CheckpointError:
      continue
    arrays = ckpt_lib.read_npz(manager.path(step) / ckpt_lib.ARRAYS)
    params = ckpt_lib.unflatten(
        params_t, {k[len(".params"):]: v for k, v in arrays.items()
                   if k.startswith(".params")}, str(manager.path(step)))
    model_state = ckpt_lib.unflatten(
        state_t, {k[len(".model_state"):]: v for k, v in arrays.items()
                  if k.startswith(".model_state")}, str(manager.path(step)))
    return params, model_state
  raise ckpt_lib.CheckpointError(f"every checkpoint in {workdir} is damaged.")
