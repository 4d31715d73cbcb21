"""Evaluation over a whole split, on every device of every process: no example
dropped or counted twice (the last batch is padded and masked). Reports
accuracy, mean loss and per-class accuracy.

Each global eval batch is split over the run's devices by training's own
functions (`zoo.data.pad_batches`, then `zoo.data.put_sharded`): process p
takes the p-th contiguous block, each of its devices a contiguous block of
that. Every device runs its share of all batches as one
`lax.scan` inside `shard_map` over a `Mesh`, and the sums (correct, loss,
count, per-class counts) are `psum`-ed over the mesh, so over processes too
under `jax.distributed`. The split stays uint8 on the devices; it becomes
float inside the compiled step (`to_float`).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from zoo.data.batching import job_devices, pad_batches, put_sharded, to_float
from zoo.training.step import make_eval_step

AXIS = "data"


def eval_devices(strategy=None, device=None) -> list:
  """The devices an evaluation spans: the strategy's devices in this process
  plus every device of the other processes (as the mesh strategy lays them
  out), else `device`, else this process's first device."""
  if strategy is None:
    return [device or jax.local_devices()[0]]
  return job_devices(strategy.devices)


def _global(x, sharding: NamedSharding) -> jax.Array:
  """A host array placed with `sharding`; each process puts only its own
  shards (the mesh may span processes)."""
  x = np.asarray(x)
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])


def _host(x: jax.Array) -> np.ndarray:
  """This process's copy of a replicated (possibly global) array."""
  if not x.is_fully_addressable:
    x = x.addressable_data(0)
  return np.asarray(jax.device_get(x))


class Evaluator:
  """Holds a split on the devices of a strategy (or one device) and evaluates
  parameters on all of it, exactly.

  `strategy`: the run's strategy; its devices in this process and all devices
  of the other processes share every batch. Without it, `device` (default:
  this process's first device) evaluates alone, as `zoo eval` does.
  """

  def __init__(self, entry, images: np.ndarray, labels: np.ndarray,
               batch_size: int = 1000, device=None, strategy=None):
    self.entry = entry
    self.num_examples = len(labels)
    self.devices = eval_devices(strategy, device)
    self.mesh = Mesh(np.array(self.devices), (AXIS,))
    n_dev = self.mesh.size
    wanted = max(1, min(batch_size, self.num_examples))
    # Each global batch splits evenly: round it up to a multiple of devices.
    self.per_device = -(-wanted // n_dev)
    self.batch_size = self.per_device * n_dev
    self._replicated = NamedSharding(self.mesh, P())
    self._data = tuple(put_sharded(x, self.mesh) for x in
                       pad_batches(images, labels, self.batch_size))
    eval_step = make_eval_step(entry)

    def run(params, model_state, images, labels, mask):
      """This device's share of every batch, summed, then summed over all
      devices (and processes)."""
      def body(carry, batch):
        images, labels, mask = batch
        return carry, eval_step(params, model_state, to_float(images),
                                labels, mask)
      _, sums = jax.lax.scan(body, None, (images, labels, mask))
      return jax.lax.psum(jax.tree.map(lambda x: x.sum(axis=0), sums), AXIS)

    self._run = jax.jit(jax.shard_map(
        run, mesh=self.mesh, in_specs=(P(), P(), P(None, AXIS),
                                       P(None, AXIS), P(None, AXIS)),
        # Models may build constant carries of their own (the LSTM's zero
        # state) that shard_map's varying-axis check would reject.
        out_specs=P(), check_vma=False))

  def __call__(self, params, model_state=None) -> dict[str, Any]:
    params, model_state = jax.tree.map(
        lambda x: _global(x, self._replicated), (params, model_state or {}))
    totals = jax.tree.map(_host, self._run(params, model_state, *self._data))
    count = float(totals["count"])
    assert count == self.num_examples, (count, self.num_examples)
    per_class = totals["class_correct"] / np.maximum(totals["class_count"], 1)
    return {
        "accuracy": float(totals["correct"]) / count,
        "loss": float(totals["loss_sum"]) / count,
        "examples": int(count),
        "per_class_accuracy": {name: float(a) for name, a in
                               zip(self.entry.class_names, per_class)},
    }


def evaluate_model(name_or_entry, params, model_state=None, *,
                   data_dir: str | None = None, split: str | None = None,
                   batch_size: int | None = None) -> dict[str, Any]:
  """Evaluates `params` of a registered model on its test split (one device
  of this process)."""
  from zoo import data, registry
  entry = (registry.get(name_or_entry) if isinstance(name_or_entry, str)
           else name_or_entry)
  cfg = entry.config
  test = data.load(entry.dataset, split or cfg["data"]["test_split"],
                   data_dir=data_dir, classes=cfg["data"]["classes"] or None)
  evaluator = Evaluator(entry, test.images, test.labels,
                        batch_size or cfg["train"]["eval_batch_size"])
  return evaluator(params, model_state)
