"""Runs one process of a multi-process job (used by test_multihost).

Usage: python multihost_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID OUT [eval]
With NUM_PROCESSES 0 it runs in a single process instead (the reference).
Without `eval` it trains (OUT.safetensors, OUT.safetensors.json); with `eval` it only
evaluates pretrained models over every device of every process (OUT.json).
"""
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from zoo.training import distributed  # noqa: E402

EVAL_MODELS = ("mlp_fashion_mnist", "cnn_bn_fashion_mnist")
EVAL_SPLIT = "test[:997]"  # divisible by neither the devices nor the batch
EVAL_BATCH = 100


def main():
  coordinator, num_processes, process_id, out = sys.argv[1:5]
  num_processes, process_id = int(num_processes), int(process_id)
  if num_processes:
    distributed.initialize(coordinator, num_processes, process_id)
  if sys.argv[5:] == ["eval"]:
    run_evaluation(out)
  else:
    run_training(out)


def run_training(out):
  """Trains mlp for one short epoch; writes the parameters and the result."""
  import jax
  from zoo import weights
  from zoo.training.loop import train
  result = train("mlp_fashion_mnist", strategy="pmap", progress=False,
                 epochs=1, batch_size=64,
                 **{"data.train_split": "train[:1280]",
                    "data.test_split": "test[:500]"})
  weights.save(out, result.params)
  with open(out + ".json", "w") as f:
    json.dump({k: result.result[k] for k in
               ("test_accuracy", "test_loss", "devices", "processes",
                "params_sha256", "test_examples", "per_class_accuracy")}
              | {"process_index": jax.process_index()}, f)


def run_evaluation(out):
  """Evaluates pretrained models under pmap and mesh; writes each result and
  which rows of every global batch this process's devices held."""
  import jax
  import zoo
  from zoo import data
  from zoo.training import strategies
  from zoo.training.evaluate import Evaluator
  report = {"processes": jax.process_count(),
            "process_index": jax.process_index(), "results": {}}
  for name in EVAL_MODELS:
    entry = zoo.get(name, pretrained=True)
    test = data.load(entry.dataset, EVAL_SPLIT)
    for strategy in ("pmap", "mesh"):
      ev = Evaluator(entry, test.images, test.labels, EVAL_BATCH,
                     strategy=strategies.make(strategy))
      rows = sorted((s.index[1].start, s.index[1].stop)
                    for s in ev._data[0].addressable_shards)
      report["results"][f"{name}/{strategy}"] = (
          ev(entry.params, entry.model_state)
          | {"devices": len(ev.devices), "batch_size": ev.batch_size,
             "local_rows": rows})
  with open(out, "w") as f:
    json.dump(report, f)


if __name__ == "__main__":
  main()
