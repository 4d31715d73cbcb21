"""Evaluation over a whole split, on every device of every process: no example
dropped or counted twice (the last batch is padded and masked). Reports
accuracy, mean loss and per-class accuracy.

Each global eval batch is split over the run's devices by training's own
functions (`zoo.data.pad_batches`, then `zoo.data.put_sharded`): process p
takes the p-th contiguous block, each of its devices a contiguous block of
that. Every device runs its share of all batches as one
`lax.scan` inside `shard_map` over a `Mesh`, and the sums (correct, loss,
count, per-class counts) are `psum`-ed over the mesh, so over processes too
under `jax.distributed`. The split stays uint8 on the devices; it becomes
float inside the compiled step (`to_float`).

`Evaluator.detailed` also returns the confusion matrix (integer counts,
`psum`-ed like the rest) and the k most confident mistakes: each device keeps
its own top k (`lax.top_k`), the candidates are gathered over the mesh and
the top k of those is taken again, so only k rows per device leave it.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from zoo.data.batching import job_devices, pad_batches, put_sharded, to_float
from zoo.training.step import forward, make_eval_step

AXIS = "data"


def eval_devices(strategy=None, device=None) -> list:
  """The devices an evaluation spans: the strategy's devices in this process
  plus every device of the other processes (as the mesh strategy lays them
  out), else `device`, else this process's first device."""
  if strategy is None:
    return [device or jax.local_devices()[0]]
  return job_devices(strategy.devices)


def _global(x, sharding: NamedSharding) -> jax.Array:
  """A host array placed with `sharding`; each process puts only its own
  shards (the mesh may span processes)."""
  x = np.asarray(x)
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])


def _host(x: jax.Array) -> np.ndarray:
  """This process's copy of a replicated (possibly global) array."""
  if not x.is_fully_addressable:
    x = x.addressable_data(0)
  return np.asarray(jax.device_get(x))


class Evaluator:
  """Holds a split on the devices of a strategy (or one device) and evaluates
  parameters on all of it, exactly.

  `strategy`: the run's strategy; its devices in this process and all devices
  of the other processes share every batch. Without it, `device` (default:
  this process's first device) evaluates alone, as `zoo eval` does.
  """

  def __init__(self, entry, images: np.ndarray, labels: np.ndarray,
               batch_size: int = 1000, device=None, strategy=None):
    self.entry = entry
    self.num_examples = len(labels)
    self.devices = eval_devices(strategy, device)
    self.mesh = Mesh(np.array(self.devices), (AXIS,))
    n_dev = self.mesh.size
    wanted = max(1, min(batch_size, self.num_examples))
    # Each global batch splits evenly: round it up to a multiple of devices.
    self.per_device = -(-wanted // n_dev)
    self.batch_size = self.per_device * n_dev
    self._replicated = NamedSharding(self.mesh, P())
    self._data = tuple(put_sharded(x, self.mesh) for x in
                       pad_batches(images, labels, self.batch_size))
    eval_step = make_eval_step(entry)
    self._eval_step = eval_step
    self._details_fns = {}

    def run(params, model_state, images, labels, mask):
      """This device's share of every batch, summed, then summed over all
      devices (and processes)."""
      def body(carry, batch):
        images, labels, mask = batch
        return carry, eval_step(params, model_state, to_float(images),
                                labels, mask)
      _, sums = jax.lax.scan(body, None, (images, labels, mask))
      return jax.lax.psum(jax.tree.map(lambda x: x.sum(axis=0), sums), AXIS)

    self._run = jax.jit(jax.shard_map(
        run, mesh=self.mesh, in_specs=(P(), P(), P(None, AXIS),
                                       P(None, AXIS), P(None, AXIS)),
        # Models may build constant carries of their own (the LSTM's zero
        # state) that shard_map's varying-axis check would reject.
        out_specs=P(), check_vma=False))

  def __call__(self, params, model_state=None) -> dict[str, Any]:
    params, model_state = self._place(params, model_state)
    return self._summary(
        jax.tree.map(_host, self._run(params, model_state, *self._data)))

  def _place(self, params, model_state):
    """Parameters and state replicated over the mesh."""
    return jax.tree.map(lambda x: _global(x, self._replicated),
                        (params, model_state or {}))

  def _summary(self, totals: dict[str, np.ndarray]) -> dict[str, Any]:
    """Accuracy, mean loss and per-class accuracy from the summed counts."""
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

  def detailed(self, params, model_state=None, top_k: int = 25
               ) -> dict[str, Any]:
    """`__call__`'s result (the same sums, so the same numbers) plus
    "confusion" (rows true class, columns predicted; integer counts over the
    whole split) and "mistakes": up to `top_k` misclassified examples, most
    confident first, as {index (into the split), true, predicted,
    probability (of the predicted class)}."""
    top_k = max(1, min(int(top_k), self.per_device * len(self._data[1])))
    if top_k not in self._details_fns:
      self._details_fns[top_k] = self._make_details(top_k)
    if not hasattr(self, "_index"):  # example ids, laid out like the data
      batches, size = self._data[1].shape
      self._index = put_sharded(
          np.arange(batches * size, dtype=np.int32).reshape(batches, size),
          self.mesh)
    params, model_state = self._place(params, model_state)
    out = jax.tree.map(_host, self._details_fns[top_k](
        params, model_state, *self._data, self._index))
    result = self._summary(out["sums"])
    confusion = out["confusion"].astype(np.int64)
    assert confusion.sum() == self.num_examples
    result["confusion"] = confusion.tolist()
    result["mistakes"] = [
        {"index": int(i), "true": int(t), "predicted": int(p),
         "probability": float(c)}
        for c, i, t, p in zip(out["conf"], out["index"], out["true"],
                              out["pred"]) if c >= 0]
    return result

  def _make_details(self, top_k: int):
    """The compiled `detailed` pass: the eval step's sums, a confusion
    matrix, and the top_k most confident mistakes of the whole split."""
    entry, eval_step = self.entry, self._eval_step
    n_cls = max(entry.num_classes, 2)

    def batch_details(params, model_state, images, labels, mask, index):
      """One batch: its sums, confusion counts and per-example confidence
      (-1 where the example is right or padding)."""
      x = to_float(images)
      sums = eval_step(params, model_state, x, labels, mask)
      logits, _ = forward(entry, params, model_state, None, x, False)
      pred, prob = _predict(logits)
      confusion = jnp.zeros((n_cls, n_cls), jnp.int32).at[labels, pred].add(
          mask.astype(jnp.int32))
      wrong = (pred != labels) & (mask > 0)
      conf = jnp.where(wrong, prob, -1.0)
      return sums, confusion, (conf, index, labels, pred)

    def run(params, model_state, images, labels, mask, index):
      def body(carry, batch):
        return carry, batch_details(params, model_state, *batch)
      _, (sums, confusion, cand) = jax.lax.scan(
          body, None, (images, labels, mask, index))
      sums = jax.tree.map(lambda x: x.sum(axis=0), sums)
      totals = jax.lax.psum((sums, confusion.sum(axis=0)), AXIS)
      cand = _top(*(c.reshape(-1) for c in cand), top_k)  # this device's
      cand = _top(*(jax.lax.all_gather(c, AXIS, tiled=True) for c in cand),
                  top_k)                                   # everyone's
      return dict(zip(("conf", "index", "true", "pred"), cand),
                  sums=totals[0], confusion=totals[1])

    data_spec = P(None, AXIS)
    return jax.jit(jax.shard_map(
        run, mesh=self.mesh, in_specs=(P(), P()) + (data_spec,) * 4,
        out_specs=P(), check_vma=False))


def _predict(logits):
  """Predicted class and its probability: softmax over the classes, or the
  sigmoid of a single binary logit."""
  if logits.shape[-1] == 1:
    p1 = jax.nn.sigmoid(logits[..., 0].astype(jnp.float32))
    pred = (logits[..., 0] > 0).astype(jnp.int32)
    return pred, jnp.where(pred == 1, p1, 1.0 - p1)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return pred, jnp.take_along_axis(probs, pred[:, None], axis=-1)[:, 0]


def _top(conf, index, true, pred, k: int):
  """The k rows of highest confidence (ties: lower index first)."""
  k = min(k, conf.shape[0])
  # Sort key: confidence descending, then example index ascending.
  order = jnp.lexsort((index, -conf))[:k]
  return conf[order], index[order], true[order], pred[order]


def load_split(entry, split: str | None = None, data_dir: str | None = None):
  """The split an evaluation of `entry` reads (default its test split), with
  its config's classes."""
  from zoo import data
  cfg = entry.config
  return data.load(entry.dataset, split or cfg["data"]["test_split"],
                   data_dir=data_dir, classes=cfg["data"]["classes"] or None)


def evaluate_model(name_or_entry, params, model_state=None, *,
                   data_dir: str | None = None, split: str | None = None,
                   batch_size: int | None = None,
                   top_mistakes: int | None = None) -> dict[str, Any]:
  """Evaluates `params` of a registered model on its test split (one device
  of this process). With `top_mistakes`, the result also holds "confusion"
  and "mistakes" (see `Evaluator.detailed`)."""
  from zoo import registry, weights
  from zoo.training import compile_cache, host_memory
  compile_cache.enable()  # before the first compilation
  host_memory.keep_step_buffers()  # CPU only, before a backend starts
  entry = (registry.get(name_or_entry) if isinstance(name_or_entry, str)
           else name_or_entry)
  weights.check(entry, params, model_state)
  test = load_split(entry, split, data_dir)
  evaluator = Evaluator(entry, test.images, test.labels,
                        batch_size or entry.config["train"]["eval_batch_size"])
  host_memory.keep_step_buffers(evaluator.devices[0].platform)
  try:
    if top_mistakes is not None:
      return evaluator.detailed(params, model_state, top_mistakes)
    return evaluator(params, model_state)
  finally:
    host_memory.release()
