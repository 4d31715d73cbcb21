"""MLP classifier: flatten -> hidden Linear+activation layers -> Linear logits.

Defaults are 784-256-128-10 with ReLU and He-normal weights (235,146
parameters on 28x28x1 inputs); dropout is applied after each hidden layer when
training.
"""
from __future__ import annotations

from typing import Sequence

import haiku as hk
import jax

from zoo import activations, initializers
from zoo.registry import architecture


class MLPClassifier(hk.Module):
  """A multi-layer perceptron producing `num_outputs` logits."""

  def __init__(self, num_outputs: int, hidden_sizes: Sequence[int] = (256, 128),
               activation: str = "relu", initializer: str = "he_normal",
               dropout: float = 0.0, name: str | None = None):
    """`hidden_sizes`: width of each hidden layer; `activation`/`initializer`:
    by name (see zoo.activations / zoo.initializers); `dropout`: rate used
    after every hidden layer in training, 0 to disable."""
    super().__init__(name=name)
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    self.mlp = hk.nets.MLP(
        [*hidden_sizes, num_outputs],
        w_init=initializers.get(initializer),
        activation=activations.get(activation),
        name="mlp")
    self.dropout = dropout

  def __call__(self, x: jax.Array, is_training: bool = False) -> jax.Array:
    x = hk.Flatten()(x)
    if is_training and self.dropout > 0:
      return self.mlp(x, dropout_rate=self.dropout, rng=hk.next_rng_key())
    return self.mlp(x)


@architecture("mlp")
def mlp(num_outputs: int, hidden_sizes: Sequence[int] = (256, 128),
        activation: str = "relu", initializer: str = "he_normal",
        dropout: float = 0.0) -> hk.Module:
  return MLPClassifier(num_outputs, hidden_sizes=tuple(hidden_sizes),
                       activation=activation, initializer=initializer,
                       dropout=dropout)
