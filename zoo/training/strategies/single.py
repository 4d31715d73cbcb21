"""Single device: plain `jax.jit`, with the state's buffers donated."""
from __future__ import annotations

import jax

from zoo.training.strategies.base import Strategy, as_int32, host_copy, make_runners


class SingleDevice(Strategy):
  name = "jit"

  def __init__(self, devices=None):
    super().__init__(devices)
    self.devices = self.devices[:1]
    if self.process_count > 1:
      raise ValueError("the single-device strategy runs in one process; use "
                       "pmap or mesh for multi-host training.")

  def put_data(self, images, labels):
    return jax.device_put((images, labels), self.devices[0])

  def put_state(self, state):
    return jax.device_put(state, self.devices[0])

  def get_state(self, state):
    return host_copy(state)

  def put_indices(self, idx_rows):
    return jax.device_put(as_int32(idx_rows), self.devices[0])

  def compile(self, train_step):
    run_one, run_scan = make_runners(train_step)
    return (jax.jit(run_one, donate_argnums=0),
            jax.jit(run_scan, donate_argnums=0))
