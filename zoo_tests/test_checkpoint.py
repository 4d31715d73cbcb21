"""Checkpoints: contents, atomic writes, keep-K, integrity checks, fallback
past damaged checkpoints, and in-process resume to identical parameters."""
import copy
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import zoo
from zoo import cli, registry
from zoo.errors import ZooError
from zoo.training import checkpoint as ckpt_lib
from zoo import weights
from zoo.training import loop
from zoo.training.fingerprint import params_sha256
from zoo.training.optim import optimizer
from zoo.training.state import init_state

MODEL = "logreg_fashion_mnist"
# 2048 / 128 = 16 steps per epoch, 32 steps in all, a checkpoint every 4.
RUN = dict(epochs=2, batch_size=128, checkpoint_every=4, devices=1,
           progress=False, **{"data.train_split": "train[:2048]",
                              "data.test_split": "test[:500]",
                              "train.loop": "python"})
TIMING = ("images_per_second", "seconds", "wall_seconds")


def _train(workdir, **kw):
  return loop.train(MODEL, workdir=workdir, **{**RUN, **kw})


def _numbers(history):
  return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted run: (workdir, TrainResult)."""
  workdir = tmp_path_factory.mktemp("reference")
  return workdir, _train(workdir)


def _template(result):
  entry = registry.ModelEntry(name=MODEL, config=result["config"])
  tx = optimizer(entry.config, result["steps"])
  return entry, jax.device_get(init_state(entry, tx,
                                          entry.config["train"]["seed"]))


def _entries(directory):
  return sorted(p.name for p in Path(directory).iterdir())


# --- what a checkpoint holds ----------------------------------------------

def test_checkpoint_files_pruning_and_contents(reference):
  workdir, out = reference
  ckdir = workdir / "checkpoints"
  # keep_checkpoints=3 (the default): only the newest three, no temp dirs.
  assert _entries(ckdir) == ["step_000000024", "step_000000028",
                             "step_000000032"]
  manager = ckpt_lib.CheckpointManager(ckdir, 3)
  for step in manager.steps():
    path = manager.path(step)
    # orbax's step directory: the state, zoo's meta and integrity record.
    assert {"state", "meta", "integrity"} <= set(_entries(path))
    assert not list(path.rglob("*.pkl"))
    manager.verify(step)
    integrity = manager._records[step]
    assert set(integrity) == {"format", "state_sha256", "meta_sha256"}
    meta = manager.read_meta(step)
    # The resolved config and the position in the data order.
    assert meta["config"] == out.result["config"]
    assert meta["step"] == step
    assert (meta["epoch"], meta["step_in_epoch"]) == divmod(step, 16)
    # orbax alone restores it (nested dicts of numpy arrays).
    raw = ocp.StandardCheckpointer().restore(path / "state")
    for part in ("params", "opt_state", "rng", "step", "nonfinite_step",
                 "skipped"):
      assert part in raw, (part, sorted(raw))
    assert int(raw["step"]) == step
  # A mid-epoch checkpoint carries the running sums of its epoch.
  meta28 = manager.read_meta(28)
  assert meta28["epoch_partial"]["steps"] == 12
  assert len(meta28["history"]) == 1
  # Content round-trips: the final checkpoint is the returned state.
  entry, template = _template(out.result)
  state, meta = manager.restore(32, template)
  assert int(state.step) == 32 and meta["history"] == out.history
  assert params_sha256(state.params) == out.result["params_sha256"]
  np.testing.assert_array_equal(state.rng, template.rng)  # PRNG state
  jax.tree.map(np.testing.assert_array_equal, state.params, out.params)
  assert not any(np.issubdtype(np.asarray(x).dtype, np.floating)
                 and not np.all(np.isfinite(x))
                 for x in jax.tree.leaves(state.opt_state))
  # result.json and metrics.jsonl agree with the returned result.
  saved = json.loads((workdir / "result.json").read_text())
  assert saved["params_sha256"] == out.result["params_sha256"]
  rows = [json.loads(l) for l in
          (workdir / "metrics.jsonl").read_text().splitlines()]
  assert rows == out.history


def _tree(seed=0):
  rng = np.random.default_rng(seed)
  return {"w": rng.normal(size=(3, 4)).astype(np.float32),
          "b": (np.arange(4, dtype=np.int32), np.array(7, np.uint32)),
          "h": {"mask": np.array([True, False]),
                "half": np.ones(2, np.float16)}}


def test_manager_round_trip_keep_k_and_replace(tmp_path):
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=2)
  for step in range(1, 6):
    manager.save(step, _tree(step), {"note": step})
  assert manager.steps() == [4, 5]
  assert _entries(tmp_path) == ["step_000000004", "step_000000005"]
  tree, meta = manager.restore(5, _tree())
  assert meta == {"note": 5, "step": 5}
  jax.tree.map(lambda a, b: (np.testing.assert_array_equal(a, b),
                             np.testing.assert_equal(a.dtype, b.dtype)),
               tree, _tree(5))
  # Saving the same step again replaces it (atomically) and leaves no temp.
  manager.save(5, _tree(9), {"note": 9})
  assert manager.restore_latest(_tree())[1]["note"] == 9
  assert _entries(tmp_path) == ["step_000000004", "step_000000005"]
  # A tree that does not fit is refused with the parameter named.
  bad = _tree()
  bad["w"] = np.zeros((4, 3), np.float32)
  with pytest.raises(ckpt_lib.CheckpointError, match=r"\['w'\].*shape"):
    manager.restore(5, bad)


_SAVER = """
import sys
import numpy as np
from zoo.training import checkpoint as ckpt_lib
manager = ckpt_lib.CheckpointManager(sys.argv[1], keep=1000)
tree = {"w": np.arange(1 << 18, dtype=np.float32), "b": np.ones(3, np.int32)}
for step in range(1, 100000):
  tree["w"] += 1
  manager.save(step, tree, {"note": step})
"""


@pytest.mark.parametrize("delay", [0.3, 0.7, 1.3])
def test_sigkill_mid_save_leaves_no_partial_checkpoint(tmp_path, delay):
  """A process saving as fast as it can is SIGKILLed: every checkpoint that
  is visible afterwards restores and verifies, and a new save goes on."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=str(Path(__file__).resolve().parent.parent))
  proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path)],
                          env=env, stderr=subprocess.PIPE)
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=1000)
  try:
    deadline = time.monotonic() + 120
    while len(manager.steps()) < 2 and time.monotonic() < deadline:
      assert proc.poll() is None, proc.stderr.read()
      time.sleep(0.01)
    time.sleep(delay)
  finally:
    proc.kill()
    proc.wait()
  steps = manager.steps()
  assert len(steps) >= 2
  template = {"w": np.zeros(1 << 18, np.float32), "b": np.zeros(3, np.int32)}
  for step in steps:
    tree, meta = manager.restore(step, template)
    assert meta["note"] == step and tree["w"][0] == step
  # Whatever the kill left behind is not a checkpoint, and is cleared.
  fresh = ckpt_lib.CheckpointManager(tmp_path, keep=1000)
  fresh.save(steps[-1] + 1, template, {"note": 0})
  assert fresh.steps() == [*steps, steps[-1] + 1]
  assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]


def test_leftovers_of_a_killed_save_are_ignored_then_removed(tmp_path):
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=3)
  manager.save(1, _tree(), {})
  junk = tmp_path / "step_000000002.orbax-checkpoint-tmp-1234"
  (junk / "state").mkdir(parents=True)
  (junk / "state" / "manifest.ocdbt").write_bytes(b"half")
  assert manager.steps() == [1]
  assert manager.restore_latest(_tree())[1]["step"] == 1
  again = ckpt_lib.CheckpointManager(tmp_path, keep=3)  # the next run
  again.save(2, _tree(), {})
  assert _entries(tmp_path) == ["step_000000001", "step_000000002"]


def _damage(path: Path, how: str) -> None:
  """Damages a checkpoint's array data (the largest file under state/), or
  removes its integrity record or its state."""
  data_files = [p for p in (path / "state").rglob("*") if p.is_file()]
  arrays = max(data_files, key=lambda p: p.stat().st_size)
  if how == "flip":
    data = bytearray(arrays.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
      data[i] ^= 0xFF
    arrays.write_bytes(bytes(data))
  elif how == "truncate":
    data = arrays.read_bytes()
    arrays.write_bytes(data[:len(data) // 3])
  elif how == "no_digest":
    shutil.rmtree(path / "integrity")
  elif how == "no_arrays":
    shutil.rmtree(path / "state")
  else:
    raise ValueError(how)


@pytest.mark.parametrize("how", ["flip", "truncate", "no_digest", "no_arrays"])
def test_damaged_newest_falls_back_with_warning(tmp_path, caplog, how):
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=3)
  manager.save(1, _tree(1), {})
  manager.save(2, _tree(2), {})
  _damage(manager.path(2), how)
  with caplog.at_level(logging.WARNING, logger="zoo.checkpoint"):
    tree, meta = manager.restore_latest(_tree())
  assert meta["step"] == 1
  np.testing.assert_array_equal(tree["w"], _tree(1)["w"])
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "step_000000002" in warnings[0]


def test_no_good_checkpoint_is_a_clear_error(tmp_path, caplog):
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=3)
  assert manager.restore_latest(_tree()) is None  # nothing yet: a fresh run
  manager.save(1, _tree(), {})
  manager.save(2, _tree(), {})
  _damage(manager.path(1), "truncate")
  _damage(manager.path(2), "no_digest")
  with pytest.raises(ckpt_lib.CheckpointError,
                     match="no usable checkpoint in .*start over"):
    manager.restore_latest(_tree())


def test_damaged_newer_checkpoint_is_not_kept_over_good_ones(tmp_path):
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=2)
  manager.save(10, _tree(), {})
  manager.save(20, _tree(), {})
  _damage(manager.path(20), "flip")
  assert manager.restore_latest(_tree())[1]["step"] == 10
  manager.save(15, _tree(), {})  # the resumed run moves on from step 10
  assert manager.steps() == [10, 15]


# --- resume -----------------------------------------------------------------

def test_sigterm_in_process_saves_then_resume_matches(
    reference, tmp_path, sigterm_when_epoch_starts):
  """A real SIGTERM just before epoch 2 starts: the Python loop notices it
  after that epoch's first step, saves there (step 17, mid-chunk and
  mid-epoch) and raises Preempted; re-running resumes to the same numbers."""
  _, ref = reference
  with sigterm_when_epoch_starts(1), pytest.raises(loop.Preempted,
                                                   match="saved step 17 "):
    _train(tmp_path)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
  assert not (tmp_path / "result.json").exists()
  manager = ckpt_lib.CheckpointManager(tmp_path / "checkpoints")
  assert manager.steps() == [12, 16, 17]
  meta = manager.read_meta(17)
  assert (meta["epoch"], meta["step_in_epoch"]) == (1, 1)
  out = _train(tmp_path)
  assert out.result["params_sha256"] == ref.result["params_sha256"]
  assert _numbers(out.history) == _numbers(ref.history)
  assert loop.PREEMPTED_EXIT_CODE == 143


def test_resume_scan_loop_past_damaged_checkpoints(tmp_path, caplog):
  """The default loop (scan for this model on CPU): a finished run whose
  newest checkpoints are damaged or gone resumes from the newest good one
  and ends with the same parameters and metrics."""
  kw = {"train.loop": "auto", "keep_checkpoints": 10}
  full = _train(tmp_path, **kw)
  assert full.result["loop"] == "scan"
  manager = ckpt_lib.CheckpointManager(tmp_path / "checkpoints")
  assert manager.steps() == list(range(4, 33, 4))
  for step in (24, 28, 32):
    shutil.rmtree(manager.path(step))
  _damage(manager.path(20), "flip")
  _damage(manager.path(16), "truncate")
  (tmp_path / "result.json").unlink()
  with caplog.at_level(logging.WARNING, logger="zoo.checkpoint"):
    again = _train(tmp_path, **kw)
  skipped = [r.getMessage() for r in caplog.records
             if "skipping checkpoint" in r.getMessage()]
  assert len(skipped) == 2  # step 20, step 16; resumed from step 12
  assert again.result["params_sha256"] == full.result["params_sha256"]
  assert _numbers(again.history) == _numbers(full.history)
  assert manager.steps() == list(range(4, 33, 4))  # damaged ones rewritten
  for step in manager.steps():
    manager.verify(step)
  # Finished: re-running is a no-op; a setting that does not change the
  # numbers may differ, one that does is refused, naming the key.
  same = _train(tmp_path, **kw, checkpoint_every=8)
  assert same.result["params_sha256"] == full.result["params_sha256"]
  with pytest.raises(ZooError, match="train.epochs"):
    _train(tmp_path, **kw, epochs=3)


# --- zoo eval ---------------------------------------------------------------

def test_eval_workdir_and_weights_reproduce_result(reference, tmp_path,
                                                   capsys):
  workdir, out = reference
  code = cli.main(["eval", MODEL, "--workdir", str(workdir)])
  res = json.loads(capsys.readouterr().out)
  assert code == 0
  assert res["accuracy"] == out.result["test_accuracy"]
  assert res["examples"] == 500  # the run's own test split
  # The same numbers from a weights file, and from a checkpoint directory.
  wfile = weights.save(tmp_path / "w.npz", out.params, out.model_state)
  for path in (wfile, workdir / "checkpoints" / "step_000000032"):
    code = cli.main(["eval", MODEL, "--workdir", str(workdir), "--weights",
                     str(path)])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == \
        out.result["test_accuracy"]
  params, _ = weights.load(registry.get(MODEL), wfile)
  assert params_sha256(params) == out.result["params_sha256"]
  # Another model's workdir: one line, status 2.
  code = cli.main(["eval", "mlp_fashion_mnist", "--workdir", str(workdir)])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1 and MODEL in err


def test_resume_accepts_checkpoints_from_before_a_new_config_key():
  from zoo.training.run import config_changes as _config_changes
  cfg = zoo.get("mlp_fashion_mnist").config
  older = copy.deepcopy(cfg)
  del older["train"]["compute_dtype"]  # written before the key existed
  assert _config_changes(older, cfg) == []
  bf16 = copy.deepcopy(cfg)
  bf16["train"]["compute_dtype"] = "bfloat16"
  assert _config_changes(older, bf16) == ["train.compute_dtype"]
  assert _config_changes(cfg, bf16) == ["train.compute_dtype"]
  # A whole section added later ([augment]): absent means its defaults.
  no_section = copy.deepcopy(cfg)
  del no_section["augment"]
  assert _config_changes(no_section, cfg) == []
  flipped = copy.deepcopy(cfg)
  flipped["augment"]["flip"] = True
  assert _config_changes(no_section, flipped) == ["augment.flip"]


def _write_legacy(path: Path, state, meta) -> None:
  """A checkpoint as zoo wrote them before orbax: arrays.npz (leaves by tree
  path), meta.json and sha256.json over both."""
  path.mkdir(parents=True)
  ckpt_lib.write_npz(path / "arrays.npz", ckpt_lib.flatten(state))
  (path / "meta.json").write_text(json.dumps(meta))
  (path / "sha256.json").write_text(json.dumps(
      {n: ckpt_lib._sha256(path / n) for n in ("arrays.npz", "meta.json")}))


def test_checkpoints_of_an_older_zoo_are_refused_for_resume_but_evaluate(
    reference, tmp_path, capsys):
  """A workdir from zoo before orbax: resuming says what to do (one line,
  status 2); its weights still evaluate to the run's accuracy."""
  workdir, out = reference
  manager = ckpt_lib.CheckpointManager(workdir / "checkpoints")
  _, template = _template(out.result)
  state, meta = manager.restore(32, template)
  _write_legacy(tmp_path / "checkpoints" / "step_000000032", state, meta)
  with pytest.raises(ckpt_lib.LegacyCheckpointError,
                     match=r"older zoo .*--weights .*arrays.npz.*new --workdir"):
    _train(tmp_path)
  code = cli.main(["train", MODEL, "--epochs", "2", "--workdir",
                   str(tmp_path)])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1 and "older zoo" in err
  assert cli.main(["eval", MODEL, "--workdir", str(tmp_path)]) == 0
  res = json.loads(capsys.readouterr().out)
  assert res["accuracy"] == out.result["test_accuracy"]
