"""Logistic regression: one linear layer on the flattened image.

Multinomial for K classes (784 -> 10: 7,850 parameters on 28x28x1) and binary
with a single logit (784 -> 1), trained with sigmoid cross-entropy.
"""
from __future__ import annotations

import haiku as hk
import jax

from zoo import initializers
from zoo.registry import architecture


class LogisticRegression(hk.Module):
  """Flatten -> Linear(num_outputs); logits out, no activation."""

  def __init__(self, num_outputs: int, initializer: str = "zeros",
               name: str | None = None):
    """`num_outputs`: classes, or 1 for binary; `initializer`: by name."""
    super().__init__(name=name)
    self.num_outputs = num_outputs
    self.w_init = initializers.get(initializer)

  def __call__(self, x: jax.Array, is_training: bool = False) -> jax.Array:
    del is_training  # no dropout or normalization
    x = hk.Flatten()(x)
    return hk.Linear(self.num_outputs, w_init=self.w_init, name="linear")(x)


@architecture("logistic")
def logistic(num_outputs: int, initializer: str = "zeros") -> hk.Module:
  return LogisticRegression(num_outputs, initializer=initializer)
