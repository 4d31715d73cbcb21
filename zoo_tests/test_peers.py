"""A lost process of a multi-host job (SIGKILL) makes the others exit with
one line and peers.LOST_EXIT_CODE within --peer-timeout and a margin; a run
that ends well is never reported, even with a timeout shorter than its
compile; a process that fails stops the others at once. Real processes:
2 x 1 CPU device on 127.0.0.1, mlp_fashion_mnist on a small subset."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from zoo.training import distributed, peers

REPO = Path(__file__).resolve().parents[1]
MODEL = "mlp_fashion_mnist"
PEER_TIMEOUT = 5
# The watchdog needs peer_timeout plus up to two heartbeats (5/4 s each);
# the rest is slack for a busy machine.
BOUND_S = PEER_TIMEOUT + 10


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env() -> dict:
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return env


def _start(argv) -> subprocess.Popen:
  """A process in a session of its own, so that `_kill_all` also ends
  process 0's coordination service companion."""
  return subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          start_new_session=True)


def _train(port, process_id, workdir, *extra) -> subprocess.Popen:
  return _start([
      sys.executable, "-m", "zoo.cli", "train", MODEL,
      "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
      "--process-id", str(process_id), "--workdir", str(workdir),
      "--set", "data.train_split=train[:4096]",
      "--set", "data.test_split=test[:500]", "--epochs", "20",
      "--batch-size", "64", "--devices", "1", "--no-progress", *extra])


def _kill_all(procs) -> None:
  """Kills each process's group: it, and process 0's companion, which may
  outlive it for a while by design."""
  for p in procs:
    with contextlib.suppress(ProcessLookupError, PermissionError):
      os.killpg(p.pid, signal.SIGKILL)
    p.kill()
    p.communicate()


def _wait_for_training(procs, metrics: Path, timeout=120) -> None:
  """Until process 0 has written its first epoch: both are training."""
  deadline = time.monotonic() + timeout
  while not (metrics.exists() and metrics.read_text().strip()):
    for p in procs:
      if p.poll() is not None:
        out, err = p.communicate()
        pytest.fail(f"a process ended before training: {err[-3000:]}")
    assert time.monotonic() < deadline, "no epoch within the time limit"
    time.sleep(0.2)


def _zoo_lines(err: str) -> list[str]:
  return [line for line in err.splitlines() if line.startswith("zoo: error")]


@pytest.mark.parametrize("victim", [1, 0])
def test_a_lost_process_ends_the_other_with_one_line(tmp_path, victim):
  """SIGKILL one process mid-training: the other exits with status 75 and
  one `zoo: error: lost process ...` line, within the peer timeout and a
  margin; killing process 0 (the coordinator) too, since its coordination
  service runs in a companion process that outlives it."""
  port = _free_port()
  procs = [_train(port, i, tmp_path / "w0", "--peer-timeout",
                  str(PEER_TIMEOUT)) for i in range(2)]
  try:
    _wait_for_training(procs, tmp_path / "w0" / "metrics.jsonl")
    os.kill(procs[victim].pid, signal.SIGKILL)
    killed = time.monotonic()
    survivor = procs[1 - victim]
    out, err = survivor.communicate(timeout=BOUND_S + 30)
    elapsed = time.monotonic() - killed
  finally:
    _kill_all(procs)
  assert survivor.returncode == peers.LOST_EXIT_CODE, err[-3000:]
  assert "Traceback" not in err and "stack trace" not in err, err[-3000:]
  [line] = _zoo_lines(err)
  assert line.startswith(f"zoo: error: lost process {victim} of 2"), line
  assert "restart every process with the same command" in line
  assert ("the coordinator" in line) == (victim == 0)
  # Found by zoo's watchdog, neither sooner (JAX's abort) nor much later.
  assert PEER_TIMEOUT - 2 < elapsed < BOUND_S, (elapsed, err[-3000:])


def test_no_false_alarm_when_both_finish(tmp_path):
  """A peer timeout (1 s) shorter than the compile: both run to the end and
  exit 0, process 1 before process 0 (which writes the results) or after."""
  port = _free_port()
  procs = [_train(port, i, tmp_path / "w0", "--peer-timeout", "1",
                  "--epochs", "2") for i in range(2)]
  try:
    outs = [p.communicate(timeout=180) for p in procs]
  finally:
    _kill_all(procs)
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    assert "zoo: error" not in err and "Traceback" not in err, err[-3000:]
    assert "test accuracy" in out
  result = json.loads((tmp_path / "w0" / "result.json").read_text())
  assert result["processes"] == 2
  # The heartbeats went on while the main threads compiled.
  assert result["compile_seconds"] > 1, result["compile_seconds"]


_FAILING = """
import sys, time
from zoo.errors import ZooError
from zoo.training import distributed, peers
port, pid = sys.argv[1], int(sys.argv[2])
distributed.initialize(f"127.0.0.1:{port}", 2, pid, peer_timeout=2)
try:
  with peers.watching(2):
    if pid == 1:
      raise ZooError("disk full")
    time.sleep(60)  # process 0 waits, as in a collective
except ZooError as e:
  print(f"zoo: error: {e}", file=sys.stderr)
  sys.exit(2)
"""


def test_a_failing_process_stops_the_others_at_once(tmp_path):
  """A process that fails (here a ZooError) tells the others, which exit
  with status 75 well before the peer timeout would; it exits with its own
  status at once instead of waiting in JAX's shutdown barrier."""
  script = tmp_path / "failing.py"
  script.write_text(_FAILING)
  port = _free_port()
  procs = [_start([sys.executable, str(script), str(port), str(i)])
           for i in range(2)]
  try:
    t = time.monotonic()
    outs = [p.communicate(timeout=90) for p in procs]
    elapsed = time.monotonic() - t
  finally:
    _kill_all(procs)
  (_, err0), (_, err1) = outs
  assert procs[1].returncode == 2, err1[-3000:]
  assert _zoo_lines(err1) == ["zoo: error: disk full"], err1[-3000:]
  assert procs[0].returncode == peers.LOST_EXIT_CODE, err0[-3000:]
  [line] = _zoo_lines(err0)
  assert line.startswith("zoo: error: process 1 of 2 stopped with an error")
  assert "stack trace" not in err0 + err1
  assert elapsed < 30, elapsed  # start-up included; JAX alone takes 32 s+


# -- the watchdog alone, with a store in memory ------------------------------

class _Store:
  """JAX's key-value store client, in memory; `down` makes it unreachable."""

  def __init__(self):
    self.values, self.down = {}, False

  def key_value_set(self, key, value, allow_overwrite=False):
    if self.down:
      raise RuntimeError("UNAVAILABLE: Socket closed")
    self.values[key] = value

  def key_value_dir_get(self, prefix):
    if self.down:
      raise RuntimeError("UNAVAILABLE: Socket closed")
    return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


@pytest.fixture
def verdicts(monkeypatch):
  """What the watchdog would print and exit with, instead of exiting."""
  got, said = [], threading.Event()

  def exit_now(error, status, linger=0.0):
    got.append((str(error), status))
    said.set()
    threading.Event().wait()  # as os._exit: this thread goes no further
  monkeypatch.setattr(distributed, "exit_now", exit_now)
  return got, said


def _beat_forever(store, key, stop):
  n = 0
  while not stop.is_set():
    n += 1
    store.key_value_set(key, str(n))
    stop.wait(0.02)


def test_watchdog_blames_the_silent_peer_not_the_done_one(verdicts):
  got, said = verdicts
  store, stop = _Store(), threading.Event()
  store.key_value_set(f"{peers.PREFIX}1", peers.DONE)  # finished: fine
  threading.Thread(target=_beat_forever, daemon=True,
                   args=(store, f"{peers.PREFIX}2", stop)).start()
  store.key_value_set(f"{peers.PREFIX}3", "7")  # silent from now on
  peers.Watchdog(store, 0, 4, timeout=0.4).start()
  try:
    assert said.wait(10)
  finally:
    stop.set()
  [(message, status)] = got
  assert status == peers.LOST_EXIT_CODE
  assert message.startswith("lost process 3 of 4 (no heartbeat for"), message


def test_watchdog_reports_an_unreachable_store_as_the_coordinator(verdicts):
  got, said = verdicts
  store = _Store()
  watchdog = peers.Watchdog(store, 1, 2, timeout=0.4).start()
  store.key_value_set(f"{peers.PREFIX}0", "1")
  store.down = True
  assert said.wait(10)
  [(message, status)] = got
  assert status == peers.LOST_EXIT_CODE
  assert message.startswith("lost process 0 of 2, the coordinator"), message
  assert not watchdog.finished


def test_watchdog_ends_quietly_once_everyone_is_done(verdicts):
  got, said = verdicts
  store = _Store()
  watchdog = peers.Watchdog(store, 0, 2, timeout=0.4).start()
  store.key_value_set(f"{peers.PREFIX}1", peers.DONE)
  watchdog.done()
  watchdog._thread.join(10)
  assert not watchdog._thread.is_alive()
  store.down = True  # the service stops after the last one finished
  time.sleep(0.6)
  assert got == [] and store.values[f"{peers.PREFIX}0"] == peers.DONE
