"""zoo.losses: values against hand computations, stability, L2 selection."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import losses
from zoo.errors import ConfigError


def _np_log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  m = logits.max(-1, keepdims=True)
  return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


LOGITS = jnp.array([[2.0, 1.0, 0.1], [0.5, 2.5, -1.0], [0.0, 0.0, 0.0]])
LABELS = jnp.array([0, 1, 2])


class SoftmaxCrossEntropyTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_integer_labels(self):
    loss = self.variant(losses.softmax_cross_entropy)(LOGITS, LABELS)
    chex.assert_shape(loss, ())
    logp = _np_log_softmax(LOGITS)
    expected = -np.mean([logp[0, 0], logp[1, 1], logp[2, 2]])
    chex.assert_trees_all_close(loss, expected, rtol=1e-6)
    # Row 3 alone: uniform logits over 3 classes -> log(3).
    chex.assert_trees_all_close(
        losses.softmax_cross_entropy(LOGITS[2:], LABELS[2:]), np.log(3.0),
        rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_one_hot_equals_integer_labels(self):
    fn = self.variant(losses.softmax_cross_entropy)
    one_hot = jax.nn.one_hot(LABELS, 3)
    chex.assert_trees_all_close(fn(LOGITS, one_hot), fn(LOGITS, LABELS),
                                rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_label_smoothing(self):
    eps = 0.1
    fn = self.variant(lambda l, y: losses.softmax_cross_entropy(
        l, y, label_smoothing=eps))
    logp = _np_log_softmax(LOGITS)
    targets = np.eye(3)[np.asarray(LABELS)] * (1 - eps) + eps / 3
    expected = -np.mean((targets * logp).sum(-1))
    chex.assert_trees_all_close(fn(LOGITS, LABELS), expected, rtol=1e-6)
    chex.assert_trees_all_close(fn(LOGITS, jax.nn.one_hot(LABELS, 3)),
                                expected, rtol=1e-6)
    plain = losses.softmax_cross_entropy(LOGITS, LABELS)
    assert not np.isclose(float(fn(LOGITS, LABELS)), float(plain))

  def test_hand_value(self):
    # logits (0, ln 3): p = (1/4, 3/4) -> -log(3/4) for label 1.
    logits = jnp.array([[0.0, np.log(3.0)]])
    chex.assert_trees_all_close(
        losses.softmax_cross_entropy(logits, jnp.array([1])),
        -np.log(0.75), rtol=1e-6)
    chex.assert_trees_all_close(
        losses.softmax_cross_entropy(logits, jnp.array([0])),
        np.log(4.0), rtol=1e-6)

  def test_mismatched_targets(self):
    with pytest.raises(ValueError, match="do not match"):
      losses.softmax_cross_entropy(LOGITS, jnp.ones((3, 4)))

  def test_large_logits_finite(self):
    logits = jnp.array([[100.0, -100.0], [-100.0, 100.0]])
    labels = jnp.array([1, 1])
    loss = losses.softmax_cross_entropy(logits, labels)
    chex.assert_trees_all_close(loss, 100.0, rtol=1e-5)  # mean(200, 0)
    grad = jax.grad(losses.softmax_cross_entropy)(logits, labels)
    chex.assert_tree_all_finite(grad)


class BinaryCrossEntropyTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_values(self):
    fn = self.variant(losses.binary_cross_entropy)
    chex.assert_trees_all_close(fn(jnp.zeros((4,)), jnp.array([0, 1, 0, 1])),
                                np.log(2.0), rtol=1e-6)
    # logit ln 3: p = 3/4.
    z = np.log(3.0)
    chex.assert_trees_all_close(fn(jnp.array([z]), jnp.array([1])),
                                -np.log(0.75), rtol=1e-6)
    chex.assert_trees_all_close(fn(jnp.array([z]), jnp.array([0])),
                                -np.log(0.25), rtol=1e-6)
    # (B, 1) logits, as the binary model outputs, against (B,) labels.
    chex.assert_trees_all_close(
        fn(jnp.array([[z], [-z]]), jnp.array([1, 0])), -np.log(0.75),
        rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_extreme_logits(self):
    fn = self.variant(losses.binary_cross_entropy)
    cases = [(100.0, 0, 100.0), (-100.0, 1, 100.0), (100.0, 1, 0.0),
             (-100.0, 0, 0.0)]
    for logit, label, expected in cases:
      loss = fn(jnp.array([logit]), jnp.array([label]))
      chex.assert_tree_all_finite(loss)
      chex.assert_trees_all_close(loss, expected, atol=1e-4, rtol=1e-5)
      grad = jax.grad(losses.binary_cross_entropy)(jnp.array([logit]),
                                                   jnp.array([label]))
      chex.assert_tree_all_finite(grad)
      # d/dz = sigmoid(z) - y: +-1 for a confidently wrong logit, 0 if right.
      chex.assert_trees_all_close(
          grad, jnp.array([jax.nn.sigmoid(logit) - label]), atol=1e-6)

  def test_label_smoothing(self):
    z = jnp.array([np.log(3.0)])
    eps = 0.2
    y = 1 * (1 - eps) + 0.5 * eps
    expected = -(y * np.log(0.75) + (1 - y) * np.log(0.25))
    chex.assert_trees_all_close(
        losses.binary_cross_entropy(z, jnp.array([1]), label_smoothing=eps),
        expected, rtol=1e-6)


class MeanSquaredErrorTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_value(self):
    fn = self.variant(losses.mean_squared_error)
    pred = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    target = jnp.array([[1.0, 0.0], [0.0, 4.0]])
    chex.assert_trees_all_close(fn(pred, target), (4.0 + 9.0) / 4, rtol=1e-6)
    chex.assert_trees_all_close(fn(pred, pred), 0.0)


# -- L2 ------------------------------------------------------------------------

def _params():
  return {
      "linear": {"w": jnp.full((3, 2), 2.0), "b": jnp.full((2,), 100.0)},
      "conv": {"w": jnp.ones((3, 3, 1, 2)), "b": jnp.full((2,), 100.0)},
      # BatchNorm-like scale/offset (rank >= 2 in Haiku's BatchNorm): never.
      "batch_norm": {"scale": jnp.full((1, 1, 1, 2), 100.0),
                     "offset": jnp.full((1, 1, 1, 2), 100.0)},
      "layer_norm": {"scale": jnp.full((2,), 100.0)},
      "vector": {"w": jnp.full((5,), 100.0)},  # rank 1 `w`: not a matrix
  }


def test_l2_counts_only_weight_matrices():
  # 0.5 * (6 * 2**2 + 18 * 1**2) = 21.
  chex.assert_trees_all_close(losses.l2_regularization(_params(), 1.0), 21.0)
  chex.assert_trees_all_close(losses.l2_regularization(_params(), 0.01), 0.21,
                              rtol=1e-6)
  chex.assert_trees_all_close(losses.l2_regularization(_params(), 0.0), 0.0)


def test_l2_gradient_only_on_weights():
  grads = jax.grad(losses.l2_regularization)(_params(), 0.5)
  chex.assert_trees_all_close(grads["linear"]["w"], 0.5 * _params()["linear"]["w"])
  chex.assert_trees_all_close(grads["conv"]["w"], 0.5 * _params()["conv"]["w"])
  for module, name in [("linear", "b"), ("conv", "b"), ("batch_norm", "scale"),
                       ("batch_norm", "offset"), ("layer_norm", "scale"),
                       ("vector", "w")]:
    assert not np.any(np.asarray(grads[module][name])), (module, name)


def test_l2_on_model_params():
  entry = zoo.get("cnn_mnist")
  params = jax.eval_shape(entry.init, jax.random.PRNGKey(0),
                          entry.example_input())
  params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), params)
  weights = 3 * 3 * 32 + 3 * 3 * 32 * 64 + 3136 * 128 + 128 * 10
  l2 = jax.jit(losses.l2_regularization)(params, 2.0)
  chex.assert_trees_all_close(l2, float(weights), rtol=1e-6)
  assert losses.is_regularized(("small_cnn/conv_0", "w"), params["small_cnn/conv_0"]["w"])
  assert not losses.is_regularized(("small_cnn/conv_0", "b"),
                                   params["small_cnn/conv_0"]["b"])


# -- lookup --------------------------------------------------------------------

def test_get_and_names():
  assert losses.names() == ["binary_cross_entropy", "softmax_cross_entropy"]
  assert losses.get("softmax_cross_entropy") is losses.softmax_cross_entropy
  assert losses.get("binary_cross_entropy") is losses.binary_cross_entropy
  with pytest.raises(ConfigError, match="softmax_cross_entropy"):
    losses.get("softmax_crossentropy")


def test_entry_loss_uses_config():
  multi = zoo.get("mlp_mnist")
  chex.assert_trees_all_close(multi.loss(LOGITS, LABELS),
                              losses.softmax_cross_entropy(LOGITS, LABELS))
  binary = zoo.get("logreg_binary_fashion_mnist")
  logits = jnp.array([[100.0], [-100.0]])
  chex.assert_trees_all_close(binary.loss(logits, jnp.array([0, 0])), 50.0,
                              rtol=1e-5)


def test_predictions():
  chex.assert_trees_all_equal(losses.predictions(LOGITS[:2]), jnp.array([0, 1]))
  chex.assert_trees_all_equal(
      losses.predictions(jnp.array([[0.3], [-0.2]])), jnp.array([1, 0]))
  chex.assert_type(losses.predictions(LOGITS), jnp.int32)
