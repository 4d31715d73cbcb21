"""What a run shows and leaves behind: progress (a bar on a terminal, a
flushed line per epoch for batch-job logs), metrics.jsonl, result.json and
learning_curve.png. Only process 0 prints or writes."""
from __future__ import annotations

import json
from typing import Any

import jax

from zoo.training.workdir import Workdir

# Timings of the invocation that trained; a re-run that trains nothing keeps them.
_TIMINGS = ("train_images_per_second", "compile_seconds", "wall_seconds")


def progress_mode(progress: bool | str | None, is_tty: bool) -> str | bool:
  """"bar", "lines" or False, from train()'s `progress` argument."""
  if progress is None:
    return "bar" if is_tty else "lines"
  if progress is True:
    return "bar"
  if progress not in (False, "bar", "lines"):
    raise ValueError(f"progress must be True, False, 'bar' or 'lines', got "
                     f"{progress!r}")
  return progress


def epoch_line(row: dict[str, Any]) -> str:
  """One line per finished epoch, for the progress bar and batch-job logs."""
  return (f"epoch {row['epoch']:>3}: train loss {row['train_loss']:.4f}  "
          f"test loss {row['test_loss']:.4f}  test acc "
          f"{row['test_accuracy']:.4f}  {row['images_per_second']:,.0f} img/s")


def eval_line(row: dict[str, Any]) -> str:
  """One line per evaluation between epoch ends (train.eval_every)."""
  return (f"step {row['step']:>6}: test loss {row['test_loss']:.4f}  test acc "
          f"{row['test_accuracy']:.4f}")


def intact_note(checkpoint: str | None) -> str:
  """What a failed write adds to its message: which checkpoint survives."""
  return (f"The last good checkpoint ({checkpoint}) is intact; re-run to "
          "resume." if checkpoint else "")


class RunWriter:
  """Progress and files of one run; a context manager (closes the bar)."""

  def __init__(self, run_dir: Workdir | None, name: str, progress, *,
               total_steps: int, step: int):
    self.run_dir = run_dir
    self.name = name
    self.is_main = jax.process_index() == 0
    self.progress = progress if self.is_main else False
    self.bar = None
    if self.progress == "bar":
      from tqdm.auto import tqdm
      self.bar = tqdm(total=total_steps, initial=step, unit="step", desc=name,
                      dynamic_ncols=True)

  def __enter__(self) -> "RunWriter":
    return self

  def __exit__(self, *exc) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None

  def resumed(self, step: int, total_steps: int, checkpoint: str) -> None:
    if self.progress:
      print(f"resumed from step {step} of {total_steps} ({checkpoint})",
            flush=True)

  def steps(self, step: int, loss: float, accuracy: float,
            images_per_second: float) -> None:
    """Moves the bar to `step` (no-op without one)."""
    if self.bar is not None:
      self.bar.n = step
      self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.3f}",
                           img_s=f"{images_per_second:,.0f}")
      self.bar.refresh()

  def epoch(self, history: list[dict[str, Any]], checkpoint: str | None) -> None:
    """Shows the epoch just ended and rewrites metrics.jsonl whole from
    `history` (so a resumed run never repeats a row)."""
    if not self.is_main:
      return
    self._show(epoch_line(history[-1]))
    self._write_metrics(history, checkpoint)

  def evaluated(self, history: list[dict[str, Any]],
                checkpoint: str | None) -> None:
    """Shows the evaluation just made between epoch ends (train.eval_every)
    and rewrites metrics.jsonl."""
    if not self.is_main:
      return
    self._show(eval_line(history[-1]))
    self._write_metrics(history, checkpoint)

  def _show(self, line: str) -> None:
    if self.bar is not None:
      self.bar.write(line)
    elif self.progress == "lines":
      print(line, flush=True)

  def _write_metrics(self, history: list[dict[str, Any]],
                     checkpoint: str | None) -> None:
    if self.run_dir is not None:
      self.run_dir.write_text("metrics.jsonl",
                              "".join(json.dumps(h) + "\n" for h in history),
                              intact_note(checkpoint))

  def result(self, result: dict[str, Any], history: list[dict[str, Any]],
             checkpoint: str | None, trained: bool) -> None:
    """Writes result.json and the learning curve. A re-run that trained
    nothing keeps the timings result.json recorded when it did."""
    if self.run_dir is None or not self.is_main:
      return
    path = self.run_dir.path
    if not trained:
      _keep_timings(result, path / "result.json")
    self.run_dir.write_json("result.json", result, intact_note(checkpoint))
    from zoo.training.plots import learning_curve_png
    png = learning_curve_png(history, self.name)
    if png is not None:
      self.run_dir.write_bytes("learning_curve.png", png,
                               intact_note(checkpoint))


def _keep_timings(result: dict[str, Any], previous) -> None:
  """Copies the timings of `previous` result.json into `result` when both
  describe the same parameters."""
  try:
    old = json.loads(previous.read_text())
  except Exception:  # pylint: disable=broad-except  (missing or unreadable)
    return
  if (isinstance(old, dict)
      and old.get("params_sha256") == result["params_sha256"]):
    result.update({k: old[k] for k in _TIMINGS if k in old})
