"""Peer watchdog: a process of a multi-host job that is lost (its host died,
hung, or the process was killed) makes the others exit with one line and
LOST_EXIT_CODE within about `--peer-timeout` seconds, instead of hanging in
a collective or aborting much later with JAX's C++ stack trace.

Every process bumps its own key in JAX's distributed key-value store every
`heartbeat_interval` seconds from a daemon thread (independent of the main
thread, which may compile, evaluate or write a checkpoint for longer: JAX
releases the GIL meanwhile) and reads everyone's keys. A peer whose key has
not changed for `timeout` seconds is lost; so is process 0, the coordinator,
when the store has not answered for that long. A process that finishes
writes "done" (never reported as lost); one that fails writes "failed", so
that the others stop at once, and skips JAX's shutdown barrier, which they
will never reach.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time

from zoo.errors import PeerLostError, ZooError
from zoo.training import distributed

log = logging.getLogger("zoo.train")

# EX_TEMPFAIL (sysexits.h): a temporary failure, the same command may work
# when re-run, which is what to do once the lost host is back. Distinct from
# 1 (a bug: traceback), 2 (a usage or ZooError, and --init-timeout), 130
# (interrupted), 134 (JAX's abort) and 143 (preempted: 128 + SIGTERM).
LOST_EXIT_CODE = 75
PREFIX = "zoo/peers/"
DONE, FAILED = "done", "failed"


def heartbeat_interval(timeout: float) -> float:
  """Seconds between heartbeats: a quarter of the timeout, at most 5."""
  return min(5.0, timeout / 4)


class Watchdog:
  """Heartbeats of this process, and the verdict on everyone else's."""

  def __init__(self, client, process_id: int, num_processes: int,
               timeout: float):
    self.client = client
    self.process_id = process_id
    self.num_processes = num_processes
    self.timeout = timeout
    self.interval = heartbeat_interval(timeout)
    self.finished = False  # this process wrote "done" or "failed"
    self._beats = 0
    self._lock = threading.Lock()  # one writer of this process's key
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True,
                                    name="zoo-peer-watchdog")

  def start(self) -> "Watchdog":
    self._thread.start()
    return self

  # -- this process --------------------------------------------------------

  def _write(self, value: str) -> None:
    self.client.key_value_set(f"{PREFIX}{self.process_id}", value,
                              allow_overwrite=True)

  def _finish(self, value: str) -> None:
    with self._lock:
      self.finished = True
      with contextlib.suppress(Exception):  # no store: nobody left to tell
        self._write(value)

  def done(self) -> None:
    """This process finished: the others must not report it once it exits.
    The watchdog goes on until every peer is done too; this waits for that
    (bounded), so that no call of the watchdog's into JAX's client is in
    flight while JAX's shutdown tears the client down at exit (which could
    abort the process)."""
    self._finish(DONE)
    self._thread.join(self.timeout + 2 * self.interval + 2)

  def failed(self, status: int) -> None:
    """This process stops with an error: the others stop at once, and this
    one exits with `status` without JAX's shutdown barrier, which the others
    will never reach (it would wait, then abort)."""
    self._finish(FAILED)
    self._stop.set()
    linger = 2 * self.interval + 5  # for the others to read "failed"
    atexit.register(_exit_quietly, status, linger)

  def wait_for_verdict(self) -> None:
    """Gives the watchdog time to find a lost peer (it ends the process if
    it does): an error in the main thread may be the first sign of one."""
    self._stop.wait(self.timeout + 2 * self.interval + 2)

  # -- the others ----------------------------------------------------------

  def _lose(self, message: str) -> None:
    linger = 2 * self.interval + 5  # for the others to see it too
    distributed.exit_now(PeerLostError(message), LOST_EXIT_CODE, linger)

  def _lost(self, peers: list[int], silent_s: float) -> str:
    n = self.num_processes
    who = (f"process {peers[0]} of {n}" if len(peers) == 1 else
           f"processes {', '.join(map(str, peers))} of {n}")
    if peers == [0]:
      who += ", the coordinator"
    return (f"lost {who} (no heartbeat for {silent_s:.0f} s): "
            f"{'its host' if len(peers) == 1 else 'their hosts'} died or "
            "hung. The last good checkpoint is kept; restart every process "
            "with the same command to resume.")

  def _run(self) -> None:
    peers = [p for p in range(self.num_processes) if p != self.process_id]
    start = time.monotonic()
    seen = {p: (None, start) for p in peers}  # last value, when it changed
    done: set[int] = set()
    last_answer = start
    unreachable = PeerLostError(
        f"lost process 0 of {self.num_processes}, the coordinator (the "
        f"job's key-value store did not answer for {self.timeout:g} s): its "
        "host died or hung. The last good checkpoint is kept; restart every "
        "process with the same command to resume.")
    while not self._stop.is_set():
      with distributed._deadline(self.timeout, unreachable, LOST_EXIT_CODE,
                                 2 * self.interval + 5):
        try:
          with self._lock:
            if not self.finished:
              self._beats += 1
              self._write(str(self._beats))
          values = dict(self.client.key_value_dir_get(PREFIX))
        except Exception:  # pylint: disable=broad-except
          values = None  # the store did not answer
      now = time.monotonic()
      if values is None:
        if self.finished:
          return  # the service stops after everyone finished: the normal end
        if now - last_answer > self.timeout:
          self._lose(str(unreachable))
      else:
        last_answer = now
        failed = [p for p in peers if values.get(f"{PREFIX}{p}") == FAILED]
        if failed:
          # The same error may be reaching this process too (a missing
          # dataset): then its own message is the one to show.
          if self._stop.wait(min(self.interval, 2.0)):
            return
          self._lose(
              f"process {failed[0]} of {self.num_processes} stopped with an "
              "error (see its log) and the others cannot go on without it. "
              "The last good checkpoint is kept; fix the error, then restart "
              "every process with the same command to resume.")
        for p in peers:
          value = values.get(f"{PREFIX}{p}")
          if value == DONE:
            done.add(p)
          elif value != seen[p][0]:
            seen[p] = (value, now)
        silent = [p for p in peers if p not in done
                  and now - seen[p][1] > self.timeout]
        if silent:
          self._lose(self._lost(silent, max(now - seen[p][1]
                                            for p in silent)))
        if self.finished and len(done) == len(peers):
          return  # everyone finished
      self._stop.wait(self.interval)


def _runtime_error(e: BaseException) -> bool:
  """Whether `e` comes from JAX's runtime (a failed collective, say), which
  a lost peer can cause; a Python error in zoo cannot."""
  import jax
  kinds = tuple(k for k in (getattr(jax.errors, "JaxRuntimeError", None),)
                if isinstance(k, type))
  return isinstance(e, kinds) or type(e).__name__ in ("JaxRuntimeError",
                                                      "XlaRuntimeError")


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _exit_quietly(status: int, linger: float) -> None:
  """Ends a failed process after its error was printed, before JAX's atexit
  shutdown barrier (registered earlier, so run later)."""
  with contextlib.suppress(Exception):
    sys.stdout.flush()
    sys.stderr.flush()
  if distributed._companion is not None:
    distributed._companion.linger(linger)
  os._exit(status)


def start(timeout: float = distributed.DEFAULT_PEER_TIMEOUT_S
          ) -> Watchdog | None:
  """Starts the watchdog if this is one process of several (after
  distributed.initialize); None otherwise, or where this jax's distributed
  client has no key-value store (then it logs so). Touches no device."""
  try:
    from jax._src import distributed as jax_distributed
    state = jax_distributed.global_state
    client, n = state.client, state.num_processes
  except (ImportError, AttributeError):
    return None
  if client is None or not n or n <= 1:
    return None
  if not all(hasattr(client, m) for m in ("key_value_set",
                                          "key_value_dir_get")):
    log.warning("zoo: the peer watchdog is unavailable with this jax (its "
                "distributed client has no key-value store): a lost process "
                "is found by JAX itself, later and with a stack trace.")
    return None
  return Watchdog(client, state.process_id, n, timeout).start()


@contextlib.contextmanager
def watching(timeout: float = distributed.DEFAULT_PEER_TIMEOUT_S):
  """Watches the peers while the body runs (a no-op in one process). A body
  that returns, or is preempted (every process stops at the same step),
  marks this process done; one that raises marks it failed, after giving
  the watchdog the chance to blame a lost peer for an error from JAX's
  runtime (a collective with a dead peer fails before the peer is found)."""
  from zoo.training.preemption import Preempted
  watchdog = start(timeout)
  if watchdog is None:
    yield None
    return
  try:
    yield watchdog
  except Preempted:
    watchdog.done()
    raise
  except BaseException as e:
    if _runtime_error(e):  # e.g. gloo: "Connection reset by peer"
      watchdog.wait_for_verdict()
    status = (2 if isinstance(e, ZooError) else
              130 if isinstance(e, KeyboardInterrupt) else
              e.code if isinstance(e, SystemExit) and _is_int(e.code) else 1)
    watchdog.failed(status)
    raise
  watchdog.done()
