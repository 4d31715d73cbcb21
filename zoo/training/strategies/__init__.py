"""Parallel strategies, one per file: single (jit), pmap, mesh (jit+sharding)."""
from __future__ import annotations

import jax

from zoo.errors import ConfigError
from zoo.training.strategies.base import Strategy
from zoo.training.strategies.mesh import MeshStrategy
from zoo.training.strategies.pmap import PmapStrategy
from zoo.training.strategies.single import SingleDevice

STRATEGIES = {"jit": SingleDevice, "pmap": PmapStrategy, "mesh": MeshStrategy}
# What "auto" picks on several devices of one process (see `make`).
AUTO_MULTI_DEVICE = "mesh"


def make(name: str = "auto", devices: int | None = None) -> Strategy:
  """Strategy `name` over the first `devices` local devices (all if None).

  "auto" is jit on one device in one process; mesh (jit over a `Mesh` with
  `NamedSharding`) on several devices of one process; pmap across processes
  (the multi-host path zoo tests end to end).

  Mesh, by measurement: `python bench/strategies.py --repeats 5` (and
  `--devices 8 --models logreg_fashion_mnist mlp_fashion_mnist`) timed
  zoo.train's steady-state images/s, interleaved best of 5, at batch 128 and
  512 on 2, 4 (and 8) CPU devices of a shared 2-core x86 machine, jax 0.10.2.
  mesh/pmap: logreg 1.09-1.48 (mesh faster in all 6 rows), mlp 0.85-0.97
  (pmap faster in all 6), cnn 0.75-1.96 under heavy load and 1.00 and 0.92
  (batch 128, 2 and 4 devices) in a quieter rerun. A wash on CPU, so mesh, JAX's recommended path (pmap is in maintenance since JAX 0.8
  and built on jit + shard_map) and the one accelerators are tuned for. Mesh
  also trains BatchNorm and dropout models to one device's numbers (its step
  sees the global batch), where pmap normalises and draws dropout masks per
  device. pmap stays first-class: `--strategy pmap`.
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
    if jax.process_count() > 1:
      name = "pmap"
    else:
      name = "jit" if len(local) == 1 else AUTO_MULTI_DEVICE
  if name not in STRATEGIES:
    raise ConfigError(f"unknown strategy {name!r}; choose auto, "
                      + ", ".join(STRATEGIES) + ".")
  return STRATEGIES[name](local)
