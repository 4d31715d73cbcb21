"""SIGTERM as a preemption notice: stop at a step boundary, save, exit 143.

With several processes every host must stop at the same step (one that
stopped alone would hang the others in their next collective), so the
decision then comes from JAX's own preemption service.
"""
from __future__ import annotations

import logging
import signal

import jax

from zoo.errors import ZooError

log = logging.getLogger("zoo.train")

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, as schedulers expect


class Preempted(ZooError):
  """SIGTERM arrived: the state was saved at a step boundary."""

  @classmethod
  def saved(cls, step: int, checkpoint: str | None) -> "Preempted":
    return cls(f"SIGTERM: saved step {step} to {checkpoint}; re-run the same "
               "command to resume.")


class Preemption:
  """Turns SIGTERM into a stop at a step boundary; `check()` is called after
  every step (Python loop) or every chunk (scan loop).

  One process: a SIGTERM handler sets a flag. Several processes
  (jax.distributed): hosts may get SIGTERM at different steps, and one that
  stopped alone would hang the others in their next collective, so the
  decision comes from JAX's preemption service instead, which hears SIGTERM
  itself and makes every host stop at the same sync point
  (`multihost_utils.reached_preemption_sync_point`, given the same call
  counter on every host, since all hosts run the same loop). Without that
  service (jax_enable_preemption_service=False) SIGTERM keeps its default
  action and the run resumes from its last periodic checkpoint.
  """

  def __init__(self):
    self.requested = False
    self._old = None
    self._multihost = jax.process_count() > 1
    self._calls = 0

  def __enter__(self):
    if self._multihost:
      return self  # the preemption service handles SIGTERM
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._old = None
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def check(self) -> bool:
    """True once the run should save and stop (the same on every host)."""
    if self._multihost and self._calls >= 0:
      self._calls += 1
      try:
        from jax.experimental import multihost_utils
        if multihost_utils.reached_preemption_sync_point(self._calls):
          self.requested = True
      except Exception as e:  # pylint: disable=broad-except
        self._calls = -1  # unavailable: stop asking
        log.warning("multi-host preemption sync is unavailable (%s); on "
                    "SIGTERM the run resumes from its last checkpoint.", e)
    return self.requested

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
