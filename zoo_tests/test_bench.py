"""The benchmarks run end to end and report what they promise (no timing is
asserted: speed is read from their output, never tested)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import data

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name):
  spec = importlib.util.spec_from_file_location(f"bench_{name}",
                                                BENCH / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def train_speed():
  return _load("train_speed")


def test_train_speed_reports_every_column(train_speed, tmp_path, monkeypatch):
  readme = tmp_path / "performance.md"
  readme.write_text(f"before\n{train_speed.BEGIN}\nold table\n"
                    f"{train_speed.END}\nafter\n")
  monkeypatch.setattr(train_speed, "PAGE", readme)
  out = tmp_path / "bench.json"
  monkeypatch.setattr(sys, "argv", ["train_speed.py"])
  train_speed.main(["--models", "logreg_fashion_mnist", "cnn_fashion_mnist",
                    "--batch-sizes", "32", "--steps", "3", "--repeats", "1",
                    "--json", str(out), "--docs"])
  result = json.loads(out.read_text())
  rows = {r["model"]: r for r in result["rows"]}
  assert set(rows) == {"logreg_fashion_mnist", "cnn_fashion_mnist"}
  for r in rows.values():
    for key in ("reference_images_per_second",
                "reference_scan_images_per_second", "zoo_images_per_second",
                "ratio", "ratio_best", "pmap1_over_jit",
                "zoo_compile_seconds"):
      assert r[key] > 0, (r["model"], key)
    assert r["ratio"] == pytest.approx(
        r["zoo_images_per_second"] / r["reference_images_per_second"])
    assert r["ratio_best"] <= r["ratio"] + 1e-12
    assert r["batch"] == 32 and r["compute_dtype"] == "float32"
  # The loop zoo picks on CPU, and the short conv scan the note promises.
  assert rows["logreg_fashion_mnist"]["loop"] == "scan"
  assert rows["cnn_fashion_mnist"]["loop"] == "python"
  assert rows["cnn_fashion_mnist"]["scan_steps"] == 2
  assert result["peak_memory_mb"] > 0
  text = readme.read_text()
  assert text.startswith("before\n") and text.endswith("after\n")
  assert "old table" not in text
  assert "| `cnn_fashion_mnist` | 32 |" in text


def test_reference_step_uses_the_models_optimizer(train_speed):
  entry = zoo.get("vit_tiny_fashion_mnist")  # adamw with weight decay
  init, step = train_speed.reference_step(entry)
  x = np.zeros((4, 28, 28, 1), np.float32)
  carry = init(x)
  (params, _, opt_state, _), loss = step(carry, (x, np.zeros(4, np.int32)))
  assert np.isfinite(float(loss))
  assert "ScaleByAdamState" in repr(opt_state)


def test_pooling_bench_finds_identical_gradients(capsys):
  pooling = _load("pooling")
  split = data.load("fashion_mnist", "test[:64]")
  images = np.asarray(data.to_float(split.images))
  pooling.check_same_gradients(images, split.labels, 64)
  assert "bit-identical" in capsys.readouterr().out


def test_conv_lowering_bench_times_every_variant_against_lax(capsys):
  bench = _load("conv_lowering")
  rows = bench.main(["--batch-sizes", "16", "--steps", "2", "--repeats", "1"])
  assert sorted(v for _, v in rows) == sorted(bench.VARIANTS)
  ref = rows[(16, "lax NHWC")]
  assert ref["ratio"] == 1.0 and ref["grad_rel_diff"] == 0.0
  for r in rows.values():
    assert r["images_per_second"] > 0
    # Each variant computes the same gradients up to float32 rounding (sums
    # of 10^5 terms in another order; 9e-4 is the largest seen).
    assert 0.0 <= r["grad_rel_diff"] < 1e-2
  assert rows[(16, "conv_0 shifted")]["grad_rel_diff"] > 0.0
  assert "vs lax NHWC" in capsys.readouterr().out


def test_time_to_accuracy_runs_the_baseline_config_in_a_fresh_process(
    train_speed):
  out = train_speed.time_to_accuracy("logreg_fashion_mnist", 0.5, "float32")
  assert out["reached"] and out["epoch"] == 1, out
  assert out["accuracy"] >= 0.5
  # A fresh process: imports, data loading and compilation are included.
  assert out["seconds_from_process_start"] > 1.0
  assert isinstance(out["same_as_baseline"], bool)


def test_matmul_bound_counts_the_steps_flops_and_reports(tmp_path,
                                                         monkeypatch):
  bound = _load("matmul_bound")
  sizes = bound.layer_sizes(zoo.get("mlp_fashion_mnist"))
  assert sizes == [784, 256, 128, 10]
  flops = bound.matmul_flops_per_image(sizes)
  assert flops == 2 * (2 * (784 * 256 + 256 * 128 + 128 * 10)
                       + 256 * 128 + 128 * 10)
  # XLA's own count for the matmuls-only step: the products plus only the
  # small elementwise update.
  ws, step = bound.matmuls_only_step(sizes)
  cost = jax.jit(step).lower(ws, jnp.ones((32, 784))).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  assert 1.0 <= cost["flops"] / (32 * flops) < 1.03
  with pytest.raises(ValueError, match="dense"):
    bound.layer_sizes(zoo.get("cnn_fashion_mnist"))

  out = tmp_path / "bound.json"
  monkeypatch.setattr(sys, "argv", ["matmul_bound.py"])
  bound.main(["--batch-sizes", "32", "--steps", "4", "--repeats", "1",
              "--json", str(out)])
  (row,) = json.loads(out.read_text())["rows"]
  for key in ("matmuls_only_images_per_second",
              "plain_scan_images_per_second", "zoo_images_per_second"):
    assert row[key] > 0, key
  assert row["zoo_over_matmuls_only"] == pytest.approx(
      row["zoo_images_per_second"] / row["matmuls_only_images_per_second"])


def test_checkpoint_io_compares_both_formats_on_the_same_state(capsys):
  bench = _load("checkpoint_io")
  bench.main(["--models", "logreg_fashion_mnist", "--repeats", "1"])
  rows = [l for l in capsys.readouterr().out.splitlines()
          if l.startswith("| `logreg")]
  assert len(rows) == 1 and len(rows[0].split("|")) == 10
  # The plain safetensors side restores the same state.
  state = bench.state_of("logreg_fashion_mnist")
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    back = bench.st_restore(bench.st_save(Path(d), 1, state), state)
  jax.tree.map(np.testing.assert_array_equal, back, state)


def test_augment_bench_times_both_sides_and_reports_the_ratio(tmp_path,
                                                              capsys):
  bench = _load("augment")
  out = tmp_path / "augment.json"
  rows = bench.main(["--models", "logreg_fashion_mnist", "--batch-size", "32",
                     "--steps", "3", "--repeats", "1", "--crop-padding", "2",
                     "--json", str(out)])
  (row,) = json.loads(out.read_text())["rows"]
  assert row == rows[0]
  assert row["off_images_per_second"] > 0 and row["on_images_per_second"] > 0
  assert row["ratio"] == pytest.approx(
      row["on_images_per_second"] / row["off_images_per_second"])
  assert row["augment"] == {"augment.crop_padding": 2, "augment.flip": True,
                            "augment.padding_mode": "zero"}
  assert row["on_config"] == {"crop_padding": 2, "padding_mode": "zero",
                              "flip": True}
  assert row["off_config"]["crop_padding"] == 0
  assert row["off_config"]["flip"] is False
  assert "logreg_fashion_mnist" in capsys.readouterr().out


def test_strategies_bench_times_pmap_and_mesh_on_the_same_runs(
    tmp_path, monkeypatch, capsys):
  bench = _load("strategies")
  readme = tmp_path / "performance.md"
  readme.write_text(f"before\n{bench.BEGIN}\nold table\n{bench.END}\nafter\n")
  monkeypatch.setattr(bench.train_speed, "PAGE", readme)
  out = tmp_path / "strategies.json"
  monkeypatch.setattr(sys, "argv", ["strategies.py"])
  bench.main(["--models", "logreg_fashion_mnist", "cnn_fashion_mnist",
              "--batch-sizes", "32", "--devices", "2", "64", "--steps", "3",
              "--repeats", "1", "--json", str(out), "--docs"])
  printed = capsys.readouterr().out
  assert "skipped device counts [64]" in printed  # more than this machine has
  rows = {r["model"]: r for r in json.loads(out.read_text())["rows"]}
  assert set(rows) == {"logreg_fashion_mnist", "cnn_fashion_mnist"}
  for r in rows.values():
    assert r["batch"] == 32 and r["devices"] == 2
    for key in ("pmap_images_per_second", "mesh_images_per_second",
                "pmap_compile_seconds", "mesh_compile_seconds"):
      assert r[key] > 0, (r["model"], key)
    assert r["mesh_over_pmap"] == pytest.approx(
        r["mesh_images_per_second"] / r["pmap_images_per_second"])
    # Both strategies trained the same model.
    assert r["mesh_test_loss"] == pytest.approx(r["pmap_test_loss"], rel=1e-4)
  assert rows["cnn_fashion_mnist"]["loop"] == "python"
  text = readme.read_text()
  assert text.startswith("before\n") and text.endswith("after\n")
  assert "old table" not in text
  assert "| `cnn_fashion_mnist` | 32 | 2 | python |" in text
  assert "| `cnn_fashion_mnist` | 32 | 2 | python |" in printed
  # A row whose process fails is reported, and the others go on.
  row = bench.run_row("logreg_fashion_mnist", 30, 4, 3, 1)
  assert "divisible by 4" in row["error"] and "mesh_over_pmap" not in row


def _torch_python():
  """The Python that has torch for the peer benchmark (CI: .venv-torch)."""
  python = os.environ.get("ZOO_TORCH_PYTHON", sys.executable)
  if subprocess.run([python, "-c", "import torch"],
                    capture_output=True).returncode:
    pytest.skip("no torch: set ZOO_TORCH_PYTHON (scripts/test.sh makes "
                ".venv-torch)")
  return python


def test_peer_cpu_trains_every_side_in_rotating_rounds(tmp_path, capsys):
  bench = _load("peer_cpu")
  out = tmp_path / "peer.json"
  rows = bench.main(["--torch-python", _torch_python(), "--rounds", "3",
                     "--tuned-pytorch", "--train-split", "train[:1024]",
                     "--test-split", "test[:300]", "--json", str(out)])
  assert [(r["round"], r["model"]) for r in rows[::2]] == [
      (1, "cnn_fashion_mnist"), (2, "cnn_fashion_mnist"),
      (3, "cnn_fashion_mnist")]
  assert [r["order"] for r in rows[::2]] == [
      ["zoo", "pytorch", "pytorch_tuned"], ["pytorch", "pytorch_tuned", "zoo"],
      ["pytorch_tuned", "zoo", "pytorch"]]
  sides = ("zoo", "pytorch", "pytorch_tuned")
  for r in rows:
    for side in sides:
      run = r[side]
      assert run["side"] == side.split("_")[0]
      assert run["images_per_second"] > 0 and run["max_rss_mib"] > 50
      assert run["minor_faults"] > 0
      assert run["process_seconds"] > 0 and 0 <= run["others_cpu_share"] <= 1
      assert len(run["accuracy"]) == 1 and 0.3 < run["accuracy"][0] <= 1
    # zoo ran with its malloc settings (this is glibc, JAX only has the CPU).
    assert r["zoo"]["versions"]["host_malloc"] == "kept"
    # Warm: the untimed run before the rounds compiled the initialisation
    # and the training step (quicker compilations are not cached).
    assert r["zoo"]["versions"]["cache_hits"] >= 2
    assert r["pytorch"]["versions"]["glibc_tunables"] == ""
    assert "arena_max=1" in r["pytorch_tuned"]["versions"]["glibc_tunables"]
    for peer in ("pytorch", "pytorch_tuned"):
      assert r["ratios"][peer]["images_per_second"] == round(
          r["zoo"]["images_per_second"] / r[peer]["images_per_second"], 3)
      assert r["ratios"][peer]["process_time"] == round(
          r[peer]["process_seconds"] / r["zoo"]["process_seconds"], 3)
    assert r["busy"] == (max(r[s]["others_cpu_share"] for s in sides) > 0.10)
  assert rows[0]["pytorch"]["versions"]["threads"] >= 1
  summary = json.loads(out.read_text())["summary"]
  for name in ("cnn_fashion_mnist", "mlp_fashion_mnist"):
    idle = [r for r in rows if r["model"] == name and not r["busy"]]
    assert summary[name]["idle_rounds"] == len(idle)
    for peer in ("pytorch", "pytorch_tuned"):
      assert (summary[name][peer]["images_per_second"] is None) == (not idle)
  printed = capsys.readouterr().out
  assert "zoo/PyTorch over idle rounds" in printed and "load" in printed
  assert "vs pytorch_tuned" in printed and "MiB" in printed


def test_peer_cpu_cold_cache_compiles_in_every_zoo_run(capsys):
  bench = _load("peer_cpu")
  rows = bench.main(["--torch-python", _torch_python(), "--rounds", "2",
                     "--models", "mlp_fashion_mnist", "--zoo-cache", "cold",
                     "--train-split", "train[:1024]",
                     "--test-split", "test[:300]"])
  assert [r["zoo"]["versions"]["cache_hits"] for r in rows] == [0, 0]
  assert "compilation cache cold" in capsys.readouterr().out


def _peer_cpu_error(bench, python, capsys) -> str:
  with pytest.raises(SystemExit) as exit_info:
    bench.main(["--torch-python", python])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "[bench]" in err[0], err
  return err[0]


def test_peer_cpu_refuses_a_missing_python_in_one_line(capsys):
  bench = _load("peer_cpu")
  assert "cannot be run" in _peer_cpu_error(bench, "/nonexistent/python",
                                            capsys)


def test_peer_cpu_refuses_a_python_without_torch_in_one_line(capsys):
  if not subprocess.run([sys.executable, "-c", "import torch"],
                        capture_output=True).returncode:
    pytest.skip("this Python has torch")
  bench = _load("peer_cpu")
  assert "cannot import torch" in _peer_cpu_error(bench, sys.executable,
                                                  capsys)


def test_peer_cpu_refuses_a_model_without_a_pytorch_twin():
  bench = _load("peer_cpu")
  with pytest.raises(SystemExit, match="cnn and mlp architectures only"):
    bench.torch_spec(zoo.get("lstm_fashion_mnist"), 1, 2)
  spec = bench.torch_spec(zoo.get("cnn_fashion_mnist"), 3, 2)
  assert spec == {"arch": "cnn", "channels": [32, 64], "hidden_size": 128,
                  "learning_rate": 1e-3, "batch_size": 128, "epochs": 3,
                  "threads": 2, "seed": 0}


def test_cpu_flags_compares_each_flag_set_to_none(capsys):
  bench = _load("cpu_flags")
  summary = bench.main(["--flag-set=--xla_cpu_use_onednn=true",
                        "--models", "logreg_fashion_mnist", "--steps", "3",
                        "--rounds", "2"])
  none = summary[("logreg_fashion_mnist", "")]
  assert none["ratio"] == 1.0 and none["same_params"]
  flagged = summary[("logreg_fashion_mnist", "--xla_cpu_use_onednn=true")]
  assert flagged["images_per_second"] > 0
  assert isinstance(flagged["same_params"], bool)
  assert "vs none" in capsys.readouterr().out
