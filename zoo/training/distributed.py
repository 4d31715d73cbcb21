"""Multi-host start-up through JAX's own runtime (`jax.distributed`).

Must run before anything touches a device. With explicit flags it connects
to the coordinator; without them it lets JAX auto-detect TPU pods and SLURM
clusters; on a single machine with no cluster it does nothing. It says on
stderr what it waits for and gives up after a bounded time with one line.
Once running, a lost process is found by JAX's own heartbeat
(`heartbeat_timeout_seconds`): the others abort, and the job is restarted
as a whole (docs: pods). A process that fails skips JAX's shutdown barrier
(`stop_alone_on_error`), so that it ends at once.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import math
import os
import re
import socket
import sys
import threading
import time

import jax

from zoo.errors import (DistributedError, PeerLostError, PeerTimeoutError,
                        ZooError)

_CLUSTER_ENV = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE")
DEFAULT_INIT_TIMEOUT_S = 60.0
DEFAULT_HEARTBEAT_TIMEOUT_S = 100.0  # JAX's own default
# JAX's initialization_timeout is set later than zoo's, so that zoo's one
# line speaks first: JAX's ends the process with a C++ stack trace.
_JAX_GRACE_S = 30
_JAX_MAX_S = 2**31 - 1  # JAX takes whole seconds as a C int
_FAILED_LINGER_S = 3.0
# What a JaxRuntimeError of a collective with a lost peer says.
_PEER_WORDS = ("Gloo", "gloo", "Connection", "connection", "peer",
               "UNAVAILABLE", "DEADLINE_EXCEEDED")
_ADDRESS = re.compile(
    r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(?P<port>\d+)$")


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


def _check_seconds(flag: str, value, default: float) -> None:
  """Raises DistributedError unless `value` is a finite number > 0."""
  if not isinstance(value, (int, float)) or isinstance(value, bool) or \
      not math.isfinite(value) or value <= 0:
    raise DistributedError(f"{flag} must be a number of seconds > 0, got "
                           f"{value!r}: e.g. {default:g}.")


def check_flags(coordinator_address: str | None = None,
                num_processes: int | None = None,
                process_id: int | None = None,
                timeout: float = DEFAULT_INIT_TIMEOUT_S,
                heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT_S
                ) -> None:
  """Raises DistributedError unless the multi-host flags are all given and
  consistent, or none is; cheap, so callers check before any other work."""
  flags = {"--coordinator-address": coordinator_address,
           "--num-processes": num_processes, "--process-id": process_id}
  missing = [f for f, v in flags.items() if v is None]
  _check_seconds("--init-timeout", timeout, DEFAULT_INIT_TIMEOUT_S)
  _check_seconds("--heartbeat-timeout", heartbeat_timeout,
                 DEFAULT_HEARTBEAT_TIMEOUT_S)
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


def _exit_now(error: Exception) -> None:
  """Prints `error` as one `zoo: error:` line and ends the process with
  status 2 at once: the main thread is stuck in JAX's connect, which gives
  up only by aborting."""
  with contextlib.suppress(Exception):
    sys.stdout.flush()
    print(f"zoo: error: {error}", file=sys.stderr, flush=True)
  os._exit(2)


@contextlib.contextmanager
def _deadline(seconds: float, error: Exception):
  """Runs the body; if it is still running after `seconds`, ends the process
  with `error` (JAX's own initialization_timeout, set later, would abort
  with a C++ stack trace instead)."""
  timer = threading.Timer(min(seconds, threading.TIMEOUT_MAX), _exit_now,
                          (error,))
  timer.daemon = True
  timer.start()
  try:
    yield
  finally:
    timer.cancel()


def _check_port_free(bind_address: str) -> None:
  """Raises DistributedError if something already listens on the port that
  process 0's coordination service is to bind (on every interface). gRPC
  shares ports (SO_REUSEPORT): a second job's service on the port of a
  running one would start silently and split the processes between them."""
  _, port = parse_address(bind_address)
  try:
    with socket.create_server(("", port)):
      return
  except OSError as e:
    if e.errno != errno.EADDRINUSE:
      return  # not ours to judge: JAX will say
  raise DistributedError(
      f"process 0 cannot serve the job on port {port}: it is in use on this "
      "host (another program, or another job's coordinator): give another "
      "port in --coordinator-address, the same on every process.")


def _skip_shutdown_barrier(status: int) -> None:
  """Ends a failed process (its error already printed) before JAX's atexit
  shutdown barrier, which would wait shutdown_timeout for peers that never
  reach it. Process 0 waits a moment first: its exit ends the coordination
  service, and peers failing at the same point print their own line."""
  with contextlib.suppress(Exception):
    sys.stdout.flush()
    sys.stderr.flush()
  if jax.process_index() == 0:
    time.sleep(_FAILED_LINGER_S)
  os._exit(status)


@contextlib.contextmanager
def stop_alone_on_error():
  """In a job of several processes, an error that ends this process ends it
  without JAX's shutdown barrier (see `_skip_shutdown_barrier`); the other
  processes then stop through JAX's own heartbeat (they abort once this
  process has been silent heartbeat_timeout seconds; at once if it was
  process 0). A preempted run is no failure: every process stops at the
  same step and meets the barrier. One process: a no-op."""
  from zoo.training.preemption import Preempted
  try:
    yield
  except Preempted:
    raise
  except BaseException as e:
    if jax.process_count() == 1:
      raise
    lost = _collective_failed(e)
    status = (2 if isinstance(e, ZooError) or lost else
              130 if isinstance(e, KeyboardInterrupt) else
              e.code if isinstance(e, SystemExit) and _is_int(e.code) else 1)
    # atexit runs last-registered first: this runs before JAX's shutdown.
    atexit.register(_skip_shutdown_barrier, status)
    if lost:
      raise lost from e
    raise


def _collective_failed(e: BaseException) -> PeerLostError | None:
  """What a failed collective (gloo: "Connection reset by peer"), here or
  wrapped in a failed checkpoint save, means in a job: a lost process."""
  while e is not None and not isinstance(e, jax.errors.JaxRuntimeError):
    e = e.__cause__ or e.__context__
  reason = (str(e).strip().splitlines() or [""])[0][:200] if e else ""
  if not any(w in reason for w in _PEER_WORDS):
    return None  # a runtime error of its own (out of memory, ...)
  return PeerLostError(
      f"a collective with the other processes failed ({reason}): another "
      "process of the job was lost or stopped; see its log, then restart the "
      "whole job with the same commands, which resumes from the last "
      "checkpoint.")


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               local_device_ids=None, *,
               timeout: float = DEFAULT_INIT_TIMEOUT_S,
               heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT_S) -> bool:
  """Joins the multi-process job; True if this is one.

  Named as `jax.distributed.initialize` names them. CPU processes talk
  through gloo collectives. Bad flags raise DistributedError before anything
  starts; if the processes have not all met after `timeout` seconds, the
  process prints a PeerTimeoutError and exits with status 2.
  `heartbeat_timeout`: JAX's heartbeat_timeout_seconds, after which JAX
  ends the other processes of a job that lost one.
  """
  check_flags(coordinator_address, num_processes, process_id, timeout,
              heartbeat_timeout)
  explicit = coordinator_address is not None
  if not explicit and not any(k in os.environ for k in _CLUSTER_ENV):
    return False
  # CPU processes need a collectives backend; it does not affect GPUs/TPUs.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(initialization_timeout=min(math.ceil(timeout) + _JAX_GRACE_S,
                                           _JAX_MAX_S),
                heartbeat_timeout_seconds=min(math.ceil(heartbeat_timeout),
                                              _JAX_MAX_S))
  if explicit:
    if process_id == 0 and num_processes > 1:
      _check_port_free(coordinator_address)
    print(f"zoo: waiting for {num_processes} processes at "
          f"{coordinator_address} (this is process {process_id}; timeout "
          f"{timeout:g} s)", file=sys.stderr, flush=True)
    error = _timeout_error(coordinator_address, num_processes, process_id,
                           timeout)
    kwargs.update(coordinator_address=coordinator_address,
                  num_processes=num_processes, process_id=process_id,
                  local_device_ids=local_device_ids)
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
    jax.distributed.initialize(**kwargs)
  return True
