"""The training state: everything a step reads and writes, as one pytree."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class TrainState(NamedTuple):
  """`step`: updates applied so far; `rng`: base key (per-step keys are
  folded in from the step number, so resuming needs no key history);
  `nonfinite_step`: first step whose loss or gradients were not finite (-1 if
  none); `skipped`: updates skipped under the skip policy."""
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  rng: jax.Array
  nonfinite_step: jax.Array
  skipped: jax.Array


def init_state(entry, tx, seed: int) -> TrainState:
  """Initializes parameters (and model state) of `entry` from `seed`."""
  init_key, rng = jax.random.split(jax.random.PRNGKey(seed))
  x = entry.example_input()
  params, model_state = entry.init_with_state(init_key, x, is_training=True)
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
      opt_state=tx.init(params), rng=rng,
      nonfinite_step=jnp.full((), -1, jnp.int32),
      skipped=jnp.zeros((), jnp.int32))
