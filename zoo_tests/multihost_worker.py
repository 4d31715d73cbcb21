"""Runs one process of a multi-process training job (used by test_multihost).

Usage: python multihost_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID OUT.npz
With NUM_PROCESSES 0 it trains in a single process instead (the reference).
"""
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from zoo.train import distributed  # noqa: E402


def main():
  coordinator, num_processes, process_id, out = sys.argv[1:5]
  num_processes, process_id = int(num_processes), int(process_id)
  if num_processes:
    distributed.initialize(coordinator, num_processes, process_id)
  import jax
  from zoo.train import weights
  from zoo.train.loop import train
  result = train("mlp_fashion_mnist", strategy="pmap", progress=False,
                 epochs=1, batch_size=64,
                 **{"data.train_split": "train[:1280]",
                    "data.test_split": "test[:500]"})
  weights.save(out, result.params)
  with open(out + ".json", "w") as f:
    json.dump({k: result.result[k] for k in
               ("test_accuracy", "test_loss", "devices", "processes",
                "params_sha256")} | {"process_index": jax.process_index()}, f)


if __name__ == "__main__":
  main()
