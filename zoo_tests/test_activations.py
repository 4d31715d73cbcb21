"""zoo.activations: names map to jax.nn's functions."""
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import activations
from zoo.errors import ConfigError

REQUIRED = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.swish,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "soft_sign": jax.nn.soft_sign,
    "log_sigmoid": jax.nn.log_sigmoid,
}

X = jnp.linspace(-6.0, 6.0, 101, dtype=jnp.float32)


class ActivationTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*sorted(REQUIRED))
  def test_matches_jax_nn(self, name):
    fn = self.variant(activations.get(name))
    out = fn(X)
    chex.assert_shape(out, X.shape)
    chex.assert_type(out, jnp.float32)
    chex.assert_trees_all_close(out, REQUIRED[name](X), rtol=1e-6, atol=1e-6)

  @parameterized.parameters(*sorted(REQUIRED))
  def test_listed_and_differentiable(self, name):
    assert name in activations.names()
    grad = jax.vmap(jax.grad(activations.get(name)))(X)
    chex.assert_tree_all_finite(grad)


def test_spot_values():
  x = jnp.array([-1.0, 0.0, 2.0])
  chex.assert_trees_all_close(activations.get("relu")(x), jnp.array([0.0, 0.0, 2.0]))
  chex.assert_trees_all_close(activations.get("leaky_relu")(x),
                              jnp.array([-0.01, 0.0, 2.0]))
  chex.assert_trees_all_close(activations.get("sigmoid")(jnp.zeros(())), 0.5)
  chex.assert_trees_all_close(activations.get("soft_sign")(x),
                              jnp.array([-0.5, 0.0, 2 / 3]), rtol=1e-6)
  chex.assert_trees_all_close(activations.get("softplus")(jnp.zeros(())),
                              np.log(2.0), rtol=1e-6)
  chex.assert_trees_all_close(activations.get("swish")(x),
                              activations.get("silu")(x))


def test_names_sorted():
  names = activations.names()
  assert names == sorted(names)
  assert set(REQUIRED) <= set(names)


def test_unknown_activation():
  with pytest.raises(ConfigError) as info:
    activations.get("gleu")
  msg = str(info.value)
  assert "gleu" in msg and "gelu" in msg
  assert isinstance(info.value, zoo.ZooError)
  with pytest.raises(ConfigError, match="Choose one of"):
    activations.get("nonexistent_activation")


def test_name_of_is_the_way_back():
  for name in activations.names():
    fn = activations.get(name)
    assert activations.get(activations.name_of(fn)) is fn
  assert activations.name_of(jax.nn.relu) == "relu"
  assert activations.name_of(jax.nn.silu) == "silu"  # not its alias swish
  assert activations.name_of(lambda x: x) is None
