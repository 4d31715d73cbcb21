"""A pod's life with real processes: 2 processes x 2 CPU devices through
jax.distributed (gloo) on 127.0.0.1, `zoo train` as a user runs it on each
host, under pmap and mesh. Every epoch ends in a shorter chunk. Preemption
of every process, a lost host and a restart of the job, a failing process,
hosts without shared storage, and a resume on another layout. Every process
is bounded in time and killed in a `finally`, so nothing hangs when a peer
dies."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from zoo.training import checkpoint as ckpt_lib
from zoo.training.workdir import as_path

REPO = Path(__file__).resolve().parents[1]
# 4000 // 64 = 62 steps per epoch, a checkpoint every 16: chunks of 16, 16,
# 16 and a short 14 in every epoch; 248 steps.
ARGS = ["mlp_fashion_mnist", "--epochs", "4", "--batch-size", "64",
        "--checkpoint-every", "16", "--no-progress",
        "--set", "data.train_split='train[:4000]'",
        "--set", "data.test_split='test[:500]'"]
TOTAL = 248
STRATEGIES = ["pmap", "mesh"]
HEARTBEAT_S = 10  # --heartbeat-timeout of the host-loss runs
# One worker runs the whole file, so that its module fixtures run once.
pytestmark = pytest.mark.xdist_group("pod")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int = 2, extra=None) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(extra or {}))
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _start(workdirs, processes=2, devices=2, env=None, strategy="pmap",
           extra=()):
  """One `zoo train` per process, process i on workdirs[i]; `extra`: more
  flags for every process, or a list of them, one per process."""
  port = _free_port()
  procs = []
  for i in range(processes):
    multihost = (["--coordinator-address", f"127.0.0.1:{port}",
                  "--num-processes", str(processes), "--process-id", str(i)]
                 if processes > 1 else [])
    more = extra[i] if extra and isinstance(extra[0], list) else list(extra)
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "zoo.cli", "train", *ARGS, "--strategy",
         strategy, "--workdir", str(workdirs[i]), *multihost, *more],
        cwd=REPO, env=_env(devices, env), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
  return procs


def _finish(procs, timeout=240):
  """[(returncode, stdout, stderr)] of every process; kills them all if
  any outlives `timeout`."""
  try:
    outs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  return [(p.returncode, *o) for p, o in zip(procs, outs)]


def _run(workdirs, **kw):
  return _finish(_start(workdirs, **kw))


def _ok(outs):
  for code, _, err in outs:
    assert code == 0, err[-3000:]
  return outs


def _result(workdir) -> dict:
  return json.loads((as_path(workdir) / "result.json").read_text())


def _final_params(workdir):
  manager = ckpt_lib.CheckpointManager(as_path(workdir) / "checkpoints")
  return ocp.StandardCheckpointer().restore(
      manager.path(max(manager.steps())) / "state")["params"]


def _wait_for_step(workdir, procs, min_step: int, timeout=180):
  manager = ckpt_lib.CheckpointManager(as_path(workdir) / "checkpoints")
  deadline = time.monotonic() + timeout
  while not any(s >= min_step for s in manager.steps()):
    if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
      outs = _finish(procs, timeout=5)
      pytest.fail(f"no checkpoint at step >= {min_step}: {outs}")
    time.sleep(0.02)


def _per_strategy(tmp_path_factory, run):
  """A module-scoped cache: strategy -> run(strategy, its own directory)."""
  done = {}

  def get(strategy):
    if strategy not in done:
      done[strategy] = run(strategy, tmp_path_factory.mktemp(strategy))
    return done[strategy]
  return get


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """strategy -> (workdir, result) of the 2 x 2 run, uninterrupted, on a
  shared workdir."""
  def run(strategy, workdir):
    _ok(_run([workdir, workdir], strategy=strategy))
    return workdir, _result(workdir)
  return _per_strategy(tmp_path_factory, run)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  """strategy -> (workdir, result) of 1 process x 4 devices."""
  def run(strategy, workdir):
    _ok(_run([workdir], processes=1, devices=4, strategy=strategy))
    return workdir, _result(workdir)
  return _per_strategy(tmp_path_factory, run)


@pytest.fixture(scope="module")
def preempted(tmp_path_factory):
  """strategy -> (workdir, outputs) of the 2 x 2 run SIGTERMed on every
  process after its first checkpoint (step 16)."""
  def run(strategy, workdir):
    procs = _start([workdir, workdir], strategy=strategy)
    _wait_for_step(workdir, procs, 16)
    for p in procs:
      p.send_signal(signal.SIGTERM)
    return workdir, _finish(procs)
  return _per_strategy(tmp_path_factory, run)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_hosts_of_two_devices_train_as_one_host_of_four(
    strategy, uninterrupted, one_process):
  """The same steps, batches and evaluation; the parameters equal to float
  tolerance, not bit for bit: gloo's ring all-reduce sums each gradient
  element in an order that depends on its place in the ring, XLA's
  in-process all-reduce in device order (docs: pods)."""
  (two_dir, two), (one_dir, one) = uninterrupted(strategy), one_process(
      strategy)
  assert (two["processes"], two["devices"]) == (2, 4)
  assert (one["processes"], one["devices"]) == (1, 4)
  assert two["steps"] == one["steps"] == TOTAL
  assert two["test_examples"] == one["test_examples"] == 500
  assert abs(two["test_accuracy"] - one["test_accuracy"]) <= 0.01
  # Last-bit differences of the first steps, grown by 248 Adam steps:
  # each tensor within 1e-3 of the other's norm.
  two_params, one_params = _final_params(two_dir), _final_params(one_dir)
  chex.assert_trees_all_equal_shapes_and_dtypes(two_params, one_params)
  for a, b in zip(jax.tree.leaves(two_params), jax.tree.leaves(one_params)):
    assert np.linalg.norm(a - b) <= 1e-3 * np.linalg.norm(b)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sigterm_to_every_process_then_resume_is_bit_identical(
    strategy, preempted, uninterrupted, tmp_path):
  workdir, outs = preempted(strategy)
  saved = []
  for code, _, err in outs:
    assert code == 143, err[-3000:]
    assert "Traceback" not in err
    saved.append(int(re.search(r"saved step (\d+) ", err).group(1)))
  assert saved[0] == saved[1] < TOTAL  # the same step on every process
  manager = ckpt_lib.CheckpointManager(workdir / "checkpoints")
  assert max(manager.steps()) == saved[0]
  assert not (workdir / "result.json").exists()
  resumed = tmp_path / "resumed"
  shutil.copytree(workdir, resumed)  # the layout test below uses the original
  outs = _ok(_run([resumed, resumed], strategy=strategy))
  assert f"resumed from step {saved[0]}" in outs[0][1]
  result = _result(resumed)
  assert result["processes"] == 2 and result["devices"] == 4
  want = uninterrupted(strategy)[1]
  assert result["params_sha256"] == want["params_sha256"]
  assert result["test_accuracy"] == want["test_accuracy"]


@pytest.mark.parametrize("victim", [1, 0])
def test_a_lost_host_ends_the_job_and_a_restart_resumes_bit_identical(
    victim, uninterrupted, tmp_path):
  """SIGKILL one process mid-run: JAX's heartbeat (or, for process 0, the
  coordination service going away) ends the survivor non-zero within
  --heartbeat-timeout and a margin; re-running the whole job, as a
  scheduler does, resumes from the last committed step to the uninterrupted
  run's parameters, bit for bit."""
  workdir = tmp_path / "job"
  procs = _start([workdir, workdir],
                 extra=["--heartbeat-timeout", str(HEARTBEAT_S)])
  _wait_for_step(workdir, procs, 16)
  procs[victim].kill()
  t = time.monotonic()
  survivor = procs[1 - victim]
  try:
    survivor.wait(timeout=HEARTBEAT_S + 50)
  except subprocess.TimeoutExpired:
    pass
  elapsed = time.monotonic() - t
  (code, _, err), = _finish([survivor], timeout=1)
  _finish(procs, timeout=1)
  assert elapsed < HEARTBEAT_S + 50, "the survivor did not stop"
  assert code not in (0, None), err[-3000:]
  # JAX's heartbeat (or the coordination service's end) aborts it, or a
  # collective it was in fails first, which zoo names in one line.
  assert ("JAX distributed service detected fatal errors" in err
          or "zoo: error: a collective with the other processes failed" in
          err), err[-3000:]
  committed = max(ckpt_lib.CheckpointManager(workdir / "checkpoints").steps())
  assert 16 <= committed < TOTAL
  outs = _ok(_run([workdir, workdir]))
  resumed = int(re.search(r"resumed from step (\d+)", outs[0][1]).group(1))
  assert resumed >= committed
  assert _result(workdir)["params_sha256"] == uninterrupted("pmap")[1][
      "params_sha256"]


def test_a_failing_process_stops_the_job_without_waiting(tmp_path):
  """Process 1 cannot find its data: it prints its one line and exits 2 at
  once (no shutdown barrier wait); process 0, waiting for it in the job,
  is ended by JAX's heartbeat within the timeout; nothing is saved."""
  workdir = tmp_path / "job"
  empty = tmp_path / "no-data"
  empty.mkdir()
  t = time.monotonic()
  procs = _start([workdir, workdir],
                 extra=[["--heartbeat-timeout", str(HEARTBEAT_S)],
                        ["--heartbeat-timeout", str(HEARTBEAT_S),
                         "--data-dir", str(empty)]])
  outs = _finish(procs, timeout=HEARTBEAT_S + 80)
  elapsed = time.monotonic() - t
  (code0, _, err0), (code1, _, err1) = outs
  assert code1 == 2, err1[-3000:]
  assert err1.strip().splitlines()[-1].startswith(
      "zoo: error: Fashion-MNIST not found")
  assert "Traceback" not in err1
  assert code0 not in (0, None), err0[-3000:]
  assert elapsed < HEARTBEAT_S + 80
  assert not (workdir / "result.json").exists()


def test_a_pod_on_a_gs_workdir_preempts_and_resumes_bit_identical(
    gcs, uninterrupted):
  """Both processes on one gs:// workdir (the local GCS stand-in): orbax
  writes through tensorstore's GCS driver, zoo's files and each process's
  lease through etils.epath."""
  uri = gcs.uri("pod")
  procs = _start([uri, uri], env=gcs.env())
  _wait_for_step(uri, procs, 16)
  for p in procs:
    p.send_signal(signal.SIGTERM)
  saved = []
  for code, _, err in _finish(procs):
    assert code == 143, err[-3000:]
    saved.append(int(re.search(r"saved step (\d+) ", err).group(1)))
  assert saved[0] == saved[1] < TOTAL
  for i in (0, 1):  # each process released its own lease
    lease = json.loads((as_path(uri) / f".zoo-lease-p{i}").read_text())
    assert lease["released"] is True
  outs = _ok(_run([uri, uri], env=gcs.env()))
  assert f"resumed from step {saved[0]}" in outs[0][1]
  result = _result(uri)
  want = uninterrupted("pmap")[1]
  assert result["params_sha256"] == want["params_sha256"]
  assert result["test_accuracy"] == want["test_accuracy"]


def test_resume_on_another_layout_matches_to_tolerance(preempted,
                                                       uninterrupted):
  """The preempted 2 x 2 run resumed by one process with 2 devices: it
  says the result matches only to tolerance, and it does."""
  workdir, _ = preempted("pmap")
  outs = _run([workdir], processes=1, devices=2)
  code, out, err = outs[0]
  assert code == 0, err[-3000:]
  assert "written on 4 device(s) in 2 process(es)" in err
  assert "only to float tolerance" in err
  result = _result(workdir)
  assert result["processes"] == 1 and result["devices"] == 2
  assert result["steps"] == TOTAL
  want = uninterrupted("pmap")[1]
  assert abs(result["test_accuracy"] - want["test_accuracy"]) <= 0.01
  manager = ckpt_lib.CheckpointManager(workdir / "checkpoints")
  final = ocp.StandardCheckpointer().restore(
      manager.path(TOTAL) / "state")["params"]
  assert final  # restores with orbax alone


def test_workdirs_that_are_not_shared_stop_with_one_clear_line(tmp_path):
  """Each host its own local workdir: both processes refuse at start, with
  the same one-line reason naming the process that cannot see process 0's
  writes, and nothing is trained or half-saved; never a hang."""
  local = [tmp_path / "host0", tmp_path / "host1"]
  t0 = time.monotonic()
  outs = _run(local)
  assert time.monotonic() - t0 < 120
  lines = []
  for code, out, err in outs:
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("zoo: error: the workdir is not shared: "
                           "process(es) 1 of 2")
    lines.append(last.split(" in ")[0])
  assert lines[0] == lines[1]
  for d in local:
    assert not (d / "checkpoints").exists() or not list(
        (d / "checkpoints").iterdir())
    assert not (d / "result.json").exists()


def test_processes_that_see_different_checkpoints_do_not_resume(
    tmp_path, monkeypatch):
  """The second line of defence, behind the shared-storage check: if the
  processes' views of the checkpoints differ (storage that is shared but
  not consistent), every process refuses to restore, naming each view."""
  import jax
  from jax.experimental import multihost_utils
  from zoo.errors import ZooError
  from zoo.training import run as run_lib
  manager = ckpt_lib.CheckpointManager(tmp_path, keep=5)
  tree = {"w": np.ones(3, np.float32)}
  for step in (16, 32):
    manager.save(step, tree, {})
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  other = np.array([1, 16], np.int64)  # process 1 sees only step 16
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda mine: np.stack([mine, other]))
  with pytest.raises(ZooError, match=r"disagree .*process 0 sees 2 up to "
                     r"step 32; process 1 sees 1 up to step 16.*shares"):
    run_lib.agree_on_checkpoints(manager)
  other[:] = [2, 32]  # the same view: nothing to say
  run_lib.agree_on_checkpoints(manager)
