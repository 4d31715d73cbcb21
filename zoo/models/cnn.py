"""Small CNN: two 3x3 conv blocks with 2x2 max-pooling, then a 128-unit MLP.

conv 3x3x32 SAME -> act -> maxpool 2x2/2 -> conv 3x3x64 SAME -> act ->
maxpool 2x2/2 -> flatten (7*7*64 = 3136) -> dense 128 -> act -> dense K.
On 28x28x1 inputs with K = 10 it has 421,642 parameters.
"""
from __future__ import annotations

from typing import Sequence

import haiku as hk
import jax

from zoo import activations, initializers
from zoo.models.pooling import max_pool
from zoo.registry import architecture


class SmallCNN(hk.Module):
  """The two-conv-block classifier above; every choice is an argument."""

  def __init__(self, num_outputs: int, channels: Sequence[int] = (32, 64),
               hidden_size: int = 128, activation: str = "relu",
               initializer: str = "he_normal", dropout: float = 0.0,
               name: str | None = None):
    """`channels`: output channels of each conv block; `hidden_size`: the
    dense layer after flattening; `dropout`: rate before the last layer in
    training (0 disables)."""
    super().__init__(name=name)
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    self.num_outputs = num_outputs
    self.channels = tuple(channels)
    self.hidden_size = hidden_size
    self.activation = activations.get(activation)
    self.w_init = initializers.get(initializer)
    self.dropout = dropout

  def __call__(self, x: jax.Array, is_training: bool = False) -> jax.Array:
    for i, c in enumerate(self.channels):
      x = hk.Conv2D(c, kernel_shape=3, padding="SAME", w_init=self.w_init,
                    name=f"conv_{i}")(x)
      x = self.activation(x)
      x = max_pool(x, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1),
                   padding="VALID")
    x = hk.Flatten()(x)
    x = self.activation(hk.Linear(self.hidden_size, w_init=self.w_init,
                                  name="dense")(x))
    if is_training and self.dropout > 0:
      x = hk.dropout(hk.next_rng_key(), self.dropout, x)
    return hk.Linear(self.num_outputs, w_init=self.w_init, name="logits")(x)


@architecture("cnn")
def cnn(num_outputs: int, channels: Sequence[int] = (32, 64),
        hidden_size: int = 128, activation: str = "relu",
        initializer: str = "he_normal", dropout: float = 0.0) -> hk.Module:
  return SmallCNN(num_outputs, channels=channels, hidden_size=hidden_size,
                  activation=activation, initializer=initializer,
                  dropout=dropout)
