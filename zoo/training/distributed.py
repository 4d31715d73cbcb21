"""Multi-host start-up through JAX's own runtime (`jax.distributed`).

Must run before anything touches a device. With explicit flags it connects
to the coordinator; without them it lets JAX auto-detect TPU pods and SLURM
clusters; on a single machine with no cluster it does nothing. It says on
stderr what it waits for, and gives up after a bounded time. Process 0 runs
JAX's coordination service in a companion process (zoo/training/coordinator.py)
so that the others can report its loss (zoo.training.peers) instead of
aborting with a C++ stack trace.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import jax

from zoo.errors import DistributedError, PeerTimeoutError

_CLUSTER_ENV = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                "OMPI_COMM_WORLD_SIZE")
DEFAULT_INIT_TIMEOUT_S = 60.0
DEFAULT_PEER_TIMEOUT_S = 60.0
# JAX's own deadlines (start-up, heartbeats) are set later than ours, so that
# ours speak first: JAX's end the process with a C++ stack trace instead of
# an error message.
_JAX_GRACE_S = 30
_JAX_MAX_S = 2**31 - 1  # JAX takes whole seconds as a C int
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
                peer_timeout: float = DEFAULT_PEER_TIMEOUT_S) -> None:
  """Raises DistributedError unless the multi-host flags are all given and
  consistent, or none is; cheap, so callers check before any other work."""
  flags = {"--coordinator-address": coordinator_address,
           "--num-processes": num_processes, "--process-id": process_id}
  missing = [f for f, v in flags.items() if v is None]
  _check_seconds("--init-timeout", timeout, DEFAULT_INIT_TIMEOUT_S)
  _check_seconds("--peer-timeout", peer_timeout, DEFAULT_PEER_TIMEOUT_S)
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


_exiting = threading.Lock()


def exit_now(error: Exception, status: int, linger: float = 0.0) -> None:
  """Prints `error` as one `zoo: error:` line and ends the process at once
  with `status`, without unwinding: the main thread may be stuck in a call
  into JAX that never returns. Only the first caller speaks. `linger`: how
  long process 0's coordination service (if this is process 0) keeps
  serving, so that the others can still tell who was lost."""
  if not _exiting.acquire(blocking=False):
    threading.Event().wait()  # another thread is ending the process
  with contextlib.suppress(Exception):
    sys.stdout.flush()
  with contextlib.suppress(Exception):
    print(f"zoo: error: {error}", file=sys.stderr, flush=True)
  if _companion is not None:
    _companion.linger(linger)
  os._exit(status)


@contextlib.contextmanager
def _deadline(seconds: float, error: Exception, status: int = 2,
              linger: float = 0.0):
  """Runs the body; if it is still running after `seconds`, ends the process
  with `error` and `status` (exit_now). A process cannot carry on instead:
  JAX never gives up a connect or a call to a dead peer short of aborting."""
  timer = threading.Timer(min(seconds, threading.TIMEOUT_MAX), exit_now,
                          (error, status, linger))
  timer.daemon = True
  timer.start()
  try:
    yield
  finally:
    timer.cancel()


class _Companion:
  """Process 0's coordination service, run by zoo/training/coordinator.py in a
  process of its own; stands in for JAX's service object (`shutdown`)."""

  def __init__(self, proc: subprocess.Popen):
    self.proc = proc

  def linger(self, seconds: float) -> None:
    """How long the service goes on once this process is gone."""
    with contextlib.suppress(OSError, ValueError):
      self.proc.stdin.write(f"linger {seconds:g}\n")
      self.proc.stdin.flush()

  def shutdown(self) -> None:
    """Stops the service now (JAX calls it after its shutdown barrier)."""
    self.linger(0)
    with contextlib.suppress(OSError, ValueError):
      self.proc.stdin.close()
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()


_companion: _Companion | None = None


def _port_in_use(bind_address: str) -> bool:
  """Whether something listens on the port JAX's service binds. gRPC shares
  ports (SO_REUSEPORT): a second service on the port of one still running
  would start silently and split the processes between the two."""
  try:
    host, port = parse_address(bind_address)
  except DistributedError:
    return False  # gRPC will say what is wrong with it
  host = host.strip("[]")
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  dual = host == "::" and socket.has_dualstack_ipv6()
  try:
    with socket.create_server((host, port), family=family,
                              dualstack_ipv6=dual):
      return False
  except OSError as e:
    return e.errno == errno.EADDRINUSE


def _service_factory(original, linger: float):
  """A stand-in for jaxlib's `get_distributed_runtime_service` that runs the
  service in a companion process; after JAX has started (`up`), a process 0
  that vanishes leaves it serving `linger` seconds more."""
  def start(address, num_processes, **kwargs):
    global _companion
    if num_processes == 1:  # nobody else to report its loss
      return original(address, num_processes, **kwargs)
    _, port = parse_address(address)
    if _port_in_use(address):
      raise DistributedError(
          f"process 0 cannot serve the job on port {port}: it is in use on "
          "this host, by another program or by the coordinator of a run "
          "whose process 0 was lost (it serves on for 1.5 x --peer-timeout "
          "+ 5 s, so that the other processes can report the loss): wait "
          "and run again, or give another port in --coordinator-address.")
    script = Path(__file__).with_name("coordinator.py")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import runpy, sys; sys.argv = sys.argv[1:]; "
         "runpy.run_path(sys.argv[0], run_name='__main__')", str(script),
         address, str(num_processes), json.dumps(kwargs)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    answer = proc.stdout.readline().strip()
    proc.stdout.close()
    if answer != "ready":
      proc.kill()
      proc.wait()
      raise DistributedError(
          f"process 0 could not start JAX's coordination service on "
          f"{address}: {answer.removeprefix('error ') or 'it exited'}.")
    _companion = _Companion(proc)
    return _companion
  return start


@contextlib.contextmanager
def _service_apart(linger: float):
  """Within the body, JAX starts process 0's coordination service in a
  companion process; left as is where this jaxlib lacks the hook."""
  from jax._src.lib import _jax
  original = getattr(_jax, "get_distributed_runtime_service", None)
  if original is None:
    yield
    return
  _jax.get_distributed_runtime_service = _service_factory(original, linger)
  try:
    yield
  finally:
    _jax.get_distributed_runtime_service = original
  if _companion is not None:
    _companion.linger(linger)


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               local_device_ids=None, *,
               timeout: float = DEFAULT_INIT_TIMEOUT_S,
               peer_timeout: float = DEFAULT_PEER_TIMEOUT_S) -> bool:
  """Joins the multi-process job; True if this is one.

  Named as `jax.distributed.initialize` names them. CPU processes talk
  through gloo collectives. Bad flags raise DistributedError before anything
  starts; if the processes have not all met after `timeout` seconds, the
  process prints a PeerTimeoutError and exits with status 2. `peer_timeout`
  is the time after which zoo.training.peers reports a silent process as lost;
  JAX's own heartbeat deadline is set later, so that zoo speaks first.
  """
  check_flags(coordinator_address, num_processes, process_id, timeout,
              peer_timeout)
  explicit = coordinator_address is not None
  if not explicit and not any(k in os.environ for k in _CLUSTER_ENV):
    return False
  # CPU processes need a collectives backend; it does not affect GPUs/TPUs.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax_timeouts = dict(
      initialization_timeout=min(math.ceil(timeout) + _JAX_GRACE_S,
                                 _JAX_MAX_S),
      heartbeat_timeout_seconds=min(math.ceil(peer_timeout) + _JAX_GRACE_S,
                                    _JAX_MAX_S))
  # After process 0 is lost its service serves on until the others have
  # seen its heartbeat stop: peer_timeout plus two heartbeats (at most a
  # quarter of it each, see zoo.training.peers) and a margin.
  linger = 1.5 * peer_timeout + 5
  if explicit:
    print(f"zoo: waiting for {num_processes} processes at "
          f"{coordinator_address} (this is process {process_id}; timeout "
          f"{timeout:g} s)", file=sys.stderr, flush=True)
    error = _timeout_error(coordinator_address, num_processes, process_id,
                           timeout)
    with _deadline(timeout, error), _service_apart(linger):
      jax.distributed.initialize(coordinator_address=coordinator_address,
                                 num_processes=num_processes,
                                 process_id=process_id,
                                 local_device_ids=local_device_ids,
                                 **jax_timeouts)
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
    with _deadline(timeout, error), _service_apart(linger):
      jax.distributed.initialize(**jax_timeouts)
  return True
