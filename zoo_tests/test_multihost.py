"""Two processes on 127.0.0.1 (jax.distributed, gloo CPU collectives) train
to the same parameters as one process with the same global batch."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import chex
import numpy as np

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


def _load(path):
  with np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def test_two_processes_match_one(tmp_path):
  ref = tmp_path / "ref.npz"
  subprocess.run([sys.executable, str(WORKER), "-", "0", "0", str(ref)],
                 env=_env(2), check=True, timeout=300)
  port = _free_port()
  outs = [tmp_path / f"p{i}.npz" for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, str(WORKER), f"127.0.0.1:{port}", "2", str(i),
       str(outs[i])], env=_env(1), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = [p.communicate(timeout=300)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  meta = [json.loads(Path(str(o) + ".json").read_text()) for o in outs]
  ref_meta = json.loads(Path(str(ref) + ".json").read_text())
  assert [m["processes"] for m in meta] == [2, 2]
  assert [m["devices"] for m in meta] == [2, 2] and ref_meta["devices"] == 2
  # Both processes hold the same parameters, equal to the one-process run.
  chex.assert_trees_all_equal(_load(outs[0]), _load(outs[1]))
  chex.assert_trees_all_close(_load(outs[0]), _load(ref), rtol=1e-5,
                              atol=1e-6)
  assert abs(meta[0]["test_accuracy"] - ref_meta["test_accuracy"]) <= 0.002
