"""Logistic regression: one linear layer on the flattened image.

Multinomial for K classes (784 -> 10: 7,850 parameters on 28x28x1) and binary
with a single logit (784 -> 1), trained with sigmoid cross-entropy.
"""
from __future__ import annotations

import haiku as hk
import jax

from zoo import initializers
from zoo.models.base import architecture


@architecture("logistic")
class LogisticRegression(hk.Module):
  """Flatten -> Linear(num_outputs); logits out, no activation."""

  def __init__(self, num_outputs: int,
               w_init: hk.initializers.Initializer = initializers.get("zeros"),
               name: str | None = None):
    """Constructs the model.

    Args:
      num_outputs: Classes, or 1 for a binary model.
      w_init: Initializer of the weights (the bias starts at zero); a config
        names it as `initializer`.
      name: Module name.
    """
    super().__init__(name=name)
    self.num_outputs = num_outputs
    self.w_init = w_init

  @hk.name_like("__call__")
  def features(self, x: jax.Array, is_training: bool = False) -> jax.Array:
    """(B, H, W, C) images -> (B, H*W*C): the input itself, flattened, which
    is all a linear model's head sees."""
    del is_training  # no dropout or normalization
    return hk.Flatten()(x)

  def __call__(self, x: jax.Array, is_training: bool = False) -> jax.Array:
    """(B, H, W, C) images -> (B, num_outputs) logits."""
    x = self.features(x, is_training)
    return hk.Linear(self.num_outputs, w_init=self.w_init, name="linear")(x)
