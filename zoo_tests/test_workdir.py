"""A workdir belongs to one run: the lock (real processes), validate-then-write,
checkpoint discovery that trusts only what zoo wrote, filesystem faults, and
what a batch job's log shows."""
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from zoo import cli
from zoo.errors import ConfigError
from zoo.training import checkpoint as ckpt_lib
from zoo.training import loop
from zoo.training.workdir import (LOCK_PREFIX, Workdir, WorkdirBusyError,
                               WorkdirError)

REPO = Path(__file__).resolve().parent.parent

# 2048 / 64 = 32 steps per epoch, 96 steps, a checkpoint every 16 steps.
OVERRIDES = {"train.epochs": 3, "train.batch_size": 64,
             "train.checkpoint_every": 16,
             "data.train_split": "train[:2048]",
             "data.test_split": "test[:500]"}
CLI_ARGS = ["mlp_fashion_mnist", "--epochs", "3", "--batch-size", "64",
            "--checkpoint-every", "16", "--devices", "1", "--no-progress",
            "--set", "data.train_split='train[:2048]'",
            "--set", "data.test_split='test[:500]'"]


def _train(workdir, name="mlp_fashion_mnist", **kw):
  return loop.train(name, workdir=workdir, devices=1, progress=False,
                    **{**OVERRIDES, **kw})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """CLI_ARGS's run, uninterrupted, in this process."""
  return _train(tmp_path_factory.mktemp("reference"))


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _zoo(*argv, **kw):
  return subprocess.Popen([sys.executable, "-m", "zoo.cli", *argv], cwd=REPO,
                          env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kw)


def _snapshot(workdir: Path) -> dict[str, bytes]:
  """Every file under `workdir` (the lock files aside) and its bytes."""
  return {str(p.relative_to(workdir)): p.read_bytes()
          for p in sorted(workdir.rglob("*"))
          if p.is_file() and not p.name.startswith(LOCK_PREFIX)}


def _wait_for(predicate, proc, what: str, timeout: float = 120):
  deadline = time.monotonic() + timeout
  while not predicate():
    if proc.poll() is not None or time.monotonic() > deadline:
      out, err = proc.communicate()
      pytest.fail(f"{what} never happened ({proc.returncode}):\n{out}\n{err}")
    time.sleep(0.01)


# --- the lock ------------------------------------------------------------------

def test_second_run_on_a_busy_workdir_refuses_and_touches_nothing(
    tmp_path, reference):
  """Run A is frozen (SIGSTOP) mid-run holding the workdir; run B, with
  another config, refuses at once naming A, and changes no file; A then
  finishes exactly as if alone."""
  first = _zoo("train", *CLI_ARGS, "--workdir", str(tmp_path))
  manager = ckpt_lib.CheckpointManager(tmp_path / "checkpoints")
  try:
    _wait_for(lambda: manager.steps(), first, "a first checkpoint")
    first.send_signal(signal.SIGSTOP)
    before = _snapshot(tmp_path)
    second = _zoo("train", "logreg_fashion_mnist", "--epochs", "1",
                  "--devices", "1", "--workdir", str(tmp_path))
    out, err = second.communicate(timeout=120)
    assert second.returncode == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "in use by another zoo run" in err
    assert f"pid {first.pid}" in err and "another --workdir" in err
    assert _snapshot(tmp_path) == before
  finally:
    first.send_signal(signal.SIGCONT)
  out, err = first.communicate(timeout=300)
  assert first.returncode == 0, err
  result = json.loads((tmp_path / "result.json").read_text())
  assert result["params_sha256"] == reference.result["params_sha256"]
  assert result["config"] == reference.result["config"]


def test_lock_is_released_at_exit_and_taken_over_after_a_kill(tmp_path,
                                                             reference):
  """A SIGKILLed run leaves its holder record but no lock (the kernel drops
  it): the next run takes over, says so, and resumes bit-exactly."""
  first = _zoo("train", *CLI_ARGS, "--workdir", str(tmp_path))
  manager = ckpt_lib.CheckpointManager(tmp_path / "checkpoints")
  _wait_for(lambda: manager.steps(), first, "a first checkpoint")
  first.kill()
  first.wait()
  lock = tmp_path / f"{LOCK_PREFIX}0"
  assert json.loads(lock.read_text())["pid"] == first.pid
  again = _zoo("train", *CLI_ARGS, "--workdir", str(tmp_path))
  out, err = again.communicate(timeout=300)
  assert again.returncode == 0, err
  assert "ended without releasing" in err and str(first.pid) in err
  assert "resumed from step" in out
  result = json.loads((tmp_path / "result.json").read_text())
  assert result["params_sha256"] == reference.result["params_sha256"]
  assert lock.read_text() == ""  # released cleanly this time


def test_lock_between_processes_names_the_holder(tmp_path):
  with Workdir(tmp_path):
    proc = _zoo("train", "logreg_fashion_mnist", "--epochs", "1",
                "--devices", "1", "--workdir", str(tmp_path))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert f"pid {os.getpid()}" in err and err.count("\n") == 1
  with Workdir(tmp_path):  # released: it can be taken again
    pass


def test_lock_is_exclusive_within_one_process_too(tmp_path):
  with Workdir(tmp_path):
    with pytest.raises(WorkdirBusyError, match="in use by another zoo run"):
      with Workdir(tmp_path):
        pass


# --- validate, then write --------------------------------------------------------

def test_refused_resume_writes_nothing(tmp_path, reference):
  """Another model, or another model size, on a finished workdir: refused
  as a config change (not a shape mismatch), and the workdir still
  describes its own run byte for byte."""
  _train(tmp_path)
  before = _snapshot(tmp_path)
  with pytest.raises(ConfigError, match=r"different config \(of "
                     r"'mlp_fashion_mnist'\).*model.arch"):
    _train(tmp_path, name="logreg_fashion_mnist")
  with pytest.raises(ConfigError, match=r"changed: model.hidden_sizes"):
    _train(tmp_path, **{"model.hidden_sizes": [64]})
  assert _snapshot(tmp_path) == before
  assert json.loads((tmp_path / "config.json").read_text())["name"] == (
      "mlp_fashion_mnist")


def test_refused_resume_by_the_zoo_command(tmp_path, capsys):
  _train(tmp_path)
  before = _snapshot(tmp_path)
  code = cli.main(["train", "logreg_fashion_mnist", "--devices", "1",
                   "--workdir", str(tmp_path)])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1, err
  assert "different config" in err and "new --workdir" in err
  assert _snapshot(tmp_path) == before


def test_rerun_of_a_finished_run_keeps_its_timings(tmp_path):
  first = _train(tmp_path).result
  again = _train(tmp_path).result
  assert first["train_images_per_second"] > 0
  for key in ("train_images_per_second", "compile_seconds", "wall_seconds",
              "params_sha256", "test_accuracy"):
    assert again[key] == first[key], key
  saved = json.loads((tmp_path / "result.json").read_text())
  assert saved["train_images_per_second"] == first["train_images_per_second"]


def test_resume_false_starts_over(tmp_path, reference, caplog):
  _train(tmp_path, **{"train.seed": 1})
  old = _snapshot(tmp_path / "checkpoints")
  with caplog.at_level(logging.WARNING, logger="zoo.checkpoint"):
    out = _train(tmp_path, resume=False)
  assert "starting over: moved" in caplog.text
  assert out.result["params_sha256"] == reference.result["params_sha256"]
  assert _snapshot(tmp_path / "previous_checkpoints") == old  # nothing lost


# --- checkpoint discovery ---------------------------------------------------------

def test_symlink_named_like_a_newer_checkpoint_is_refused(tmp_path, capsys):
  """A link step_<huge> -> an old checkpoint: a re-run neither follows it
  nor rolls back and writes below it; one line, nothing changed. A file so
  named is refused the same way."""
  _train(tmp_path)
  ckdir = tmp_path / "checkpoints"
  real = sorted(p.name for p in ckdir.iterdir())
  os.symlink(ckdir / real[0], ckdir / "step_999999999")
  for name, says in (("step_999999999", "is a symbolic link named like a "
                      "checkpoint: zoo neither follows nor replaces it. "
                      "Replace it by a copy"),
                     ("step_999999998", "is a file, named like a checkpoint "
                      "newer than step 96")):
    if name == "step_999999998":
      (ckdir / "step_999999999").unlink()
      (ckdir / name).write_text("not a checkpoint")
    before = _snapshot(tmp_path)
    code = cli.main(["train", *CLI_ARGS, "--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"{name} {says}" in err
    assert _snapshot(tmp_path) == before
  assert sorted(p.name for p in ckdir.iterdir()) == [*real, "step_999999998"]


def test_zoo_eval_ignores_a_symlinked_checkpoint(tmp_path, reference, capsys):
  _train(tmp_path)
  ckdir = tmp_path / "checkpoints"
  oldest = sorted(ckdir.iterdir())[0]
  os.symlink(oldest, ckdir / "step_999999999")
  assert cli.main(["eval", "mlp_fashion_mnist", "--workdir",
                   str(tmp_path)]) == 0
  res = json.loads(capsys.readouterr().out)
  assert res["accuracy"] == reference.result["test_accuracy"]


def _tree(value=0.0):
  return {"w": np.full((2, 3), value, np.float32),
          "step": np.int32(value)}


def test_meta_that_is_not_a_record_is_damaged(tmp_path, caplog):
  """A meta of `[]` whose integrity record was rewritten to match."""
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=3)
  manager.save(1, _tree(1), {})
  manager.save(2, _tree(2), {})
  path = manager.path(2)
  (path / "meta" / "metadata").write_text("[]")
  record = path / "integrity" / "metadata"
  integrity = json.loads(record.read_text())
  integrity["meta_sha256"] = ckpt_lib.meta_digest([])
  record.write_text(json.dumps(integrity))  # the digests match ...
  with caplog.at_level(logging.WARNING, logger="zoo.checkpoint"):
    tree, meta = manager.restore_latest(_tree())  # ... the record does not
  assert meta["step"] == 1 and "not the record of step 2" in caplog.text
  np.testing.assert_array_equal(tree["w"], _tree(1)["w"])


def test_a_newer_checkpoint_not_known_damaged_is_never_deleted(tmp_path):
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=2)
  manager.save(20, _tree(), {})
  other = ckpt_lib.CheckpointManager(tmp_path, keep=2)  # never restored
  with pytest.raises(ckpt_lib.CheckpointError, match="refusing to write "
                     "below it"):
    other.save(10, _tree(), {})
  assert manager.steps() == [20]
  manager.verify(20)


# --- filesystem faults --------------------------------------------------------------

def test_workdir_that_is_a_file(tmp_path, capsys):
  target = tmp_path / "file"
  target.write_text("mine")
  code = cli.main(["train", "logreg_fashion_mnist", "--epochs", "1",
                   "--devices", "1", "--workdir", str(target)])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1, err
  assert "is a file, not a directory" in err
  assert target.read_text() == "mine"


def test_checkpoints_that_is_a_file(tmp_path):
  (tmp_path / "checkpoints").write_text("mine")
  with pytest.raises(WorkdirError, match="checkpoints is a file"):
    _train(tmp_path)
  assert (tmp_path / "checkpoints").read_text() == "mine"


def test_file_size_limit_during_a_save_keeps_the_last_good_checkpoint(
    tmp_path, reference):
  """A real filesystem fault: after its first checkpoints, the run's file
  size limit is cut to 4 KiB (prlimit, as a full quota would), so its next
  checkpoint cannot be written. One line naming the intact checkpoint, exit
  2, no partial checkpoint visible; a re-run resumes bit-exactly."""
  import resource
  proc = _zoo("train", *CLI_ARGS, "--workdir", str(tmp_path))
  manager = ckpt_lib.CheckpointManager(tmp_path / "checkpoints")
  try:
    _wait_for(lambda: len(manager.steps()) >= 2, proc, "two checkpoints")
    proc.send_signal(signal.SIGSTOP)
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (4096, 4096))
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 2, err
  line = err.strip().splitlines()[-1]
  assert line.startswith("zoo: error: could not save checkpoint step ")
  assert "Traceback" not in err and "File too large" in line
  steps = manager.steps()
  assert f"step_{steps[-1]:09d}) is intact" in line
  for step in steps:
    manager.verify(step)
  assert not (tmp_path / "result.json").exists()
  out = _train(tmp_path)
  assert out.result["params_sha256"] == reference.result["params_sha256"]


def test_os_errors_are_named_with_their_fix():
  from zoo.training.workdir import describe_os_error
  full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/ckpt")
  assert describe_os_error(full) == (
      "No space left on device (/x/ckpt); free some space")
  ro = OSError(errno.EROFS, os.strerror(errno.EROFS))
  assert "use a writable --workdir" in describe_os_error(ro)


def test_read_only_workdir_is_one_line(tmp_path, capsys, monkeypatch):
  """A workdir on a read-only filesystem (EROFS at the first write, the
  lock file): one line saying so, nothing written. (Tests run as root,
  which file permissions do not stop, so the fault is injected.)"""
  from zoo.training import workdir as workdir_lib
  real_open = os.open

  def read_only(path, flags, *args):
    if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    return real_open(path, flags, *args)

  monkeypatch.setattr(workdir_lib.os, "open", read_only)
  code = cli.main(["train", "logreg_fashion_mnist", "--epochs", "1",
                   "--devices", "1", "--workdir", str(tmp_path)])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1, err
  assert err.startswith("zoo: error: could not lock the workdir")
  assert "Read-only file system" in err and "writable --workdir" in err
  assert list(tmp_path.iterdir()) == []


# --- what a batch job's log shows ---------------------------------------------------

def test_without_a_tty_each_epoch_prints_a_line_as_it_ends(tmp_path):
  proc = _zoo("train", *CLI_ARGS, "--workdir", str(tmp_path))
  first = proc.stdout.readline()
  still_running = proc.poll() is None
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  assert first.startswith("epoch   1: train loss") and still_running
  lines = [first, *out.splitlines()]
  assert [l.split(":")[0] for l in lines[:3]] == [
      "epoch   1", "epoch   2", "epoch   3"]
  assert "test accuracy" in lines[3]
