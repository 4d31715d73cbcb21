"""Checkpoints: contents, atomic writes, keep-K, integrity checks, damaged
checkpoints moved aside, storage faults retried and never taken for damage,
names zoo did not write, starting over, and in-process
resume to identical parameters."""
import copy
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

import zoo
from zoo import cli, registry
from zoo.errors import ZooError
from zoo.training import checkpoint as ckpt_lib
from zoo import weights
from zoo.training import loop
from zoo.fingerprint import params_sha256
from zoo.training.optim import optimizer
from zoo.training.state import init_state
from zoo.training.workdir import WorkdirError

MODEL = "logreg_fashion_mnist"
# 2048 / 128 = 16 steps per epoch, 32 steps in all, a checkpoint every 4.
RUN = dict(epochs=2, batch_size=128, checkpoint_every=4, devices=1,
           progress=False, **{"data.train_split": "train[:2048]",
                              "data.test_split": "test[:500]",
                              "train.loop": "python"})
TIMING = ("images_per_second", "seconds", "wall_seconds")
CLI_RUN = ["train", MODEL, "--epochs", "2", "--batch-size", "128",
           "--checkpoint-every", "4", "--devices", "1", "--no-progress",
           "--set", "data.train_split='train[:2048]'",
           "--set", "data.test_split='test[:500]'",
           "--set", "train.loop='python'"]  # RUN's config


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


def _files(directory: Path) -> dict[str, bytes]:
  """Every file under `directory` and its bytes."""
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(directory.rglob("*")) if p.is_file()}


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
  before = _files(manager.path(2))
  with caplog.at_level(logging.WARNING, logger="zoo.checkpoint"):
    tree, meta = manager.restore_latest(_tree())
  assert meta["step"] == 1
  np.testing.assert_array_equal(tree["w"], _tree(1)["w"])
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  assert "damaged checkpoint" in warnings[0] and "step_000000002" in warnings[0]
  assert "aside to damaged_step_000000002" in warnings[0]
  # Moved aside as it was, not deleted; orbax no longer sees it.
  assert _entries(tmp_path) == ["damaged_step_000000002", "step_000000001"]
  assert _files(tmp_path / "damaged_step_000000002") == before
  assert manager.steps() == [1] and manager.orbax.all_steps() == [1]


def test_no_good_checkpoint_is_a_clear_error(tmp_path, caplog):
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=3)
  assert manager.restore_latest(_tree()) is None  # nothing yet: a fresh run
  manager.save(1, _tree(), {})
  manager.save(2, _tree(), {})
  _damage(manager.path(1), "truncate")
  _damage(manager.path(2), "no_digest")
  before = _files(tmp_path)
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"all 2 checkpoint\(s\) in .* failed their "
                     r"integrity check .*nothing was changed.*--fresh"
                     ) as info:
    manager.restore_latest(_tree())
  assert "\n" not in str(info.value)
  assert _files(tmp_path) == before  # nothing moved: the same error again
  with pytest.raises(ckpt_lib.CheckpointError, match="all 2"):
    manager.restore_latest(_tree())


def test_damaged_newer_checkpoint_is_not_kept_over_good_ones(tmp_path):
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=2)
  manager.save(10, _tree(), {})
  manager.save(20, _tree(), {})
  _damage(manager.path(20), "flip")
  assert manager.restore_latest(_tree())[1]["step"] == 10
  manager.save(15, _tree(), {})  # the resumed run moves on from step 10
  assert manager.steps() == [10, 15]
  assert "damaged_step_000000020" in _entries(tmp_path)


# --- storage faults, links, starting over ------------------------------------

def _unreadable(path: Path):
  """A checkpoint's state data files (tensorstore's, in `d/` folders) each
  replaced by a symbolic link to itself, so that opening one fails with
  ELOOP: a real OS error, through tensorstore (tests run as root, which
  permissions do not stop). Returns a function that puts them back."""
  data = {p: p.read_bytes() for p in (path / "state").rglob("*")
          if p.is_file() and p.parent.name == "d"}
  for p in data:
    p.unlink()
    os.symlink(p.name, p)

  def mend():
    for p, content in data.items():
      p.unlink()
      p.write_bytes(content)
  return mend


def _failing_meta_reads(monkeypatch, step_dir: str):
  """Reads of `step_dir`'s meta through etils.epath (as orbax reads JSON,
  locally and on gs://) fail with EIO until the returned function is
  called."""
  real, broken = epath.gpath._GPath.open, [True]

  def failing(self, *args, **kwargs):
    if broken[0] and f"{step_dir}/meta" in str(self):
      raise OSError(errno.EIO, os.strerror(errno.EIO), str(self))
    return real(self, *args, **kwargs)
  monkeypatch.setattr(epath.gpath._GPath, "open", failing)
  return lambda: broken.__setitem__(0, False)


@pytest.mark.parametrize("fails", [1, 2, None])  # None: it lasts
@pytest.mark.parametrize("where", ["state", "meta"])
def test_io_errors_reading_the_newest_are_retried_never_skipped(
    tmp_path, monkeypatch, where, fails):
  """A storage fault is not damage: the read is retried (the module's
  delays), the newest checkpoint restored once it reads; a lasting fault
  is one line saying nothing changed, and nothing is moved or deleted."""
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=3)
  manager.save(1, _tree(1), {})
  manager.save(2, _tree(2), {})
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=3)  # nothing cached
  before = _entries(tmp_path)
  mend = (_unreadable(manager.path(2)) if where == "state"
          else _failing_meta_reads(monkeypatch, "step_000000002"))
  sleeps = []

  def sleep(seconds):
    sleeps.append(seconds)
    if len(sleeps) == fails:
      mend()
  monkeypatch.setattr(ckpt_lib, "time", types.SimpleNamespace(sleep=sleep))
  if fails:
    tree, meta = manager.restore_latest(_tree())
    assert meta["step"] == 2
    np.testing.assert_array_equal(tree["w"], _tree(2)["w"])
    assert sleeps == list(ckpt_lib.READ_RETRY_DELAYS[:fails])
  else:
    with pytest.raises(ckpt_lib.UnreadableCheckpointError) as info:
      manager.restore_latest(_tree())
    message = str(info.value)
    assert isinstance(info.value, WorkdirError) and "\n" not in message
    assert f"could not read checkpoint {manager.path(2)} ({where}" in message
    assert ("Too many levels of symbolic links" if where == "state"
            else "Input/output error") in message
    assert "tried 3 times" in message and "Nothing was changed" in message
    assert sleeps == [0.5, 1.0]
    mend()
  assert _entries(tmp_path) == before
  manager.verify(2)


def test_a_fault_orbax_reads_as_a_missing_file_moves_nothing(tmp_path,
                                                             monkeypatch):
  """Orbax takes an unreadable state/_METADATA for a missing one (it asks
  exists(); ELOOP here): a step that looks damaged is read again after a
  delay before anything is moved, so one such fault changes nothing."""
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=3)
  manager.save(1, _tree(1), {})
  manager.save(2, _tree(2), {})
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=3)
  before = _entries(tmp_path)
  record = manager.path(2) / "state" / "_METADATA"
  data = record.read_bytes()
  record.unlink()
  os.symlink(record.name, record)
  sleeps = []

  def sleep(seconds):
    sleeps.append(seconds)
    record.unlink()
    record.write_bytes(data)
  monkeypatch.setattr(ckpt_lib, "time", types.SimpleNamespace(sleep=sleep))
  assert manager.restore_latest(_tree())[1]["step"] == 2
  assert sleeps == [ckpt_lib.READ_RETRY_DELAYS[0]]
  assert _entries(tmp_path) == before


def test_a_lasting_io_error_is_one_line_and_exit_2_from_the_cli(
    reference, tmp_path, monkeypatch, capsys):
  workdir, _ = reference
  shutil.copytree(workdir / "checkpoints", tmp_path / "checkpoints")
  _unreadable(tmp_path / "checkpoints" / "step_000000032")
  before = _entries(tmp_path / "checkpoints")
  monkeypatch.setattr(ckpt_lib, "READ_RETRY_DELAYS", (0.0, 0.0))
  code = cli.main([*CLI_RUN, "--workdir", str(tmp_path)])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1, err
  assert err.startswith("zoo: error: could not read checkpoint ")
  assert "step_000000032 (state" in err and "Nothing was changed" in err
  assert _entries(tmp_path / "checkpoints") == before


def test_all_damaged_stops_naming_fresh_which_starts_over_keeping_them(
    reference, tmp_path, capsys):
  workdir, ref = reference
  ckdir = tmp_path / "checkpoints"
  shutil.copytree(workdir / "checkpoints", ckdir)
  for step, how in zip((24, 28, 32), ("flip", "truncate", "no_digest")):
    _damage(ckdir / f"step_{step:09d}", how)
  before = _files(ckdir)
  code = cli.main([*CLI_RUN, "--workdir", str(tmp_path)])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1, err
  assert f"all 3 checkpoint(s) in {ckdir} failed their integrity" in err
  assert "--fresh" in err
  assert _files(ckdir) == before  # never retrained silently
  assert cli.main([*CLI_RUN, "--workdir", str(tmp_path), "--fresh"]) == 0
  capsys.readouterr()
  result = json.loads((tmp_path / "result.json").read_text())
  assert result["params_sha256"] == ref.result["params_sha256"]
  assert _entries(ckdir) == ["step_000000024", "step_000000028",
                             "step_000000032"]
  assert _files(tmp_path / "previous_checkpoints") == before  # nothing lost


@pytest.mark.parametrize("kind", ["link", "file", "foreign"])
def test_a_step_name_zoo_did_not_write_is_refused_above_never_below(
    tmp_path, caplog, kind):
  """A symlink named like a step is refused wherever it stands; a file or
  a foreign directory (e.g. the pre-orbax arrays.npz) only if newer than
  the newest checkpoint: zoo never trains or writes below it."""
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=3)
  manager.save(1, _tree(1), {})
  manager.save(2, _tree(2), {})

  def put(step):
    path = manager.path(step)
    if kind == "link":
      os.symlink(manager.path(1), path)
    elif kind == "file":
      path.write_text("not a checkpoint")
    else:
      path.mkdir()
      (path / "arrays.npz").write_bytes(b"PK")
    return path
  put(3)
  before = _entries(tmp_path)
  what = {"link": "a symbolic link named like a checkpoint: zoo neither "
                  "follows nor replaces it. Replace it by a copy",
          "file": "a file, named like a checkpoint newer than step 2",
          "foreign": "a directory zoo did not write, named like a "
                     "checkpoint newer than step 2"}[kind]
  with pytest.raises(ckpt_lib.CheckpointError) as info:
    manager.restore_latest(_tree())
  assert f"step_000000003 is {what}" in str(info.value)
  assert "\n" not in str(info.value)
  with pytest.raises(ckpt_lib.CheckpointError, match="refusing to write "
                     "below it"):
    manager.save(2, _tree(), {})
  assert _entries(tmp_path) == before
  assert manager.steps() == [1, 2]
  manager.verify(2)
  # Older than the newest checkpoint: ignored with a warning (a link is not).
  os.rename(manager.path(3), manager.path(0))
  if kind == "link":
    with pytest.raises(ckpt_lib.CheckpointError, match="symbolic link"):
      manager.restore_latest(_tree())
    return
  with caplog.at_level(logging.WARNING, logger="zoo.checkpoint"):
    assert manager.restore_latest(_tree())[1]["step"] == 2
  assert "ignoring" in caplog.text and "step_000000000" in caplog.text
  assert _entries(tmp_path) == sorted(
      n.replace("step_000000003", "step_000000000") for n in before)


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
  moved = [r.getMessage() for r in caplog.records
           if "moved the damaged checkpoint" in r.getMessage()]
  assert len(moved) == 2  # step 20, step 16; resumed from step 12
  assert again.result["params_sha256"] == full.result["params_sha256"]
  assert _numbers(again.history) == _numbers(full.history)
  assert manager.steps() == list(range(4, 33, 4))  # damaged ones rewritten
  assert [p for p in _entries(manager.directory) if "damaged" in p] == [
      "damaged_step_000000016", "damaged_step_000000020"]
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
  wfile = weights.save(tmp_path / "w.safetensors", out.params, out.model_state)
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
