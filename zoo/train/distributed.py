"""Multi-host start-up through JAX's own runtime (`jax.distributed`).

Must run before anything touches a device. With explicit flags it connects
to the coordinator; without them it lets JAX auto-detect TPU pods and SLURM
clusters; on a single machine with no cluster it does nothing.
"""
from __future__ import annotations

import os

import jax

_CLUSTER_ENV = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                "OMPI_COMM_WORLD_SIZE")


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               local_device_ids=None) -> bool:
  """Joins the multi-process job; True if this is one.

  Named as `jax.distributed.initialize` names them. CPU processes talk
  through gloo collectives.
  """
  explicit = any(v is not None for v in (coordinator_address, num_processes,
                                         process_id))
  if not explicit and not any(k in os.environ for k in _CLUSTER_ENV):
    return False
  # CPU processes need a collectives backend; it does not affect GPUs/TPUs.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    if None in (coordinator_address, num_processes, process_id):
      raise ValueError("multi-host needs all of --coordinator-address, "
                       "--num-processes and --process-id (or none, to let "
                       "JAX detect a TPU pod or SLURM job).")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id,
                               local_device_ids=local_device_ids)
  else:
    jax.distributed.initialize()
  return True
