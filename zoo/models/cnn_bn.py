"""Small CNN with batch normalization: the `cnn` architecture plus BatchNorm.

conv 3x3x32 SAME -> BN -> act -> pool 2x2/2 -> conv 3x3x64 SAME -> BN -> act
-> pool 2x2/2 -> flatten (7*7*64 = 3136) -> dense 128 -> [BN] -> act ->
dropout -> dense K.

BatchNorm normalizes each channel with the statistics of the current batch in
training and with exponential moving averages of them (decay `bn_decay`) in
evaluation; the moving averages are Haiku *state*, not parameters, so the
architecture is registered with `stateful=True` and trained through
`hk.transform_with_state`. A layer followed by BatchNorm has no bias: the
BatchNorm offset takes its place (a bias would be subtracted out with the
batch mean). Under data parallelism each device normalizes with its own
shard's statistics and the engine averages the moving averages after every
step.

On 28x28x1 inputs with K = 10 and the defaults (BN after the dense layer too)
it has 421,866 parameters: conv 288 + BN 64, conv 18,432 + BN 128, dense
401,408 + BN 256, logits 1,290.
"""
from __future__ import annotations

import functools
from typing import Sequence

import haiku as hk
import jax

from zoo import activations, initializers
from zoo.models import pooling
from zoo.registry import architecture

POOLS = ("max", "avg")


def batch_norm(x: jax.Array, is_training: bool, name: str, *, decay: float,
               eps: float) -> jax.Array:
  """`hk.BatchNorm` with scale and offset. While Haiku initializes, it runs
  in training mode whatever `is_training` says, so that `init` creates the
  moving averages (and the same state) in either mode: a model initialized
  for evaluation (e.g. to count parameters) is then still complete."""
  is_training = is_training or hk.running_init()
  return hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=decay,
                      eps=eps, name=name)(x, is_training=is_training)


class BatchNormCNN(hk.Module):
  """The two-conv-block classifier above; every choice is an argument."""

  def __init__(self, num_outputs: int, channels: Sequence[int] = (32, 64),
               hidden_size: int = 128, activation: str = "relu",
               initializer: str = "he_normal", pool: str = "max",
               dense_batch_norm: bool = True, bn_decay: float = 0.9,
               bn_eps: float = 1e-5, dropout: float = 0.0,
               name: str | None = None):
    """`channels`: output channels of each conv block; `hidden_size`: the
    dense layer after flattening; `pool`: "max" or "avg" (2x2, stride 2);
    `dense_batch_norm`: also normalize the dense layer; `bn_decay`/`bn_eps`:
    moving-average decay and variance epsilon of every BatchNorm;
    `dropout`: rate before the last layer in training (0 disables)."""
    super().__init__(name=name)
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if pool not in POOLS:
      raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if not 0.0 <= bn_decay < 1.0:
      raise ValueError(f"bn_decay must be in [0, 1), got {bn_decay}")
    self.num_outputs = num_outputs
    self.channels = tuple(channels)
    self.hidden_size = hidden_size
    self.activation = activations.get(activation)
    self.w_init = initializers.get(initializer)
    self.pool = pooling.max_pool if pool == "max" else hk.avg_pool
    self.dense_batch_norm = dense_batch_norm
    self.bn_decay = bn_decay
    self.bn_eps = bn_eps
    self.dropout = dropout

  def __call__(self, x: jax.Array, is_training: bool = False) -> jax.Array:
    norm = functools.partial(batch_norm, decay=self.bn_decay,
                             eps=self.bn_eps)
    for i, c in enumerate(self.channels):
      x = hk.Conv2D(c, kernel_shape=3, padding="SAME", with_bias=False,
                    w_init=self.w_init, name=f"conv_{i}")(x)
      x = self.activation(norm(x, is_training, f"bn_{i}"))
      x = self.pool(x, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1),
                    padding="VALID")
    x = hk.Flatten()(x)
    x = hk.Linear(self.hidden_size, with_bias=not self.dense_batch_norm,
                  w_init=self.w_init, name="dense")(x)
    if self.dense_batch_norm:
      x = norm(x, is_training, "bn_dense")
    x = self.activation(x)
    if is_training and self.dropout > 0:
      x = hk.dropout(hk.next_rng_key(), self.dropout, x)
    return hk.Linear(self.num_outputs, w_init=self.w_init, name="logits")(x)


@architecture("cnn_bn", stateful=True)
def cnn_bn(num_outputs: int, channels: Sequence[int] = (32, 64),
           hidden_size: int = 128, activation: str = "relu",
           initializer: str = "he_normal", pool: str = "max",
           dense_batch_norm: bool = True, bn_decay: float = 0.9,
           bn_eps: float = 1e-5, dropout: float = 0.0) -> hk.Module:
  return BatchNormCNN(num_outputs, channels=channels, hidden_size=hidden_size,
                      activation=activation, initializer=initializer,
                      pool=pool, dense_batch_norm=dense_batch_norm,
                      bn_decay=bn_decay, bn_eps=bn_eps, dropout=dropout)
