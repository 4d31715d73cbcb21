"""Checkpoint save and restore time: zoo's orbax checkpoints against the
.npz format zoo wrote before (written and read the same way, in the same
run), for the training state of a few models (parameters + optimizer).

    python bench/checkpoint_io.py [--models ...] [--repeats 5]

Prints best-of-N seconds and the ratio orbax / npz for each.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo import registry  # noqa: E402
from zoo.training import checkpoint as ckpt_lib  # noqa: E402
from zoo.training.optim import optimizer  # noqa: E402
from zoo.training.state import init_state  # noqa: E402

MODELS = ("mlp_fashion_mnist", "cnn_fashion_mnist", "vit_tiny_fashion_mnist")


def state_of(name: str):
  """A model's initial TrainState on the host (shapes as in training)."""
  entry = registry.get(name)
  tx = optimizer(entry.config, 1000)
  return jax.tree.map(np.asarray, jax.device_get(init_state(entry, tx, 0)))


def npz_save(directory: Path, step: int, state) -> Path:
  """The previous format: arrays.npz + sha256, fsynced, renamed into place."""
  tmp = Path(tempfile.mkdtemp(dir=directory))
  ckpt_lib.write_npz(tmp / "arrays.npz", ckpt_lib.flatten(state))
  hashlib.sha256((tmp / "arrays.npz").read_bytes()).hexdigest()
  with (tmp / "arrays.npz").open("rb") as f:
    os.fsync(f.fileno())
  final = directory / f"step_{step:09d}"
  os.replace(tmp, final)
  return final


def npz_restore(path: Path, state):
  hashlib.sha256((path / "arrays.npz").read_bytes()).hexdigest()
  arrays = ckpt_lib.read_npz(path / "arrays.npz", ckpt_lib.specs(state))
  return ckpt_lib.unflatten(state, arrays, str(path))


def best(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", nargs="+", default=list(MODELS))
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  print("| model | state MB | npz save s | orbax save s | save orbax/npz "
        "| npz restore s | orbax restore s | restore orbax/npz |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  for name in args.models:
    state = state_of(name)
    mb = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
    root = Path(tempfile.mkdtemp(prefix="zoo-ckpt-bench-"))
    try:
      (root / "npz").mkdir()
      manager = ckpt_lib.CheckpointManager(root / "orbax", keep=2)
      steps = iter(range(1, 10**6))
      # Interleaved: one save of each per round, then restores likewise.
      saves = {"npz": [], "orbax": []}
      for _ in range(args.repeats):
        saves["npz"].append(best(lambda: npz_save(root / "npz", next(steps),
                                                  state), 1))
        saves["orbax"].append(best(lambda: manager.save(next(steps), state,
                                                        {"note": 0}), 1))
      npz_path = sorted((root / "npz").iterdir())[-1]
      last = manager.steps()[-1]
      loads = {"npz": [], "orbax": []}
      for _ in range(args.repeats):
        loads["npz"].append(best(lambda: npz_restore(npz_path, state), 1))
        loads["orbax"].append(best(lambda: manager.restore(last, state), 1))
      manager.close()
    finally:
      shutil.rmtree(root, ignore_errors=True)
    s_n, s_o = min(saves["npz"]), min(saves["orbax"])
    l_n, l_o = min(loads["npz"]), min(loads["orbax"])
    print(f"| `{name}` | {mb:.1f} | {s_n:.3f} | {s_o:.3f} | {s_o / s_n:.2f} "
          f"| {l_n:.3f} | {l_o:.3f} | {l_o / l_n:.2f} |", flush=True)


if __name__ == "__main__":
  main()
