"""Checkpoints: contents, atomic writes, keep-K, integrity checks, fallback
past damaged checkpoints, and in-process resume to identical parameters."""
import copy
import json
import logging
import os
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

import zoo
from zoo import cli, registry
from zoo import data as zoo_data
from zoo.errors import ZooError
from zoo.train import checkpoint as ckpt_lib
from zoo.train import loop, weights
from zoo.train.fingerprint import params_sha256
from zoo.train.optim import optimizer
from zoo.train.state import init_state

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
    assert _entries(path) == ["arrays.npz", "meta.json", "sha256.json"]
    digests = json.loads((path / "sha256.json").read_text())
    manager.verify(step)
    assert set(digests) == {"arrays.npz", "meta.json"}
    meta = json.loads((path / "meta.json").read_text())
    # The resolved config and the position in the data order.
    assert meta["config"] == out.result["config"]
    assert meta["step"] == step
    assert (meta["epoch"], meta["step_in_epoch"]) == divmod(step, 16)
    with np.load(path / "arrays.npz", allow_pickle=False) as z:
      keys = set(z.files)
    for part in (".params", ".opt_state", ".rng", ".step", ".nonfinite_step",
                 ".skipped"):
      assert any(k.startswith(part) for k in keys), (part, keys)
  # A mid-epoch checkpoint carries the running sums of its epoch.
  meta28 = json.loads((manager.path(28) / "meta.json").read_text())
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


def test_crash_mid_save_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=3)
  manager.save(1, _tree(), {})

  def broken_savez(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(np, "savez", broken_savez)
  with pytest.raises(OSError, match="disk full"):
    manager.save(2, _tree(), {})
  assert _entries(tmp_path) == ["step_000000001"]
  manager.verify(1)
  monkeypatch.undo()
  assert manager.restore_latest(_tree())[1]["step"] == 1


def test_leftovers_of_a_killed_save_are_ignored_then_removed(tmp_path):
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=3)
  manager.save(1, _tree(), {})
  junk = tmp_path / ".tmp_step_2_abc"
  junk.mkdir()
  (junk / "arrays.npz").write_bytes(b"PK\x03\x04half")
  assert manager.steps() == [1]
  assert manager.restore_latest(_tree())[1]["step"] == 1
  manager.save(2, _tree(), {})
  assert _entries(tmp_path) == ["step_000000001", "step_000000002"]


def _damage(path: Path, how: str) -> None:
  arrays = path / "arrays.npz"
  if how == "flip":
    data = bytearray(arrays.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
      data[i] ^= 0xFF
    arrays.write_bytes(bytes(data))
  elif how == "truncate":
    data = arrays.read_bytes()
    arrays.write_bytes(data[:len(data) // 3])
  elif how == "no_digest":
    (path / "sha256.json").unlink()
  elif how == "no_arrays":
    arrays.unlink()
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

def test_sigterm_in_process_saves_then_resume_matches(reference, tmp_path,
                                                      monkeypatch):
  """A real SIGTERM just before epoch 2 starts: the Python loop notices it
  after that epoch's first step, saves there (step 17, mid-chunk and
  mid-epoch) and raises Preempted; re-running resumes to the same numbers."""
  _, ref = reference
  real_indices = zoo_data.epoch_indices

  def indices_then_sigterm(seed, epoch, *args, **kwargs):
    if epoch == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return real_indices(seed, epoch, *args, **kwargs)
  monkeypatch.setattr(zoo_data, "epoch_indices", indices_then_sigterm)
  with pytest.raises(loop.Preempted, match="saved step 17 "):
    _train(tmp_path)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
  assert not (tmp_path / "result.json").exists()
  manager = ckpt_lib.CheckpointManager(tmp_path / "checkpoints")
  assert manager.steps() == [12, 16, 17]
  meta = json.loads((manager.path(17) / "meta.json").read_text())
  assert (meta["epoch"], meta["step_in_epoch"]) == (1, 1)
  monkeypatch.undo()
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
  # The same numbers from a weights file, and from a checkpoint's arrays.
  wfile = weights.save(tmp_path / "w.npz", out.params, out.model_state)
  for path in (wfile, workdir / "checkpoints" / "step_000000032" /
               "arrays.npz"):
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
  from zoo.train.run import config_changes as _config_changes
  cfg = zoo.get("mlp_fashion_mnist").config
  older = copy.deepcopy(cfg)
  del older["train"]["compute_dtype"]  # written before the key existed
  assert _config_changes(older, cfg) == []
  bf16 = copy.deepcopy(cfg)
  bf16["train"]["compute_dtype"] = "bfloat16"
  assert _config_changes(older, bf16) == ["train.compute_dtype"]
  assert _config_changes(cfg, bf16) == ["train.compute_dtype"]
