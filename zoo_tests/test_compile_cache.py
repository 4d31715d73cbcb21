"""JAX's persistent compilation cache for zoo's runs (zoo/training/
compile_cache.py): a second process loads the compiled steps instead of
compiling them and trains the same bits; the user's own JAX cache folder,
`ZOO_COMPILATION_CACHE=off` and an unwritable folder are respected."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import zoo
from zoo.training import compile_cache

# A short MLP run in a fresh process (JAX decides about its cache at a
# process's first compilation), counting JAX's own cache-hit events.
RUN = textwrap.dedent("""
    import json
    import jax
    import zoo
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(event)
        if event == "/jax/compilation_cache/cache_hits" else None)
    out = zoo.train("mlp_fashion_mnist", steps=4, batch_size=32,
                    progress=False, **{"data.train_split": "train[:256]",
                                       "data.test_split": "test[:100]"})
    print(json.dumps({"cache": out.result["compilation_cache"],
                      "hits": len(hits),
                      "params": out.result["params_sha256"]}))
""")


def _run(tmp_path, **env) -> dict:
  clean = {k: v for k, v in os.environ.items()
           if k not in (compile_cache.ENV, "JAX_COMPILATION_CACHE_DIR")}
  proc = subprocess.run(
      [sys.executable, "-c", RUN], capture_output=True, text=True,
      timeout=300, env={**clean, "ZOO_CACHE_DIR": str(tmp_path / "cache"),
                        **env})
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_second_run_loads_its_compiled_steps_and_trains_the_same(tmp_path):
  first = _run(tmp_path)
  folder = tmp_path / "cache" / "jax"
  assert first["cache"] == str(folder)
  assert first["hits"] == 0
  entries = sorted(p.name for p in folder.iterdir())
  # The initialisation, the epoch's scan and the evaluation step at least.
  assert any(name.startswith("jit_init_fn") for name in entries), entries
  assert any(name.startswith("jit_run_scan") for name in entries), entries
  second = _run(tmp_path)
  assert second["hits"] >= 3, second
  assert second["params"] == first["params"]


def test_the_users_own_jax_cache_folder_is_kept(tmp_path):
  theirs = tmp_path / "theirs"
  out = _run(tmp_path, JAX_COMPILATION_CACHE_DIR=str(theirs))
  assert out["cache"] == str(theirs) and any(theirs.iterdir())
  assert not (tmp_path / "cache" / "jax").exists()


def test_off_means_no_cache(tmp_path):
  out = _run(tmp_path, ZOO_COMPILATION_CACHE="off")
  assert out["cache"] is None
  assert not (tmp_path / "cache" / "jax").exists()


def test_an_unwritable_folder_turns_the_cache_off_with_one_warning(
    tmp_path, monkeypatch, caplog):
  (tmp_path / "jax").write_text("a file where the folder should be")
  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path))
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setattr(compile_cache, "_jax_cache_dir", lambda: None)
  with caplog.at_level("WARNING", logger="zoo.train"):
    assert compile_cache.enable() is None
  warnings = [r.getMessage() for r in caplog.records]
  assert len(warnings) == 1 and "cannot be written" in warnings[0]
  assert "ZOO_COMPILATION_CACHE=off" in warnings[0]


def test_a_multi_process_run_is_left_to_jax(tmp_path, monkeypatch):
  import jax
  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path))
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setattr(compile_cache, "_jax_cache_dir", lambda: None)
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  assert compile_cache.enable() is None
  assert not (tmp_path / "jax").exists()


def test_a_bad_mode_is_one_clear_error(monkeypatch):
  monkeypatch.setenv(compile_cache.ENV, "yes")
  with pytest.raises(zoo.ConfigError, match="ZOO_COMPILATION_CACHE='yes' "
                     "is not one of auto, off") as e:
    compile_cache.enable()
  assert "\n" not in str(e.value)
