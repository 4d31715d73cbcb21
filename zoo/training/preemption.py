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
  """Turns SIGTERM into a stop at a step boundary; `check(steps)` is called
  after every step (Python loop) or every chunk of `steps` steps (scan
  loop).

  One process: a SIGTERM handler sets a flag. Several processes
  (jax.distributed): hosts may get SIGTERM at different steps, and one that
  stopped alone would hang the others in their next collective, so the
  decision comes from JAX's preemption service instead, which hears SIGTERM
  itself and makes every host stop at the same sync point
  (`multihost_utils.reached_preemption_sync_point`). That service keeps one
  call counter per process, sets the sync point to the fastest host's last
  counter + 1 and answers True only at that exact counter; orbax's
  CheckpointManager asks it too, with the training step, at every save. So
  the counter zoo gives is the global step as well, and a chunk asks once
  for each of its steps: every host walks the same counters in the same
  chunks and stops after the chunk holding the sync point; a notice before
  the loop is heard on entry. (A private call counter was wrong: orbax's
  step numbers overwrote it, the sync point landed on a counter zoo had
  passed, and the SIGTERM was lost.) Without that
  service (jax_enable_preemption_service=False) SIGTERM keeps its default
  action and the run resumes from its last periodic checkpoint.
  """

  def __init__(self, step: int = 0):
    self.requested = False
    self._old = None
    self._multihost = jax.process_count() > 1
    self._step = step  # the global step reached (the service's counter)
    self._available = True

  def __enter__(self):
    if self._multihost:
      # The preemption service handles SIGTERM. A notice that came while
      # this process was loading set the sync point at most at the start
      # step (every host's counter was lower), so ask every counter up to
      # it (about 0.1 us each): then every host hears it here, or every
      # host at its first chunk. A resumed run stops before training.
      self._ask(min(self._step, 1), self._step)
      return self
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._old = None
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def check(self, steps: int = 1) -> bool:
    """True once the run should save and stop (the same on every host);
    `steps`: how many steps were done since the last call."""
    if self._multihost:
      self._step += steps
      self._ask(self._step - steps + 1, self._step)
    return self.requested

  def _ask(self, first: int, last: int) -> None:
    """Asks the service about counters first..last, in order."""
    from jax.experimental import multihost_utils
    for counter in range(first, last + 1):
      if not self._available:
        return
      try:
        if multihost_utils.reached_preemption_sync_point(counter):
          self.requested = True
      except Exception as e:  # pylint: disable=broad-except
        self._available = False  # unavailable: stop asking
        log.warning("multi-host preemption sync is unavailable (%s); on "
                    "SIGTERM the run resumes from its last checkpoint.", e)

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
