"""zoo.initializers: variance-scaling statistics with the right fans."""
import math

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import initializers
from zoo.errors import ConfigError

DENSE = (1000, 500)
CONV = (3, 3, 64, 128)

# name -> (scale, fan mode, distribution)
SPECS = {
    "xavier_normal": (1.0, "fan_avg", "normal"),
    "glorot_normal": (1.0, "fan_avg", "normal"),
    "xavier_uniform": (1.0, "fan_avg", "uniform"),
    "glorot_uniform": (1.0, "fan_avg", "uniform"),
    "he_normal": (2.0, "fan_in", "normal"),
    "kaiming_normal": (2.0, "fan_in", "normal"),
    "he_uniform": (2.0, "fan_in", "uniform"),
    "kaiming_uniform": (2.0, "fan_in", "uniform"),
    "lecun_normal": (1.0, "fan_in", "normal"),
    "lecun_uniform": (1.0, "fan_in", "uniform"),
}


def fan(shape, mode):
  fan_in = math.prod(shape[:-1])
  fan_out = math.prod(shape[:-2]) * shape[-1]
  return {"fan_in": fan_in, "fan_out": fan_out,
          "fan_avg": (fan_in + fan_out) / 2}[mode]


def sample(name, shape, seed=0):
  init = initializers.get(name)
  return hk.transform(lambda: init(shape, jnp.float32)).apply(
      {}, jax.random.PRNGKey(seed))


def test_fan_helper():
  assert fan(DENSE, "fan_in") == 1000 and fan(DENSE, "fan_out") == 500
  assert fan(CONV, "fan_in") == 9 * 64 and fan(CONV, "fan_out") == 9 * 128
  assert fan(CONV, "fan_avg") == (9 * 64 + 9 * 128) / 2


@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_variance_scaling_statistics(name, shape):
  scale, mode, distribution = SPECS[name]
  raw = sample(name, shape)
  chex.assert_shape(raw, shape)
  chex.assert_type(raw, jnp.float32)
  w = np.asarray(raw, np.float64)
  expected_std = math.sqrt(scale / fan(shape, mode))
  assert abs(w.std() / expected_std - 1) < 0.03, (w.std(), expected_std)
  assert abs(w.mean()) < 0.02 * expected_std
  if distribution == "uniform":
    bound = math.sqrt(3 * scale / fan(shape, mode))
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.99 * bound  # fills the whole interval
  else:
    # Truncated at two (pre-correction) standard deviations, so bounded too,
    # but the tails are well beyond the uniform bound's sqrt(3) std.
    assert np.abs(w).max() <= 2 * expected_std / 0.87962566103423978 + 1e-6
    assert np.abs(w).max() > 1.8 * expected_std


def test_aliases_match():
  for alias, canonical in [("xavier_normal", "glorot_normal"),
                           ("xavier_uniform", "glorot_uniform"),
                           ("kaiming_normal", "he_normal"),
                           ("kaiming_uniform", "he_uniform")]:
    chex.assert_trees_all_close(sample(alias, CONV), sample(canonical, CONV))


def test_distinct_statistics_by_fan():
  # For a non-square kernel fan_in, fan_avg and he's factor 2 differ.
  stds = {n: float(sample(n, DENSE).std()) for n in
          ("lecun_normal", "glorot_normal", "he_normal")}
  assert stds["lecun_normal"] < stds["glorot_normal"] < stds["he_normal"]


def test_zeros():
  for shape in (DENSE, CONV, (7,)):
    w = sample("zeros", shape)
    chex.assert_shape(w, shape)
    chex.assert_trees_all_close(w, jnp.zeros(shape))


def test_names():
  names = initializers.names()
  assert names == sorted(names)
  for name in [*SPECS, "zeros"]:
    assert name in names


def test_unknown_initializer():
  with pytest.raises(ConfigError) as info:
    initializers.get("xavier_unifrom")
  msg = str(info.value)
  assert "xavier_unifrom" in msg
  assert "did you mean" in msg and "xavier_uniform" in msg
  with pytest.raises(ConfigError, match="Choose one of"):
    initializers.get("orthogonal")


@pytest.mark.parametrize("name,layer,shape", [
    ("mlp_mnist", "mlp_classifier/~/mlp/~/linear_0", (784, 256)),
    ("cnn_mnist", "small_cnn/conv_1", (3, 3, 32, 64)),
])
def test_initializer_selectable_per_model(name, layer, shape):
  def first_w(**overrides):
    entry = zoo.get(name, **overrides)
    params = entry.init(jax.random.PRNGKey(0), entry.example_input())
    w = params[layer]["w"]
    chex.assert_shape(w, shape)
    return np.asarray(w, np.float64)

  default = first_w()  # he_normal
  assert abs(default.std() / math.sqrt(2 / fan(shape, "fan_in")) - 1) < 0.05
  uniform = first_w(initializer="xavier_uniform")
  bound = math.sqrt(3 / fan(shape, "fan_avg"))
  assert np.abs(uniform).max() <= bound
  assert abs(uniform.std() / math.sqrt(1 / fan(shape, "fan_avg")) - 1) < 0.05
  lecun = first_w(initializer="lecun_normal")
  assert abs(lecun.std() / math.sqrt(1 / fan(shape, "fan_in")) - 1) < 0.05
  assert not np.any(first_w(initializer="zeros"))


def test_logistic_initializer_override():
  entry = zoo.get("logreg_mnist", initializer="he_uniform")
  params = entry.init(jax.random.PRNGKey(0), entry.example_input())
  w = np.asarray(params["logistic_regression/linear"]["w"])
  assert np.abs(w).max() <= math.sqrt(3 * 2 / 784)
  assert w.std() > 0.04
  # Biases always start at zero.
  assert not np.any(np.asarray(params["logistic_regression/linear"]["b"]))


def test_unknown_initializer_in_model():
  # Refused by config validation, at zoo.get.
  with pytest.raises(ConfigError, match="he_normal"):
    entry = zoo.get("mlp_mnist", initializer="he_norml")
    entry.init(jax.random.PRNGKey(0), entry.example_input())


def test_one_shared_instance_per_name_and_name_of():
  """get() returns one (stateless) instance per name, aliases included, so a
  module's default initializer can be stated as a name in its config."""
  for name in initializers.names():
    init = initializers.get(name)
    assert initializers.get(name) is init
    canonical = initializers.name_of(init)
    assert initializers.get(canonical) is init
    assert canonical == {"xavier_normal": "glorot_normal",
                         "xavier_uniform": "glorot_uniform",
                         "kaiming_normal": "he_normal",
                         "kaiming_uniform": "he_uniform"}.get(name, name)
  assert initializers.name_of(hk.initializers.VarianceScaling(2.0)) is None
