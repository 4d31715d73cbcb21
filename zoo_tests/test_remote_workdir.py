"""A gs:// workdir, against a local stand-in for GCS (zoo_tests/gcs_standin.py:
the GCS JSON API on 127.0.0.1; orbax's tensorstore and etils.epath reach it
as they reach GCS). `zoo train` and `zoo eval` as users run them: the same
numbers as a local workdir, preemption and resume, an unfinished checkpoint
skipped, read faults retried and never taken for damage, a damaged step moved
aside, and the lease that keeps two runs off one workdir."""
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
# 2048 / 64 = 32 steps per epoch, 64 steps, a checkpoint every 16 steps.
ARGS = ["mlp_fashion_mnist", "--epochs", "2", "--batch-size", "64",
        "--checkpoint-every", "16", "--no-progress",
        "--set", "data.train_split='train[:2048]'",
        "--set", "data.test_split='test[:500]'"]
pytestmark = pytest.mark.xdist_group("gcs")


def _env(gcs) -> dict:
  env = dict(os.environ, **gcs.env(), JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _zoo(gcs, *args, timeout=240):
  return subprocess.run([sys.executable, "-m", "zoo.cli", *args], cwd=REPO,
                        env=_env(gcs), capture_output=True, text=True,
                        timeout=timeout)


def _path(uri: str):
  from zoo.training.workdir import as_path
  return as_path(uri)  # as zoo opens it: listings never cached


def _tree(path) -> list[str]:
  """Every file and directory under `path` (epath refuses `**` on GCS)."""
  out = []
  for child in path.iterdir():
    out.append(str(child))
    if child.is_dir():
      out += _tree(child)
  return out


def _result(uri: str) -> dict:
  return json.loads((_path(uri) / "result.json").read_text())


def _steps(uri: str) -> list[int]:
  from zoo.training import checkpoint as ckpt_lib
  return ckpt_lib.CheckpointManager(_path(uri) / "checkpoints").steps()


@pytest.fixture(scope="module")
def local(gcs, tmp_path_factory):
  """The same `zoo train` on a local workdir: its result. It runs as the
  gs:// runs do, in a process with one CPU device: XLA's CPU dot splits its
  work by the devices it was given (measured: the same jitted gradient on one
  device differs in the last bits between 1 and 8 virtual devices), so only
  like processes give bit-identical numbers."""
  workdir = tmp_path_factory.mktemp("local")
  out = _zoo(gcs, "train", *ARGS, "--workdir", str(workdir))
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads((workdir / "result.json").read_text())


@pytest.fixture(scope="module")
def finished(gcs):
  """One uninterrupted `zoo train` on gs://: its URI and output."""
  uri = gcs.uri("finished")
  out = _zoo(gcs, "train", *ARGS, "--workdir", uri)
  assert out.returncode == 0, out.stderr[-3000:]
  return uri, out


def test_a_gs_workdir_holds_the_run_and_matches_a_local_one(finished, local):
  uri, out = finished
  assert f"results in {uri}" in out.stdout
  result = _result(uri)
  assert result["params_sha256"] == local["params_sha256"]
  assert result["test_accuracy"] == local["test_accuracy"]
  root = _path(uri)
  rows = [json.loads(line) for line in
          (root / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in rows] == [1, 2]
  assert json.loads((root / "config.json").read_text())["train"][
      "checkpoint_every"] == 16
  assert (root / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # Orbax kept the newest 3, each committed the GCS way.
  assert _steps(uri) == [32, 48, 64]
  for step in (32, 48, 64):
    assert (root / "checkpoints" / f"step_{step:09d}" /
            "commit_success.txt").exists()
  # No temporary file left anywhere; the lease released.
  names = [p.rsplit("/", 1)[-1] for p in _tree(root)]
  assert not [n for n in names if n.endswith(".tmp")], names
  assert json.loads((root / ".zoo-lease-p0").read_text())["released"] is True


def test_zoo_eval_reads_a_gs_workdir_and_writes_there(gcs, finished):
  uri, _ = finished
  out = _zoo(gcs, "eval", "mlp_fashion_mnist", "--workdir", uri)
  assert out.returncode == 0, out.stderr[-3000:]
  printed = json.loads(out.stdout[out.stdout.index("{"):])
  assert printed["accuracy"] == pytest.approx(_result(uri)["test_accuracy"])
  root = _path(uri)
  assert json.loads((root / "eval.json").read_text())["accuracy"] == (
      printed["accuracy"])
  assert (root / "eval_confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_an_unfinished_gs_checkpoint_is_skipped_and_rewritten(gcs, local):
  """A kill during a save on GCS leaves the step's objects without orbax's
  commit_success.txt: zoo ignores that step, resumes from the one before
  and writes the step again, ending bit-identical."""
  uri = gcs.uri("unfinished")
  assert _zoo(gcs, "train", *ARGS, "--workdir", uri).returncode == 0
  (_path(uri) / "checkpoints" / "step_000000064" /
   "commit_success.txt").unlink()
  assert _steps(uri) == [32, 48]
  out = _zoo(gcs, "train", *ARGS, "--workdir", uri)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed from step 48" in out.stdout
  assert _steps(uri) == [32, 48, 64]
  assert _result(uri)["params_sha256"] == local["params_sha256"]


def test_sigterm_on_gs_resumes_bit_identical_and_a_second_run_is_refused(
    gcs, local):
  uri = gcs.uri("preempted")
  proc = subprocess.Popen(
      [sys.executable, "-m", "zoo.cli", "train", *ARGS, "--workdir", uri],
      cwd=REPO, env=_env(gcs), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  try:
    deadline = time.monotonic() + 180
    while not _steps(uri):
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.monotonic() < deadline, "no checkpoint written"
      time.sleep(0.05)
    # A second run on the same workdir, from another "host", while the
    # first is frozen (SIGSTOP): refused by the first run's lease, touching
    # nothing.
    proc.send_signal(signal.SIGSTOP)
    before = _tree(_path(uri))
    other = _zoo(gcs, "train", *ARGS, "--workdir", uri)
    assert other.returncode == 2
    lines = other.stderr.strip().splitlines()
    assert "in use by another zoo run" in lines[-1]
    assert f"pid {proc.pid}" in lines[-1]
    assert _tree(_path(uri)) == before
    proc.send_signal(signal.SIGTERM)  # delivered when it continues
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  assert proc.returncode == 143, err[-3000:]
  stopped = _steps(uri)[-1]
  assert 16 <= stopped < 64
  out = _zoo(gcs, "train", *ARGS, "--workdir", uri)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resumed from step {stopped}" in out.stdout
  assert _result(uri)["params_sha256"] == local["params_sha256"]


def _lease(uri: str, **record) -> None:
  base = {"host": "elsewhere", "pid": 4242, "since": "2026-11-25T00:00:00",
          "command": "zoo train mlp_fashion_mnist", "token": "f" * 32}
  _path(uri).mkdir(parents=True, exist_ok=True)
  (_path(uri) / ".zoo-lease-p0").write_text(json.dumps({**base, **record}))


def test_a_fresh_lease_refuses_and_a_stale_one_is_taken_over(gcs):
  busy = gcs.uri("busy")
  _lease(busy, renewed=time.time())
  out = _zoo(gcs, "train", *ARGS, "--workdir", busy)
  assert out.returncode == 2
  line = out.stderr.strip().splitlines()[-1]
  assert "in use by another zoo run (host elsewhere, pid 4242" in line
  assert "expires" in line and ".zoo-lease-p0" in line
  assert [p.name for p in _path(busy).iterdir()] == [".zoo-lease-p0"]

  stale = gcs.uri("stale")
  _lease(stale, renewed=time.time() - 600)  # a killed run, 10 minutes ago
  out = _zoo(gcs, "train", *ARGS, "--epochs", "1", "--workdir", stale)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "ended without releasing it" in out.stderr
  assert "host elsewhere, pid 4242" in out.stderr


def test_a_run_whose_lease_was_taken_stops_before_writing(gcs):
  from zoo.training import workdir as workdir_lib
  uri = gcs.uri("taken")
  with workdir_lib.Workdir(uri) as run_dir:
    run_dir.ensure_held()  # its own lease: fine
    _lease(uri, renewed=time.time())  # another run took it over
    with pytest.raises(workdir_lib.WorkdirBusyError,
                       match="taken over by another zoo run .host elsewhere"):
      run_dir.ensure_held()
  # Leaving does not release the other run's lease.
  record = json.loads((_path(uri) / ".zoo-lease-p0").read_text())
  assert record["pid"] == 4242 and not record.get("released")


def test_a_lease_record_without_a_renewal_time_counts_as_stale(gcs, caplog):
  """A damaged or hostile record (renewal time not a number) neither
  crashes the next run nor blocks it forever: it is taken over."""
  from zoo.training import workdir as workdir_lib
  uri = gcs.uri("garbled")
  _lease(uri, renewed="yesterday")
  with workdir_lib.Workdir(uri):
    pass
  assert "ended without releasing it" in caplog.text
  record = json.loads((_path(uri) / ".zoo-lease-p0").read_text())
  assert record["released"] is True and record["pid"] == os.getpid()


def test_an_unknown_scheme_is_one_line(capsys):
  from zoo import cli
  code = cli.main(["train", "mlp_fashion_mnist", "--workdir", "foo://b/run"])
  assert code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["zoo: error: foo://b/run: no storage is known for foo://; "
                 "give a local path or a URI etils.epath reads (gs://, "
                 "s3://, az://, hf://)."]


def test_a_remote_clients_errors_become_one_workdir_error():
  """What gcsfs and aiohttp raise for an unreachable host is an OSError
  without an errno (measured: `--workdir gs://...` with the endpoint on a
  closed port ends in this line, exit 2, after gcsfs's retries, ~40 s)."""
  from zoo.training import workdir as workdir_lib
  for raised, says in (
      (OSError("Cannot connect to host 127.0.0.1:9"),
       "OSError: Cannot connect to host 127.0.0.1:9; check the URI, your "
       "credentials and the network."),
      (RuntimeError("401 Unauthorized\nmore"),
       "RuntimeError: 401 Unauthorized; check the URI"),
      (PermissionError(13, "Permission denied"),
       "Permission denied; fix the permissions")):
    with pytest.raises(workdir_lib.WorkdirError,
                       match="could not open the workdir gs://b/r: "
                       + re.escape(says)):
      with workdir_lib.remote_errors("open the workdir gs://b/r", True):
        raise raised
  with pytest.raises(RuntimeError):  # a local workdir's errors pass through
    with workdir_lib.remote_errors("open", False):
      raise RuntimeError("x")


def test_lease_seconds_from_the_environment_is_checked(monkeypatch):
  from zoo.training import workdir as workdir_lib
  monkeypatch.setenv("ZOO_LEASE_SECONDS", "5")
  assert workdir_lib.lease_seconds() == 5.0
  for bad in ("soon", "0", "-3", "nan", "inf"):
    monkeypatch.setenv("ZOO_LEASE_SECONDS", bad)
    with pytest.raises(workdir_lib.WorkdirError, match="ZOO_LEASE_SECONDS"):
      workdir_lib.lease_seconds()


# --- storage faults and damage on gs:// (runs in this process) ---------------

# logreg, 1024 / 128 = 8 steps, a checkpoint every 4: steps 4 and 8.
TINY = dict(epochs=1, batch_size=128, checkpoint_every=4, devices=1,
            progress=False, **{"data.train_split": "train[:1024]",
                               "data.test_split": "test[:128]",
                               "train.loop": "python"})
TINY_CLI = ["train", "logreg_fashion_mnist", "--epochs", "1", "--batch-size",
            "128", "--checkpoint-every", "4", "--devices", "1",
            "--no-progress", "--set", "data.train_split='train[:1024]'",
            "--set", "data.test_split='test[:128]'",
            "--set", "train.loop='python'"]


def _train_tiny(uri: str):
  from zoo.training import loop
  return loop.train("logreg_fashion_mnist", workdir=uri, **TINY)


def _files(path) -> dict[str, bytes]:
  return {p[len(str(path)):]: _path(p).read_bytes() for p in _tree(path)
          if not _path(p).is_dir()}


@pytest.mark.parametrize("lasting", [False, True])
def test_gs_read_errors_are_retried_then_one_line_changing_nothing(
    gcs, monkeypatch, caplog, capsys, lasting):
  """What gcsfs raises for a dropped connection (an OSError without an
  errno) while orbax reads the newest step's meta: twice, and the run
  resumes from that step; always, and `zoo train` stops with one line,
  exit 2, every checkpoint where it was."""
  from etils import epath
  from zoo import cli
  from zoo.training import checkpoint as ckpt_lib
  uri = gcs.uri(f"flaky-{lasting}")
  _train_tiny(uri)
  before = _files(_path(uri) / "checkpoints")
  real, calls = epath.gpath._GPath.open, []

  def flaky(self, *args, **kwargs):
    if "step_000000008/meta" in str(self) and (lasting or len(calls) < 2):
      calls.append(str(self))
      raise OSError("Cannot connect to host 127.0.0.1 (injected)")
    return real(self, *args, **kwargs)
  monkeypatch.setattr(epath.gpath._GPath, "open", flaky)
  monkeypatch.setattr(ckpt_lib, "READ_RETRY_DELAYS", (0.0, 0.0))
  if not lasting:
    with caplog.at_level(logging.INFO, logger="zoo.train"):
      _train_tiny(uri)
    assert "resumed from step 8" in caplog.text and len(calls) == 2
  else:
    code = cli.main([*TINY_CLI, "--workdir", uri])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert (f"could not read checkpoint {uri}/checkpoints/step_000000008 "
            "(meta): OSError: Cannot connect") in err
    assert "Nothing was changed" in err and len(calls) == 3
  monkeypatch.undo()
  assert _files(_path(uri) / "checkpoints") == before


def test_a_damaged_gs_checkpoint_is_moved_aside_and_the_run_resumes(
    gcs, caplog):
  uri = gcs.uri("damaged")
  first = _train_tiny(uri)
  ckdir = _path(uri) / "checkpoints"
  state = {p: _path(p).read_bytes() for p in _tree(ckdir / "step_000000008")
           if "/state/" in p and "/d/" in p and not _path(p).is_dir()}
  biggest = max(state, key=lambda p: len(state[p]))
  data = bytearray(state[biggest])
  data[len(data) // 2] ^= 0xFF
  _path(biggest).write_bytes(bytes(data))
  damaged = _files(ckdir / "step_000000008")
  with caplog.at_level(logging.WARNING, logger="zoo.checkpoint"):
    again = _train_tiny(uri)
  assert (f"moved the damaged checkpoint {uri}/checkpoints/step_000000008 "
          "aside to damaged_step_000000008") in caplog.text
  assert again.result["params_sha256"] == first.result["params_sha256"]
  assert _steps(uri) == [4, 8]  # resumed from 4, step 8 written again
  assert _files(ckdir / "damaged_step_000000008") == damaged  # kept whole
  # Starting over moves everything aside (copies and deletes on GCS).
  kept = _files(ckdir)
  from zoo.training import loop
  fresh = loop.train("logreg_fashion_mnist", workdir=uri, resume=False,
                     **TINY)
  assert fresh.result["params_sha256"] == first.result["params_sha256"]
  assert _steps(uri) == [4, 8]
  assert _files(_path(uri) / "previous_checkpoints") == kept
