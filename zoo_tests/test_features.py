"""`entry.features`: what each classifier head sees, with the same parameters.

The head applied to the features must give `apply`'s logits exactly, the
features transform must name parameters as the model does (so the shipped
weights fit both), and frozen pretrained CNN features must be worth more to
a linear probe than the raw pixels (the README's example, run here).
"""
import re
from pathlib import Path

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import data, registry
from zoo.errors import InputError

REPO = Path(__file__).resolve().parents[1]

# Model -> (feature width, the head's parameters: the final Linear).
HEADS = {
    "logreg_fashion_mnist": (784, "logistic_regression/linear"),
    "logreg_binary_fashion_mnist": (784, "logistic_regression/linear"),
    "mlp_fashion_mnist": (128, "mlp_classifier/~/mlp/~/linear_2"),
    "cnn_fashion_mnist": (128, "small_cnn/logits"),
    "cnn_bn_fashion_mnist": (128, "batch_norm_cnn/logits"),
    "lstm_fashion_mnist": (128, "lstm_classifier/head"),
    "vit_tiny_fashion_mnist": (64, "vit/head"),
}


@pytest.fixture(scope="module")
def images():
  """Eight real test images (both binary classes among them), float32."""
  split = data.load("fashion_mnist", "test[:40]")
  keep = np.concatenate([np.flatnonzero(split.labels == 7)[:2],
                         np.flatnonzero(split.labels == 9)[:2],
                         np.flatnonzero(split.labels < 7)[:4]])
  return data.to_float(split.images[keep])


def test_every_architecture_is_covered():
  assert {zoo.get(n).arch for n in HEADS} == {
      zoo.get(n).arch for n in zoo.list_models()}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_of_features_is_the_logits(name, images):
  """With the shipped weights: features are (batch, width), and the final
  Linear's parameters applied to them give apply()'s logits bit for bit."""
  width, head = HEADS[name]
  entry = zoo.get(name, pretrained=True)
  feats = entry.features(entry.params, images, entry.model_state)
  chex.assert_shape(feats, (len(images), width))
  chex.assert_type(feats, jnp.float32)
  chex.assert_tree_all_finite(feats)
  logits, _ = jax.jit(entry.apply_with_state, static_argnums=4)(
      entry.params, entry.model_state, None, images, False)
  w, b = entry.params[head]["w"], entry.params[head]["b"]
  chex.assert_shape(w, (width, entry.num_outputs))
  from_features = jax.jit(lambda f: f @ w + b)(feats)
  np.testing.assert_array_equal(np.asarray(from_features), np.asarray(logits))
  assert float(jnp.std(feats)) > 0  # not a constant


@pytest.mark.parametrize("name", ["logreg_fashion_mnist",
                                  "logreg_binary_fashion_mnist"])
def test_logistic_features_are_the_flattened_input(name, images):
  entry = zoo.get(name, pretrained=True)
  np.testing.assert_array_equal(
      np.asarray(entry.features(entry.params, images)),
      np.asarray(images).reshape(len(images), -1))


def test_cnn_features_are_post_activation():
  """ReLU features: non-negative, and some exactly zero."""
  entry = zoo.get("cnn_fashion_mnist", pretrained=True)
  x = data.to_float(data.load("fashion_mnist", "test[:16]").images)
  feats = np.asarray(entry.features(entry.params, x))
  assert feats.min() == 0.0 and (feats > 0).any()


@pytest.mark.parametrize("name,overrides", [
    *[(n, {}) for n in sorted(HEADS)],
    ("mlp_fashion_mnist", {"hidden_sizes": (64,), "dropout": 0.2}),
    ("cnn_fashion_mnist", {"channels": (8,), "hidden_size": 16}),
    ("cnn_bn_fashion_mnist", {"dense_batch_norm": False, "pool": "avg"}),
    ("lstm_fashion_mnist", {"num_layers": 2, "hidden_size": 32}),
    ("vit_tiny_fashion_mnist", {"depth": 1, "dim": 32}),
])
def test_features_transform_names_parameters_as_the_model(name, overrides):
  """The features transform creates exactly the model's parameters and state
  minus the head: same names, shapes and dtypes (so no renames)."""
  entry = zoo.get(name, **overrides)
  x = entry.example_input(2)
  params, state = jax.eval_shape(entry.init_with_state, jax.random.PRNGKey(0),
                                 x)
  f_params, f_state = jax.eval_shape(entry.features_transformed.init,
                                     jax.random.PRNGKey(0), x)
  head = [m for m in params if m not in f_params]
  assert len(head) == 1, head  # only the final Linear is missing
  chex.assert_trees_all_equal_shapes_and_dtypes(
      f_params, {m: v for m, v in params.items() if m != head[0]})
  chex.assert_trees_all_equal_shapes_and_dtypes(f_state, state)


def test_mlp_training_path_is_haikus_mlp(images):
  """MLPClassifier runs hk.nets.MLP's layers itself (to stop before the
  output layer); in training, with dropout, it must still compute exactly
  what `hk.nets.MLP.__call__` does with the same key."""
  entry = zoo.get("mlp_fashion_mnist", dropout=0.3, activation="gelu")

  def reference(x):
    module = entry.module()
    return module.mlp(hk.Flatten()(x), dropout_rate=module.dropout,
                      rng=hk.next_rng_key())

  params = zoo.get("mlp_fashion_mnist", pretrained=True).params  # same shapes
  rng = jax.random.PRNGKey(7)
  apply = jax.jit(entry.apply_with_state, static_argnums=4)
  ours, _ = apply(params, {}, rng, images, True)
  theirs = jax.jit(hk.transform(reference).apply)(params, rng, images)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  evaluation, _ = apply(params, {}, rng, images, False)
  assert not np.array_equal(np.asarray(ours), np.asarray(evaluation))


def test_stateful_model_needs_its_state(images):
  entry = zoo.get("cnn_bn_fashion_mnist", pretrained=True)
  with pytest.raises(InputError, match="model_state"):
    entry.features(entry.params, images)


def test_bad_images_are_an_input_error():
  entry = zoo.get("cnn_fashion_mnist", pretrained=True)
  with pytest.raises(InputError, match="NHWC"):
    entry.features(entry.params, jnp.zeros((2, 28, 28)))
  with pytest.raises(InputError, match="uint8"):
    entry.features(entry.params, jnp.zeros((2, 28, 28, 1), jnp.uint8))


def test_module_without_features_says_how_to_add_one():
  class NoFeatures(hk.Module):
    def __init__(self, num_outputs, width=8, name=None):
      super().__init__(name=name)
      self.num_outputs, self.width = num_outputs, width

    def __call__(self, x, is_training=False):
      return hk.Linear(self.num_outputs)(hk.Flatten()(x))

  zoo.register("no_features_tmp", dataset="fashion_mnist")(NoFeatures)
  try:
    entry = zoo.get("no_features_tmp")
    params, _ = jax.jit(entry.init_with_state)(jax.random.PRNGKey(0),
                                               entry.example_input())
    with pytest.raises(InputError, match=r"hk\.name_like"):
      entry.features(params, entry.example_input())
  finally:
    registry.unregister("no_features_tmp")


# The docs' example (docs/guides/pretrained.md, "A linear probe"), verbatim.
README_EXAMPLE = '''\
import jax, jax.numpy as jnp, optax, zoo
from zoo import data, registry

entry = zoo.get("cnn_fashion_mnist", pretrained=True)
train = data.load("fashion_mnist", "train[:2000]")  # uint8 NHWC, int32 labels
test = data.load("fashion_mnist", "test[:1000]")

def probe_accuracy(embed, steps=300):
  """Test accuracy of a linear probe (softmax regression, full-batch Adam)
  trained on `embed` of the training images, the embedding frozen."""
  x = embed(data.to_float(train.images))
  x_test = embed(data.to_float(test.images))
  mean, std = x.mean(0), x.std(0) + 1e-6   # standardise each feature
  x, x_test = (x - mean) / std, (x_test - mean) / std
  probe = {"w": jnp.zeros((x.shape[1], 10)), "b": jnp.zeros(10)}
  opt = optax.adam(1e-2)

  def loss(probe):
    logits = x @ probe["w"] + probe["b"]
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, train.labels).mean()

  @jax.jit
  def step(probe, opt_state):
    updates, opt_state = opt.update(jax.grad(loss)(probe), opt_state)
    return optax.apply_updates(probe, updates), opt_state

  opt_state = opt.init(probe)
  for _ in range(steps):
    probe, opt_state = step(probe, opt_state)
  predictions = (x_test @ probe["w"] + probe["b"]).argmax(-1)
  return float((predictions == test.labels).mean())

features = probe_accuracy(lambda x: entry.features(entry.params, x))  # 128
pixels = probe_accuracy(lambda x: x.reshape(len(x), -1))              # 784
print(f"linear probe: CNN features {features:.1%}, raw pixels {pixels:.1%}")
'''


def test_linear_probe_on_cnn_features_beats_pixels(capsys):
  """The docs' example on real data: 2,000 training images, 1,000 test
  images, the same probe on frozen pretrained CNN features and on pixels."""
  namespace = {}
  exec(compile(README_EXAMPLE, "docs example", "exec"), namespace)
  features, pixels = namespace["features"], namespace["pixels"]
  out = capsys.readouterr().out
  assert re.fullmatch(r"linear probe: CNN features \d+\.\d%, raw pixels "
                      r"\d+\.\d%\n", out), out
  # Measured: 92.2% against 79.8%. The pixel probe is a fair one (it is
  # what logistic regression gets from this little data), and the CNN's
  # features are near its own test accuracy (92.1%).
  assert 0.75 < pixels < 0.86, pixels
  assert features > 0.89, features
  assert features > pixels + 0.05, (features, pixels)


def test_docs_show_the_probe_example():
  """The example on the pretrained-weights guide is the one tested above."""
  guide = (REPO / "docs" / "guides" / "pretrained.md").read_text()
  assert README_EXAMPLE in guide
