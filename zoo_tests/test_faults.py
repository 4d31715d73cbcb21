"""Faults: a training process killed (SIGKILL) or preempted (SIGTERM) and
re-run, hostile weights files, divergence, bad configuration, multi-host
preemption."""
import hashlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from zoo import cli, registry
from zoo import data as zoo_data
from zoo.training import checkpoint as ckpt_lib
from zoo import weights
from zoo.training import loop
from zoo.training.preemption import Preemption

REPO = Path(__file__).resolve().parent.parent

# --- processes killed and re-run ------------------------------------------

# 4096 / 64 = 64 steps per epoch, 384 steps, a checkpoint every 16 steps;
# the default loop (scan for this model on CPU).
CLI_ARGS = ["mlp_fashion_mnist", "--epochs", "6", "--batch-size", "64",
            "--checkpoint-every", "16", "--devices", "1", "--no-progress",
            "--set", "data.train_split='train[:4096]'",
            "--set", "data.test_split='test[:500]'"]
CLI_OVERRIDES = {"train.epochs": 6, "train.batch_size": 64,
                 "train.checkpoint_every": 16,
                 "data.train_split": "train[:4096]",
                 "data.test_split": "test[:500]"}
TIMING = ("images_per_second", "seconds", "wall_seconds")


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _zoo(*argv, **kw):
  return subprocess.Popen([sys.executable, "-m", "zoo.cli", *argv], cwd=REPO,
                          env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kw)


def _numbers(history):
  return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The run CLI_ARGS describes, in one go (in this process)."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  out = loop.train(CLI_ARGS[0], workdir=workdir, devices=1, progress=False,
                   **CLI_OVERRIDES)
  return out


def _start_and_signal(workdir: Path, sig: int, min_step: int = 48):
  """Starts `zoo train`, waits for a checkpoint at step >= min_step, sends
  `sig`, and returns (returncode, stdout, stderr, steps seen at signal)."""
  proc = _zoo("train", *CLI_ARGS, "--workdir", str(workdir))
  manager = ckpt_lib.CheckpointManager(workdir / "checkpoints")
  deadline = time.monotonic() + 120
  try:
    while not any(s >= min_step for s in manager.steps()):
      if proc.poll() is not None or time.monotonic() > deadline:
        out, err = proc.communicate()
        pytest.fail(f"no checkpoint before exit ({proc.returncode}):\n"
                    f"{out}\n{err}")
      time.sleep(0.005)
    seen = manager.steps()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  return proc.returncode, out, err, seen


def _resume_and_compare(workdir: Path, reference) -> None:
  proc = _zoo("train", *CLI_ARGS, "--workdir", str(workdir))
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  result = json.loads((workdir / "result.json").read_text())
  assert result["steps"] == 384
  assert result["config"] == reference.result["config"]
  assert result["params_sha256"] == reference.result["params_sha256"]
  rows = [json.loads(l) for l in
          (workdir / "metrics.jsonl").read_text().splitlines()]
  assert _numbers(rows) == _numbers(reference.history)
  ckdir = workdir / "checkpoints"
  assert not [p for p in ckdir.iterdir() if p.name.startswith(".")]


def test_sigkill_then_rerun_matches_uninterrupted(tmp_path, uninterrupted):
  code, _, _, seen = _start_and_signal(tmp_path, signal.SIGKILL)
  assert code == -signal.SIGKILL
  assert not (tmp_path / "result.json").exists()
  assert max(seen) < 384
  _resume_and_compare(tmp_path, uninterrupted)


def test_sigterm_saves_exits_143_and_rerun_matches(tmp_path, uninterrupted):
  code, _, err, seen = _start_and_signal(tmp_path, signal.SIGTERM)
  assert code == loop.PREEMPTED_EXIT_CODE == 143, err
  assert "preempted" in err and "Traceback" not in err
  assert not (tmp_path / "result.json").exists()
  # It saved at the first chunk end after the signal (the one being saved
  # when the signal came, or a later one) and said which.
  saved = int(re.search(r"saved step (\d+) ", err).group(1))
  manager = ckpt_lib.CheckpointManager(tmp_path / "checkpoints")
  assert saved == max(manager.steps()) >= max(seen) and saved % 16 == 0
  manager.verify(saved)
  _resume_and_compare(tmp_path, uninterrupted)


def test_ctrl_c_saves_exits_130_and_rerun_matches(tmp_path, uninterrupted):
  """A first Ctrl-C (SIGINT) saves like SIGTERM, says how to resume and
  exits 130; the re-run resumes bit-identically."""
  code, _, err, seen = _start_and_signal(tmp_path, signal.SIGINT)
  assert code == 130, err
  assert "Traceback" not in err
  assert "zoo: Ctrl-C: stopping after this step to save" in err
  last = err.strip().splitlines()[-1]
  assert last.startswith("zoo: interrupted: Ctrl-C: saved step ")
  assert last.endswith("re-run the same command to resume.")
  saved = int(re.search(r"saved step (\d+) ", last).group(1))
  manager = ckpt_lib.CheckpointManager(tmp_path / "checkpoints")
  assert saved == max(manager.steps()) >= max(seen)
  _resume_and_compare(tmp_path, uninterrupted)


def test_a_second_ctrl_c_stops_at_once_unsaved():
  """The handler: the first SIGINT asks for a stop at the step's end, the
  second raises KeyboardInterrupt there and then; SIGTERM never does."""
  import signal as sig
  with Preemption() as preempt:
    assert sig.getsignal(sig.SIGINT) == preempt._handle
    preempt._handle(sig.SIGINT, None)
    assert preempt.requested and preempt.signum == sig.SIGINT
    with pytest.raises(KeyboardInterrupt):
      preempt._handle(sig.SIGINT, None)
    preempt._handle(sig.SIGTERM, None)
  assert sig.getsignal(sig.SIGINT) is sig.default_int_handler
  err = loop.Preempted.saved(7, None, sig.SIGINT)
  assert err.exit_code == 130 and "nothing was saved (no --workdir)" in str(err)
  assert loop.Preempted.saved(7, "/w/step_7").exit_code == 143


# --- hostile and mismatched weights files ------------------------------------

MODEL = "logreg_fashion_mnist"


class _Hostile:
  """Unpickling this creates a file (via open(path, "w"))."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (open, (self.path, "w"))


def _one_line_error(capsys, *argv):
  code = cli.main(list(argv))
  err = capsys.readouterr().err
  assert code == 2, err
  assert err.startswith("zoo: error: ") and err.count("\n") == 1, err
  assert "Traceback" not in err
  return err


@pytest.mark.parametrize("name", ["x.safetensors", "x.pkl"])
def test_pickle_is_refused_and_never_run(tmp_path, capsys, name):
  marker = tmp_path / "pwned"
  hostile = tmp_path / name
  hostile.write_bytes(pickle.dumps({"params": _Hostile(marker)}))
  entry = registry.get(MODEL)
  with pytest.raises(ckpt_lib.CheckpointError, match="pickle"):
    weights.load(entry, hostile)
  assert not marker.exists()
  err = _one_line_error(capsys, "eval", MODEL, "--weights", str(hostile))
  assert name in err and not marker.exists()


def test_pickle_refused_by_the_zoo_command(tmp_path):
  marker = tmp_path / "pwned"
  hostile = tmp_path / "x.safetensors"
  hostile.write_bytes(pickle.dumps(_Hostile(marker)))
  proc = _zoo("eval", MODEL, "--weights", str(hostile))
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 2
  assert err.count("\n") == 1 and "Traceback" not in err
  assert "x.safetensors" in err and not marker.exists()


def test_pickle_payload_would_run_without_the_guard(tmp_path):
  """The payload above is real: plain pickle.loads creates the file."""
  marker = tmp_path / "pwned"
  pickle.loads(pickle.dumps(_Hostile(marker))).close()
  assert marker.exists()


def test_npz_with_object_array_is_refused_and_never_unpickled(tmp_path,
                                                               capsys):
  """An .npz (the old weights format) is not read as weights at all, and
  converting one never unpickles an object array inside it."""
  marker = tmp_path / "pwned"
  path = tmp_path / "obj.npz"
  params, _ = weights.template(registry.get(MODEL))
  arrays = {f"params['{m}']['{n}']": v for m, leaves in params.items()
            for n, v in leaves.items()}
  arrays["params['evil']['x']"] = np.array([_Hostile(marker)], dtype=object)
  np.savez(path, **arrays)  # numpy pickles the object array inside
  with pytest.raises(ckpt_lib.CheckpointError, match="convert it once"):
    weights.load(registry.get(MODEL), path)
  _one_line_error(capsys, "eval", MODEL, "--weights", str(path))
  assert weights.main([str(path)]) == 2
  assert "allow_pickle=False" in capsys.readouterr().err
  assert not marker.exists() and not (tmp_path / "obj.safetensors").exists()


def test_corrupt_weights_file_is_refused(tmp_path, capsys):
  params, _ = weights.template(registry.get(MODEL))
  path = weights.save(tmp_path / "w.safetensors", params)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2] + data[-200:])
  with pytest.raises(ckpt_lib.CheckpointError):
    weights.load(registry.get(MODEL), path)
  _one_line_error(capsys, "eval", MODEL, "--weights", str(path))
  _one_line_error(capsys, "eval", MODEL, "--weights",
                  str(tmp_path / "missing.safetensors"))


@pytest.mark.parametrize("change", ["shape", "dtype", "missing"])
def test_mismatched_weights_name_the_parameter(tmp_path, capsys, change):
  entry = registry.get(MODEL)
  params, _ = weights.template(entry)
  module = next(iter(params))
  if change == "shape":
    params[module]["w"] = np.zeros((10, 784), np.float32)
    pattern = r"/w has shape \(10, 784\).*expects shape \(784, 10\)"
  elif change == "dtype":
    params[module]["w"] = params[module]["w"].astype(np.float64)
    pattern = r"/w has .*dtype float64.*dtype float32"
  else:
    del params[module]["b"]
    pattern = r"/b is missing"
  path = weights.save(tmp_path / "w.safetensors", params)
  with pytest.raises(ckpt_lib.CheckpointError, match=pattern):
    weights.load(entry, path)
  err = _one_line_error(capsys, "eval", MODEL, "--weights", str(path))
  assert module in err


# --- divergence ---------------------------------------------------------------

DIVERGE = {"data.train_split": "train[:1024]", "data.test_split": "test[:200]",
           "optimizer.name": "sgd", "schedule.name": "constant",
           "train.loop": "python"}


def _files_state(path: Path):
  """Every file under a checkpoint directory: content digest and mtime."""
  return {str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                     p.stat().st_mtime_ns)
          for p in sorted(path.rglob("*")) if p.is_file()}


def test_divergence_stops_naming_the_step_and_keeps_checkpoint(
    tmp_path, monkeypatch):
  real_save = ckpt_lib.CheckpointManager.save
  snapshots = {}

  def recording_save(self, step, tree, meta, wait=True):
    out = real_save(self, step, tree, meta)  # waits: its files are final
    snapshots[step] = _files_state(out)
    return out
  monkeypatch.setattr(ckpt_lib.CheckpointManager, "save", recording_save)
  with pytest.raises(loop.NonFiniteError) as info:
    loop.train("mlp_fashion_mnist", workdir=tmp_path, epochs=1,
               batch_size=128, checkpoint_every=1, devices=1, progress=False,
               **DIVERGE, **{"optimizer.learning_rate": 1e10,
                             "model.hidden_sizes": [32]})
  err = info.value
  assert err.step == 2 and "at step 2" in str(err)
  assert "step_000000002" in str(err) and "untouched" in str(err)
  manager = ckpt_lib.CheckpointManager(tmp_path / "checkpoints")
  assert manager.steps() == [1, 2] and sorted(snapshots) == [1, 2]
  assert _files_state(manager.path(2)) == snapshots[2]  # untouched
  manager.verify(2)
  arrays = jax.tree.leaves(ocp.StandardCheckpointer().restore(
      manager.path(2) / "state"))
  assert arrays and all(np.all(np.isfinite(a)) for a in arrays
                        if np.issubdtype(a.dtype, np.floating))
  assert not (tmp_path / "result.json").exists()


def test_divergence_cli_exits_with_one_line(tmp_path, capsys):
  err = _one_line_error(
      capsys, "train", MODEL, "--workdir", str(tmp_path), "--epochs", "1",
      "--devices", "1", "--no-progress", "--checkpoint-every", "4",
      *[f"--set={k}={v!r}" for k, v in DIVERGE.items()],
      "--set", "optimizer.learning_rate=1e38")
  assert "non-finite" in err and "at step 1" in err
  assert "on_nonfinite=skip" in err


def test_skip_policy_finishes_and_counts(tmp_path):
  out = loop.train(MODEL, workdir=tmp_path, epochs=1, batch_size=128,
                   devices=1, progress=False, **DIVERGE,
                   **{"optimizer.learning_rate": 1e38,
                      "train.on_nonfinite": "skip"})
  assert out.result["steps"] == 8
  assert out.result["skipped_updates"] > 0
  saved = json.loads((tmp_path / "result.json").read_text())
  assert saved["skipped_updates"] == out.result["skipped_updates"]
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(out.params))


# --- bad configuration --------------------------------------------------------

@pytest.mark.parametrize("setting, words", [
    ("optimizer.lerning_rate=1", ["optimizer.lerning_rate", "learning_rate"]),
    ("train.epochs=abc", ["train.epochs", "int"]),
    ("train.batch_size=1.5", ["train.batch_size"]),
    ("train.on_nonfinite=explode", ["train.on_nonfinite", "explode"]),
    ("train.compute_dtype=float16", ["train.compute_dtype", "bfloat16"]),
    ("trian.epochs=2", ["trian"]),
    ("train.checkpoint_every", ["key=value"]),
])
def test_bad_config_is_rejected_before_device_work(capsys, monkeypatch,
                                                   setting, words):
  def no(*args, **kwargs):
    raise AssertionError("device or data work before validation")
  from zoo.training import distributed
  monkeypatch.setattr(loop, "train", no)
  monkeypatch.setattr(distributed, "initialize", no)
  monkeypatch.setattr(zoo_data, "load", no)
  err = _one_line_error(capsys, "train", MODEL, "--set", setting)
  for word in words:
    assert word in err


def test_bad_config_by_the_zoo_command(tmp_path):
  proc = _zoo("train", MODEL, "--workdir", str(tmp_path), "--set",
              "optimizer.lerning_rate=1")
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 2
  assert err.count("\n") == 1 and "optimizer.lerning_rate" in err
  assert not (tmp_path / "checkpoints").exists()


# --- multi-host preemption ----------------------------------------------------

class _SyncService:
  """JAX's preemption sync manager as xla/tsl implements it, for one host:
  a notice sets the sync point to the last counter asked + 1, and only a
  call with exactly that counter answers True."""

  def __init__(self):
    self.counter, self.sync_point, self.calls = 0, -1, []

  def reached(self, step_id):
    self.calls.append(step_id)
    self.counter = step_id
    return step_id == self.sync_point

  def notice(self):  # SIGTERM heard, counters gathered
    self.sync_point = self.counter + 1


@pytest.fixture
def sync_service(monkeypatch):
  """`sync_service()`: a fresh _SyncService answering
  multihost_utils.reached_preemption_sync_point in a 2-process run."""
  from jax.experimental import multihost_utils
  monkeypatch.setattr(jax, "process_count", lambda: 2)

  def install() -> _SyncService:
    service = _SyncService()
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                        service.reached)
    return service
  return install


def test_multihost_preemption_uses_the_sync_point(sync_service):
  service = sync_service()
  before = signal.getsignal(signal.SIGTERM)
  with Preemption() as p:
    # JAX's preemption service listens for SIGTERM; no Python handler.
    assert signal.getsignal(signal.SIGTERM) is before
    assert [p.check() for _ in range(2)] == [False, False]
    service.notice()
    assert p.check() is True
  assert service.calls == [0, 1, 2, 3]


@pytest.mark.parametrize("notice_after_chunks", [0, 1, 3])
def test_multihost_preemption_survives_orbax_asking_too(
    sync_service, notice_after_chunks):
  """orbax's CheckpointManager.save asks the same service with the training
  step; zoo's counter is that step too, so a notice at any point in the
  loop stops the very next chunk."""
  service = sync_service()
  chunk, step = 16, 48  # resumed at step 48, a checkpoint every chunk
  with Preemption(step) as p:
    for i in range(6):
      if i == notice_after_chunks:
        service.notice()
      step += chunk
      stop = p.check(chunk)
      service.reached(step)  # orbax, saving this step
      if stop:
        break
  assert i == notice_after_chunks
  assert p.requested and step == 48 + chunk * (notice_after_chunks + 1)
  assert service.calls[:48 + chunk] == list(range(1, 49 + chunk))


def test_multihost_preemption_while_a_resumed_run_loads(sync_service):
  """A notice before the loop (the service's counter still 0, so the sync
  point is 1) is heard on entry, and the resumed run stops before
  training; a fresh run only asks 0."""
  service = sync_service()
  with Preemption(48) as p:
    assert not p.requested
  service = sync_service()
  service.notice()
  with Preemption(48) as p:
    assert p.requested
  assert service.calls == list(range(1, 49))
  service.calls.clear()
  with Preemption(0):
    assert service.calls == [0]


def test_a_resumed_run_preempted_while_loading_stops_before_training(
    tmp_path, monkeypatch, sigterm_when_epoch_starts):
  """What the multi-host service answers on entry when SIGTERM came during
  loading: the run exits as preempted from the checkpoint it resumed,
  training nothing and writing nothing."""
  overrides = {"epochs": 2, "batch_size": 128, "checkpoint_every": 4,
               "devices": 1, "data.train_split": "train[:2048]",
               "data.test_split": "test[:128]"}
  with pytest.raises(loop.Preempted, match="saved step 20 "):
    with sigterm_when_epoch_starts(1):
      loop.train("mlp_fashion_mnist", workdir=tmp_path, progress=False,
                 **overrides)
  manager = ckpt_lib.CheckpointManager(tmp_path / "checkpoints")
  saved = manager.steps()
  before = _files_state(tmp_path / "checkpoints")

  class HeardWhileLoading(Preemption):
    def __enter__(self):
      super().__enter__()
      self.requested = True
      return self
  monkeypatch.setattr(loop, "Preemption", HeardWhileLoading)
  with pytest.raises(loop.Preempted, match=f"saved step {saved[-1]} "):
    loop.train("mlp_fashion_mnist", workdir=tmp_path, progress=False,
               **overrides)
  assert manager.steps() == saved
  assert _files_state(tmp_path / "checkpoints") == before


def test_multihost_preemption_without_the_service_warns_once(
    monkeypatch, caplog):
  from jax.experimental import multihost_utils
  monkeypatch.setattr(jax, "process_count", lambda: 2)

  def unavailable(step_id):
    raise RuntimeError("Preemption sync manager has not been initialized.")
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                      unavailable)
  for start in (0, 48):  # a resumed run asks up to its step on entry
    caplog.clear()
    with Preemption(start) as p:
      assert [p.check(n) for n in (1, 16, 1)] == [False] * 3
    assert sum("preemption sync is unavailable" in r.getMessage()
               for r in caplog.records) == 1
