"""Multi-host start-up through JAX's own runtime (`jax.distributed`).

Must run before anything touches a device. With explicit flags it connects
to the coordinator; without them it lets JAX auto-detect TPU pods and SLURM
clusters; on a single machine with no cluster it does nothing. It says on
stderr what it waits for, and gives up after a bounded time.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import threading

import jax

from zoo.errors import DistributedError, PeerTimeoutError

_CLUSTER_ENV = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                "OMPI_COMM_WORLD_SIZE")
DEFAULT_INIT_TIMEOUT_S = 60.0
# JAX's own deadline is set later than ours, so that ours speaks first: JAX's
# ends the process with a C++ stack trace instead of an error message.
_JAX_GRACE_S = 30
_ADDRESS = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(?P<port>\d+)$")


def parse_address(address) -> tuple[str, int]:
  """(host, port) of a HOST:PORT coordinator address ([v6]:PORT too), or a
  DistributedError that says what is wrong with it."""
  match = _ADDRESS.match(address) if isinstance(address, str) else None
  port = int(match["port"]) if match else 0
  if not match or not 1 <= port <= 65535:
    raise DistributedError(
        f"--coordinator-address must be HOST:PORT with a port in 1..65535 "
        f"(e.g. 10.0.0.1:1234 or [::1]:1234), got {address!r}: give process "
        "0's host and a free port, the same on every process.")
  return match["host"], port


def check_flags(coordinator_address: str | None = None,
                num_processes: int | None = None,
                process_id: int | None = None,
                timeout: float = DEFAULT_INIT_TIMEOUT_S) -> None:
  """Raises DistributedError unless the multi-host flags are all given and
  consistent, or none is; cheap, so callers check before any other work."""
  flags = {"--coordinator-address": coordinator_address,
           "--num-processes": num_processes, "--process-id": process_id}
  missing = [f for f, v in flags.items() if v is None]
  if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or \
      not math.isfinite(timeout) or timeout <= 0:
    raise DistributedError(
        f"--init-timeout must be a number of seconds > 0, got {timeout!r}: "
        f"e.g. {DEFAULT_INIT_TIMEOUT_S:g}.")
  if len(missing) == len(flags):
    return
  if missing:
    given = [f for f in flags if f not in missing]
    raise DistributedError(
        f"multi-host needs all of --coordinator-address, --num-processes and "
        f"--process-id; {' and '.join(given)} given without "
        f"{' and '.join(missing)}: give all three on every process (or none, "
        "to let JAX detect a TPU pod or SLURM job).")
  if not _is_int(num_processes) or num_processes < 1:
    raise DistributedError(
        f"--num-processes must be an int >= 1, got {num_processes!r}: the "
        "number of processes in the job, the same on every process.")
  if not _is_int(process_id) or not 0 <= process_id < num_processes:
    raise DistributedError(
        f"--process-id must be an int in 0..{num_processes - 1} for "
        f"--num-processes {num_processes}, got {process_id!r}: number the "
        f"processes 0 to {num_processes - 1}, each id once, 0 on the "
        "coordinator's host.")
  parse_address(coordinator_address)


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _timeout_error(address: str, num_processes: int, process_id: int,
                   timeout: float) -> PeerTimeoutError:
  """What a process that waited in vain was waiting for, and what to check."""
  host, port = parse_address(address)
  others = ("process 1" if num_processes == 2 else
            f"processes 1..{num_processes - 1}")
  if process_id == 0:
    return PeerTimeoutError(
        f"process 0 of {num_processes} waited {timeout:g} s at {address} and "
        f"not every process joined (it waited for {others}): start each of "
        f"them with --coordinator-address {address} --num-processes "
        f"{num_processes} and its own --process-id, check that {host} port "
        f"{port} is reachable from their hosts (firewall, host name), or "
        "allow longer with --init-timeout SECONDS.")
  return PeerTimeoutError(
      f"process {process_id} of {num_processes} could not join the job at "
      f"{address} within {timeout:g} s (it waited for process 0, the "
      f"coordinator, and all {num_processes} processes to register): start "
      f"process 0 (--process-id 0) on {host}, check that {address} is "
      "reachable from this host and that every process gives --num-processes "
      f"{num_processes}, or allow longer with --init-timeout SECONDS.")


@contextlib.contextmanager
def _deadline(seconds: float, error: Exception):
  """Runs the body; if it is still running after `seconds`, prints `error` as
  one `zoo: error:` line and ends the process with status 2. A process cannot
  carry on instead: JAX never gives up a connect short of aborting."""
  def expire():
    with contextlib.suppress(Exception):
      sys.stdout.flush()
    print(f"zoo: error: {error}", file=sys.stderr, flush=True)
    os._exit(2)
  timer = threading.Timer(seconds, expire)
  timer.daemon = True
  timer.start()
  try:
    yield
  finally:
    timer.cancel()


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               local_device_ids=None, *,
               timeout: float = DEFAULT_INIT_TIMEOUT_S) -> bool:
  """Joins the multi-process job; True if this is one.

  Named as `jax.distributed.initialize` names them. CPU processes talk
  through gloo collectives. Bad flags raise DistributedError before anything
  starts; if the processes have not all met after `timeout` seconds, the
  process prints a PeerTimeoutError and exits with status 2.
  """
  check_flags(coordinator_address, num_processes, process_id, timeout)
  explicit = coordinator_address is not None
  if not explicit and not any(k in os.environ for k in _CLUSTER_ENV):
    return False
  # CPU processes need a collectives backend; it does not affect GPUs/TPUs.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax_timeout = math.ceil(timeout) + _JAX_GRACE_S
  if explicit:
    print(f"zoo: waiting for {num_processes} processes at "
          f"{coordinator_address} (this is process {process_id}; timeout "
          f"{timeout:g} s)", file=sys.stderr, flush=True)
    error = _timeout_error(coordinator_address, num_processes, process_id,
                           timeout)
    with _deadline(timeout, error):
      jax.distributed.initialize(coordinator_address=coordinator_address,
                                 num_processes=num_processes,
                                 process_id=process_id,
                                 local_device_ids=local_device_ids,
                                 initialization_timeout=jax_timeout)
  else:
    found = ", ".join(k for k in _CLUSTER_ENV if k in os.environ)
    print(f"zoo: waiting for the processes of the cluster job JAX detects "
          f"({found} is set; timeout {timeout:g} s)", file=sys.stderr,
          flush=True)
    error = PeerTimeoutError(
        f"the processes of the cluster job ({found} is set) did not all meet "
        f"within {timeout:g} s: check that every process of the job started, "
        "or allow longer with --init-timeout SECONDS; on a single machine, "
        f"unset {found}.")
    with _deadline(timeout, error):
      jax.distributed.initialize(initialization_timeout=jax_timeout)
  return True
