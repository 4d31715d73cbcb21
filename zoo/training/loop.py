"""The one training loop for every model.

config -> checked run (data, strategy, state) -> workdir owned by this run ->
resume -> epochs of compiled steps (epoch.py) -> evaluation, checkpoints,
metrics (writer.py) -> result. The loop never knows which model it runs; all
of that is in the entry. Each part has its own file: run.py (prepare,
checkpoints), epoch.py (steps), writer.py (progress and files),
preemption.py (SIGTERM), workdir.py (the lock and safe writes).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from typing import Any

import jax

from zoo import registry
from zoo.training import compile_cache, host_memory
from zoo.training import run as run_lib
from zoo.training.epoch import EpochSums, NonFiniteError, StepRunner, choose_loop
from zoo.training.evaluate import Evaluator
from zoo.fingerprint import params_sha256
from zoo.training.state import eval_params
from zoo.training.preemption import PREEMPTED_EXIT_CODE, Preempted, Preemption
from zoo.training.workdir import Workdir
from zoo.training.writer import RunWriter, progress_mode

__all__ = ["train", "TrainResult", "NonFiniteError", "Preempted",
           "PREEMPTED_EXIT_CODE", "choose_loop"]

# Keyword arguments of train() that are not config keys.
RUN_OPTIONS = ("workdir", "data_dir", "strategy", "devices", "progress",
               "resume", "data", "test_data", "num_classes", "class_names")


@dataclasses.dataclass
class TrainResult:
  """What `zoo.train` returns."""
  params: Any
  model_state: Any
  history: list[dict[str, Any]]
  result: dict[str, Any]
  entry: registry.ModelEntry


def train(name_or_entry, *, workdir: str | os.PathLike | None = None,
          data_dir: str | None = None, strategy: str = "auto",
          devices: int | None = None, progress: bool | str | None = None,
          resume: bool = True, data=None, test_data=None,
          num_classes: int | None = None, class_names=None,
          **overrides) -> TrainResult:
  """Trains a registered model and returns its parameters and metrics.

  `overrides` are config keys, dotted ("optimizer.learning_rate") or bare
  when unambiguous ("epochs", "batch_size", "seed"); they are validated
  before any device work. With a `workdir` (owned by this run while it
  runs), the run writes config.json, metrics.jsonl, result.json,
  learning_curve.png and checkpoints/, and re-running on the same workdir
  resumes from the newest good checkpoint; `resume=False` starts over,
  moving its checkpoints to `previous_checkpoints`. `progress`: "bar" (True), "lines" (one flushed
  line per epoch as it ends) or False; by default a bar on a terminal,
  lines otherwise.

  Your own arrays: `data=(images, labels)`, `test_data=(images, labels)`,
  images uint8 (0..255) or float (0..1) NHWC of the model's input shape,
  integer labels 0..k-1; the head is sized to k = max label + 1 (or
  `num_classes`, or len(`class_names`)); see zoo.data.arrays.
  Fine-tuning: `init_from="pretrained"`, a weights file or a model folder, and
  `trainable="head"` to train only the layer producing the logits.
  Control: `steps=N` instead of epochs, `eval_every=N` steps (rows with
  "eval" true in the history), `ema_decay=0.999` to evaluate and return a
  moving average of the parameters.
  """
  t_start = time.perf_counter()
  mode = progress_mode(progress, sys.stderr.isatty())
  own_data = {"data": data, "test_data": test_data,
              "num_classes": num_classes, "class_names": class_names}
  # Before the process's first compilation and backend: JAX's persistent
  # compilation cache (compile_cache.py) and, on the CPU, glibc keeping
  # XLA's step buffers mapped (host_memory.py; else once the run's platform
  # is known).
  cache_dir = compile_cache.enable()
  host_memory.keep_step_buffers()
  run = run_lib.prepare(name_or_entry, overrides, data_dir=data_dir,
                        strategy=strategy, devices=devices, own_data=own_data)
  host_memory.keep_step_buffers(run.strat.devices[0].platform)
  tcfg = run.config["train"]
  with contextlib.ExitStack() as stack:
    stack.callback(host_memory.release)
    run_dir = (stack.enter_context(Workdir(workdir, jax.process_index()))
               if workdir is not None else None)
    ckpts = stack.enter_context(run_lib.RunCheckpoints(run_dir, run))
    host_state, meta = ckpts.restore(resume)
    step, history = int(host_state.step), meta.get("history", [])
    writer = stack.enter_context(RunWriter(
        run_dir, run.entry.name, mode, total_steps=run.total_steps, step=step))
    if meta:
      writer.resumed(step, run.total_steps, ckpts.last)
    runner = StepRunner(run.entry, run.tx, run.strat, run.train_split,
                        host_state, seed=tcfg["seed"],
                        batch=tcfg["batch_size"], loop=tcfg["loop"])
    evaluator = Evaluator(run.entry, run.test_split.images,
                          run.test_split.labels, tcfg["eval_batch_size"],
                          strategy=run.strat)
    preempt = stack.enter_context(Preemption(step))
    if preempt.requested and step:  # SIGTERM while a resumed run loaded
      raise Preempted.saved(step, ckpts.last, preempt.signum)
    trained = EpochSums()  # seconds and images of this invocation
    evaluate = host_memory.between_releases(
        lambda state: evaluator(eval_params(state), state.model_state))
    while step < run.total_steps:
      epoch, step, sums = _run_epoch(run, runner, ckpts, writer, preempt,
                                     history, meta, step, evaluate, t_start)
      trained.seconds += sums.seconds
      trained.images += sums.images
      state = runner.host_state()
      history.append(_epoch_row(epoch, step, sums, evaluate(state),
                                time.perf_counter() - t_start))
      writer.epoch(history, ckpts.last)
      if (step >= run.total_steps or preempt.requested
          or run.is_checkpoint_step(step)):
        ckpts.save(state, history, None)
      if preempt.requested and step < run.total_steps:
        raise Preempted.saved(step, ckpts.last, preempt.signum)
    state = runner.host_state()
    result = _result(run, state, evaluate(state), trained, runner, t_start,
                     cache_dir)
    writer.result(result, history, ckpts.last, trained=bool(trained.images))
  return TrainResult(params=eval_params(state), model_state=state.model_state,
                     history=history, result=result, entry=run.entry)


def _run_epoch(run, runner: StepRunner, ckpts, writer, preempt, history,
               meta, step: int, evaluate, t_start: float
               ) -> tuple[int, int, EpochSums]:
  """Runs the rest of the epoch that global `step` is in (or up to the last
  step), chunk by chunk (a chunk ends at a checkpoint or evaluation step or
  the epoch's end), evaluating and saving mid-epoch; returns (epoch, the
  step it ended at, its running sums). Raises NonFiniteError at a
  non-finite step, Preempted after a SIGTERM save."""
  epoch, offset = divmod(step, run.steps_per_epoch)
  sums = EpochSums.resumed(meta, step) if offset else EpochSums()
  while offset < run.steps_per_epoch and step < run.total_steps:
    at = step
    chunk = runner.run(epoch, offset, run.chunk_end(step), preempt,
                       lambda done, *m: writer.steps(at + done, *m))
    sums.add(chunk)
    offset, step = offset + chunk.steps, step + chunk.steps
    writer.steps(step, chunk.losses[-1], chunk.accuracies[-1],
                 chunk.images / max(chunk.seconds, 1e-9))
    runner.check_finite(ckpts.last)
    if run.is_eval_step(step) and chunk.steps:
      history.append(_eval_row(run, step, evaluate(runner.host_state()),
                               time.perf_counter() - t_start))
      writer.evaluated(history, ckpts.last)
    # Mid-epoch saves here; the epoch's (and the last step's) own is after
    # its evaluation.
    if (offset < run.steps_per_epoch and step < run.total_steps
        and (preempt.requested or run.is_checkpoint_step(step))):
      ckpts.save(runner.host_state(), history, sums.partial())
      if preempt.requested:
        raise Preempted.saved(step, ckpts.last, preempt.signum)
  return epoch, step, sums


def _epoch_row(epoch: int, step: int, sums: EpochSums, ev: dict[str, Any],
               wall_seconds: float) -> dict[str, Any]:
  """One metrics.jsonl row."""
  return {"epoch": epoch + 1, "step": step,
          "train_loss": sums.loss / max(sums.steps, 1),
          "train_accuracy": sums.accuracy / max(sums.steps, 1),
          "test_loss": ev["loss"], "test_accuracy": ev["accuracy"],
          "images_per_second": sums.images / max(sums.seconds, 1e-9),
          "seconds": sums.seconds, "wall_seconds": wall_seconds}


def _eval_row(run, step: int, ev: dict[str, Any],
              wall_seconds: float) -> dict[str, Any]:
  """A metrics.jsonl row of an evaluation between epoch ends
  (train.eval_every): "eval" true, no train metrics."""
  return {"eval": True, "epoch": round(step / run.steps_per_epoch, 4),
          "step": step, "test_loss": ev["loss"],
          "test_accuracy": ev["accuracy"], "wall_seconds": wall_seconds}


def _result(run, state, final: dict[str, Any], trained: EpochSums,
            runner: StepRunner, t_start: float,
            cache_dir: str | None) -> dict[str, Any]:
  """result.json: the final evaluation, timings, layout and fingerprint."""
  strat = run.strat
  return {
      "model": run.entry.name,
      "test_accuracy": final["accuracy"],
      "test_loss": final["loss"],
      "per_class_accuracy": final["per_class_accuracy"],
      "test_examples": final["examples"],
      "epochs": (round(int(state.step) / run.steps_per_epoch, 4)
                 if run.config["train"]["steps"]
                 else run.config["train"]["epochs"]),
      "steps": int(state.step),
      "train_images_per_second": (trained.images / trained.seconds
                                  if trained.seconds else None),
      "compile_seconds": runner.compile_seconds,
      "wall_seconds": time.perf_counter() - t_start,
      "devices": strat.num_devices,
      "processes": jax.process_count(),
      "strategy": strat.name,
      "loop": runner.loop,
      "device_kind": strat.devices[0].device_kind,
      "platform": strat.devices[0].platform,
      "host_malloc": host_memory.state(),
      "compilation_cache": cache_dir,
      # Of the parameters evaluated and returned (the average, with EMA).
      "params_sha256": params_sha256(eval_params(state)),
      "skipped_updates": int(state.skipped),
      "config": run.config,
      "versions": run_lib.versions(),
  }

