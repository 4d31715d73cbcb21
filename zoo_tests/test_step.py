"""The train step: chex-checked, pure, and the same numbers under jit, pmap
and mesh sharding for the same global batch."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import zoo
from zoo.training import strategies
from zoo.training.optim import optimizer
from zoo.training.state import init_state
from zoo.training.step import all_finite, make_train_step

BATCH = 16


def _batch(entry, seed=0, batch=BATCH):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch, *entry.input_shape), dtype=np.uint8)
  labels = rng.integers(0, entry.num_classes, (batch,)).astype(np.int32)
  return images, labels


def _setup(name, **overrides):
  entry = zoo.registry.with_config(zoo.get(name), overrides) if overrides \
      else zoo.get(name)
  tx = optimizer(entry.config, total_steps=100)
  return entry, tx, init_state(entry, tx, seed=0)


class StepTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("mlp_fashion_mnist", "cnn_fashion_mnist",
                            "logreg_binary_fashion_mnist")
  def test_step_updates_and_reports(self, name):
    entry, tx, state = _setup(name)
    images, labels = _batch(entry)
    step = self.variant(make_train_step(entry, tx))
    new, metrics = step(state, jnp.asarray(images, jnp.float32) / 255,
                        jnp.asarray(labels))
    chex.assert_trees_all_equal_shapes_and_dtypes(new.params, state.params)
    chex.assert_tree_all_finite(new.params)
    chex.assert_shape(metrics["loss"], ())
    chex.assert_tree_all_finite(metrics)
    self.assertEqual(int(new.step), 1)
    self.assertEqual(int(new.nonfinite_step), -1)
    diff = jax.tree.map(lambda a, b: jnp.abs(a - b).max(), new.params,
                        state.params)
    self.assertGreater(max(jax.tree.leaves(diff)), 0)

  def test_step_is_pure(self):
    entry, tx, state = _setup("mlp_fashion_mnist")
    images, labels = _batch(entry)
    step = jax.jit(make_train_step(entry, tx))
    x = jnp.asarray(images, jnp.float32) / 255
    a, _ = step(state, x, jnp.asarray(labels))
    b, _ = step(state, x, jnp.asarray(labels))
    chex.assert_trees_all_equal(a.params, b.params)

  def test_wrong_dtype_and_shape_are_rejected(self):
    entry, tx, state = _setup("mlp_fashion_mnist")
    images, labels = _batch(entry)
    step = make_train_step(entry, tx)
    with self.assertRaises(AssertionError):  # uint8 images: not converted
      step(state, jnp.asarray(images), jnp.asarray(labels))
    with self.assertRaises(AssertionError):  # float labels
      step(state, jnp.asarray(images, jnp.float32),
           jnp.asarray(labels, jnp.float32))
    with self.assertRaises(AssertionError):  # wrong image size
      step(state, jnp.zeros((BATCH, 32, 32, 1)), jnp.asarray(labels))

  def test_nonfinite_stop_freezes_state_and_names_step(self):
    entry, tx, state = _setup("mlp_fashion_mnist")
    images, labels = _batch(entry)
    step = jax.jit(make_train_step(entry, tx, on_nonfinite="stop"))
    x = jnp.asarray(images, jnp.float32) / 255
    s1, _ = step(state, x, jnp.asarray(labels))
    bad = x.at[0, 0, 0, 0].set(jnp.nan)
    s2, m = step(s1, bad, jnp.asarray(labels))
    self.assertFalse(np.isfinite(float(m["loss"])))
    self.assertEqual(int(s2.nonfinite_step), 1)
    chex.assert_trees_all_equal(s2.params, s1.params)
    s3, _ = step(s2, x, jnp.asarray(labels))  # stays stopped
    chex.assert_trees_all_equal(s3.params, s1.params)
    self.assertEqual(int(s3.step), 1)

  def test_nonfinite_skip_drops_only_bad_update(self):
    entry, tx, state = _setup("mlp_fashion_mnist")
    images, labels = _batch(entry)
    step = jax.jit(make_train_step(entry, tx, on_nonfinite="skip"))
    x = jnp.asarray(images, jnp.float32) / 255
    bad = x.at[0, 0, 0, 0].set(jnp.inf)
    s1, _ = step(state, bad, jnp.asarray(labels))
    chex.assert_trees_all_equal(s1.params, state.params)
    self.assertEqual(int(s1.skipped), 1)
    s2, _ = step(s1, x, jnp.asarray(labels))
    self.assertEqual(int(s2.step), 2)
    self.assertGreater(float(jnp.abs(s2.params["mlp_classifier/~/mlp/~/linear_0"]["w"]
                                     - state.params["mlp_classifier/~/mlp/~/linear_0"]["w"]).max()), 0)


class AllFiniteTest(chex.TestCase):
  """The guard's test: one inf or NaN anywhere is caught, and finite values
  whose sum would overflow are not mistaken for one."""

  def _tree(self):
    return {"w": jnp.linspace(-1.0, 1.0, 784 * 16).reshape(784, 16),
            "b": jnp.zeros((16,), jnp.bfloat16),
            "count": jnp.array(7, jnp.int32)}

  @chex.variants(with_jit=True, without_jit=True)
  def test_finite_tree(self):
    self.assertTrue(bool(self.variant(all_finite)(self._tree())))
    self.assertTrue(bool(self.variant(all_finite)({})))
    self.assertTrue(bool(self.variant(all_finite)(
        {"n": jnp.array([2**31 - 1, 5], jnp.int32)})))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(value=[np.inf, -np.inf, np.nan], leaf=["w", "b"])
  def test_one_nonfinite_element(self, value, leaf):
    tree = self._tree()
    index = (700, 3) if leaf == "w" else (9,)
    tree[leaf] = tree[leaf].at[index].set(value)
    self.assertFalse(bool(self.variant(all_finite)(tree)))

  @chex.variants(with_jit=True, without_jit=True)
  def test_overflowing_sum_of_finite_elements_is_finite(self):
    big = jnp.full((64,), 3e38, jnp.float32)  # its sum overflows to inf
    self.assertFalse(bool(jnp.isfinite(jnp.sum(big))))
    self.assertTrue(bool(self.variant(all_finite)({"big": big})))
    self.assertFalse(bool(self.variant(all_finite)(
        {"big": big.at[3].set(np.nan)})))
    # +inf and -inf together (their sum is NaN)
    self.assertFalse(bool(self.variant(all_finite)(
        {"x": jnp.array([np.inf, -np.inf, 1.0])})))


def _run_strategy(name, strategy_name, devices, steps=3, **overrides):
  entry, tx, state = _setup(name, **overrides)
  strat = strategies.make(strategy_name, devices)
  step = make_train_step(entry, tx, axis_name=strat.axis_name)
  run_one, run_scan = strat.compile(step)
  images, labels = _batch(entry, seed=1, batch=256)
  data = strat.put_data(images, labels)
  rows = np.random.default_rng(2).permutation(256)[:steps * BATCH].reshape(
      steps, BATCH)
  s = strat.put_state(jax.device_get(state))
  s, metrics = run_scan(s, *data, strat.put_indices(rows))
  scan_params = strat.get_state(s).params
  s = strat.put_state(jax.device_get(state))
  dev_rows = strat.put_indices(rows)
  for i in range(steps):
    s, _ = run_one(s, *data, dev_rows, np.int32(i))
  one_params = strat.get_state(s).params
  return scan_params, one_params, strat.host_metrics(metrics)


@pytest.mark.parametrize("name", ["mlp_fashion_mnist", "cnn_fashion_mnist"])
def test_same_numbers_under_jit_pmap_and_mesh(name):
  """Plain SGD, so parameters differ exactly by the gradients' round-off
  (Adam's normalisation would blow up round-off on near-zero gradients)."""
  sgd = {"optimizer.name": "sgd", "optimizer.learning_rate": 0.1}
  ref_scan, ref_one, ref_metrics = _run_strategy(name, "jit", 1, **sgd)
  chex.assert_trees_all_close(ref_scan, ref_one, rtol=1e-5, atol=1e-6)
  layouts = [("pmap", 1), ("pmap", 4), ("mesh", 4)]
  if name.startswith("mlp"):
    layouts += [("pmap", 8), ("mesh", 8)]
  for strategy_name, devices in layouts:
    scan_params, one_params, metrics = _run_strategy(name, strategy_name,
                                                     devices, **sgd)
    chex.assert_trees_all_close(scan_params, ref_scan, rtol=2e-5, atol=2e-6,
                                custom_message=f"{strategy_name} x{devices}")
    chex.assert_trees_all_close(one_params, ref_scan, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"],
                               rtol=1e-5)


@pytest.mark.parametrize("devices, collectives", [(1, False), (2, True)])
def test_pmap_over_one_device_emits_no_collective(devices, collectives):
  entry, tx, state = _setup("mlp_fashion_mnist")
  strat = strategies.make("pmap", devices)
  run_one, _ = strat.compile(
      make_train_step(entry, tx, axis_name=strat.axis_name))
  images, labels = _batch(entry, seed=1, batch=64)
  rows = strat.put_indices(np.arange(64, dtype=np.int32).reshape(2, 32))
  hlo = run_one.lower(strat.put_state(jax.device_get(state)),
                      *strat.put_data(images, labels), rows,
                      np.int32(0)).as_text()
  assert ("all_reduce" in hlo or "all-reduce" in hlo) == collectives


def test_auto_is_jit_on_one_device_mesh_on_several_pmap_across_hosts(
    monkeypatch):
  """The measured choice (bench/strategies.py; strategies.make says why)."""
  assert strategies.make("auto", 1).name == "jit"
  for devices in (2, 4, None):  # None: all 8
    assert strategies.make("auto", devices).name == "mesh"
  for name in ("pmap", "mesh"):  # an explicit name is always honoured
    assert strategies.make(name, 4).name == name
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  assert strategies.make("auto", 1).name == "pmap"


def test_batch_not_divisible_by_devices_is_a_clear_error():
  strat = strategies.make("pmap", 3)
  with pytest.raises(ValueError, match="divisible by 3"):
    strat.check_batch(128)
  with pytest.raises(zoo.ConfigError, match="xla_force_host_platform"):
    strategies.make("pmap", 64)


class VariantsTest(chex.TestCase):
  """chex.variants: one body under jit, pmap (the batch broadcast to every
  device, gradients pmean-ed) and no jit gives the same parameters."""

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_same_params_under_variants(self):
    entry, tx, state = _setup("mlp_fashion_mnist")
    images, labels = _batch(entry)
    x = jnp.asarray(images, jnp.float32) / 255
    y = jnp.asarray(labels)
    ref, _ = jax.jit(make_train_step(entry, tx))(state, x, y)
    pmapped = self.variant.type == chex.ChexVariantType.WITH_PMAP
    step = self.variant(make_train_step(entry, tx,
                                        axis_name="i" if pmapped else None))
    out, metrics = step(state, x, y)
    chex.assert_shape(metrics["loss"], ())
    chex.assert_trees_all_close(out.params, ref.params, rtol=2e-5, atol=2e-6)


class ComputeDtypeTest(chex.TestCase):
  """train.compute_dtype=bfloat16: the model runs in bfloat16, everything
  the step keeps stays float32."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("mlp_fashion_mnist", "cnn_bn_fashion_mnist",
                            "vit_tiny_fashion_mnist")
  def test_bfloat16_compute_keeps_float32_state(self, name):
    entry, tx, state = _setup(name, **{"train.compute_dtype": "bfloat16"})
    _, _, state32 = _setup(name)
    images, labels = _batch(entry)
    x, y = jnp.asarray(images, jnp.float32) / 255, jnp.asarray(labels)
    new, metrics = self.variant(make_train_step(entry, tx))(state, x, y)
    _, metrics32 = jax.jit(make_train_step(zoo.get(name), tx))(state32, x, y)
    chex.assert_trees_all_equal_shapes_and_dtypes(new, state)
    chex.assert_type(metrics["loss"], jnp.float32)
    chex.assert_tree_all_finite(new)
    self.assertEqual(int(new.step), 1)
    # The same loss up to bfloat16's 8-bit mantissa, and not bit-identical
    # (the casts really happen).
    np.testing.assert_allclose(metrics["loss"], metrics32["loss"], rtol=2e-2)
    self.assertNotEqual(float(metrics["loss"]), float(metrics32["loss"]))

  def test_bfloat16_reaches_the_forward_pass(self):
    entry, tx, state = _setup("mlp_fashion_mnist",
                              **{"train.compute_dtype": "bfloat16"})
    images, labels = _batch(entry)
    jaxpr = str(jax.make_jaxpr(make_train_step(entry, tx))(
        state, jnp.asarray(images, jnp.float32) / 255, jnp.asarray(labels)))
    self.assertIn("bf16[16,256]", jaxpr)  # the first hidden layer
