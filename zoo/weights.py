"""Weights files: parameters (and model state) only, as pickle-free .npz.

What users load and ship (`zoo eval --weights`, pretrained weights,
exports); below both the registry and training. A file is checked against
the model (every path, shape and dtype, from each member's header before
its data) before use; a pickle, whatever its name, is refused without being
executed. Weights of a training run (its checkpoints) are read by
zoo.training.run_weights.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax
import numpy as np

from zoo import npz


def template(entry):
  """(params, model_state) shapes of `entry`, with no device work."""
  params, model_state = jax.eval_shape(entry.init_with_state,
                                       jax.random.PRNGKey(0),
                                       entry.example_input())
  zeros = lambda t: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), t)
  return zeros(params), zeros(model_state)


def check(entry, params, model_state=None) -> None:
  """Raises InputError naming the first leaf whose path or shape is not
  `entry`'s own (from shapes alone, no device work): weights of another
  model or config would otherwise fail deep inside Haiku."""
  from zoo.errors import InputError
  want = jax.eval_shape(entry.init_with_state, jax.random.PRNGKey(0),
                        entry.example_input())
  if params is None:
    raise InputError(f"params is None: pass {entry.name}'s parameters, e.g. "
                     "zoo.get(name, pretrained=True).params or a zoo.train "
                     "result's .params.")
  other = ("these weights belong to another model or config; pass the ones "
           f"trained for {entry.name} with this config.")
  for what, want_tree, got_tree in zip(("params", "model_state"), want,
                                       (params, model_state)):
    want_specs, got_specs = npz.specs(want_tree), npz.specs(got_tree or {})
    if got_tree is None and want_specs:
      raise InputError(f"{entry.name} normalizes with BatchNorm statistics: "
                       "pass its model_state too (e.g. entry.model_state).")
    for key, (shape, _) in want_specs.items():
      got = got_specs.get(key)
      if got is None or got[0] != shape:
        why = ("is missing" if got is None else
               f"has shape {got[0]}, {entry.name} expects {shape}")
        raise InputError(f"{what}{key} {why}: {other}")
    extra = sorted(set(got_specs) - set(want_specs))
    if extra:
      raise InputError(f"{what}{extra[0]} is not a parameter of "
                       f"{entry.name}: {other}")


def save(path: str | os.PathLike, params, model_state=None) -> Path:
  """Atomically writes params (and model state) to an .npz file."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {f"params{k}": v for k, v in npz.flatten(params).items()}
  arrays.update({f"model_state{k}": v for k, v in
                 npz.flatten(model_state or {}).items()})
  fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".npz", dir=path.parent)
  os.close(fd)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide shared weights
  try:
    npz.write_npz(Path(tmp), arrays)
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return path


def read(entry, path: Path, where: str):
  """Reads a weights file (or a flattened training state's .npz, whose keys
  start with ".params") for `entry` and rebuilds both trees. Every member
  used is checked against the model from its header before any data is
  read, so a hostile file cannot make this allocate more than the model's
  own size; the other members of a state (optimizer state...) are not
  read."""
  with npz.NpzReader(path) as reader:
    ckpt = any(k.startswith(".params") for k in reader.keys)
    p_prefix, s_prefix = ((".params", ".model_state") if ckpt
                          else ("params", "model_state"))
    params_t, state_t = template(entry)
    expected = {p_prefix + k: v for k, v in npz.specs(params_t).items()}
    expected.update({s_prefix + k: v
                     for k, v in npz.specs(state_t).items()})
    arrays = reader.read(
        expected, keep=lambda k: k.startswith((p_prefix, s_prefix)))
  params = npz.unflatten(
      params_t, {k[len(p_prefix):]: v for k, v in arrays.items()
                 if k.startswith(p_prefix)}, where)
  model_state = npz.unflatten(
      state_t, {k[len(s_prefix):]: v for k, v in arrays.items()
                if k.startswith(s_prefix)}, where)
  return params, model_state


def load(entry, path: str | os.PathLike):
  """(params, model_state) for `entry` from a weights .npz, verified."""
  path = Path(path)
  try:
    return read(entry, path, str(path))
  except npz.WeightsNotFoundError:
    raise npz.WeightsNotFoundError(
        f"weights file {path} does not exist: check the path, or train the "
        f"model first (zoo train {entry.name} --workdir DIR) and load the run "
        "with --workdir DIR.") from None
