"""Preparing a run: everything checked before anything is written, then the
run's checkpoints (restore at start, refusing another config; save with the
loop's bookkeeping)."""
from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from zoo import config as config_lib
from zoo import data, registry
from zoo.data import arrays
from zoo.errors import ConfigError, ZooError
from zoo.training import checkpoint as ckpt_lib
from zoo.training import strategies
from zoo.fingerprint import params_sha256
from zoo.training.optim import optimizer
from zoo.training.state import (TrainState, check_weights, head_modules,
                                init_state, init_weights)
from zoo.training.workdir import Workdir, WorkdirError, fs_errors

log = logging.getLogger("zoo.train")


@dataclasses.dataclass
class Run:
  """A checked run: its entry, data on the host, strategy, optimizer and
  initial state (on the host), and its step arithmetic."""
  entry: registry.ModelEntry
  strat: strategies.Strategy
  train_split: Any
  test_split: Any
  tx: Any
  initial_state: TrainState
  steps_per_epoch: int
  total_steps: int

  @property
  def config(self) -> dict[str, Any]:
    return self.entry.config

  def chunk_end(self, step: int) -> int:
    """Where the chunk starting at global `step` ends, as an offset in its
    epoch: the next checkpoint or evaluation step, the last step, or the
    end of the epoch."""
    epoch_start = step // self.steps_per_epoch * self.steps_per_epoch
    end = min(epoch_start + self.steps_per_epoch, self.total_steps)
    for key in ("checkpoint_every", "eval_every"):
      every = self.config["train"][key]
      if every:
        end = min(end, (step // every + 1) * every)
    return end - epoch_start

  def is_checkpoint_step(self, step: int) -> bool:
    every = self.config["train"]["checkpoint_every"]
    return bool(every) and step % every == 0

  def is_eval_step(self, step: int) -> bool:
    """A step that ends mid-epoch with an evaluation (train.eval_every)."""
    every = self.config["train"]["eval_every"]
    return (bool(every) and step % every == 0 and step < self.total_steps
            and step % self.steps_per_epoch != 0)


def prepare(name_or_entry, overrides: dict[str, Any], *, data_dir=None,
            strategy: str = "auto", devices: int | None = None,
            own_data: dict[str, Any] | None = None) -> Run:
  """Resolves and validates the config, loads (and verifies) the data,
  picks the strategy and builds the initial state; writes nothing.

  `own_data`: train()'s data, test_data, num_classes and class_names, for a
  run on your own arrays (zoo.data.arrays) instead of the config's dataset."""
  entry = (registry.get(name_or_entry) if isinstance(name_or_entry, str)
           else name_or_entry)
  if overrides:
    entry = registry.with_config(entry, overrides)
  # The weights to start from, if any, are read (and checked) first.
  weights = init_weights(entry) if entry.config["train"]["init_from"] else None
  entry, train_split, test_split = load_data(entry, own_data, data_dir)
  if weights is not None:
    check_weights(entry, weights)
  cfg = entry.config
  tcfg = cfg["train"]
  strat = strategies.make(strategy, devices)
  batch = tcfg["batch_size"]
  strat.check_batch(batch)
  n_train = len(train_split.labels)
  steps_per_epoch = n_train // batch
  if steps_per_epoch == 0:
    raise ZooError(f"batch size {batch} exceeds the {n_train} training "
                   "examples; lower --batch-size.")
  total_steps = tcfg["steps"] or tcfg["epochs"] * steps_per_epoch
  head = head_modules(entry) if tcfg["trainable"] == "head" else frozenset()
  tx = optimizer(cfg, total_steps, head)
  state = jax.device_get(init_state(entry, tx, tcfg["seed"], weights))
  return Run(entry, strat, train_split, test_split, tx, state,
             steps_per_epoch, total_steps)


def load_data(entry: registry.ModelEntry, own_data: dict[str, Any] | None,
              data_dir=None):
  """(entry, train Split, test Split): the config's dataset, or your own
  arrays (checked, with the entry resized to their classes: dataset
  "custom", see zoo.data.arrays)."""
  if own_data is not None and (own_data.get("data") is not None or
                               own_data.get("test_data") is not None):
    train_split, test_split, custom = arrays.splits(
        own_data.get("data"), own_data.get("test_data"), entry.input_shape,
        num_classes=own_data.get("num_classes"),
        class_names=own_data.get("class_names"))
    return registry.with_config(entry, custom), train_split, test_split
  if own_data and any(v is not None for v in own_data.values()):
    raise ConfigError("num_classes and class_names describe your own arrays: "
                      "pass them with data=(images, labels) and test_data=.")
  cfg = entry.config
  classes = cfg["data"]["classes"] or None
  train_split = data.load(entry.dataset, cfg["data"]["train_split"],
                          data_dir=data_dir, classes=classes)
  test_split = data.load(entry.dataset, cfg["data"]["test_split"],
                         data_dir=data_dir, classes=classes)
  return entry, train_split, test_split


def versions() -> dict[str, str]:
  import haiku
  import jaxlib
  import optax
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "haiku": haiku.__version__, "optax": optax.__version__,
          "python": sys.version.split()[0]}


# Settings that do not change the trained numbers: a resumed run may differ.
_RESUME_FREE = {("train", "checkpoint_every"), ("train", "keep_checkpoints")}


def config_changes(saved: dict, cfg: dict, prefix=()) -> list[str]:
  """Dotted keys whose values differ between a checkpoint's config and
  this run's (settings in _RESUME_FREE excepted). A key, or a whole
  section, that a checkpoint from an older zoo lacks counts as its default."""
  out = []
  defaults = (config_lib.DEFAULTS if not prefix else
              config_lib.DEFAULTS.get(prefix[0], {}) if len(prefix) == 1
              else {})
  for key in sorted(set(saved) | set(cfg)):
    path = (*prefix, key)
    a, b = saved.get(key, defaults.get(key)), cfg.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += config_changes(a, b, path)
    elif a != b and path not in _RESUME_FREE:
      out.append(".".join(path))
  return out


def same_config_check(workdir: Path, cfg: dict) -> Callable[[dict], None]:
  """A check_meta for restore_latest: refuses a checkpoint of another
  config before its arrays are read (so a changed model size is reported
  as a config change, not as a shape mismatch)."""
  def check(meta: dict) -> None:
    saved = meta.get("config")
    if not isinstance(saved, dict):
      raise ckpt_lib.CheckpointError(
          f"checkpoint step {meta.get('step')} in {workdir} holds no config.")
    changed = config_changes(saved, cfg)
    if changed:
      other = saved.get("name")
      raise ConfigError(
          f"{workdir} holds a run with a different config"
          + (f" (of {other!r})" if other and other != cfg["name"] else "")
          + f" (changed: {', '.join(changed[:5])}); re-run with the same "
          "settings, use a new --workdir, or start over with --fresh "
          "(resume=False), which moves its checkpoints aside.")
  return check


class RunCheckpoints:
  """The checkpoints of a run in `run_dir` (none without one); every
  process takes part in saving and restoring, orbax deciding who writes.
  `last` is the newest good checkpoint on disk, named in error messages."""

  def __init__(self, run_dir: Workdir | None, run: Run):
    self.run_dir, self.run = run_dir, run
    self.last: str | None = None
    self.manager = None
    if run_dir is not None:
      self.manager = ckpt_lib.CheckpointManager(
          run_dir.path / "checkpoints", run.config["train"]["keep_checkpoints"])

  def __enter__(self) -> "RunCheckpoints":
    return self

  def __exit__(self, *exc) -> None:
    if self.manager is not None:
      self.manager.close()

  def restore(self, resume: bool) -> tuple[TrainState, dict[str, Any]]:
    """(state, checkpoint meta) to start from: the newest good checkpoint
    of the same config, or the initial state and {} (resume=False: after
    moving the old checkpoints aside). Then, the config being accepted,
    config.json is written."""
    state, meta = self.run.initial_state, {}
    if self.manager is None:
      return state, meta
    if not resume:
      self.manager.move_all_aside()
    check_shared_workdir(self.run_dir.path)
    agree_on_checkpoints(self.manager)
    restored = self.manager.restore_latest(
        state, check_meta=same_config_check(self.run_dir.path,
                                            self.run.config))
    if restored:
      state, meta = restored
      self.last = str(self.manager.path(int(meta["step"])))
      log.info("resumed from step %d", int(state.step))
      if meta.get("layout", self.layout()) != self.layout():
        log.warning(
            "resuming on %s from a checkpoint written on %s: the state is "
            "replicated, so this works, but the result then matches an "
            "uninterrupted run only to float tolerance (reductions are "
            "ordered differently), not bit for bit.",
            _layout_text(self.layout()), _layout_text(meta["layout"]))
    if jax.process_index() == 0:
      self.run_dir.write_json("config.json", self.run.config)
    return state, meta

  def layout(self) -> dict[str, int]:
    """Devices and processes the run trains on (bitwise resume needs the
    same)."""
    return {"devices": self.run.strat.num_devices,
            "processes": jax.process_count()}

  def save(self, state: TrainState, history: list[dict[str, Any]],
           partial: dict[str, Any] | None) -> None:
    """Saves `state` (host copy) with the run's history and, mid-epoch, the
    epoch's running sums; sets `last`. Called by every process."""
    if self.manager is None:
      return
    self.run_dir.ensure_held()
    step = int(state.step)
    spe = self.run.steps_per_epoch
    meta = {"config": self.run.config, "history": history,
            "epoch": step // spe, "step_in_epoch": step % spe,
            # Running sums of the unfinished epoch, so that a resumed run
            # reports the same epoch train loss/accuracy.
            "epoch_partial": partial if step % spe else None,
            "params_sha256": params_sha256(state.params),
            "layout": self.layout(),
            "versions": versions()}
    after = (f"The last good checkpoint ({self.last}) is intact; fix that "
             "and re-run the same command to resume." if self.last
             else "No checkpoint was written yet.")
    what = f"save checkpoint step {step} in {self.manager.directory}"
    with fs_errors(what, after):
      try:
        self.last = str(self.manager.save(step, state, meta))
      except (ZooError, OSError):
        raise
      except Exception as e:  # orbax/tensorstore wrap I/O faults (ValueError)
        raise WorkdirError(f"could not {what}: "
                           f"{ckpt_lib._first_line(e)}. {after}") from e


def _layout_text(layout: dict[str, int]) -> str:
  return (f"{layout.get('devices')} device(s) in "
          f"{layout.get('processes')} process(es)")


def check_shared_workdir(directory: Path) -> None:
  """With several processes, the workdir must be one directory on storage
  they all share (orbax has each checkpoint written once, for all): process
  0 writes a marker there, and every process must see it. Raises one
  ZooError, on every process, naming those that cannot, before anything is
  restored or saved."""
  if jax.process_count() == 1:
    return
  import secrets
  from jax.experimental import multihost_utils
  token = multihost_utils.broadcast_one_to_all(
      np.frombuffer(secrets.token_bytes(8), np.uint8))
  marker = directory / f".zoo-shared-{bytes(np.asarray(token)).hex()}"
  if jax.process_index() == 0:
    with fs_errors(f"write to the workdir {directory}"):
      marker.write_text("zoo: a check that every process sees this workdir")
  multihost_utils.sync_global_devices("zoo: shared workdir marker written")
  seen = np.asarray(multihost_utils.process_allgather(
      np.array([marker.exists()]))).reshape(-1)
  multihost_utils.sync_global_devices("zoo: shared workdir marker read")
  if jax.process_index() == 0:
    marker.unlink(missing_ok=True)
  blind = [i for i, ok in enumerate(seen.tolist()) if not ok]
  if blind:
    raise ZooError(
        f"the workdir is not shared: process(es) {', '.join(map(str, blind))} "
        f"of {len(seen)} cannot see what process 0 writes in {directory}. "
        "Every process must name the same directory on storage they all "
        "share (NFS, a GCS bucket mounted with gcsfuse, ...), since orbax "
        "writes each checkpoint once for all of them.")


def agree_on_checkpoints(manager: ckpt_lib.CheckpointManager) -> None:
  """With several processes, all must see the same checkpoints before any
  restores one: a workdir on storage that is not shared (each host its own
  disk) would otherwise resume the hosts from different steps. Raises one
  ZooError, on every process, naming what each one sees."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  steps = manager.steps()
  mine = np.array([len(steps), steps[-1] if steps else -1], np.int64)
  seen = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 2)
  if len({tuple(row) for row in seen.tolist()}) == 1:
    return
  views = "; ".join(
      f"process {i} sees " + (f"{n} up to step {last}" if n else "none")
      for i, (n, last) in enumerate(seen.tolist()))
  raise ZooError(
      f"the processes disagree on the checkpoints in {manager.directory} "
      f"({views}): the workdir must be one directory on storage every "
      "process shares (NFS, GCS, ...), since only one process writes each "
      "checkpoint. Point every process at the same shared --workdir and "
      "re-run them all.")
