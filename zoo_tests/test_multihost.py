"""Two processes on 127.0.0.1 (jax.distributed, gloo CPU collectives) train
to the same parameters as one process with the same global batch, and
together evaluate exactly as one process evaluating alone."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import chex
import safetensors.numpy

import zoo
from multihost_worker import EVAL_BATCH, EVAL_MODELS, EVAL_SPLIT
from zoo.training.evaluate import evaluate_model

WORKER = Path(__file__).with_name("multihost_worker.py")
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _run_together(args, env, timeout=300):
  """Starts one worker per argument list and waits for all of them; if any
  is still running after `timeout` seconds (say a peer died and the others
  wait in a collective), kills them all so that nothing hangs."""
  procs = [subprocess.Popen([sys.executable, str(WORKER), *a], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for a in args]
  try:
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]


def _load(path):
  return safetensors.numpy.load_file(path)


def test_two_processes_match_one(tmp_path):
  ref = tmp_path / "ref.safetensors"
  subprocess.run([sys.executable, str(WORKER), "-", "0", "0", str(ref)],
                 env=_env(2), check=True, timeout=300)
  port = _free_port()
  outs = [tmp_path / f"p{i}.safetensors" for i in range(2)]
  _run_together([[f"127.0.0.1:{port}", "2", str(i), str(outs[i])]
                 for i in range(2)], env=_env(1))
  meta = [json.loads(Path(str(o) + ".json").read_text()) for o in outs]
  ref_meta = json.loads(Path(str(ref) + ".json").read_text())
  assert [m["processes"] for m in meta] == [2, 2]
  assert [m["devices"] for m in meta] == [2, 2] and ref_meta["devices"] == 2
  # Both processes hold the same parameters, equal to the one-process run.
  chex.assert_trees_all_equal(_load(outs[0]), _load(outs[1]))
  chex.assert_trees_all_close(_load(outs[0]), _load(ref), rtol=1e-5,
                              atol=1e-6)
  assert abs(meta[0]["test_accuracy"] - ref_meta["test_accuracy"]) <= 0.002
  # The evaluation is shared by both processes: both report the same sums.
  keys = ("test_accuracy", "test_loss", "test_examples", "per_class_accuracy")
  assert [meta[0][k] for k in keys] == [meta[1][k] for k in keys]
  assert meta[0]["test_examples"] == ref_meta["test_examples"] == 500


def test_two_processes_evaluate_as_one(tmp_path):
  """2 processes x 2 CPU devices share every eval batch of 997 examples
  (batch 100): pmap and mesh, mlp and cnn_bn; the counts equal one process
  evaluating alone on one device, the mean loss to float tolerance."""
  port = _free_port()
  outs = [tmp_path / f"eval{i}.json" for i in range(2)]
  _run_together([[f"127.0.0.1:{port}", "2", str(i), str(outs[i]), "eval"]
                 for i in range(2)], env=_env(2))
  reports = [json.loads(o.read_text()) for o in outs]
  assert [r["processes"] for r in reports] == [2, 2]
  assert [r["process_index"] for r in reports] == [0, 1]
  for name in EVAL_MODELS:
    entry = zoo.get(name, pretrained=True)
    alone = evaluate_model(entry, entry.params, entry.model_state,
                           split=EVAL_SPLIT, batch_size=EVAL_BATCH)
    assert alone["examples"] == 997
    for strategy in ("pmap", "mesh"):
      got = [r["results"][f"{name}/{strategy}"] for r in reports]
      batch = got[0]["batch_size"]
      assert [g["devices"] for g in got] == [4, 4] and batch % 4 == 0
      # Process p's two devices hold its contiguous half of every batch.
      for p, g in enumerate(got):
        half = batch // 2
        assert g["local_rows"] == [[p * half, p * half + half // 2],
                                   [p * half + half // 2, (p + 1) * half]]
      for g in got:
        assert g["examples"] == alone["examples"]
        assert g["accuracy"] == alone["accuracy"]
        assert g["per_class_accuracy"] == alone["per_class_accuracy"]
        chex.assert_trees_all_close(g["loss"], alone["loss"], rtol=1e-5)
