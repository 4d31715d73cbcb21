"""Augmentation on the device: random crop with padding and horizontal flip.

Pure functions of (key, images), run inside the compiled train step after
the on-device gather and `to_float` and before the forward pass, so no
image crosses back to the host. The train step derives `key` from its own
step key (`fold_in(state.rng, state.step)`, then AUGMENT_TAG), so the
augmentation of every step is a function of (seed, step) alone: a resumed
run draws exactly what an uninterrupted one would, with no host state.

Each example gets its own key, `fold_in(key, position)`, from its position
in the *global* batch. The jit and mesh strategies see the global batch and
number it 0..B-1; under pmap device d holds block d of it (see
`zoo.data.shard_batches`) and numbers its examples d * B/D + i. So every
device augments its own images differently, and the same step augments the
same example the same way whatever the strategy or the number of devices.

Configured per model in `[augment]` (all off by default, which leaves the
step exactly as it was without this module):

    crop_padding = 0       # pad P pixels, then a random HxW crop (0: off)
    padding_mode = "zero"  # zero | reflect
    flip = false           # mirror left-right with probability 0.5
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from zoo.errors import ConfigValueError

# Folded into the step key to get the augmentation key: a stream apart from
# the model's (dropout) key, which folds in the device index instead.
AUGMENT_TAG = 0x61756731  # "aug1"
PADDING_MODES = {"zero": "constant", "reflect": "reflect"}


def enabled(cfg: Mapping[str, Any]) -> bool:
  """Whether an `[augment]` section changes any image."""
  return bool(cfg.get("crop_padding", 0)) or bool(cfg.get("flip", False))


def check(cfg: Mapping[str, Any], image_shape) -> None:
  """Raises a one-line ConfigValueError unless `augment.crop_padding` is at
  most half the image's height and width (the config alone does not know
  the image size; zoo/config.py checks the rest)."""
  h, w = image_shape[:2]
  limit = min(h, w) // 2
  padding = cfg.get("crop_padding", 0)
  if not 0 <= padding <= limit:
    raise ConfigValueError(
        "augment.crop_padding", padding, f"an int in 0..{limit}",
        f"at most half the {h}x{w} image, e.g. 2 or 4; 0 turns cropping off")


def crop(key: jax.Array, image: jax.Array, padding: int,
         mode: str = "zero") -> jax.Array:
  """One (H, W, C) image padded by `padding` pixels on each side (zeros or
  a reflection), then an HxW window at a uniformly random offset."""
  h, w, c = image.shape
  padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)),
                   mode=PADDING_MODES[mode])
  dy, dx = jax.random.randint(key, (2,), 0, 2 * padding + 1)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))


def flip(key: jax.Array, image: jax.Array) -> jax.Array:
  """One (H, W, C) image, mirrored left-right with probability 0.5."""
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


def augment_one(key: jax.Array, image: jax.Array,
                cfg: Mapping[str, Any]) -> jax.Array:
  """One image, cropped then flipped as `cfg` says."""
  crop_key, flip_key = jax.random.split(key)
  if cfg.get("crop_padding", 0):
    image = crop(crop_key, image, cfg["crop_padding"],
                 cfg.get("padding_mode", "zero"))
  if cfg.get("flip", False):
    image = flip(flip_key, image)
  return image


def augment(key: jax.Array, images: jax.Array, cfg: Mapping[str, Any],
            offset: jax.Array | int = 0) -> jax.Array:
  """A batch (B, H, W, C), each image augmented with its own key
  `fold_in(key, offset + i)` (`offset`: the position of this batch's first
  example in the global batch). Same shape and dtype; a no-op when `cfg`
  enables nothing."""
  if not enabled(cfg):
    return images
  positions = offset + jnp.arange(images.shape[0])
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, positions)
  return jax.vmap(lambda k, x: augment_one(k, x, cfg))(keys, images)
