"""zoo.conv: stride-1 SAME convolutions as matrix products on the CPU. The
same values as XLA's convolution to float32 rounding, gradients at least as
close to a float64 reference, hk.Conv2D's parameters exactly, and XLA's
convolution wherever the matrix products do not apply."""
import chex
import haiku as hk
import jax
import jax.export  # noqa: F401  (a submodule JAX < 0.8 does not import)
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import conv


def _arrays(b=4, h=9, w=7, c=3, o=5, k=3, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(b, h, w, c)), jnp.float32),
          jnp.asarray(rng.normal(size=(k, k, c, o)) / (k * np.sqrt(c)),
                      jnp.float32))


def _conv64(x, w):
  """SAME stride-1 convolution in float64 numpy (the reference)."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  kh, kw = w.shape[:2]
  xp = np.pad(x, ((0, 0), (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)))
  h, wd = x.shape[1:3]
  return sum(np.einsum("bhwc,co->bhwo", xp[:, i:i + h, j:j + wd], w[i, j])
             for i in range(kh) for j in range(kw))


def _grads64(x, w, g):
  """(dx, dw) of sum(conv(x, w) * g) in float64."""
  x64, w64, g64 = (np.asarray(a, np.float64) for a in (x, w, g))
  kh, kw = w.shape[:2]
  h, wd = x.shape[1:3]
  xp = np.pad(x64, ((0, 0), (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)))
  dw = np.stack([np.stack([np.einsum("bhwc,bhwo->co",
                                     xp[:, i:i + h, j:j + wd], g64)
                           for j in range(kw)]) for i in range(kh)])
  dxp = np.zeros_like(xp)
  for i in range(kh):
    for j in range(kw):
      dxp[:, i:i + h, j:j + wd] += np.einsum("bhwo,co->bhwc", g64, w64[i, j])
  return dxp[:, kh // 2:kh // 2 + h, kw // 2:kw // 2 + wd], dw


class ConvTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @pytest.mark.filterwarnings("ignore")
  def test_values_match_xla_and_float64(self):
    for c, k in ((1, 3), (3, 3), (8, 5), (4, 1)):
      x, w = _arrays(c=c, k=k, seed=c + k)
      got = self.variant(conv.conv2d_same)(x, w)
      chex.assert_shape(got, (*x.shape[:3], w.shape[3]))
      chex.assert_trees_all_close(got, conv.lax_conv2d_same(x, w),
                                  rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(got, _conv64(x, w), rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_gradients_match_float64(self):
    for c in (1, 6):
      x, w = _arrays(b=8, h=10, w=10, c=c, o=7, seed=c)
      g = jnp.asarray(np.random.default_rng(9).normal(
          size=(8, 10, 10, 7)), jnp.float32)
      want_dx, want_dw = _grads64(x, w, g)
      def loss(fn):
        return lambda x, w: jnp.sum(fn(x, w) * g)
      dx, dw = self.variant(jax.grad(loss(conv.conv2d_same), (0, 1)))(x, w)
      ref_dx, ref_dw = jax.grad(loss(conv.lax_conv2d_same), (0, 1))(x, w)
      chex.assert_trees_all_equal_shapes_and_dtypes((dx, dw), (x, w))
      err = lambda a, b: np.abs(np.asarray(a, np.float64) - b).max() / (
          np.abs(b).max())
      assert err(dw, want_dw) < 1e-6 and err(ref_dw, want_dw) < 1e-6
      assert err(dx, want_dx) < 1e-6 and err(ref_dx, want_dx) < 1e-6

  def test_kernel_gradient_of_the_cnns_second_layer_beats_xlas(self):
    """At the small CNN's real shapes (batch 128, 14x14, 32 -> 64 channels)
    the summed product is at least as close to float64 as XLA's
    convolution (4e-7 against 2e-6 on JAX 0.12, 6.6e-6 against 7e-6 on
    JAX 0.7)."""
    x, w = _arrays(b=128, h=14, w=14, c=32, o=64, seed=4)
    g = jnp.asarray(np.random.default_rng(5).normal(size=(128, 14, 14, 64)),
                    jnp.float32)
    _, want = _grads64(x[:, :, :, :], w, g)
    ours = jax.jit(jax.grad(lambda w: jnp.sum(conv.conv2d_same(x, w) * g)))(w)
    xlas = jax.jit(jax.grad(
        lambda w: jnp.sum(conv.lax_conv2d_same(x, w) * g)))(w)
    err = lambda a: np.abs(np.asarray(a, np.float64) - want).max() / (
        np.abs(want).max())
    assert err(ours) < 1e-5 and err(ours) <= err(xlas), (err(ours), err(xlas))

  def test_cpu_runs_matrix_products_and_other_platforms_xla(self):
    x, w = _arrays(b=2, h=6, w=6, c=4, o=3)
    step = jax.grad(lambda x, w: jnp.sum(conv.conv2d_same(x, w) ** 2), (0, 1))
    convolutions = lambda text: text.count("stablehlo.convolution")
    # On the CPU: the forward pass and the kernel gradient are dot_general;
    # the input gradient is the one convolution left.
    cpu = jax.jit(step).lower(x, w).as_text()
    assert convolutions(cpu) == 1 and "dot_general" in cpu
    # Lowered for a GPU (no GPU needed): XLA's convolutions only.
    cuda = jax.export.export(jax.jit(step), platforms=["cuda"])(x, w)
    assert convolutions(cuda.mlir_module()) == 3
    assert "dot_general" not in cuda.mlir_module()

  def test_other_geometries_and_big_forward_blocks_use_xla(self):
    x, w = _arrays(c=4, k=3)
    assert conv.fits(x.shape, w.shape)
    assert not conv.fits(x.shape, (2, 2, 4, 5))          # even kernel
    assert not conv.fits(x.shape[1:], w.shape)           # unbatched
    assert not conv.fits(x.shape, (3, 3, 5, 5))          # channels differ
    even = jnp.ones((2, 2, 4, 5), jnp.float32)
    chex.assert_trees_all_equal(conv.conv2d_same(x, even),
                                conv.lax_conv2d_same(x, even))
    # A forward block above IM2COL_MAX_BYTES is XLA's convolution, bit for
    # bit; the kernel gradient is still a matrix product.
    big = jnp.ones((16, 64, 64, 64), jnp.float32)
    kernel = jnp.full((3, 3, 64, 2), 0.01, jnp.float32)
    assert 16 * 64 * 64 * 9 * 64 * 4 > conv.IM2COL_MAX_BYTES
    text = jax.jit(conv.conv2d_same).lower(big, kernel).as_text()
    assert "stablehlo.convolution" in text and "dot_general" not in text


def test_a_symbolic_batch_exports_with_xlas_forward_pass():
  """An exported model (any batch size) runs XLA's convolution forward."""
  x, w = _arrays(c=4)
  batch = jax.export.symbolic_shape("b")[0]
  spec = jax.ShapeDtypeStruct((batch, *x.shape[1:]), x.dtype)
  exported = jax.export.export(jax.jit(conv.conv2d_same),
                               platforms=["cpu"])(spec, w)
  assert "stablehlo.convolution" in exported.mlir_module()
  chex.assert_trees_all_close(exported.call(x, w),
                              conv.lax_conv2d_same(x, w), rtol=1e-6)


def test_conv2d_has_hk_conv2ds_parameters_and_initial_values():
  x, _ = _arrays(b=2, h=8, w=8, c=3)
  init = hk.initializers.VarianceScaling(2.0, "fan_in", "truncated_normal")
  for with_bias in (True, False):
    for w_init in (init, None):
      def ours(x):
        return conv.Conv2D(6, 3, with_bias=with_bias, w_init=w_init,
                           name="conv_0")(x)

      def haikus(x):
        return hk.Conv2D(6, 3, padding="SAME", with_bias=with_bias,
                         w_init=w_init, name="conv_0")(x)
      a = hk.transform(ours)
      b = hk.transform(haikus)
      pa = a.init(jax.random.PRNGKey(3), x)
      pb = b.init(jax.random.PRNGKey(3), x)
      chex.assert_trees_all_equal(pa, pb)  # names, shapes, values
      chex.assert_trees_all_close(a.apply(pa, None, x), b.apply(pb, None, x),
                                  rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="odd"):
    hk.transform(lambda x: conv.Conv2D(2, 2)(x)).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="rank 4"):
    hk.transform(lambda x: conv.Conv2D(2)(x)).init(jax.random.PRNGKey(0),
                                                   x[0])
