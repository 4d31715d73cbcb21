"""Deterministic batching: the global batch at step t of epoch e depends only on
(seed, epoch, global_batch), never on how many devices or processes share it.

Each process takes its contiguous block of every global batch, and each local
device the contiguous block of that, so concatenating all shards in
(process, device) order gives back the global batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """A permutation of range(num_examples) that is a function of (seed, epoch) only."""
  if seed < 0 or epoch < 0:
    raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
  rng = np.random.default_rng([int(seed), int(epoch)])
  return rng.permutation(num_examples).astype(np.int64)


def epoch_indices(seed: int, epoch: int, num_examples: int, global_batch: int,
                  drop_remainder: bool = True) -> np.ndarray:
  """Example indices of every global batch of one epoch, int64 (steps, global_batch).

  drop_remainder=False keeps the last partial batch, topped up with the first
  indices of the same permutation (so a few examples are seen twice).
  """
  if global_batch <= 0:
    raise ValueError(f"global_batch must be positive, got {global_batch}")
  perm = epoch_permutation(seed, epoch, num_examples)
  if drop_remainder:
    steps = num_examples // global_batch
    if steps == 0:
      raise ValueError(f"global_batch={global_batch} is larger than the split "
                       f"({num_examples} examples); nothing left after "
                       "drop_remainder")
  else:
    steps = -(-num_examples // global_batch)
    short = steps * global_batch - num_examples
    perm = np.concatenate([perm, np.resize(perm, short)])
  return perm[:steps * global_batch].reshape(steps, global_batch)


def shard_indices(indices: np.ndarray, process_index: int, process_count: int,
                  local_devices: int) -> np.ndarray:
  """This process's part of each global batch: (steps, local_devices, per_device).

  Process p takes the p-th contiguous block of every global batch; local
  device d takes the d-th contiguous block of that.
  """
  steps, global_batch = indices.shape
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  if local_devices <= 0:
    raise ValueError(f"local_devices must be positive, got {local_devices}")
  shards = process_count * local_devices
  if global_batch % shards:
    lower = global_batch // shards * shards
    raise ValueError(
        f"global_batch={global_batch} is not divisible by process_count * "
        f"local_devices = {process_count} * {local_devices} = {shards}; set the "
        f"global batch to a multiple of {shards} (e.g. {lower or shards} or "
        f"{lower + shards}) or change the number of devices")
  per_process = global_batch // process_count
  block = indices[:, process_index * per_process:(process_index + 1) * per_process]
  return block.reshape(steps, local_devices, per_process // local_devices)


_INV_255 = np.float32(1.0 / 255.0)


def to_float(images):
  """uint8 images -> float32 in [0, 1]. The ONLY uint8->float conversion in zoo.

  Works on numpy arrays, jax arrays and tracers inside jit. Multiplies by a
  float32 1/255 (XLA turns `/ 255` into that anyway), so the host path and the
  jitted path give bit-identical values; 255 maps to exactly 1.0.
  """
  if images.dtype != np.uint8:
    raise TypeError(f"to_float expects uint8 images, got {images.dtype} (already "
                    "converted? models take float32 NHWC in [0, 1])")
  return images.astype(np.float32) * _INV_255


def gather(images, labels, idx):
  """Pure, jit-able: (float32 images, int32 labels) for an index array of any shape.

  `images`/`labels` are the on-device uint8/int32 arrays of DeviceData; the
  result has shape idx.shape + (H, W, C) and idx.shape.
  """
  return to_float(jnp.take(images, idx, axis=0)), jnp.take(labels, idx, axis=0)


@dataclasses.dataclass(frozen=True, eq=False)
class DeviceData:
  """A split's uint8 images and int32 labels placed on device once.

  Training then only ships index arrays and calls `gather` inside jit, so no
  image crosses host->device per step.
  """
  images: jax.Array
  labels: jax.Array
  num_classes: int

  @classmethod
  def put(cls, split, device: Any = None) -> "DeviceData":
    """Copies `split` (a Split) to device.

    device: None (default device), a jax.Device, a jax.sharding.Sharding, or a
    list of devices to replicate the data on every one of them.
    """
    if isinstance(device, Sequence) and not isinstance(device, str):
      mesh = jax.sharding.Mesh(np.asarray(list(device)), ("replica",))
      device = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    images = jax.device_put(np.asarray(split.images), device)
    labels = jax.device_put(np.asarray(split.labels, dtype=np.int32), device)
    return cls(images=images, labels=labels, num_classes=split.num_classes)

  def __len__(self) -> int:
    return self.labels.shape[0]

  def gather(self, idx):
    """(float32 images, int32 labels) for `idx`; see the module-level `gather`."""
    return gather(self.images, self.labels, idx)


def iterate_batches(split, seed: int, epoch: int, global_batch: int,
                    process_index: int = 0, process_count: int = 1,
                    local_devices: int | None = 1,
                    drop_remainder: bool = True) -> Iterator[dict[str, np.ndarray]]:
  """Host-side training batches for this process, for one epoch.

  Yields {"image": float32, "label": int32} shaped (local_devices, per_device,
  ...) or, when local_devices is None, (global_batch // process_count, ...).
  """
  indices = epoch_indices(seed, epoch, len(split.labels), global_batch,
                          drop_remainder)
  shards = shard_indices(indices, process_index, process_count,
                         1 if local_devices is None else local_devices)
  if local_devices is None:
    shards = shards.reshape(shards.shape[0], -1)
  for step_idx in shards:
    yield {"image": to_float(split.images[step_idx]),
           "label": split.labels[step_idx].astype(np.int32)}


def eval_batches(split, batch_size: int,
                 pad: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Every example of `split` once, in order: {"image": float32, "label": int32}.

  The last batch is smaller, or with pad=True zero-padded to batch_size (fixed
  shapes for jit); then every batch also has a bool "mask" (False = padding).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  n = len(split.labels)
  for start in range(0, n, batch_size):
    images = split.images[start:start + batch_size]
    labels = split.labels[start:start + batch_size].astype(np.int32)
    batch = {"image": to_float(images), "label": labels}
    if pad:
      real = labels.shape[0]
      short = batch_size - real
      batch = {
          "image": np.concatenate(
              [batch["image"],
               np.zeros((short,) + images.shape[1:], np.float32)]),
          "label": np.concatenate([labels, np.zeros(short, np.int32)]),
          "mask": np.arange(batch_size) < real,
      }
    yield batch
