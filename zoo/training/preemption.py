"""SIGTERM (a preemption notice) and a first Ctrl-C: stop at a step
boundary, save, exit 143 (130 for Ctrl-C); a second Ctrl-C stops at once.

With several processes every host must stop at the same step (one that
stopped alone would hang the others in their next collective), so the
decision then comes from JAX's own preemption service.
"""
from __future__ import annotations

import logging
import signal
import sys

import jax

from zoo.errors import ZooError

log = logging.getLogger("zoo.train")

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, as schedulers expect
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report Ctrl-C


class Preempted(ZooError):
  """SIGTERM or Ctrl-C arrived: the run stopped at a step boundary, saved
  if it has a workdir; `exit_code` is 143 or 130."""
  exit_code = PREEMPTED_EXIT_CODE

  @classmethod
  def saved(cls, step: int, checkpoint: str | None,
            signum: int = signal.SIGTERM) -> "Preempted":
    what = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    e = cls(f"{what}: saved step {step} to {checkpoint}; re-run the same "
            "command to resume." if checkpoint else
            f"{what}: stopped at step {step}; nothing was saved (no "
            "--workdir).")
    if signum == signal.SIGINT:
      e.exit_code = INTERRUPTED_EXIT_CODE
    return e


class Preemption:
  """Turns SIGTERM into a stop at a step boundary; `check(steps)` is called
  after every step (Python loop) or every chunk of `steps` steps (scan).

  One process: a SIGTERM handler sets a flag. Several processes: hosts may
  get SIGTERM at different steps, and one that stopped alone would hang the
  others in their next collective, so JAX's preemption service decides: it
  hears SIGTERM itself and sets a sync point one past the fastest host's
  last step, which `multihost_utils.reached_preemption_sync_point(step)`
  answers True at, on every host. The counter zoo gives is the global step,
  asked once per step (a chunk asks for each of its steps) from here only;
  orbax's CheckpointManager asks with the same step at its saves. Without
  the service (jax_enable_preemption_service=False) SIGTERM keeps its
  default action and the run resumes from its last periodic checkpoint.
  """

  def __init__(self, step: int = 0):
    self.requested = False
    self.signum = signal.SIGTERM  # which signal asked
    self._old = {}
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
    for signum in (signal.SIGTERM, signal.SIGINT):
      # A SIGINT the parent ignores (a background job) stays ignored.
      if signal.getsignal(signum) is signal.SIG_IGN:
        continue
      try:
        self._old[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not the main thread
        break
    return self

  def _handle(self, signum, frame):
    if signum == signal.SIGINT:
      if self.requested:  # a second Ctrl-C: stop now, unsaved
        raise KeyboardInterrupt
      print("zoo: Ctrl-C: stopping after this step to save; Ctrl-C again "
            "stops at once, unsaved.", file=sys.stderr, flush=True)
    self.requested, self.signum = True, signum

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
    for signum, old in self._old.items():
      signal.signal(signum, old)
