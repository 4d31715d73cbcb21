"""zoo's one batching path, used by every training strategy and the evaluator.

The global batch at step t of epoch e depends only on (seed, epoch,
global_batch), never on how many devices or processes share it. Each process
takes its contiguous block of every global batch, and each of its devices the
contiguous block of that, so concatenating all shards in (process, device)
order gives back the global batch. The dataset stays uint8 on the devices;
steps receive index rows and `gather` their batch inside the compiled step.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


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


def shard_batches(batches: np.ndarray, process_index: int, process_count: int,
                  local_devices: int) -> np.ndarray:
  """This process's part of every global batch: (steps, local_devices, per_device, ...).

  `batches` is (steps, global_batch, ...): index rows, or padded eval data.
  Process p takes the p-th contiguous block of every global batch; local
  device d takes the d-th contiguous block of that (global block p*D + d).
  """
  steps, global_batch = batches.shape[:2]
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
  block = batches[:, process_index * per_process:(process_index + 1) * per_process]
  return block.reshape(steps, local_devices, per_process // local_devices,
                       *batches.shape[2:])


def job_devices(local_devices) -> list:
  """This process's `local_devices` and every device of the other processes,
  in (process, device) order: the device at position k of a mesh over them
  holds block k of every global batch, as `shard_batches` splits it."""
  me = jax.process_index()
  others = [d for d in jax.devices() if d.process_index != me]
  return sorted(others + list(local_devices), key=lambda d: d.process_index)


def put_sharded(batches: np.ndarray, mesh: Mesh) -> jax.Array:
  """(steps, global_batch, ...) host data as one array over a 1-D `mesh` of
  `job_devices` (or of this process's devices only), each device holding its
  `shard_batches` block of every global batch.

  Every process passes the same full `batches` and places only its own blocks.
  """
  devices = list(mesh.devices.flat)
  local = [d for d in devices if d.process_index == jax.process_index()]
  start = devices.index(local[0])
  if (devices[start:start + len(local)] != local or start % len(local)
      or len(devices) % len(local)):
    raise ValueError("put_sharded needs a mesh in (process, device) order "
                     "with as many devices per process; see job_devices")
  blocks = shard_batches(np.asarray(batches), start // len(local),
                         len(devices) // len(local), len(local))
  arrays = [jax.device_put(np.ascontiguousarray(blocks[:, i]), d)
            for i, d in enumerate(local)]
  sharding = NamedSharding(mesh, P(None, *mesh.axis_names))
  return jax.make_array_from_single_device_arrays(batches.shape, sharding,
                                                  arrays)


def pad_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
  """Every example once, in order, as (batches, batch_size, ...) arrays:
  (images, int32 labels, float32 mask). The last batch is zero-padded (fixed
  shapes for the compiled step) and its padding has mask 0."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  n = len(labels)
  batches = -(-n // batch_size)
  pad = batches * batch_size - n
  mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  images = np.concatenate([images, np.zeros((pad, *images.shape[1:]),
                                            images.dtype)])
  labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
  shape = (batches, batch_size)
  return (images.reshape(*shape, *images.shape[1:]),
          labels.reshape(shape).astype(np.int32), mask.reshape(shape))


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
  """Inside the compiled step: (float32 images, labels) of the examples `idx`
  (any shape) from the device-resident uint8 images and int32 labels."""
  return to_float(images[idx]), labels[idx]
