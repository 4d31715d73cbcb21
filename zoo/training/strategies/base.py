"""What every parallel strategy shares: gathering batches on device and
running steps either one at a time (a Python loop) or as one `lax.scan`.

The dataset lives on the device(s) as uint8; each step receives only a row of
example indices and gathers its batch there (`zoo.data.gather`), so no images
cross from host to device during training. Which device gets which part of a
row is `zoo.data.shard_batches`'s, for every strategy.
"""
from __future__ import annotations

import abc
from typing import Any, Callable

import jax
import numpy as np

from zoo.data.batching import gather
from zoo.errors import ConfigError


def make_runners(train_step: Callable[..., Any]):
  """(run_one, run_scan) over device-resident `images`/`labels`.

  run_one(state, images, labels, idx_rows, i): the step on row i of idx_rows.
  run_scan(state, images, labels, idx_rows): every row, as one lax.scan;
  metrics come back stacked along the first axis.
  """
  def body(images, labels):
    def step(state, idx):
      return train_step(state, *gather(images, labels, idx))
    return step

  def run_one(state, images, labels, idx_rows, i):
    idx = jax.lax.dynamic_index_in_dim(idx_rows, i, keepdims=False)
    return body(images, labels)(state, idx)

  def run_scan(state, images, labels, idx_rows):
    return jax.lax.scan(body(images, labels), state, idx_rows)

  return run_one, run_scan


class Strategy(abc.ABC):
  """Places data and state, and compiles the step for some set of devices."""
  name: str = ""
  axis_name: str | None = None  # set when the step itself must all-reduce

  def __init__(self, devices=None):
    self.devices = list(devices) if devices is not None else jax.local_devices()
    self.process_index = jax.process_index()
    self.process_count = jax.process_count()

  @property
  def num_local_devices(self) -> int:
    return len(self.devices)

  @property
  def num_devices(self) -> int:
    """Devices over all processes that share each global batch."""
    return self.num_local_devices * self.process_count

  def check_batch(self, global_batch: int) -> None:
    if global_batch % self.num_devices:
      raise ConfigError(
          f"the global batch {global_batch} does not split evenly over "
          f"{self.num_devices} devices; pick a batch size divisible by "
          f"{self.num_devices} (--batch-size) or change --devices.")

  @abc.abstractmethod
  def put_data(self, images: np.ndarray, labels: np.ndarray) -> tuple[Any, Any]:
    """Puts a whole split on the device(s), once."""

  @abc.abstractmethod
  def put_state(self, state) -> Any:
    """Places a host TrainState for this strategy (replicated)."""

  @abc.abstractmethod
  def get_state(self, state) -> Any:
    """One host (numpy) copy of a placed TrainState."""

  @abc.abstractmethod
  def put_indices(self, idx_rows: np.ndarray) -> Any:
    """Places an epoch's (steps, global_batch) index rows, sharded by batch."""

  @abc.abstractmethod
  def compile(self, train_step) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Returns compiled-on-first-call (run_one, run_scan)."""

  def host_metrics(self, metrics) -> dict[str, np.ndarray]:
    """Metrics as numpy (one copy; all devices hold the same values)."""
    return {k: np.asarray(jax.device_get(v)) for k, v in metrics.items()}


def host_copy(tree) -> Any:
  """A numpy copy of a pytree of (addressable) arrays."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_data(0)
    return np.asarray(jax.device_get(x))
  return jax.tree.map(get, tree)


def as_int32(idx_rows: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(idx_rows, dtype=np.int32)

