"""MLP classifier: flatten -> hidden Linear+activation layers -> Linear logits.

Defaults are 784-256-128-10 with ReLU and He-normal weights (235,146
parameters on 28x28x1 inputs); dropout is applied after each hidden layer when
training.
"""
from __future__ import annotations

from typing import Callable, Sequence

import haiku as hk
import jax

from zoo import initializers
from zoo.models.base import architecture, check_args


@architecture("mlp")
class MLPClassifier(hk.Module):
  """Flatten -> `hk.nets.MLP` (hidden layers with activation and, in
  training, dropout) -> `num_outputs` logits."""

  def __init__(self, num_outputs: int, hidden_sizes: Sequence[int] = (256, 128),
               activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
               w_init: hk.initializers.Initializer = initializers.get(
                   "he_normal"),
               dropout: float = 0.0, name: str | None = None):
    """Constructs the MLP.

    Args:
      num_outputs: Width of the logits.
      hidden_sizes: Width of each hidden layer.
      activation: Applied after every hidden layer.
      w_init: Initializer of every weight (biases start at zero); a config
        names it as `initializer`.
      dropout: Rate after every hidden layer in training; 0 disables.
      name: Module name.
    """
    super().__init__(name=name)
    check_args(self, hidden_sizes=hidden_sizes, dropout=dropout)
    self.mlp = hk.nets.MLP([*hidden_sizes, num_outputs], w_init=w_init,
                           activation=activation, name="mlp")
    self.dropout = dropout

  def __call__(self, x: jax.Array, is_training: bool = False) -> jax.Array:
    """(B, H, W, C) images -> (B, num_outputs) logits."""
    x = hk.Flatten()(x)
    if is_training and self.dropout > 0:
      return self.mlp(x, dropout_rate=self.dropout, rng=hk.next_rng_key())
    return self.mlp(x)
