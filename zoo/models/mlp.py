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

  @hk.name_like("__call__")
  def features(self, x: jax.Array, is_training: bool = False) -> jax.Array:
    """(B, H, W, C) images -> (B, hidden_sizes[-1]): the last hidden layer
    after its activation (what the output layer sees).

    Runs `self.mlp`'s hidden layers exactly as `hk.nets.MLP.__call__` does
    (in training: dropout, then activation, one key per layer from a
    `hk.PRNGSequence` of one `hk.next_rng_key()`), so `__call__` computes
    what `self.mlp(x, dropout_rate, rng)` did, with the same parameter names
    (`mlp_classifier/~/mlp/~/linear_<i>`).
    """
    x = hk.Flatten()(x)
    dropout = is_training and self.dropout > 0
    rng = hk.PRNGSequence(hk.next_rng_key()) if dropout else None
    for layer in self.mlp.layers[:-1]:
      x = layer(x)
      if dropout:
        x = hk.dropout(next(rng), self.dropout, x)
      x = self.mlp.activation(x)
    return x

  def __call__(self, x: jax.Array, is_training: bool = False) -> jax.Array:
    """(B, H, W, C) images -> (B, num_outputs) logits."""
    return self.mlp.layers[-1](self.features(x, is_training))
