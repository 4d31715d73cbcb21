"""zoo's glibc malloc settings on the CPU (zoo/training/host_memory.py): XLA's
step buffers stay mapped from step to step, the numbers do not change, a
finished run gives the memory back, and nothing is set off the CPU, twice,
or against the user's wish."""
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

import zoo
from zoo.training import host_memory

LIBC_MALLOPT = host_memory._libc_mallopt  # the real one, before any patching
# A fresh process (the settings are per process), with the CPU only, as
# a user's first `zoo train` runs: it trains the CNN's real step at batch 128
# and counts the page faults of 5 steady-state steps.
STEPS_CHILD = textwrap.dedent("""
    import json, resource, sys
    import jax, jax.numpy as jnp, numpy as np
    import zoo
    from zoo.fingerprint import params_sha256
    from zoo.training import host_memory
    from zoo.training.optim import optimizer
    from zoo.training.state import init_state
    from zoo.training.step import make_train_step

    mode = host_memory.keep_step_buffers()  # before the backend starts
    entry = zoo.get("cnn_fashion_mnist")
    tx = optimizer(entry.config, total_steps=100)
    state = init_state(entry, tx, seed=0)
    step = jax.jit(make_train_step(entry, tx))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((128, 28, 28, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, 128).astype(np.int32))
    for _ in range(8):  # compile, then steps until the heap has its size
      state, _ = step(state, x, y)
    jax.block_until_ready(state)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
      state, _ = step(state, x, y)
      jax.block_until_ready(state)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"mode": mode, "faults_per_step": faults / 5,
                      "params": params_sha256(state.params)}))
""")


def _child(code: str, **env) -> dict:
  clean = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", host_memory.ENV, "LD_PRELOAD")}
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, env={**clean, "JAX_PLATFORMS": "cpu",
                                        **env}, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cpu_steps_reuse_their_buffers_and_compute_the_same_bits():
  kept = _child(STEPS_CHILD)
  system = _child(STEPS_CHILD, ZOO_HOST_MALLOC="system")
  assert kept["mode"] == "kept" and system["mode"] == "system"
  # The step's 42 MB scratch block is about 10,000 pages: glibc maps it
  # afresh every step by default, and keeps it under zoo's settings.
  assert system["faults_per_step"] > 5000, system
  assert kept["faults_per_step"] < 500, kept
  assert kept["params"] == system["params"]


def test_freed_memory_is_kept_until_a_run_releases_it():
  code = textwrap.dedent("""
      import json, os
      import numpy as np
      from zoo.training import host_memory

      def rss_mib():
        with open("/proc/self/statm") as f:
          return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

      host_memory.keep_step_buffers("cpu")
      start = rss_mib()
      block = np.ones(200 * 2**20 // 8)  # 200 MiB, written
      del block
      kept = rss_mib()
      host_memory.release()
      print(json.dumps({"start": start, "kept": kept,
                        "released": rss_mib()}))
  """)
  out = _child(code)
  assert out["kept"] - out["start"] > 150, out       # freed, still mapped
  assert out["kept"] - out["released"] > 150, out    # given back


@pytest.fixture
def fresh(monkeypatch):
  """host_memory as in a new process, with a recording mallopt."""
  calls = []

  def mallopt(param, value):
    calls.append((param, value))
    return 1
  monkeypatch.setattr(host_memory, "_state", None)
  monkeypatch.setattr(host_memory, "_libc_mallopt",
                      lambda: (mallopt, "glibc 2.36"))
  monkeypatch.delenv(host_memory.ENV, raising=False)
  return calls


def test_settings_are_made_once_and_only_on_the_cpu(fresh, monkeypatch):
  assert host_memory.keep_step_buffers("gpu") is None
  assert host_memory.keep_step_buffers("tpu") is None
  assert fresh == [] and host_memory.state() is None
  monkeypatch.setattr(host_memory, "cpu_only", lambda: False)
  assert host_memory.keep_step_buffers() is None and fresh == []
  assert host_memory.keep_step_buffers("cpu") == "kept"
  assert fresh == [(param, value) for _, param, value in host_memory.SETTINGS]
  assert dict(fresh)[-4] == 0 and dict(fresh)[-8] == 1  # no mmap, one arena
  assert host_memory.keep_step_buffers("cpu") == "kept"
  assert len(fresh) == len(host_memory.SETTINGS)  # not again


def test_system_mode_and_other_allocators_are_left_alone(fresh, monkeypatch):
  monkeypatch.setenv(host_memory.ENV, "system")
  assert host_memory.keep_step_buffers("cpu") == "system" and fresh == []
  # With tcmalloc preloaded, glibc's malloc is not the one in use.
  monkeypatch.setattr(host_memory, "_state", None)
  monkeypatch.delenv(host_memory.ENV)
  monkeypatch.setattr(host_memory, "_libc_mallopt", LIBC_MALLOPT)
  monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libtcmalloc_minimal.so.4")
  assert host_memory.keep_step_buffers("cpu") == "tcmalloc preloaded"
  assert host_memory.state() == "tcmalloc preloaded"


def test_a_bad_mode_is_one_clear_error(fresh, monkeypatch):
  monkeypatch.setenv(host_memory.ENV, "fast")
  with pytest.raises(zoo.ConfigError, match="ZOO_HOST_MALLOC='fast' is not "
                     "one of auto, system") as e:
    host_memory.keep_step_buffers("cpu")
  assert "\n" not in str(e.value) and fresh == []


def test_cli_refuses_a_bad_mode_in_one_line_before_any_work(tmp_path):
  env = {**os.environ, host_memory.ENV: "fast"}
  proc = subprocess.run(
      [sys.executable, "-m", "zoo.cli", "train", "logreg_fashion_mnist",
       "--workdir", str(tmp_path / "run"), "--epochs", "1"],
      capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "ZOO_HOST_MALLOC='fast'" in lines[0], lines
  assert not (tmp_path / "run").exists()


def test_cpu_only_follows_the_platform_asked_for(monkeypatch):
  for asked, want in (("cpu", True), ("cpu,cuda", True), ("cuda", False),
                      ("tpu,cpu", False), (" CPU ", True)):
    monkeypatch.setenv("JAX_PLATFORMS", asked)
    assert host_memory.cpu_only() is want, asked
  # A platform asked for wins over what is installed.
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setattr(importlib.metadata, "entry_points",
                      lambda group: ["cuda"])
  assert host_memory.cpu_only()


def test_cpu_only_without_a_platform_looks_for_accelerator_plugins(
    monkeypatch):
  monkeypatch.setattr(host_memory, "_asked_platforms", lambda: "")
  monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
  monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  assert host_memory.cpu_only()
  monkeypatch.setattr(importlib.metadata, "entry_points",
                      lambda group: ["cuda"] if group == "jax_plugins" else [])
  assert not host_memory.cpu_only()
  monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
  monkeypatch.setenv("TPU_LIBRARY_PATH", "/opt/libtpu.so")
  assert not host_memory.cpu_only()


def test_a_run_records_its_malloc_mode(tmp_path):
  out = zoo.train("logreg_fashion_mnist", steps=2, progress=False,
                  **{"data.train_split": "train[:256]",
                     "data.test_split": "test[:100]"})
  assert out.result["host_malloc"] == host_memory.state()
  assert out.result["host_malloc"] in ("kept", "system")
