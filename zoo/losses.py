"""Losses (mean over the batch) and L2 weight regularization, via optax."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from zoo.errors import ConfigError, close_matches


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array,
                          label_smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy.

  `labels` are integer class ids of shape (B,) or one-hot/probability targets
  of shape (B, K); `label_smoothing` mixes targets with the uniform one.
  """
  num_classes = logits.shape[-1]
  if labels.ndim == logits.ndim - 1:
    if label_smoothing == 0.0:
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels.astype(jnp.int32)).mean()
    labels = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  if labels.shape != logits.shape:
    raise ValueError(f"labels of shape {labels.shape} do not match logits "
                     f"{logits.shape}: pass class ids (B,) or targets (B, K).")
  if label_smoothing:
    labels = optax.smooth_labels(labels, label_smoothing)
  return optax.softmax_cross_entropy(logits, labels).mean()


def binary_cross_entropy(logits: jax.Array, labels: jax.Array,
                         label_smoothing: float = 0.0) -> jax.Array:
  """Mean binary cross-entropy computed stably from logits (B,) or (B, 1)."""
  if logits.ndim == labels.ndim + 1 and logits.shape[-1] == 1:
    logits = logits[..., 0]
  labels = labels.astype(logits.dtype)
  if label_smoothing:
    labels = labels * (1.0 - label_smoothing) + 0.5 * label_smoothing
  return optax.sigmoid_binary_cross_entropy(logits, labels).mean()


def mean_squared_error(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean of the squared differences over every element."""
  return jnp.mean(optax.squared_error(pred, target))


def is_regularized(path: tuple[str, ...], leaf: jax.Array) -> bool:
  """True for weight matrices and conv kernels (Haiku's `w`, rank >= 2)."""
  return path[-1] == "w" and leaf.ndim >= 2


def l2_regularization(params, weight: float) -> jax.Array:
  """`weight * 0.5 * sum(w**2)` over weight matrices and conv kernels only.

  Biases, normalization scales/offsets and embeddings are never penalised.
  """
  total = jnp.zeros((), jnp.float32)
  for module_name, leaves in params.items():
    for name, leaf in leaves.items():
      if is_regularized((module_name, name), leaf):
        total = total + optax.l2_loss(leaf).sum()
  return weight * total


_LOSSES: dict[str, Callable[..., jax.Array]] = {
    "softmax_cross_entropy": softmax_cross_entropy,
    "binary_cross_entropy": binary_cross_entropy,
}


def names() -> list[str]:
  return sorted(_LOSSES)


def get(name: str) -> Callable[..., jax.Array]:
  """Returns the classification loss called `name`."""
  try:
    return _LOSSES[name]
  except KeyError:
    hint = close_matches(name, names())
    raise ConfigError(f"unknown loss {name!r}"
                      + (f"; did you mean {', '.join(hint)}?" if hint else ".")
                      + f" Choose one of: {', '.join(names())}.") from None


def predictions(logits: jax.Array) -> jax.Array:
  """Predicted class ids: argmax, or logit > 0 for a single binary output."""
  if logits.shape[-1] == 1:
    return (logits[..., 0] > 0).astype(jnp.int32)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)
