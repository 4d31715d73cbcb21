"""zoo.pooling: the same values and gradients as hk.max_pool, bit for
bit, on ties too, under jit and without."""
import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from zoo import pooling

# (input shape, window, strides, padding): the first three tile the input
# (reshape path), the rest fall back to Haiku.
GEOMETRIES = [
    ((4, 8, 8, 3), (1, 2, 2, 1), (1, 2, 2, 1), "VALID"),
    ((2, 9, 6, 2), (1, 3, 2, 1), (1, 3, 2, 1), "VALID"),
    ((3, 12, 5), (1, 4, 1), (1, 4, 1), "VALID"),
    ((2, 7, 7, 3), (1, 2, 2, 1), (1, 2, 2, 1), "VALID"),  # 7 % 2 != 0
    ((2, 8, 8, 3), (1, 3, 3, 1), (1, 2, 2, 1), "VALID"),  # overlapping
    ((2, 8, 8, 3), (1, 2, 2, 1), (1, 2, 2, 1), "SAME"),
]


def _inputs(shape, seed):
  rng = np.random.default_rng(seed)
  distinct = rng.normal(size=shape).astype(np.float32)
  # Small integers after a ReLU: most windows hold ties (zeros and repeats).
  tied = np.maximum(rng.integers(-2, 3, size=shape), 0).astype(np.float32)
  return [distinct, tied]


class PoolingTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*GEOMETRIES)
  def test_values_and_gradients_match_haiku_exactly(self, shape, window,
                                                    strides, padding):
    for x in _inputs(shape, seed=len(shape)):
      def value_and_grad(pool, x):
        out, vjp = jax.vjp(lambda x: pool(x, window, strides, padding), x)
        cot = jnp.cos(jnp.arange(out.size, dtype=x.dtype)).reshape(out.shape)
        return out, vjp(cot)[0]
      out, grad = self.variant(
          lambda x: value_and_grad(pooling.max_pool, x))(x)
      ref, ref_grad = self.variant(
          lambda x: value_and_grad(hk.max_pool, x))(x)
      chex.assert_equal_shape([out, ref])
      np.testing.assert_array_equal(out, ref)
      np.testing.assert_array_equal(grad, ref_grad)

  def test_tied_window_sends_the_whole_gradient_to_its_first_maximum(self):
    x = jnp.array([[3., 3.], [1., 3.]]).reshape(1, 2, 2, 1)
    grad = jax.grad(lambda x: pooling.max_pool(
        x, (1, 2, 2, 1), (1, 2, 2, 1)).sum())(x)
    np.testing.assert_array_equal(grad.reshape(2, 2), [[1., 0.], [0., 0.]])

  def test_tiling_windows_take_the_reshape_path(self):
    x = jnp.ones((2, 8, 8, 3))
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: pooling.max_pool(
        x, (1, 2, 2, 1), (1, 2, 2, 1)).sum()))(x))
    assert "reduce_window" not in jaxpr and "select_and" not in jaxpr
    fallback = str(jax.make_jaxpr(jax.grad(lambda x: pooling.max_pool(
        x, (1, 3, 3, 1), (1, 2, 2, 1)).sum()))(x))
    assert "select_and" in fallback or "reduce_window" in fallback

  def test_bfloat16_keeps_its_dtype(self):
    x = jnp.asarray(_inputs((2, 4, 4, 2), 0)[0], jnp.bfloat16)
    out, vjp = jax.vjp(lambda x: pooling.max_pool(x, (1, 2, 2, 1),
                                                  (1, 2, 2, 1)), x)
    chex.assert_type(out, jnp.bfloat16)
    chex.assert_type(vjp(jnp.ones_like(out))[0], jnp.bfloat16)


if __name__ == "__main__":
  pytest.main([__file__])
