"""Row-by-row LSTM: an image read as a sequence of its rows.

A (H, W, C) image becomes H time steps of W*C features (28 steps of 28 pixels
for MNIST), run through `num_layers` stacked `hk.LSTM`s with
`hk.dynamic_unroll` (time-major, one compiled loop body whatever H is); a
linear head reads the top layer's output at the last valid step.

Variable-length sequences: `__call__` takes optional `lengths` (B,) in
[0, H]. At a step t >= length the cores carry their state forward unchanged,
so the final state *is* the state after step length-1 and the head's input
is that step's output; rows at or past `length` therefore cannot change the
logits (nor their gradients). The default is the full length. The
registry calls `module(x, is_training=...)`, so registered models always see
whole images; `lengths` is for direct use of the module (see
`sequence_mask`).

With the defaults (hidden 128, one layer) on 28x28x1 inputs and K = 10 it has
81,674 parameters: LSTM (28 + 128) * 512 + 512 = 80,384, head 1,290.
"""
from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp

from zoo import initializers
from zoo.models.base import architecture, check_args


def sequence_mask(lengths: jax.Array | None, batch: int,
                  max_len: int) -> jax.Array:
  """(max_len, batch) bool, time-major: True where step t < lengths[b]
  (all True when `lengths` is None)."""
  if lengths is None:
    return jnp.ones((max_len, batch), bool)
  lengths = jnp.asarray(lengths)
  if lengths.shape != (batch,):
    raise ValueError(f"lengths must have shape ({batch},), got "
                     f"{lengths.shape}")
  return jnp.arange(max_len)[:, None] < lengths[None, :]


def image_to_sequence(x: jax.Array) -> jax.Array:
  """(B, H, W, C) images -> (H, B, W*C): time-major rows."""
  b, h, w, c = x.shape
  return jnp.transpose(x.reshape(b, h, w * c), (1, 0, 2))


@architecture("lstm")
class LSTMClassifier(hk.Module):
  """Stacked LSTM over image rows, linear head on the last valid output."""

  def __init__(self, num_outputs: int, hidden_size: int = 128,
               num_layers: int = 1,
               w_init: hk.initializers.Initializer = initializers.get(
                   "glorot_uniform"),
               dropout: float = 0.0, name: str | None = None):
    """Constructs the classifier.

    Args:
      num_outputs: Width of the logits.
      hidden_size: Width of every LSTM layer.
      num_layers: Stacked layers (each reads the outputs of the one below).
      w_init: Initializer of the head's weights (hk.LSTM initializes its own
        gates: truncated normal 1/sqrt(fan_in), +1 forget bias); a config
        names it as `initializer`.
      dropout: Rate on the head's input in training; 0 disables.
      name: Module name.
    """
    super().__init__(name=name)
    check_args(self, hidden_size=hidden_size, num_layers=num_layers,
               dropout=dropout)
    self.num_outputs = num_outputs
    self.hidden_size = hidden_size
    self.num_layers = num_layers
    self.w_init = w_init
    self.dropout = dropout

  @hk.name_like("__call__")
  def features(self, x: jax.Array, is_training: bool = False,
               lengths: jax.Array | None = None) -> jax.Array:
    """(B, H, W, C) images -> (B, hidden_size): the top layer's hidden state
    after the last valid step (what the head sees, before its dropout).

    Named like `__call__`, so the cores keep their names
    (`lstm_classifier/lstm_<i>`) and trained weights fit either method.
    `lengths` as in `__call__`.
    """
    del is_training  # the recurrence has no dropout
    seq = image_to_sequence(x)
    steps, batch = seq.shape[:2]
    mask = sequence_mask(lengths, batch, steps)
    cores = [hk.LSTM(self.hidden_size, name=f"lstm_{i}")
             for i in range(self.num_layers)]
    initial = tuple(core.initial_state(batch) for core in cores)

    def step(inputs, states):
      h, valid = inputs
      new_states = []
      for core, state in zip(cores, states):
        h, new = core(h, state)
        # Padded steps leave the state exactly as it was.
        new_states.append(jax.tree.map(
            lambda n, o: jnp.where(valid[:, None], n, o), new, state))
      return None, tuple(new_states)

    _, final = hk.dynamic_unroll(step, (seq, mask), initial, time_major=True)
    # The top layer's hidden state after the last valid step = its output.
    return final[-1].hidden

  def __call__(self, x: jax.Array, is_training: bool = False,
               lengths: jax.Array | None = None) -> jax.Array:
    """`x`: (B, H, W, C) images; `lengths`: (B,) valid rows per image (None:
    all H). Returns (B, num_outputs) logits."""
    out = self.features(x, is_training, lengths)
    if is_training and self.dropout > 0:
      out = hk.dropout(hk.next_rng_key(), self.dropout, out)
    return hk.Linear(self.num_outputs, w_init=self.w_init, name="head")(out)
