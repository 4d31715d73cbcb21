"""The one train step and eval step for every model: pure and chex-checked.

`make_train_step` builds `step(state, images, labels) -> (state, metrics)`.
With `train.compute_dtype = "bfloat16"` the model runs in bfloat16 while
parameters, optimizer state and the loss stay float32 (a jmp policy).
Under data parallelism (`axis_name` set, e.g. inside pmap) gradients, metrics
and model state are averaged over that axis, so every device applies the same
update as one device would on the global batch.
"""
from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import jmp
import optax

from zoo import losses
from zoo.data import augment as augment_lib
from zoo.training.state import TrainState

Metrics = dict[str, jax.Array]


def _pmean(tree, axis_name):
  """Mean over the device axis; integer leaves (e.g. BatchNorm's step
  counters, equal on every device) stay integers. Over a single device it
  is the identity, and no collective is emitted (on CPU each all-reduce of
  one device still cost pmap(1 device) ~15% of a small model's step)."""
  if not axis_name or jax.lax.axis_size(axis_name) == 1:
    return tree

  def mean(x):
    if jnp.issubdtype(x.dtype, jnp.inexact):
      return jax.lax.pmean(x, axis_name)
    return jax.lax.psum(x, axis_name) // jax.lax.psum(1, axis_name)
  return jax.tree.map(mean, tree)


def all_finite(tree) -> jax.Array:
  """True iff every element of every leaf is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def forward(entry, params, model_state, rng, images, is_training):
  """Logits and new model state, for stateless and stateful models alike
  (the state of a stateless model is {})."""
  return entry.apply_with_state(params, model_state, rng, images,
                                is_training=is_training)


def compute_policy(compute_dtype: str) -> jmp.Policy | None:
  """The mixed-precision policy for `train.compute_dtype` (None: float32
  throughout): float32 parameters and outputs, the forward and backward pass
  in `compute_dtype`."""
  if compute_dtype == "float32":
    return None
  return jmp.Policy(param_dtype=jnp.float32,
                    compute_dtype=jnp.dtype(compute_dtype),
                    output_dtype=jnp.float32)


def make_loss_fn(entry, policy: jmp.Policy | None, l2: float):
  """`loss_fn(params, model_state, rng, images, labels) -> (total, (loss,
  logits, new model state))`: the configured loss plus L2 on the weights,
  the forward pass in `policy`'s compute dtype if one is given."""
  def loss_fn(params, model_state, rng, images, labels):
    if policy is None:
      logits, new_model_state = forward(entry, params, model_state, rng,
                                        images, True)
    else:  # differentiating through the casts gives float32 gradients
      logits, new_model_state = forward(
          entry, policy.cast_to_compute(params), model_state, rng,
          policy.cast_to_compute(images), True)
      logits = policy.cast_to_output(logits)
      new_model_state = jax.tree.map(lambda new, old: new.astype(old.dtype),
                                     new_model_state, model_state)
    loss = entry.loss(logits, labels)
    total = loss + (losses.l2_regularization(params, l2) if l2 else 0.0)
    return total, (loss, logits, new_model_state)
  return loss_fn


def guarded_update(state: TrainState, tx: optax.GradientTransformation,
                   grads, model_state, finite: jax.Array,
                   on_nonfinite: str, ema_decay: float = 0.0) -> TrainState:
  """The optimizer update, applied only when `finite` (and, under "stop",
  while no earlier step was non-finite), and with it the parameters' moving
  average (when the state keeps one); bookkeeping of the step counter, the
  first non-finite step and the skipped updates."""
  stopped = state.nonfinite_step >= 0
  apply = finite & ~stopped if on_nonfinite == "stop" else finite

  def update(state: TrainState) -> TrainState:
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    chex.assert_trees_all_equal_shapes(updates, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:  # ema = decay * ema + (1 - decay) * params
      ema = optax.incremental_update(params, ema, 1.0 - ema_decay)
    return state._replace(params=params, model_state=model_state,
                          opt_state=opt_state, ema_params=ema)

  # A cond, not a select over the whole state: only the branch taken runs
  # (a `where` on every leaf cost the dense models 8-17% per step on CPU).
  out = jax.lax.cond(apply, update, lambda state: state, state)
  # A stopped run does not advance: it stays at the last good step. Under
  # "skip" the step counter moves on past the dropped update.
  advance = apply if on_nonfinite == "stop" else jnp.array(True)
  return out._replace(
      step=state.step + advance.astype(state.step.dtype),
      nonfinite_step=jnp.where(~finite & ~stopped, state.step,
                               state.nonfinite_step),
      skipped=state.skipped + (~finite).astype(state.skipped.dtype))


def augment_batch(step_key: jax.Array, images: jax.Array,
                  augment_cfg: dict, axis_name: str | None = None) -> jax.Array:
  """This device's images augmented as `[augment]` says, from the step key
  (before the device index is folded in) and each example's position in the
  global batch: device d of a pmap holds block d (zoo.data.shard_batches),
  so jit, pmap and mesh augment the same example of a step the same way."""
  offset = (jax.lax.axis_index(axis_name) * images.shape[0] if axis_name
            else 0)
  return augment_lib.augment(
      jax.random.fold_in(step_key, augment_lib.AUGMENT_TAG), images,
      augment_cfg, offset)


def make_train_step(entry, tx: optax.GradientTransformation, *,
                    axis_name: str | None = None,
                    on_nonfinite: str = "stop") -> Callable[..., Any]:
  """Returns the pure train step for registered model `entry`.

  `on_nonfinite`: "stop" freezes the state at the first step whose loss or
  gradients are not finite and records that step (the loop then stops with
  an error, the last good state intact); "skip" drops that update and goes on.

  With `[augment]` on, the gathered images are cropped/flipped here, inside
  the compiled step (zoo.data.augment), from a key folded out of the step
  key: a pure function of (seed, step) and each example's position in the
  global batch. Off (the default), the step is exactly the one without it.
  """
  input_shape = entry.input_shape
  augment_cfg = entry.config.get("augment", {})
  augment_lib.check(augment_cfg, input_shape)
  loss_fn = make_loss_fn(entry,
                         compute_policy(entry.config["train"]["compute_dtype"]),
                         entry.config["loss"]["l2"])

  def train_step(state: TrainState, images: jax.Array, labels: jax.Array):
    chex.assert_rank(images, 4)
    chex.assert_shape(images, (None, *input_shape))
    chex.assert_type(images, jnp.float32)
    chex.assert_shape(labels, (images.shape[0],))
    chex.assert_type(labels, jnp.int32)

    rng = jax.random.fold_in(state.rng, state.step)
    if augment_lib.enabled(augment_cfg):  # off: not even traced
      images = augment_batch(rng, images, augment_cfg, axis_name)
    if axis_name:  # a different dropout mask on every device
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    grads, (loss, logits, model_state) = jax.grad(loss_fn, has_aux=True)(
        state.params, state.model_state, rng, images, labels)
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, state.params)
    grads, loss, model_state = _pmean((grads, loss, model_state), axis_name)
    correct = jnp.mean((losses.predictions(logits) == labels)
                       .astype(jnp.float32))
    accuracy = _pmean(correct, axis_name)
    finite = jnp.isfinite(loss) & all_finite(grads)
    out = guarded_update(state, tx, grads, model_state, finite, on_nonfinite,
                         entry.config["train"]["ema_decay"])
    return out, {"loss": loss, "accuracy": accuracy}

  return train_step


def make_eval_step(entry) -> Callable[..., Metrics]:
  """`eval_step(params, model_state, images, labels, mask)` -> summed loss,
  correct count, and per-class correct/total counts for masked examples."""
  num_classes = entry.num_classes
  loss_name = entry.config["loss"]["name"]

  def eval_step(params, model_state, images, labels, mask):
    chex.assert_rank(images, 4)
    chex.assert_equal_shape([labels, mask])
    logits, _ = forward(entry, params, model_state, None, images, False)
    per_example = jax.vmap(
        lambda lg, lb: losses.get(loss_name)(lg[None], lb[None]))(logits,
                                                                   labels)
    correct = (losses.predictions(logits) == labels).astype(jnp.float32)
    mask = mask.astype(jnp.float32)
    one_hot = jax.nn.one_hot(labels, num_classes) * mask[:, None]
    return {
        "loss_sum": jnp.sum(per_example * mask),
        "correct": jnp.sum(correct * mask),
        "count": jnp.sum(mask),
        "class_correct": jnp.sum(one_hot * correct[:, None], axis=0),
        "class_count": jnp.sum(one_hot, axis=0),
    }

  return eval_step
