"""Evaluation over a whole split: no example dropped (the last batch is padded
and masked). Reports accuracy, mean loss and per-class accuracy."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from zoo.data.pipeline import to_float
from zoo.train.step import make_eval_step


class Evaluator:
  """Holds a split on one device and evaluates parameters on all of it."""

  def __init__(self, entry, images: np.ndarray, labels: np.ndarray,
               batch_size: int = 1000, device=None):
    self.entry = entry
    self.num_examples = len(labels)
    self.batch_size = max(1, min(batch_size, self.num_examples))
    self.device = device or jax.local_devices()[0]
    batches = -(-self.num_examples // self.batch_size)
    pad = batches * self.batch_size - self.num_examples
    mask = np.concatenate([np.ones(self.num_examples, np.float32),
                           np.zeros(pad, np.float32)])
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]),
                                              images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    shape = (batches, self.batch_size)
    self._data = jax.device_put(
        (images.reshape(*shape, *images.shape[1:]),
         labels.reshape(shape).astype(np.int32), mask.reshape(shape)),
        self.device)
    eval_step = make_eval_step(entry)

    def run(params, model_state, images, labels, mask):
      return eval_step(params, model_state, to_float(images), labels, mask)
    self._step = jax.jit(run)

  def __call__(self, params, model_state=None) -> dict[str, Any]:
    params, model_state = jax.device_put((params, model_state or {}),
                                         self.device)
    images, labels, mask = self._data
    totals = None
    for b in range(images.shape[0]):
      out = self._step(params, model_state, images[b], labels[b], mask[b])
      totals = out if totals is None else jax.tree.map(np.add, totals, out)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    assert count == self.num_examples, (count, self.num_examples)
    per_class = totals["class_correct"] / np.maximum(totals["class_count"], 1)
    return {
        "accuracy": float(totals["correct"]) / count,
        "loss": float(totals["loss_sum"]) / count,
        "examples": int(count),
        "per_class_accuracy": {name: float(a) for name, a in
                               zip(self.entry.class_names, per_class)},
    }


def evaluate_model(name_or_entry, params, model_state=None, *,
                   data_dir: str | None = None, split: str | None = None,
                   batch_size: int | None = None) -> dict[str, Any]:
  """Evaluates `params` of a registered model on its test split."""
  from zoo import data, registry
  entry = (registry.get(name_or_entry) if isinstance(name_or_entry, str)
           else name_or_entry)
  cfg = entry.config
  test = data.load(entry.dataset, split or cfg["data"]["test_split"],
                   data_dir=data_dir, classes=cfg["data"]["classes"] or None)
  evaluator = Evaluator(entry, test.images, test.labels,
                        batch_size or cfg["train"]["eval_batch_size"])
  return evaluator(params, model_state)
