"""Small CNN: two 3x3 conv blocks with 2x2 max-pooling, then a 128-unit MLP.

conv 3x3x32 SAME -> act -> maxpool 2x2/2 -> conv 3x3x64 SAME -> act ->
maxpool 2x2/2 -> flatten (7*7*64 = 3136) -> dense 128 -> act -> dense K.
On 28x28x1 inputs with K = 10 it has 421,642 parameters.
"""
from __future__ import annotations

from typing import Callable, Sequence

import haiku as hk
import jax

from zoo import conv, initializers
from zoo.models.base import architecture, check_args
from zoo.pooling import max_pool


@architecture("cnn")
class SmallCNN(hk.Module):
  """Conv blocks (3x3 conv SAME, activation, 2x2/2 max-pool), then flatten ->
  dense -> activation -> dropout (training only) -> linear logits."""

  def __init__(self, num_outputs: int, channels: Sequence[int] = (32, 64),
               hidden_size: int = 128,
               activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
               w_init: hk.initializers.Initializer = initializers.get(
                   "he_normal"),
               dropout: float = 0.0, name: str | None = None):
    """Constructs the CNN.

    Args:
      num_outputs: Width of the logits.
      channels: Output channels of each conv block (one block per entry).
      hidden_size: Width of the dense layer after flattening.
      activation: Applied after every conv and the dense layer.
      w_init: Initializer of every weight (biases start at zero); a config
        names it as `initializer`.
      dropout: Rate on the dense layer's output in training; 0 disables.
      name: Module name.
    """
    super().__init__(name=name)
    check_args(self, channels=channels, hidden_size=hidden_size,
               dropout=dropout)
    self.num_outputs = num_outputs
    self.channels = tuple(channels)
    self.hidden_size = hidden_size
    self.activation = activation
    self.w_init = w_init
    self.dropout = dropout

  @hk.name_like("__call__")
  def features(self, x: jax.Array, is_training: bool = False) -> jax.Array:
    """(B, H, W, C) images -> (B, hidden_size): the dense layer after its
    activation, before dropout and logits (what the head sees).

    Named like `__call__`, so its layers keep their names (`small_cnn/dense`,
    not `small_cnn/~features/dense`) and trained weights fit either method.
    """
    del is_training  # nothing before the dense layer's output differs
    for i, c in enumerate(self.channels):
      x = conv.Conv2D(c, kernel_shape=3, w_init=self.w_init,
                      name=f"conv_{i}")(x)
      x = self.activation(x)
      x = max_pool(x, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1),
                   padding="VALID")
    x = hk.Flatten()(x)
    return self.activation(hk.Linear(self.hidden_size, w_init=self.w_init,
                                     name="dense")(x))

  def __call__(self, x: jax.Array, is_training: bool = False) -> jax.Array:
    """(B, H, W, C) images -> (B, num_outputs) logits."""
    x = self.features(x, is_training)
    if is_training and self.dropout > 0:
      x = hk.dropout(hk.next_rng_key(), self.dropout, x)
    return hk.Linear(self.num_outputs, w_init=self.w_init, name="logits")(x)
