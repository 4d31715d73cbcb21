"""Parallel strategies, one per file: single (jit), pmap, mesh (jit+sharding)."""
from __future__ import annotations

import jax

from zoo.errors import ConfigError
from zoo.training.strategies.base import Strategy
from zoo.training.strategies.mesh import MeshStrategy
from zoo.training.strategies.pmap import PmapStrategy
from zoo.training.strategies.single import SingleDevice

STRATEGIES = {"jit": SingleDevice, "pmap": PmapStrategy, "mesh": MeshStrategy}


def make(name: str = "auto", devices: int | None = None) -> Strategy:
  """Strategy `name` over the first `devices` local devices (all if None).

  "auto" is jit on one device in one process, pmap otherwise.
  """
  local = jax.local_devices()
  if devices is not None:
    if not 1 <= devices <= len(local):
      raise ConfigError(
          f"--devices {devices}: this process sees {len(local)} "
          f"{local[0].platform} device(s). On CPU, XLA_FLAGS="
          "--xla_force_host_platform_device_count=N makes N devices.")
    local = local[:devices]
  if name == "auto":
    name = "jit" if len(local) == 1 and jax.process_count() == 1 else "pmap"
  if name not in STRATEGIES:
    raise ConfigError(f"unknown strategy {name!r}; choose auto, "
                      + ", ".join(STRATEGIES) + ".")
  return STRATEGIES[name](local)
