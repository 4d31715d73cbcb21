"""The `zoo` command's error contract: a user's mistake is a ZooError, printed
as ONE line `zoo: error: ...` with status 2 and no traceback, refused before
any device work or data loading; a bug still raises."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zoo import cli
from zoo.cli import info as cli_info
from zoo import data as zoo_data
from zoo.errors import DistributedError, ZooError
from zoo.training import distributed, loop

MODEL = "mlp_fashion_mnist"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_work(monkeypatch):
  """Fails the test if `zoo train` gets as far as data, devices or JAX's
  multi-host runtime."""
  def no(*args, **kwargs):
    raise AssertionError("device or data work before validation")
  monkeypatch.setattr(loop, "train", no)
  monkeypatch.setattr(zoo_data, "load", no)
  monkeypatch.setattr(distributed.jax.distributed, "initialize", no)


def _one_line_error(capsys, *argv) -> str:
  code = cli.main(list(argv))
  out, err = capsys.readouterr()
  assert code == 2, err
  assert out == ""
  assert err.startswith("zoo: error: ") and err.count("\n") == 1, err
  assert "Traceback" not in err
  return err


# -- zoo train: flags and --set values, each naming the key and the range -------

@pytest.mark.parametrize("args, words", [
    (["--seed", "-1"], ["--seed", "train.seed", "-1", "0..4294967295"]),
    (["--seed", "99999999999999999999"],
     ["--seed", "99999999999999999999", "0..4294967295"]),
    (["--seed", str(2**32)], ["--seed", str(2**32)]),
    (["--checkpoint-every", "-5"],
     ["--checkpoint-every", "-5", ">= 0", "0 to save only at the end"]),
    (["--epochs", "-1"], ["--epochs", "-1", ">= 1"]),
    (["--epochs", "0"], ["--epochs (train.epochs)", "an int >= 1", "got 0",
                         "train.steps"]),
    (["--steps", "0"], ["--steps", "an int >= 1", "got 0", "--epochs"]),
    (["--steps", "-3"], ["--steps", "got -3"]),
    (["--set", "train.epochs=1.5"], ["train.epochs must be an int like 10"]),
    (["--batch-size", "0"], ["--batch-size", "train.batch_size", ">= 1"]),
    (["--set", "train.eval_batch_size=0"], ["train.eval_batch_size", ">= 1"]),
    (["--set", "train.keep_checkpoints=0"], ["train.keep_checkpoints", ">= 1"]),
    (["--set", "train.seed=-3"], ["train.seed", "-3"]),
    (["--devices", "0"], ["--devices", "got 0", ">= 1", "leave it out"]),
    (["--devices", "-2"], ["--devices", "-2", ">= 1"]),
    (["--set", "schedule.warmup_steps=-10"],
     ["schedule.warmup_steps", "-10", ">= 0", "no warm-up"]),
    (["--set", "schedule.end_factor=-0.5"], ["schedule.end_factor", "-0.5"]),
    (["--set", "optimizer.learning_rate=0"],
     ["optimizer.learning_rate", "> 0", "1e-3"]),
    (["--set", "optimizer.learning_rate=-1e-3"],
     ["optimizer.learning_rate", "-0.001"]),
    (["--set", "optimizer.learning_rate=nan"],
     ["optimizer.learning_rate", "nan", "finite"]),
    (["--set", "optimizer.learning_rate=inf"],
     ["optimizer.learning_rate", "inf", "finite"]),
    (["--set", "optimizer.b1=nan"], ["optimizer.b1", "nan", "finite"]),
    (["--set", "loss.label_smoothing=1.0"],
     ["loss.label_smoothing", "1.0", "[0, 1)"]),
    (["--set", "loss.l2=-0.1"], ["loss.l2", "-0.1", ">= 0"]),
    (["--set", "model.hidden_sizes=[-5]"],
     ["model.hidden_sizes", "[-5]", "positive int"]),
    (["--set", "model.dropout=1.5"], ["model.dropout", "1.5", "[0, 1)"]),
    (["--set", "model.activation=gleu"],
     ["model.activation", "'gleu'", "did you mean gelu"]),
    (["--set", "model.initializer=he"], ["model.initializer", "he_normal"]),
    (["--num-processes", "2"],
     ["--num-processes", "--coordinator-address", "--process-id"]),
    (["--process-id", "5", "--num-processes", "2"],
     ["--coordinator-address"]),
    (["--process-id", "5", "--num-processes", "2", "--coordinator-address",
      "127.0.0.1:1234"], ["--process-id", "0..1", "got 5"]),
    (["--process-id", "0", "--num-processes", "0", "--coordinator-address",
      "127.0.0.1:1234"], ["--num-processes", ">= 1", "got 0"]),
    (["--process-id", "0", "--num-processes", "-1", "--coordinator-address",
      "127.0.0.1:1234"], ["--num-processes", "got -1"]),
    (["--process-id", "0", "--num-processes", "2", "--coordinator-address",
      "localhost"], ["--coordinator-address", "HOST:PORT", "'localhost'"]),
    (["--process-id", "0", "--num-processes", "2", "--coordinator-address",
      "127.0.0.1:99999"], ["--coordinator-address", "1..65535"]),
    (["--process-id", "0", "--num-processes", "2", "--coordinator-address",
      "host:port"], ["--coordinator-address", "'host:port'"]),
    (["--init-timeout", "0"], ["--init-timeout", "> 0"]),
    (["--init-timeout", "nan"], ["--init-timeout", "nan"]),
    (["--heartbeat-timeout", "0"], ["--heartbeat-timeout", "> 0", "e.g. 100"]),
    (["--heartbeat-timeout", "-5"], ["--heartbeat-timeout", "-5.0"]),
    (["--heartbeat-timeout", "inf"], ["--heartbeat-timeout", "inf"]),
])
def test_train_refuses_bad_values_in_one_line(capsys, no_work, args, words):
  err = _one_line_error(capsys, "train", MODEL, *args)
  for word in words:
    assert word in err, err


def test_valid_boundaries_pass_validation(capsys, monkeypatch):
  """The edges of each range are allowed: validation lets the run start."""
  started = []

  def train(entry, **kwargs):
    started.append(entry.config)
    raise ZooError("stopped where training would start")
  monkeypatch.setattr(loop, "train", train)
  monkeypatch.setattr(distributed, "initialize", lambda *a, **k: False)
  _one_line_error(capsys, "train", MODEL, "--seed", str(2**32 - 1),
                  "--checkpoint-every", "0", "--epochs", "1",
                  "--set", "schedule.warmup_steps=0",
                  "--set", "loss.label_smoothing=0.99",
                  "--set", "model.hidden_sizes=[1]",
                  "--set", "model.dropout=0.0")
  [cfg] = started
  assert cfg["train"]["seed"] == 2**32 - 1
  assert cfg["model"]["hidden_sizes"] == [1]


def test_a_multi_line_zoo_error_prints_one_line(capsys, monkeypatch):
  def fail(args):
    raise ZooError("dataset not found. Places looked:\n  - /a\n  - /b\n"
                   "How to get it:\n  - download it")
  monkeypatch.setattr(cli_info, "run", fail)
  err = _one_line_error(capsys, "info", MODEL)
  assert err == ("zoo: error: dataset not found. Places looked: - /a - /b "
                 "How to get it: - download it\n")


def test_a_bug_is_not_swallowed(monkeypatch):
  """Only ZooErrors are user errors: a KeyError or FileNotFoundError from a
  bug keeps its traceback."""
  for exc in (KeyError("oops"), FileNotFoundError("oops")):
    def fail(args, exc=exc):
      raise exc
    monkeypatch.setattr(cli_info, "run", fail)
    with pytest.raises(type(exc)):
      cli.main(["info", MODEL])


def test_interrupt_is_130(capsys, monkeypatch):
  def interrupt(args):
    raise KeyboardInterrupt
  monkeypatch.setattr(cli_info, "run", interrupt)
  assert cli.main(["info", MODEL]) == 130
  assert capsys.readouterr().err == "zoo: interrupted\n"


def test_library_logs_are_one_line_each_and_restored(capsys, monkeypatch):
  """A library's retry log with a traceback (gcsfs does this before an
  unreachable bucket's error) prints one line before zoo's own; the
  logging set-up of the caller is back afterwards."""
  import logging
  root = logging.getLogger()
  before = (list(root.handlers), root.level)

  def fail(args):
    try:
      raise ConnectionError("Cannot connect to host 127.0.0.1:9")
    except ConnectionError:
      logging.getLogger("gcsfs.retry").exception(
          "_request out of retries on exception:\n  details")
    logging.getLogger("zoo.train").warning("a zoo\n   warning")
    logging.getLogger("zoo.train").info("not shown")
    raise ZooError("could not open the workdir gs://b/run")
  monkeypatch.setattr(cli_info, "run", fail)
  assert cli.main(["info", MODEL]) == 2
  err = capsys.readouterr().err
  assert err.splitlines() == [
      "gcsfs: error: _request out of retries on exception: details",
      "zoo: warning: a zoo warning",
      "zoo: error: could not open the workdir gs://b/run"]
  assert (list(root.handlers), root.level) == before


# -- usage errors (argparse) are one line too ----------------------------------

@pytest.mark.parametrize("argv, words", [
    (["eval"], ["required", "name", "zoo eval --help"]),
    (["eval", MODEL, "--split"], ["--split", "expected one argument"]),
    (["train", MODEL, "--epochs", "x"], ["--epochs", "'x'", "zoo train"]),
    (["train", MODEL, "--init-timeout", "soon"], ["--init-timeout"]),
    (["train", MODEL, "--heartbeat-timeout", "soon"], ["--heartbeat-timeout"]),
    (["train", MODEL, "--strategy", "fast"], ["--strategy", "'fast'"]),
])
def test_usage_errors_are_one_line(capsys, argv, words):
  with pytest.raises(SystemExit) as info:
    cli.main(argv)
  assert info.value.code == 2
  out, err = capsys.readouterr()
  assert out == "" and err.count("\n") == 1, err
  assert err.startswith("zoo: error: ") and "usage:" not in err
  for word in words:
    assert word in err, err


# -- zoo eval ---------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    ([], ["--workdir", "--weights"]),
    (["--weights", "no/such/file.npz"], ["--weights", "no/such/file.npz",
                                         "no such file"]),
    (["--workdir", "no/such/dir"], ["--workdir", "no/such/dir",
                                    "zoo train"]),
])
def test_eval_argument_errors_are_one_line(capsys, args, words):
  err = _one_line_error(capsys, "eval", MODEL, *args)
  for word in words:
    assert word in err, err


def test_eval_unknown_model_is_one_line(capsys, tmp_path):
  err = _one_line_error(capsys, "eval", "mlp_fashon_mnist", "--workdir",
                        str(tmp_path))
  assert "unknown model 'mlp_fashon_mnist'" in err and MODEL in err


# -- multi-host: flags refused in Python too; a missing peer times out -----------

def test_initialize_refuses_bad_flags_before_jax(monkeypatch):
  def no(*args, **kwargs):
    raise AssertionError("jax.distributed.initialize was called")
  monkeypatch.setattr(distributed.jax.distributed, "initialize", no)
  cases = [dict(num_processes=2),
           dict(coordinator_address="127.0.0.1:1", num_processes=2,
                process_id=2),
           dict(coordinator_address="127.0.0.1", num_processes=2,
                process_id=0),
           dict(coordinator_address="127.0.0.1:1", num_processes=0,
                process_id=0),
           dict(coordinator_address="127.0.0.1:1", num_processes=2,
                process_id=0, timeout=-1),
           dict(coordinator_address="127.0.0.1:1", num_processes=2,
                process_id=0, heartbeat_timeout=0)]
  for kwargs in cases:
    with pytest.raises(DistributedError):
      distributed.initialize(**kwargs)
  assert issubclass(DistributedError, ZooError)
  assert distributed.parse_address("[::1]:8476") == ("[::1]", 8476)
  assert distributed.parse_address("node-0.cluster:1234") == (
      "node-0.cluster", 1234)


def test_initialize_without_flags_on_one_machine_does_nothing(monkeypatch):
  for key in distributed._CLUSTER_ENV:
    monkeypatch.delenv(key, raising=False)
  assert distributed.initialize() is False


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("process_id", [0, 1])
def test_missing_peer_times_out_with_one_line(process_id):
  """A process whose peer never comes says what it waits for, then gives up
  after --init-timeout with one error line and status 2."""
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  t = time.monotonic()
  proc = subprocess.run(
      [sys.executable, "-m", "zoo.cli", "train", MODEL, "--coordinator-address",
       f"127.0.0.1:{port}", "--num-processes", "2", "--process-id",
       str(process_id), "--init-timeout", "3", "--no-progress"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
  elapsed = time.monotonic() - t
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stdout == ""
  assert "Traceback" not in proc.stderr and "stack trace" not in proc.stderr
  lines = [line for line in proc.stderr.splitlines()
           if line.startswith("zoo:")]
  assert len(lines) == 2, proc.stderr
  assert lines[0].startswith(
      f"zoo: waiting for 2 processes at 127.0.0.1:{port}")
  assert "timeout 3 s" in lines[0]
  err = lines[1]
  assert err.startswith(f"zoo: error: process {process_id} of 2 ")
  assert f"127.0.0.1:{port}" in err and "--init-timeout" in err
  assert ("waited for process 1" in err if process_id == 0 else
          "start process 0" in err)
  assert elapsed < 30


def test_output_into_a_closed_pipe_is_quiet():
  """`zoo list | head -1`: the reader stops early; zoo exits without a
  BrokenPipeError traceback."""
  out = subprocess.run(
      f"{sys.executable} -m zoo.cli list | head -1", shell=True,
      capture_output=True, text=True, timeout=120,
      env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu"))
  assert out.stdout.count("\n") == 1 and "fashion_mnist" in out.stdout
  assert out.stderr == "", out.stderr


def test_a_failed_collective_in_a_job_is_named_a_lost_process():
  """A gloo error (here wrapped in a failed save, as orbax's allgather
  raises it) reads as a lost process; a runtime error of its own does not."""
  import jax
  from zoo.training.workdir import WorkdirError
  gloo = jax.errors.JaxRuntimeError(
      "UNKNOWN: Gloo AllGather failed: pair.cc:538] Read error: Connection "
      "reset by peer")
  try:
    try:
      raise gloo
    except Exception as e:
      raise WorkdirError("could not save checkpoint step 16") from e
  except WorkdirError as wrapped:
    lost = distributed._collective_failed(wrapped)
  assert isinstance(lost, ZooError)
  assert str(lost).startswith("a collective with the other processes failed "
                              "(UNKNOWN: Gloo AllGather failed")
  assert "restart the whole job" in str(lost) and "\n" not in str(lost)
  oom = jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory")
  assert distributed._collective_failed(oom) is None
  assert distributed._collective_failed(ValueError("x")) is None
