"""Built-in architectures: shapes, parameter counts, parity with pure JAX,
dropout behaviour and input checking."""
from absl.testing import parameterized
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo

PARAM_COUNTS = {
    "logreg_mnist": 7_850,
    "logreg_fashion_mnist": 7_850,
    "logreg_binary_fashion_mnist": 785,
    "mlp_mnist": 235_146,
    "mlp_fashion_mnist": 235_146,
    "cnn_mnist": 421_642,
    "cnn_fashion_mnist": 421_642,
}


def _images(batch, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (batch, 28, 28, 1),
                            jnp.float32)


@functools.lru_cache(maxsize=None)
def _init_cached(name, seed):
  entry = zoo.get(name)
  return entry.init(jax.random.PRNGKey(seed), entry.example_input())


def _init(entry, seed=0):
  """Initial params of `entry`'s registered model (computed once per
  model; overrides such as dropout do not change the parameters)."""
  return _init_cached(entry.name, seed)


def _nonzero_params(entry, seed=0):
  """Params with random (non-zero) values everywhere, biases included, so
  that parity checks exercise every parameter."""
  params = _init(entry, seed)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  leaves = [0.05 * jax.random.normal(k, x.shape, x.dtype)
            for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, leaves)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_counts(name):
  entry = zoo.get(name)
  assert entry.param_count() == PARAM_COUNTS[name]
  params = _init(entry)
  assert sum(x.size for x in jax.tree.leaves(params)) == PARAM_COUNTS[name]
  for leaf in jax.tree.leaves(params):
    chex.assert_type(leaf, jnp.float32)


def test_param_shapes():
  cnn = zoo.get("cnn_mnist")
  params = _init(cnn)
  chex.assert_shape(params["small_cnn/conv_0"]["w"], (3, 3, 1, 32))   # HWIO
  chex.assert_shape(params["small_cnn/conv_1"]["w"], (3, 3, 32, 64))
  chex.assert_shape(params["small_cnn/dense"]["w"], (7 * 7 * 64, 128))
  chex.assert_shape(params["small_cnn/logits"]["w"], (128, 10))
  logreg = zoo.get("logreg_binary_fashion_mnist")
  params = _init(logreg)
  chex.assert_shape(params["logistic_regression/linear"]["w"], (784, 1))
  chex.assert_shape(params["logistic_regression/linear"]["b"], (1,))


def test_logistic_default_init_is_zero():
  entry = zoo.get("logreg_mnist")
  params = _init(entry)
  for leaf in jax.tree.leaves(params):
    assert not np.any(np.asarray(leaf))
  out = entry.apply(params, None, _images(2))
  chex.assert_trees_all_close(out, jnp.zeros((2, 10)))


# -- pure-JAX reference forward passes --------------------------------------------

def _ref_logistic(params, x):
  p = params["logistic_regression/linear"]
  return jnp.dot(x.reshape(x.shape[0], -1), p["w"]) + p["b"]


def _ref_mlp(params, x):
  h = x.reshape(x.shape[0], -1)
  names = [f"mlp_classifier/~/mlp/~/linear_{i}" for i in range(3)]
  for i, n in enumerate(names):
    h = jnp.dot(h, params[n]["w"]) + params[n]["b"]
    if i < len(names) - 1:
      h = jax.nn.relu(h)
  return h


def _ref_cnn(params, x):
  h = x
  for i in range(2):
    p = params[f"small_cnn/conv_{i}"]
    h = jax.lax.conv_general_dilated(
        h, p["w"], window_strides=(1, 1), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["b"]
    h = jax.nn.relu(h)
    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max,
                              window_dimensions=(1, 2, 2, 1),
                              window_strides=(1, 2, 2, 1), padding="VALID")
  h = h.reshape(h.shape[0], -1)
  chex.assert_shape(h, (x.shape[0], 3136))
  p = params["small_cnn/dense"]
  h = jax.nn.relu(jnp.dot(h, p["w"]) + p["b"])
  p = params["small_cnn/logits"]
  return jnp.dot(h, p["w"]) + p["b"]


REFERENCES = {"logreg_mnist": _ref_logistic, "mlp_mnist": _ref_mlp,
              "cnn_mnist": _ref_cnn}


class ParityTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("logreg_mnist", "mlp_mnist", "cnn_mnist")
  def test_matches_pure_jax(self, name):
    entry = zoo.get(name)
    params = _nonzero_params(entry)
    x = _images(4, seed=3)

    @self.variant
    def forward(params, x):
      return entry.apply(params, None, x, False)

    out = forward(params, x)
    chex.assert_shape(out, (4, 10))
    chex.assert_type(out, jnp.float32)
    expected = REFERENCES[name](params, x)
    chex.assert_trees_all_close(out, expected, rtol=1e-5, atol=1e-5)
    assert float(jnp.std(out)) > 1e-3  # not trivially equal

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(
      ("logreg_mnist", 10), ("logreg_fashion_mnist", 10),
      ("logreg_binary_fashion_mnist", 1), ("mlp_fashion_mnist", 10),
      ("cnn_fashion_mnist", 10))
  def test_output_shapes(self, name, width):
    entry = zoo.get(name)
    params = _init(entry)
    apply = self.variant(lambda p, x: entry.apply(p, None, x))
    for batch in (1, 5):
      out = apply(params, _images(batch))
      chex.assert_shape(out, (batch, width))
      chex.assert_type(out, jnp.float32)
      chex.assert_tree_all_finite(out)


# -- dropout ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlp_mnist", "cnn_mnist"])
def test_dropout_only_in_training_with_rng(name):
  entry = zoo.get(name, dropout=0.5)
  x = _images(4)
  params = _init(entry)
  apply = entry.apply
  eval_no_rng = apply(params, None, x, False)
  eval_rng = apply(params, jax.random.PRNGKey(1), x, False)
  chex.assert_trees_all_close(eval_no_rng, eval_rng)
  # Without dropout configured, training mode is the same function.
  plain = zoo.get(name)
  chex.assert_trees_all_close(
      plain.apply(params, jax.random.PRNGKey(1), x, True), eval_no_rng,
      rtol=1e-6, atol=1e-6)
  train_1 = apply(params, jax.random.PRNGKey(1), x, True)
  train_1b = apply(params, jax.random.PRNGKey(1), x, True)
  train_2 = apply(params, jax.random.PRNGKey(2), x, True)
  chex.assert_shape(train_1, eval_no_rng.shape)
  assert not np.allclose(train_1, eval_no_rng)
  assert not np.allclose(train_1, train_2)
  chex.assert_trees_all_close(train_1, train_1b)  # deterministic given rng
  # Training with dropout but no rng is an error, never a silent no-op.
  with pytest.raises(ValueError, match="PRNGKey"):
    entry.apply(params, None, x, True)


def test_dropout_rate_is_checked():
  # Refused by config validation (a ConfigError, a ValueError), at zoo.get.
  with pytest.raises(ValueError, match="dropout"):
    entry = zoo.get("mlp_mnist", dropout=1.0)
    entry.init(jax.random.PRNGKey(0), entry.example_input())


# -- input checking --------------------------------------------------------------

@pytest.mark.parametrize("name", ["logreg_mnist", "mlp_mnist", "cnn_mnist"])
def test_wrong_input_shape(name):
  entry = zoo.get(name)
  params = _init(entry)
  for bad in [(28, 28, 1), (2, 28, 28), (2, 1, 28, 28), (2, 784),
              (2, 32, 32, 3)]:
    with pytest.raises(zoo.InputError) as info:
      entry.apply(params, None, jnp.zeros(bad, jnp.float32))
    msg = str(info.value)
    assert "(batch, 28, 28, 1)" in msg and str(bad) in msg and "NHWC" in msg
  with pytest.raises(zoo.InputError):
    entry.init(jax.random.PRNGKey(0), jnp.zeros((28, 28, 1)))


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int32])
def test_integer_input_rejected(dtype):
  entry = zoo.get("cnn_mnist")
  params = _init(entry)
  with pytest.raises(zoo.InputError) as info:
    entry.apply(params, None, jnp.zeros((2, 28, 28, 1), dtype))
  msg = str(info.value)
  assert jnp.dtype(dtype).name in msg and "float" in msg
  assert isinstance(info.value, ValueError)


def test_input_checked_under_jit():
  entry = zoo.get("mlp_mnist")
  params = _init(entry)
  apply = jax.jit(lambda p, x: entry.apply(p, None, x))
  chex.assert_shape(apply(params, _images(2)), (2, 10))
  with pytest.raises(zoo.InputError):
    apply(params, jnp.zeros((2, 28, 28), jnp.float32))


def test_numpy_float32_nhwc_accepted():
  entry = zoo.get("cnn_mnist")
  params = _init(entry)
  x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
  out = entry.apply(params, None, x)
  chex.assert_trees_all_close(out, entry.apply(params, None, jnp.asarray(x)))


# -- the modules: registered classes, callables, argument checks ----------------

def test_registered_constructors_are_the_module_classes():
  """No pass-through wrappers: each architecture is its hk.Module class, and
  its config defaults are that class's own."""
  from zoo import config as config_lib
  from zoo.models import base, cnn, cnn_bn, logistic, lstm, mlp, vit
  classes = {"cnn": cnn.SmallCNN, "cnn_bn": cnn_bn.BatchNormCNN,
             "logistic": logistic.LogisticRegression, "lstm":
             lstm.LSTMClassifier, "mlp": mlp.MLPClassifier, "vit": vit.ViT}
  for arch, cls in classes.items():
    assert base.get(arch).build is cls, arch
    assert base.get(arch).stateful is (arch == "cnn_bn")
  assert config_lib.model_defaults(cnn.SmallCNN) == {
      "channels": [32, 64], "hidden_size": 128, "activation": "relu",
      "initializer": "he_normal", "dropout": 0.0}
  assert config_lib.model_defaults(logistic.LogisticRegression) == {
      "initializer": "zeros"}
  assert config_lib.model_defaults(cnn_bn.BatchNormCNN)["pool"] == "max"


@pytest.mark.parametrize("name,layer", [
    ("mlp_mnist", "mlp_classifier/~/mlp/~/linear_0"),
    ("cnn_mnist", "small_cnn/conv_0")])
def test_modules_take_callables(name, layer):
  """A module built directly with functions computes what the registered
  model computes with their names in its config."""
  import haiku as hk
  from zoo import initializers
  from zoo.models import base
  entry = zoo.get(name, activation="gelu", initializer="lecun_uniform")
  cls = base.get(entry.arch).build
  direct = hk.transform(lambda x: cls(
      10, activation=jax.nn.gelu, w_init=initializers.get("lecun_uniform"))(x))
  x = _images(3)
  params = direct.init(jax.random.PRNGKey(0), x)
  chex.assert_trees_all_equal(params,
                              entry.init(jax.random.PRNGKey(0), x))
  w = np.asarray(params[layer]["w"])
  assert np.abs(w).max() <= np.sqrt(3 / np.prod(w.shape[:-1]))  # lecun
  params = _nonzero_params(zoo.get(name))
  chex.assert_trees_all_close(direct.apply(params, None, x),
                              entry.apply(params, None, x), rtol=1e-6)


@pytest.mark.parametrize("build,kwargs,arg", [
    ("cnn.SmallCNN", {"dropout": 2.0}, "dropout"),
    ("cnn.SmallCNN", {"channels": (32, 0)}, "channels"),
    ("cnn_bn.BatchNormCNN", {"bn_decay": 1.0}, "bn_decay"),
    ("cnn_bn.BatchNormCNN", {"bn_eps": 0.0}, "bn_eps"),
    ("mlp.MLPClassifier", {"dropout": -0.1}, "dropout"),
    ("lstm.LSTMClassifier", {"num_layers": 0}, "num_layers"),
    ("vit.ViT", {"dropout": 1.0}, "dropout"),
    ("vit.ViT", {"num_heads": 0}, "num_heads"),
])
def test_direct_module_use_checks_ranges(build, kwargs, arg):
  """Without zoo.get, a module still refuses a value out of range, with the
  rule config validation uses for that kind of argument."""
  import importlib
  import haiku as hk
  from zoo.errors import ConfigValueError
  module_name, cls_name = build.split(".")
  cls = getattr(importlib.import_module(f"zoo.models.{module_name}"), cls_name)
  forward = hk.transform(lambda x: cls(10, **kwargs)(x))
  with pytest.raises(ConfigValueError) as info:
    forward.init(jax.random.PRNGKey(0), _images(1))
  assert isinstance(info.value, ValueError)
  msg = str(info.value)
  assert msg.startswith(f"{cls_name}.{arg} must be ") and "got" in msg, msg


@pytest.mark.parametrize("name", ["logreg_mnist", "mlp_mnist", "cnn_mnist"])
def test_with_state_api_matches_haiku_signatures(name):
  """init_with_state/apply_with_state: the same parameters and logits as
  Haiku's own init/apply, with an empty state for a stateless model."""
  entry = zoo.get(name, dropout=0.5) if name != "logreg_mnist" else \
      zoo.get(name)
  x = _images(3)
  params, state = entry.init_with_state(jax.random.PRNGKey(0), x)
  assert state == {}
  chex.assert_trees_all_equal(params, entry.init(jax.random.PRNGKey(0), x))
  params = _nonzero_params(entry)
  for rng, is_training in [(None, False), (jax.random.PRNGKey(1), True)]:
    out, new_state = entry.apply_with_state(params, {}, rng, x, is_training)
    assert new_state == {}
    chex.assert_trees_all_equal(out, entry.apply(params, rng, x, is_training))
