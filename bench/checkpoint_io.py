"""Checkpoint save and restore time: zoo's orbax checkpoints against a
plain safetensors file of the same training state (parameters + optimizer,
flattened with jax.tree_util.keystr paths as keys), written atomically like
zoo's own files are (sha256, fsync, rename into place) and read back
into the tree, in the same run, for a few models.

    python bench/checkpoint_io.py [--models ...] [--repeats 5]

Prints best-of-N seconds and the ratio orbax / safetensors for each.
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
import safetensors.numpy

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


def flatten(tree) -> dict[str, np.ndarray]:
  """{keystr path: contiguous numpy leaf} of a pytree."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): np.asarray(leaf, order="C")
          for p, leaf in flat}


def st_save(directory: Path, step: int, state) -> Path:
  """state.safetensors + its sha256, fsynced, renamed into place."""
  tmp = Path(tempfile.mkdtemp(dir=directory))
  safetensors.numpy.save_file(flatten(state), str(tmp / "state.safetensors"))
  hashlib.sha256((tmp / "state.safetensors").read_bytes()).hexdigest()
  with (tmp / "state.safetensors").open("rb") as f:
    os.fsync(f.fileno())
  final = directory / f"step_{step:09d}"
  os.replace(tmp, final)
  return final


def st_restore(path: Path, state):
  """The tree back from st_save's file, every key, shape and dtype checked."""
  hashlib.sha256((path / "state.safetensors").read_bytes()).hexdigest()
  arrays = safetensors.numpy.load_file(str(path / "state.safetensors"))
  flat, treedef = jax.tree_util.tree_flatten_with_path(state)
  assert arrays.keys() == {jax.tree_util.keystr(p) for p, _ in flat}
  leaves = []
  for p, leaf in flat:
    got = arrays[jax.tree_util.keystr(p)]
    assert got.shape == np.shape(leaf) and got.dtype == np.asarray(leaf).dtype
    leaves.append(got)
  return jax.tree_util.tree_unflatten(treedef, leaves)


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
  print("| model | state MB | safetensors save s | orbax save s "
        "| save orbax/safetensors | safetensors restore s | orbax restore s "
        "| restore orbax/safetensors |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  for name in args.models:
    state = state_of(name)
    mb = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
    root = Path(tempfile.mkdtemp(prefix="zoo-ckpt-bench-"))
    try:
      (root / "st").mkdir()
      manager = ckpt_lib.CheckpointManager(root / "orbax", keep=2)
      steps = iter(range(1, 10**6))
      # Interleaved: one save of each per round, then restores likewise.
      saves = {"st": [], "orbax": []}
      for _ in range(args.repeats):
        saves["st"].append(best(lambda: st_save(root / "st", next(steps),
                                                state), 1))
        saves["orbax"].append(best(lambda: manager.save(next(steps), state,
                                                        {"note": 0}), 1))
      st_path = sorted((root / "st").iterdir())[-1]
      last = manager.steps()[-1]
      loads = {"st": [], "orbax": []}
      for _ in range(args.repeats):
        loads["st"].append(best(lambda: st_restore(st_path, state), 1))
        loads["orbax"].append(best(lambda: manager.restore(last, state), 1))
      manager.close()
    finally:
      shutil.rmtree(root, ignore_errors=True)
    s_n, s_o = min(saves["st"]), min(saves["orbax"])
    l_n, l_o = min(loads["st"]), min(loads["orbax"])
    print(f"| `{name}` | {mb:.1f} | {s_n:.3f} | {s_o:.3f} | {s_o / s_n:.2f} "
          f"| {l_n:.3f} | {l_o:.3f} | {l_o / l_n:.2f} |", flush=True)


if __name__ == "__main__":
  main()
