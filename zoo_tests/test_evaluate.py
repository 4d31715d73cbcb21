"""Evaluation sharded over 1, 2, 3 and 8 devices (jit, pmap, mesh strategies)
gives exactly the counts of evaluating every example at once on one device,
with a split and a batch that divide by neither, for a stateless (mlp) and a
stateful (cnn_bn) model."""
import chex
import jax
import numpy as np
import pytest

import zoo
from zoo import data, losses
from zoo.data import to_float
from zoo.training import strategies
from zoo.training.evaluate import Evaluator, evaluate_model
from zoo.training.step import forward, make_eval_step

SPLIT = "test[:997]"   # prime: no device count or batch divides it
BATCH = 100


@pytest.fixture(scope="module", params=["mlp_fashion_mnist",
                                        "cnn_bn_fashion_mnist"])
def model(request):
  """A pretrained model, its 997 test examples, and the reference numbers."""
  entry = zoo.get(request.param, pretrained=True)
  test = data.load(entry.dataset, SPLIT)
  return entry, test, _reference(entry, test.images, test.labels)


def _reference(entry, images, labels):
  """Every example at once on one device: integer counts from the logits
  (numpy), the summed loss from the eval step with an all-ones mask."""
  x = to_float(images)
  logits, _ = forward(entry, entry.params, entry.model_state, None, x, False)
  right = np.asarray(losses.predictions(logits)) == labels
  class_correct = np.bincount(labels[right], minlength=entry.num_classes)
  class_count = np.bincount(labels, minlength=entry.num_classes)
  sums = jax.jit(make_eval_step(entry))(
      entry.params, entry.model_state, x, labels.astype(np.int32),
      np.ones(len(labels), np.float32))
  per_class = (class_correct.astype(np.float32)
               / np.maximum(class_count, 1).astype(np.float32))
  return {"accuracy": int(right.sum()) / len(labels),
          "loss": float(sums["loss_sum"]) / len(labels),
          "examples": len(labels),
          "per_class_accuracy": dict(zip(entry.class_names,
                                         per_class.tolist()))}


def _check(result, ref):
  """Counts exactly equal, the mean loss equal to float tolerance."""
  assert result["examples"] == ref["examples"]
  assert result["accuracy"] == ref["accuracy"]
  assert result["per_class_accuracy"] == ref["per_class_accuracy"]
  chex.assert_trees_all_close(result["loss"], ref["loss"], rtol=1e-5)


@pytest.mark.parametrize("strategy,devices", [
    ("jit", 1), ("pmap", 1), ("pmap", 2), ("pmap", 3), ("pmap", 8),
    ("mesh", 1), ("mesh", 2), ("mesh", 3), ("mesh", 8)])
def test_sharded_evaluation_is_exact(model, strategy, devices):
  entry, test, ref = model
  strat = strategies.make(strategy, devices=devices)
  ev = Evaluator(entry, test.images, test.labels, BATCH, strategy=strat)
  # The split is spread over the strategy's devices, still as uint8.
  images = ev._data[0]
  assert images.dtype == np.uint8
  assert images.sharding.device_set == set(strat.devices)
  assert ev.batch_size % devices == 0 and ev.batch_size >= BATCH
  _check(ev(entry.params, entry.model_state), ref)


def test_default_is_one_device_and_evaluate_model_matches(model):
  entry, test, ref = model
  ev = Evaluator(entry, test.images, test.labels, BATCH)
  assert ev.devices == [jax.local_devices()[0]]
  _check(ev(entry.params, entry.model_state), ref)
  _check(evaluate_model(entry, entry.params, entry.model_state, split=SPLIT,
                        batch_size=BATCH), ref)


def test_weights_of_another_model_are_one_clear_error(monkeypatch):
  """zoo.evaluate with another model's (or config's) parameters names the
  first parameter that differs, before any data is read, instead of
  Haiku's 21-frame ValueError."""
  monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data read"))
  cnn = zoo.get("cnn_fashion_mnist", pretrained=True)
  mlp = zoo.get("mlp_fashion_mnist", pretrained=True)
  cases = [
      (("mlp_fashion_mnist", cnn.params),
       "params mlp_classifier/~/mlp/~/linear_0/b is missing: these "
       "weights belong to another model or config"),
      ((zoo.get("mlp_fashion_mnist", hidden_sizes=(64,)), mlp.params),
       "params mlp_classifier/~/mlp/~/linear_0/b has shape (256,), "
       "mlp_fashion_mnist expects (64,): these weights belong to another "
       "model or config"),
      (("mlp_fashion_mnist", {**mlp.params, "extra": {"w": np.zeros(3)}}),
       "params extra/w is not a parameter of mlp_fashion_mnist"),
      (("cnn_bn_fashion_mnist",
        zoo.get("cnn_bn_fashion_mnist", pretrained=True).params),
       "cnn_bn_fashion_mnist normalizes with BatchNorm statistics: pass its "
       "model_state"),
      (("mlp_fashion_mnist", None), "params is None"),
  ]
  for args, start in cases:
    with pytest.raises(zoo.InputError) as e:
      zoo.evaluate(*args)
    assert str(e.value).startswith(start), str(e.value)
    assert "\n" not in str(e.value)


def test_fewer_examples_than_devices_and_batch_larger_than_split():
  entry = zoo.get("mlp_fashion_mnist", pretrained=True)
  test = data.load(entry.dataset, "test[:5]")
  ref = _reference(entry, test.images, test.labels)
  for batch in (1, 3, 1000):
    ev = Evaluator(entry, test.images, test.labels, batch,
                   strategy=strategies.make("mesh", devices=8))
    _check(ev(entry.params), ref)
