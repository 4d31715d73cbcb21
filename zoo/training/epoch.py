"""Running the steps of an epoch: compiled ahead of time, as a Python loop of
jitted steps or one `lax.scan` per chunk (whichever is faster here), with the
epoch's running sums and the non-finite stop."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np

from zoo import data
from zoo.errors import ZooError
from zoo.training.step import make_train_step


class NonFiniteError(ZooError, FloatingPointError):
  """Training produced a non-finite loss or gradient."""

  def __init__(self, step: int, checkpoint: str | None):
    self.step = step
    where = (f"the last good checkpoint ({checkpoint}) is untouched"
             if checkpoint else "no checkpoint was written after it")
    super().__init__(
        f"non-finite loss or gradients at step {step}; training stopped and "
        f"{where}. Lower optimizer.learning_rate, or set "
        "train.on_nonfinite=skip to drop such updates.")


def choose_loop(requested: str, params, platform: str) -> str:
  """"scan" or "python": the faster way to run steps here.

  On accelerators one compiled scan per epoch wins (3-10x on an H100 in the
  measurements behind issue #7). On CPU, XLA runs convolutions inside a loop
  body tens of times slower (jax-ml/jax#12868; bench/train_speed.py's plain
  scan column shows it), while the scan speeds up dense models, so CPU scans
  only models without conv kernels (rank-4 weights).
  """
  if requested != "auto":
    return requested
  if platform != "cpu":
    return "scan"
  has_conv = any(np.ndim(x) == 4 for x in jax.tree.leaves(params))
  return "python" if has_conv else "scan"


@dataclasses.dataclass
class EpochSums:
  """Running train loss/accuracy of one epoch, summed one step at a time so
  that the totals do not depend on how steps were split into chunks (a
  resumed run reports the same), and its timing."""
  loss: float = 0.0
  accuracy: float = 0.0
  steps: int = 0
  seconds: float = 0.0
  images: int = 0

  @classmethod
  def resumed(cls, meta: dict[str, Any], step: int) -> "EpochSums":
    """The sums a checkpoint taken mid-epoch at `step` recorded."""
    partial = meta.get("epoch_partial")
    if partial and meta.get("step") == step:
      return cls(partial["loss"], partial["accuracy"], partial["steps"])
    return cls()

  def partial(self) -> dict[str, Any]:
    """What a mid-epoch checkpoint records (see `resumed`)."""
    return {"loss": self.loss, "accuracy": self.accuracy, "steps": self.steps}

  def add(self, chunk: "Chunk") -> None:
    for loss_i, acc_i in zip(chunk.losses.tolist(), chunk.accuracies.tolist()):
      self.loss += loss_i
      self.accuracy += acc_i
    self.steps += len(chunk.losses)
    self.seconds += chunk.seconds
    self.images += chunk.images


@dataclasses.dataclass
class Chunk:
  """What one run of consecutive steps returns (host numpy metrics)."""
  steps: int
  losses: np.ndarray
  accuracies: np.ndarray
  seconds: float
  images: int


class StepRunner:
  """The compiled training step of one run on its strategy, holding the
  placed state; `run(epoch, offset, end)` advances it by those steps."""

  def __init__(self, entry, tx, strat, train_split, host_state, *,
               seed: int, batch: int, loop: str):
    cfg = entry.config["train"]
    self.strat, self.seed, self.batch = strat, seed, batch
    self.on_nonfinite = cfg["on_nonfinite"]
    self.n_train = len(train_split.labels)
    self.steps_per_epoch = self.n_train // batch
    self.loop = choose_loop(loop, host_state.params, strat.devices[0].platform)
    train_step = make_train_step(entry, tx, axis_name=strat.axis_name,
                                 on_nonfinite=self.on_nonfinite)
    self._run_one, self._run_scan = strat.compile(train_step)
    self.images, self.labels = strat.put_data(train_split.images,
                                              train_split.labels)
    self.state = strat.put_state(host_state)
    self._compiled: dict[Any, Any] = {}
    self._rows: tuple[int, np.ndarray, Any] | None = None
    # Compiled ahead of time so that compilation is timed on its own.
    t0 = time.perf_counter()
    if self.loop == "python":
      probe = strat.put_indices(np.zeros((self.steps_per_epoch, batch),
                                         np.int32))
      self._compiled["one"] = self._run_one.lower(
          self.state, self.images, self.labels, probe, np.int32(0)).compile()
    self.compile_seconds = time.perf_counter() - t0

  def host_state(self):
    """One numpy copy of the current state."""
    return self.strat.get_state(self.state)

  def _epoch_rows(self, epoch: int) -> tuple[np.ndarray, Any]:
    """(host, lazily placed) index rows of `epoch`: a function of
    (seed, epoch) only."""
    if self._rows is None or self._rows[0] != epoch:
      rows = data.epoch_indices(self.seed, epoch, self.n_train, self.batch)
      self._rows = (epoch, rows, None)
    return self._rows[1], self._rows[2]

  def _scan_fn(self, rows):
    """The scan compiled for `rows`' shape: one per chunk length (pmap's
    rows lead with the device axis, so the length is not shape[0])."""
    shape = tuple(rows.shape)
    if shape not in self._compiled:
      t = time.perf_counter()
      self._compiled[shape] = self._run_scan.lower(
          self.state, self.images, self.labels, rows).compile()
      self.compile_seconds += time.perf_counter() - t
    return self._compiled[shape]

  def run(self, epoch: int, offset: int, end: int, preempt,
          on_progress: Callable[[int, float, float, float], None]) -> Chunk:
    """Steps offset..end-1 of `epoch` (fewer if SIGTERM arrives in the
    Python loop); `on_progress(steps done, loss, accuracy, images/s)` is
    called every 50 steps there."""
    rows_all, rows_dev = self._epoch_rows(epoch)
    metrics_list = []
    if self.loop == "scan":
      rows = self.strat.put_indices(rows_all[offset:end])
      run_chunk = self._scan_fn(rows)  # compiled outside the timing
      t = time.perf_counter()
      self.state, metrics = run_chunk(self.state, self.images, self.labels,
                                      rows)
      metrics_list.append(metrics)
      done = end - offset
      preempt.check(done)  # SIGTERM is seen at chunk ends
    else:
      if rows_dev is None:
        rows_dev = self.strat.put_indices(rows_all)
        self._rows = (epoch, rows_all, rows_dev)
      t = time.perf_counter()
      done = 0
      for i in range(offset, end):
        self.state, metrics = self._compiled["one"](
            self.state, self.images, self.labels, rows_dev, np.int32(i))
        metrics_list.append(metrics)
        done += 1
        if done % 50 == 0:
          m = self.strat.host_metrics(metrics)
          rate = done * self.batch / max(time.perf_counter() - t, 1e-9)
          on_progress(done, float(m["loss"]), float(m["accuracy"]), rate)
        if preempt.check(1):  # SIGTERM is seen after every step
          break
    host_metrics = [self.strat.host_metrics(m) for m in metrics_list]
    seconds = time.perf_counter() - t
    return Chunk(
        steps=done,
        losses=np.concatenate([np.ravel(m["loss"]) for m in host_metrics]),
        accuracies=np.concatenate([np.ravel(m["accuracy"])
                                   for m in host_metrics]),
        seconds=seconds, images=done * self.batch)

  def check_finite(self, checkpoint: str | None) -> None:
    """Raises NonFiniteError if a step was not finite under the stop
    policy (the state is frozen at the last good step)."""
    n = int(self.strat.host_metrics({"n": self.state.nonfinite_step})["n"])
    if n >= 0 and self.on_nonfinite == "stop":
      raise NonFiniteError(n, checkpoint)
