"""The training state: everything a step reads and writes, as one pytree."""
from __future__ import annotations

import functools
import logging
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

log = logging.getLogger("zoo.train")


class TrainState(NamedTuple):
  """`step`: updates applied so far; `rng`: base key (per-step keys are
  folded in from the step number, so resuming needs no key history);
  `nonfinite_step`: first step whose loss or gradients were not finite (-1 if
  none); `skipped`: updates skipped under the skip policy; `ema_params`:
  the moving average of the parameters (train.ema_decay), None when off,
  so that a state without it has the same leaves as before it existed."""
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  rng: jax.Array
  nonfinite_step: jax.Array
  skipped: jax.Array
  ema_params: Any = None


def eval_params(state: TrainState):
  """The parameters to evaluate and hand out: the moving average when the
  run keeps one, else the trained parameters."""
  return state.params if state.ema_params is None else state.ema_params


def init_state(entry, tx, seed: int, weights=None) -> TrainState:
  """Initializes parameters (and model state) of `entry` from `seed`, then,
  given `weights` (init_weights' triple), takes every leaf from them but a
  head of another shape (logged as re-initialised)."""
  init_key, rng = jax.random.split(jax.random.PRNGKey(seed))
  x = entry.example_input()
  # One compiled init instead of Haiku's op-by-op one: the same values bit
  # for bit, 0.8-1.4 s sooner in a fresh process on CPU (each eager op
  # compiles on its own).
  params, model_state = jax.jit(functools.partial(
      entry.init_with_state, is_training=True))(init_key, x)
  if weights is not None:
    loaded_params, loaded_state, where = weights
    head = head_modules(entry)
    params, fresh = merge_weights(params, loaded_params, head, "params", where)
    model_state, fresh_state = merge_weights(model_state, loaded_state, head,
                                             "model_state", where)
    fresh += fresh_state
    log.info("initialised from %s; %s", where,
             f"re-initialised (another shape): {', '.join(fresh)}" if fresh
             else "no leaf re-initialised")
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
      opt_state=tx.init(params), rng=rng,
      nonfinite_step=jnp.full((), -1, jnp.int32),
      skipped=jnp.zeros((), jnp.int32),
      ema_params=(jax.tree.map(jnp.copy, params)
                  if entry.config["train"]["ema_decay"] else None))


def head_modules(entry) -> frozenset[str]:
  """Names of the modules that produce the logits: those whose parameter
  shapes depend on the number of outputs (found by tracing the constructor
  with two widths, no device work). Every architecture has one, whatever it
  names it (`logits`, `head`, `linear`, hk.nets.MLP's last `linear_N`)."""
  import haiku as hk
  from zoo import config as config_lib
  build = entry.architecture.build
  kwargs = config_lib.model_kwargs(build, entry.config["model"])

  def shapes(num_outputs: int):
    def forward(x):
      return build(num_outputs, **kwargs)(x, is_training=True)
    params, _ = jax.eval_shape(hk.transform_with_state(forward).init,
                               jax.random.PRNGKey(0), entry.example_input())
    return params
  a, b = shapes(entry.num_outputs), shapes(entry.num_outputs + 1)
  return frozenset(m for m in a if any(a[m][k].shape != b[m][k].shape
                                       for k in a[m]))


def init_weights(entry) -> tuple[Any, Any, str]:
  """(params, model_state, where) that `train.init_from` names: the entry's
  shipped pretrained weights (for its registered config), a weights file
  (zoo.weights.save) or a model folder (zoo.hub), read by safetensors with
  a size bound; each as a {"<module>/<name>": array} dict (zoo.weights
  names), matched to the model by `merge_weights`."""
  from pathlib import Path
  from zoo import hub, registry, weights
  from zoo.errors import CheckpointError, WeightsNotFoundError
  source = entry.config["train"]["init_from"]
  if source == "pretrained":
    from zoo import pretrained
    registered = pretrained.attach(registry.get(entry.name))
    return (weights.names(registered.params),
            weights.names(registered.model_state),
            f"the pretrained weights of {entry.name}")
  path = Path(source)
  if path.is_dir():
    path = hub.verify(path, hub.read_config(path))
  elif not path.is_file():
    raise WeightsNotFoundError(
        f"train.init_from: {path} is not a file: pass a weights file written "
        "by zoo.weights.save, a model folder, or 'pretrained'.")
  # A bound from the model's own size (the head may differ; 4x leaves room).
  params, _ = jax.eval_shape(entry.init_with_state, jax.random.PRNGKey(0),
                             entry.example_input())
  size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  if path.stat().st_size > 4 * size + (1 << 20):
    raise CheckpointError(
        f"train.init_from: {path} holds {path.stat().st_size:,} bytes, far "
        f"more than {entry.name}'s {size:,} bytes of parameters: these are "
        "not weights of this model.")
  arrays, _ = weights.read(path)
  n = len(weights.STATE_PREFIX)
  return ({k: v for k, v in arrays.items()
           if not k.startswith(weights.STATE_PREFIX)},
          {k[n:]: v for k, v in arrays.items()
           if k.startswith(weights.STATE_PREFIX)}, str(path))


def check_weights(entry, weights) -> None:
  """Raises the error merge_weights would, from shapes alone (no device
  work), so that weights that do not fit stop a run before it starts."""
  params, model_state = jax.eval_shape(
      entry.init_with_state, jax.random.PRNGKey(0), entry.example_input())
  loaded_params, loaded_state, where = weights
  head = head_modules(entry)
  merge_weights(params, loaded_params, head, "params", where)
  merge_weights(model_state, loaded_state, head, "model_state", where)


def merge_weights(fresh, loaded: dict, head: frozenset[str], what: str,
                  where: str):
  """`fresh` (a params or model-state tree) with each leaf replaced by the
  loaded one of the same path; head leaves whose shape differs keep their
  fresh value (a new head for another number of classes). Any other
  mismatch is an error naming the leaf. Returns (tree, re-initialised
  paths)."""
  from zoo.errors import CheckpointError
  flat, treedef = jax.tree_util.tree_flatten_with_path(fresh)
  keys = [f"{p[0].key}/{p[1].key}" for p, _ in flat]  # zoo.weights.names
  extra = sorted(set(loaded) - set(keys))
  leaves, fresh_keys = [], []
  for (path, leaf), key in zip(flat, keys):
    got = loaded.get(key)
    if got is not None and got.shape == leaf.shape and got.dtype == leaf.dtype:
      leaves.append(got)
      continue
    if got is None or path[0].key not in head:
      why = ("is missing" if got is None else
             f"has shape {got.shape} {got.dtype}, the model "
             f"{leaf.shape} {leaf.dtype}")
      raise CheckpointError(
          f"train.init_from: {what} {key} of {where} {why}; only the head "
          f"({', '.join(sorted(head))}) may differ. Were they saved for "
          "another architecture or model config?")
    leaves.append(leaf)
    fresh_keys.append(key)
  if extra:
    raise CheckpointError(
        f"train.init_from: {where} holds {what} {extra[0]}, which the model "
        "lacks. Were they saved for another architecture or model config?")
  return jax.tree_util.tree_unflatten(treedef, leaves), fresh_keys
