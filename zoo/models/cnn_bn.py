"""Small CNN with batch normalization: the `cnn` architecture plus BatchNorm.

conv 3x3x32 SAME -> BN -> act -> pool 2x2/2 -> conv 3x3x64 SAME -> BN -> act
-> pool 2x2/2 -> flatten (7*7*64 = 3136) -> dense 128 -> [BN] -> act ->
dropout -> dense K.

BatchNorm normalizes each channel with the statistics of the current batch in
training and with exponential moving averages of them (decay `bn_decay`) in
evaluation; the moving averages are Haiku *state*, not parameters, so the
architecture is registered with `stateful=True` (the registry transforms every
model with `hk.transform_with_state`). A layer followed by BatchNorm has no
bias: the BatchNorm offset takes its place (a bias would be subtracted out
with the batch mean). Under data parallelism each device normalizes with its own
shard's statistics and the engine averages the moving averages after every
step.

On 28x28x1 inputs with K = 10 and the defaults (BN after the dense layer too)
it has 421,866 parameters: conv 288 + BN 64, conv 18,432 + BN 128, dense
401,408 + BN 256, logits 1,290.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import haiku as hk
import jax

from zoo import conv, initializers
from zoo import pooling
from zoo.models.base import architecture, check_args


def batch_norm(x: jax.Array, is_training: bool, name: str, *, decay: float,
               eps: float) -> jax.Array:
  """`hk.BatchNorm` with scale and offset. While Haiku initializes, it runs
  in training mode whatever `is_training` says, so that `init` creates the
  moving averages (and the same state) in either mode: a model initialized
  for evaluation (e.g. to count parameters) is then still complete."""
  is_training = is_training or hk.running_init()
  return hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=decay,
                      eps=eps, name=name)(x, is_training=is_training)


@architecture("cnn_bn", stateful=True)
class BatchNormCNN(hk.Module):
  """Conv blocks (3x3 conv SAME without bias, BatchNorm, activation, 2x2/2
  pooling), then flatten -> dense [-> BatchNorm] -> activation -> dropout
  (training only) -> linear logits."""

  def __init__(self, num_outputs: int, channels: Sequence[int] = (32, 64),
               hidden_size: int = 128,
               activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
               w_init: hk.initializers.Initializer = initializers.get(
                   "he_normal"),
               pool: Callable[..., jax.Array] = pooling.max_pool,
               dense_batch_norm: bool = True, bn_decay: float = 0.9,
               bn_eps: float = 1e-5, dropout: float = 0.0,
               name: str | None = None):
    """Constructs the CNN.

    Args:
      num_outputs: Width of the logits.
      channels: Output channels of each conv block (one block per entry).
      hidden_size: Width of the dense layer after flattening.
      activation: Applied after every BatchNorm (and the dense layer).
      w_init: Initializer of every weight; a config names it as
        `initializer`.
      pool: 2x2, stride 2 pooling, `(x, window_shape, strides, padding)`;
        a config names it: "max" (zoo.pooling.max_pool) or "avg"
        (hk.avg_pool).
      dense_batch_norm: Also normalize the dense layer (which then has no
        bias).
      bn_decay: Moving-average decay of every BatchNorm, in [0, 1).
      bn_eps: Variance epsilon of every BatchNorm, > 0.
      dropout: Rate on the dense layer's output in training; 0 disables.
      name: Module name.
    """
    super().__init__(name=name)
    check_args(self, channels=channels, hidden_size=hidden_size,
               bn_decay=bn_decay, bn_eps=bn_eps, dropout=dropout)
    self.num_outputs = num_outputs
    self.channels = tuple(channels)
    self.hidden_size = hidden_size
    self.activation = activation
    self.w_init = w_init
    self.pool = pool
    self.dense_batch_norm = dense_batch_norm
    self.bn_decay = bn_decay
    self.bn_eps = bn_eps
    self.dropout = dropout

  @hk.name_like("__call__")
  def features(self, x: jax.Array, is_training: bool = False) -> jax.Array:
    """(B, H, W, C) images -> (B, hidden_size): the dense layer after its
    BatchNorm and activation, before dropout and logits (what the head sees).

    Named like `__call__`, so its layers and BatchNorm statistics keep their
    names and trained weights fit either method. `is_training` chooses batch
    statistics (and updates the moving averages) or the moving averages.
    """
    norm = functools.partial(batch_norm, decay=self.bn_decay,
                             eps=self.bn_eps)
    for i, c in enumerate(self.channels):
      x = conv.Conv2D(c, kernel_shape=3, with_bias=False,
                      w_init=self.w_init, name=f"conv_{i}")(x)
      x = self.activation(norm(x, is_training, f"bn_{i}"))
      x = self.pool(x, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1),
                    padding="VALID")
    x = hk.Flatten()(x)
    x = hk.Linear(self.hidden_size, with_bias=not self.dense_batch_norm,
                  w_init=self.w_init, name="dense")(x)
    if self.dense_batch_norm:
      x = norm(x, is_training, "bn_dense")
    return self.activation(x)

  def __call__(self, x: jax.Array, is_training: bool = False) -> jax.Array:
    """(B, H, W, C) images -> (B, num_outputs) logits."""
    x = self.features(x, is_training)
    if is_training and self.dropout > 0:
      x = hk.dropout(hk.next_rng_key(), self.dropout, x)
    return hk.Linear(self.num_outputs, w_init=self.w_init, name="logits")(x)
