"""Data parallel with `jax.pmap` over every local device (and, after
`jax.distributed.initialize`, over the devices of every host).

State and dataset are replicated; device d of process p takes block
p * local_devices + d of each global batch; gradients, metrics and model
state are averaged with `lax.pmean` inside the step.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from zoo.data.batching import shard_batches
from zoo.training.strategies.base import Strategy, as_int32, make_runners


class PmapStrategy(Strategy):
  name = "pmap"
  axis_name = "batch"

  def __init__(self, devices=None):
    super().__init__(devices)
    # Across processes, arrays are global: one slot per device of the job.
    self._all_devices = (self.devices if self.process_count == 1
                         else jax.devices())
    self._sharding = NamedSharding(
        Mesh(np.array(self._all_devices), ("device",)), P("device"))

  def _put_shards(self, shards) -> jax.Array:
    """An array with a leading device axis; shard i on local device i."""
    shards = [np.asarray(s)[None] for s in shards]
    return jax.make_array_from_single_device_arrays(
        (len(self._all_devices), *shards[0].shape[1:]), self._sharding,
        [jax.device_put(s, d) for s, d in zip(shards, self.devices)])

  def _replicate(self, tree):
    return jax.tree.map(lambda x: self._put_shards([x] * len(self.devices)),
                        tree)

  def put_data(self, images, labels):
    return self._replicate((images, labels))

  def put_state(self, state):
    return self._replicate(state)

  def get_state(self, state):
    return jax.tree.map(_first_local, state)

  def put_indices(self, idx_rows):
    per_device = shard_batches(as_int32(idx_rows), self.process_index,
                               self.process_count, self.num_local_devices)
    per_device = np.ascontiguousarray(per_device.transpose(1, 0, 2))
    return self._put_shards(list(per_device))

  def compile(self, train_step):
    run_one, run_scan = make_runners(train_step)
    # Across processes pmap must span every process's devices (devices=None);
    # in one process it may use a subset (--devices N).
    devices = self.devices if self.process_count == 1 else None
    return (jax.pmap(run_one, axis_name=self.axis_name, devices=devices,
                     in_axes=(0, 0, 0, 0, None), donate_argnums=0),
            jax.pmap(run_scan, axis_name=self.axis_name, devices=devices,
                     donate_argnums=0))

  def host_metrics(self, metrics):
    return {k: _first_local(v) for k, v in metrics.items()}


def _first_local(x: jax.Array) -> np.ndarray:
  """This process's first device's copy of a device-stacked array."""
  return np.asarray(x.addressable_data(0))[0]
