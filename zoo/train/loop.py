"""The one training loop for every model.

config -> data on device -> strategy (jit | pmap | mesh) -> epochs of steps
(a Python loop of jitted steps or one lax.scan per chunk, whichever is faster
on this backend) -> evaluation, metrics.jsonl, checkpoints, result.json.
The loop never knows which model it runs; all of that is in the entry.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from zoo import config as config_lib
from zoo import data, registry
from zoo.errors import ConfigError, ZooError
from zoo.train import checkpoint as ckpt_lib
from zoo.train import strategies
from zoo.train.evaluate import Evaluator
from zoo.train.fingerprint import params_sha256
from zoo.train.optim import optimizer
from zoo.train.state import TrainState, init_state
from zoo.train.step import make_train_step
from zoo.train.workdir import Workdir, fs_errors

log = logging.getLogger("zoo.train")

# Keyword arguments of train() that are not config keys.
RUN_OPTIONS = ("workdir", "data_dir", "strategy", "devices", "progress",
               "resume")
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, as schedulers expect


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


class Preempted(ZooError):
  """SIGTERM arrived: the state was saved at a step boundary."""


@dataclasses.dataclass
class TrainResult:
  """What `zoo.train` returns."""
  params: Any
  model_state: Any
  history: list[dict[str, Any]]
  result: dict[str, Any]
  entry: registry.ModelEntry


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


class _Preemption:
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


def _stop_preempted(bar, step: int, checkpoint: str | None):
  """Closes the progress bar and raises Preempted after a SIGTERM save."""
  if bar is not None:
    bar.close()
  raise Preempted(f"SIGTERM: saved step {step} to {checkpoint}; re-run the "
                  "same command to resume.")


def _versions() -> dict[str, str]:
  import haiku
  import jaxlib
  import optax
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "haiku": haiku.__version__, "optax": optax.__version__,
          "python": sys.version.split()[0]}


def epoch_line(row: dict[str, Any]) -> str:
  """One line per finished epoch, for the progress bar and batch-job logs."""
  return (f"epoch {row['epoch']:>3}: train loss {row['train_loss']:.4f}  "
          f"test loss {row['test_loss']:.4f}  test acc "
          f"{row['test_accuracy']:.4f}  {row['images_per_second']:,.0f} img/s")


def _intact(last_ckpt: str | None) -> str:
  return (f"The last good checkpoint ({last_ckpt}) is intact; re-run to "
          "resume." if last_ckpt else "")


_TIMINGS = ("train_images_per_second", "compile_seconds", "wall_seconds")


def _keep_timings(result: dict[str, Any], previous: Path) -> None:
  """A re-run of a finished run trains nothing: it keeps the timings that
  result.json recorded when the training happened (same parameters only)."""
  try:
    old = json.loads(previous.read_text())
  except (OSError, ValueError):
    return
  if (isinstance(old, dict)
      and old.get("params_sha256") == result["params_sha256"]):
    result.update({k: old[k] for k in _TIMINGS if k in old})


# Settings that do not change the trained numbers: a resumed run may differ.
_RESUME_FREE = {("train", "checkpoint_every"), ("train", "keep_checkpoints")}


def _config_changes(saved: dict, cfg: dict, prefix=()) -> list[str]:
  """Dotted keys whose values differ between a checkpoint's config and
  this run's (settings in _RESUME_FREE excepted). A key that a checkpoint
  from an older zoo lacks counts as its default."""
  out = []
  defaults = config_lib.DEFAULTS.get(prefix[0], {}) if len(prefix) == 1 else {}
  for key in sorted(set(saved) | set(cfg)):
    path = (*prefix, key)
    a, b = saved.get(key, defaults.get(key)), cfg.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _config_changes(a, b, path)
    elif a != b and path not in _RESUME_FREE:
      out.append(".".join(path))
  return out


def train(name_or_entry, *, workdir: str | os.PathLike | None = None,
          data_dir: str | None = None, strategy: str = "auto",
          devices: int | None = None, progress: bool | str | None = None,
          resume: bool = True, **overrides) -> TrainResult:
  """Trains a registered model and returns its parameters and metrics.

  `progress`: "bar" (True) a progress bar, "lines" one flushed line per
  epoch as it ends (for batch-job logs), False nothing; by default a bar on
  a terminal, lines otherwise. `resume=False` starts over, deleting the
  workdir's checkpoints.

  `overrides` are config keys, dotted ("optimizer.learning_rate") or bare
  when unambiguous ("epochs", "batch_size", "seed"); they are validated
  before any device work. With a `workdir`, the run writes config.json,
  metrics.jsonl, result.json, learning_curve.png and checkpoints/, and
  re-running on the same workdir resumes from the newest good checkpoint.
  """
  entry = (registry.get(name_or_entry) if isinstance(name_or_entry, str)
           else name_or_entry)
  if overrides:
    entry = registry.with_config(entry, overrides)
  cfg = entry.config
  tcfg = cfg["train"]
  t_start = time.perf_counter()
  if progress is None:
    progress = "bar" if sys.stderr.isatty() else "lines"
  elif progress is True:
    progress = "bar"

  # Everything is checked before anything is written: data, devices, batch.
  classes = cfg["data"]["classes"] or None
  train_split = data.load(entry.dataset, cfg["data"]["train_split"],
                          data_dir=data_dir, classes=classes)
  test_split = data.load(entry.dataset, cfg["data"]["test_split"],
                         data_dir=data_dir, classes=classes)
  strat = strategies.make(strategy, devices)
  batch = tcfg["batch_size"]
  strat.check_batch(batch)
  n_train = len(train_split.labels)
  steps_per_epoch = n_train // batch
  if steps_per_epoch == 0:
    raise ZooError(f"batch size {batch} exceeds the {n_train} training "
                   "examples; lower --batch-size.")
  total_steps = tcfg["epochs"] * steps_per_epoch
  tx = optimizer(cfg, total_steps)
  host_state = jax.device_get(init_state(entry, tx, tcfg["seed"]))

  with contextlib.ExitStack() as stack:
    run_dir = None
    if workdir is not None:  # owned by this run until it returns
      run_dir = stack.enter_context(
          Workdir(workdir, process_index=jax.process_index()))
    return _train(entry, run_dir, progress, strat, train_split, test_split,
                  tx, host_state, resume, t_start)


def _check_same_config(workdir: Path, cfg: dict) -> Callable[[dict], None]:
  """A check_meta for restore_latest: refuses a checkpoint of another
  config (before its arrays are read, so a changed model size is reported
  as a config change, not as a shape mismatch)."""
  def check(meta: dict) -> None:
    saved = meta.get("config")
    if not isinstance(saved, dict):
      raise ckpt_lib.CheckpointError(
          f"checkpoint step {meta.get('step')} in {workdir} holds no config.")
    changed = _config_changes(saved, cfg)
    if changed:
      other = saved.get("name")
      raise ConfigError(
          f"{workdir} holds a run with a different config"
          + (f" (of {other!r})" if other and other != cfg["name"] else "")
          + f" (changed: {', '.join(changed[:5])}); re-run with the same "
          "settings, use a new --workdir, or delete its checkpoints/ to "
          "start over.")
  return check


def _train(entry, run_dir: Workdir | None, progress, strat, train_split,
           test_split, tx, host_state, resume: bool, t_start: float
           ) -> TrainResult:
  """train() once the inputs are checked and the workdir (if any) is ours."""
  cfg = entry.config
  tcfg = cfg["train"]
  is_main = jax.process_index() == 0
  workdir = run_dir.path if run_dir is not None else None
  batch = tcfg["batch_size"]
  n_train = len(train_split.labels)
  steps_per_epoch = n_train // batch
  total_steps = tcfg["epochs"] * steps_per_epoch
  history: list[dict[str, Any]] = []

  manager = None
  resumed_meta: dict[str, Any] = {}
  if run_dir is not None:
    manager = ckpt_lib.CheckpointManager(workdir / "checkpoints",
                                         tcfg["keep_checkpoints"])
    if not resume and manager.steps() and is_main:
      log.warning("resume=False: removing the %d checkpoint(s) in %s to "
                  "start over", len(manager.steps()), manager.directory)
      with fs_errors(f"remove the old checkpoints in {manager.directory}"):
        for old in manager.steps():
          shutil.rmtree(manager.path(old))
    restored = (manager.restore_latest(
        host_state, check_meta=_check_same_config(workdir, cfg))
                if resume else None)
    if restored is not None:
      host_state, meta = restored
      history = meta.get("history", [])
      resumed_meta = meta
      log.info("resumed from step %d", int(host_state.step))
      if progress and is_main:
        print(f"resumed from step {int(host_state.step)} of {total_steps} "
              f"({manager.path(int(meta['step']))})", flush=True)
    if is_main:  # the config is accepted: now the workdir may describe it
      run_dir.write_json("config.json", cfg)

  loop_kind = choose_loop(tcfg["loop"], host_state.params,
                          strat.devices[0].platform)
  train_step = make_train_step(entry, tx, axis_name=strat.axis_name,
                               on_nonfinite=tcfg["on_nonfinite"])
  run_one, run_scan = strat.compile(train_step)
  images, labels = strat.put_data(train_split.images, train_split.labels)
  evaluator = Evaluator(entry, test_split.images, test_split.labels,
                        tcfg["eval_batch_size"], device=strat.devices[0])
  state = strat.put_state(host_state)

  def save(state_host: TrainState) -> str | None:
    if manager is None:
      return None
    step = int(state_host.step)
    meta = {"config": cfg, "history": history, "epoch": step // steps_per_epoch,
            "step_in_epoch": step % steps_per_epoch,
            # Running sums of the unfinished epoch, so that a resumed run
            # reports the same epoch train loss/accuracy.
            "epoch_partial": ({"loss": ep_loss, "accuracy": ep_acc,
                               "steps": ep_steps}
                              if step % steps_per_epoch else None),
            "params_sha256": params_sha256(state_host.params),
            "versions": _versions()}
    if not is_main:
      return None
    with fs_errors(f"save checkpoint step {step} in {manager.directory}",
                   (f"The last good checkpoint ({last_ckpt}) is intact; "
                    "fix that and re-run the same command to resume."
                    if last_ckpt else "No checkpoint was written yet.")):
      return str(manager.save(step, state_host, meta))

  # Compile ahead of time so that compilation is timed on its own.
  t0 = time.perf_counter()
  probe_rows = strat.put_indices(np.zeros((steps_per_epoch, batch), np.int32))
  compiled: dict[Any, Any] = {}
  if loop_kind == "python":
    compiled["one"] = run_one.lower(state, images, labels, probe_rows,
                                    np.int32(0)).compile()
  compile_seconds = time.perf_counter() - t0

  def scan_fn(length: int, rows):
    if length not in compiled:
      t = time.perf_counter()
      compiled[length] = run_scan.lower(state, images, labels, rows).compile()
      nonlocal compile_seconds
      compile_seconds += time.perf_counter() - t
    return compiled[length]

  step = int(host_state.step)
  if step >= total_steps and history:
    log.info("already trained to step %d", step)
  ckpt_every = tcfg["checkpoint_every"]
  # The checkpoint we resumed from is the last good one until we write another.
  last_ckpt = (str(manager.path(int(resumed_meta["step"])))
               if resumed_meta.get("step") is not None else None)
  ep_loss, ep_acc, ep_steps = 0.0, 0.0, 0
  train_seconds = 0.0
  images_seen = 0
  bar = None
  if progress == "bar" and is_main:
    from tqdm.auto import tqdm
    bar = tqdm(total=total_steps, initial=step, unit="step",
               desc=entry.name, dynamic_ncols=True)

  with _Preemption() as preempt:
    while step < total_steps:
      epoch, offset = divmod(step, steps_per_epoch)
      rows_all = data.epoch_indices(tcfg["seed"], epoch, n_train, batch)
      rows_dev = None
      ep_loss, ep_acc, ep_steps = 0.0, 0.0, 0
      partial = resumed_meta.pop("epoch_partial", None)
      if offset and partial and resumed_meta.get("step") == step:
        ep_loss, ep_acc = partial["loss"], partial["accuracy"]
        ep_steps = partial["steps"]
      ep_seconds, ep_images = 0.0, 0
      while offset < steps_per_epoch:
        # A chunk runs to the next checkpoint step or the end of the epoch.
        end = steps_per_epoch
        if ckpt_every:
          end = min(end, (step // ckpt_every + 1) * ckpt_every
                    - epoch * steps_per_epoch)
        metrics_list = []
        if loop_kind == "scan":
          rows = strat.put_indices(rows_all[offset:end])
          run_chunk = scan_fn(end - offset, rows)  # compiled outside timing
        t = time.perf_counter()
        if loop_kind == "scan":
          state, metrics = run_chunk(state, images, labels, rows)
          metrics_list.append(metrics)
          done = end - offset
          preempt.check()  # SIGTERM is seen at chunk ends
        else:
          if rows_dev is None:
            rows_dev = strat.put_indices(rows_all)
          done = 0
          for i in range(offset, end):
            state, metrics = compiled["one"](state, images, labels, rows_dev,
                                             np.int32(i))
            metrics_list.append(metrics)
            done += 1
            if bar is not None and done % 50 == 0:
              m = strat.host_metrics(metrics)
              bar.update(50)
              rate = done * batch / max(time.perf_counter() - t, 1e-9)
              bar.set_postfix(loss=f"{float(m['loss']):.4f}",
                              acc=f"{float(m['accuracy']):.3f}",
                              img_s=f"{rate:,.0f}")
            if preempt.check():  # SIGTERM is seen after every step
              break
        host_metrics = [strat.host_metrics(m) for m in metrics_list]
        elapsed = time.perf_counter() - t
        ep_seconds += elapsed
        ep_images += done * batch
        losses = np.concatenate([np.ravel(m["loss"]) for m in host_metrics])
        accs = np.concatenate([np.ravel(m["accuracy"]) for m in host_metrics])
        # Summed one step at a time, so that the totals do not depend on how
        # steps were split into chunks (a resumed run reports the same).
        for loss_i, acc_i in zip(losses.tolist(), accs.tolist()):
          ep_loss += loss_i
          ep_acc += acc_i
        ep_steps += len(losses)
        offset += done
        step += done
        if bar is not None:
          bar.n = step
          bar.set_postfix(loss=f"{losses[-1]:.4f}", acc=f"{accs[-1]:.3f}",
                          img_s=f"{done * batch / max(elapsed, 1e-9):,.0f}")
          bar.refresh()
        nonfinite = int(strat.host_metrics({"n": state.nonfinite_step})["n"])
        if nonfinite >= 0 and tcfg["on_nonfinite"] == "stop":
          if bar is not None:
            bar.close()
          raise NonFiniteError(nonfinite, last_ckpt)
        # At the end of an epoch the save (with that epoch's metrics) is
        # below, after the evaluation; here only mid-epoch ones.
        at_ckpt = ckpt_every and step % ckpt_every == 0
        if offset < steps_per_epoch and (preempt.requested or at_ckpt):
          state_host = strat.get_state(state)
          last_ckpt = save(state_host) or last_ckpt
          if preempt.requested:
            _stop_preempted(bar, step, last_ckpt)
      train_seconds += ep_seconds
      images_seen += ep_images
      state_host = strat.get_state(state)
      ev = evaluator(state_host.params, state_host.model_state)
      row = {"epoch": epoch + 1, "step": step,
             "train_loss": ep_loss / max(ep_steps, 1),
             "train_accuracy": ep_acc / max(ep_steps, 1),
             "test_loss": ev["loss"], "test_accuracy": ev["accuracy"],
             "images_per_second": ep_images / max(ep_seconds, 1e-9),
             "seconds": ep_seconds,
             "wall_seconds": time.perf_counter() - t_start}
      history.append(row)
      if bar is not None:
        bar.write(epoch_line(row))
      elif progress == "lines" and is_main:  # batch jobs: a line as it ends
        print(epoch_line(row), flush=True)
      if run_dir is not None and is_main:
        # Rewritten whole from history, so a resumed run never repeats a row.
        run_dir.write_text("metrics.jsonl",
                           "".join(json.dumps(h) + "\n" for h in history),
                           _intact(last_ckpt))
      if (step >= total_steps or preempt.requested
          or (ckpt_every and step % ckpt_every == 0)):
        last_ckpt = save(state_host) or last_ckpt
      if preempt.requested and step < total_steps:
        _stop_preempted(bar, step, last_ckpt)
  if bar is not None:
    bar.close()

  state_host = strat.get_state(state)
  final = evaluator(state_host.params, state_host.model_state)
  result = {
      "model": entry.name,
      "test_accuracy": final["accuracy"],
      "test_loss": final["loss"],
      "per_class_accuracy": final["per_class_accuracy"],
      "test_examples": final["examples"],
      "epochs": tcfg["epochs"],
      "steps": int(state_host.step),
      "train_images_per_second": (images_seen / train_seconds
                                  if train_seconds else None),
      "compile_seconds": compile_seconds,
      "wall_seconds": time.perf_counter() - t_start,
      "devices": strat.num_devices,
      "processes": jax.process_count(),
      "strategy": strat.name,
      "loop": loop_kind,
      "device_kind": strat.devices[0].device_kind,
      "platform": strat.devices[0].platform,
      "params_sha256": params_sha256(state_host.params),
      "skipped_updates": int(state_host.skipped),
      "config": cfg,
      "versions": _versions(),
  }
  if run_dir is not None and is_main:
    if not images_seen:  # nothing trained now: keep the run's own timings
      _keep_timings(result, workdir / "result.json")
    run_dir.write_json("result.json", result, _intact(last_ckpt))
    from zoo.train.plots import plot_learning_curve
    with fs_errors(f"write {workdir / 'learning_curve.png'}"):
      plot_learning_curve(history, workdir / "learning_curve.png", entry.name)
  return TrainResult(params=state_host.params,
                     model_state=state_host.model_state, history=history,
                     result=result, entry=entry)
