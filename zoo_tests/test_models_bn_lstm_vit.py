"""BatchNorm CNN, row-by-row LSTM and tiny ViT: registration, parameter
counts, shapes, BatchNorm state, sequence and attention masks, and short
real-data training runs (one device and, for BatchNorm, pmap on two)."""
import functools

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.models import lstm as lstm_lib
from zoo.models import vit as vit_lib
from zoo.training.loop import train

MODELS = {  # name -> (arch, dataset)
    "cnn_bn_fashion_mnist": ("cnn_bn", "fashion_mnist"),
    "cnn_bn_mnist": ("cnn_bn", "mnist"),
    "lstm_fashion_mnist": ("lstm", "fashion_mnist"),
    "lstm_mnist": ("lstm", "mnist"),
    "vit_tiny_fashion_mnist": ("vit", "fashion_mnist"),
    "vit_tiny_mnist": ("vit", "mnist"),
}
K = 10


# -- parameter counts, by hand from the architectures ---------------------------

def cnn_bn_count(c1=32, c2=64, hidden=128, dense_bn=True, k=K):
  conv = 9 * 1 * c1 + 2 * c1 + 9 * c1 * c2 + 2 * c2  # no conv bias: BN offset
  dense = 7 * 7 * c2 * hidden + (2 * hidden if dense_bn else hidden)
  return conv + dense + hidden * k + k


def lstm_count(hidden=128, layers=1, row=28, k=K):
  # One Linear(4H) on [x_t, h_{t-1}] per layer; layer l > 0 reads H features.
  first = (row + hidden) * 4 * hidden + 4 * hidden
  rest = (layers - 1) * ((2 * hidden) * 4 * hidden + 4 * hidden)
  return first + rest + hidden * k + k


def vit_count(patch=7, dim=64, depth=4, mlp=128, tokens=16, k=K):
  embed = patch * patch * dim + dim + dim + (tokens + 1) * dim  # +CLS, +pos
  attention = 4 * (dim * dim + dim)                     # q, k, v, out
  block = attention + (dim * mlp + mlp) + (mlp * dim + dim) + 2 * 2 * dim
  return embed + depth * block + 2 * dim + dim * k + k


EXPECTED_COUNTS = {"cnn_bn": cnn_bn_count(), "lstm": lstm_count(),
                   "vit": vit_count()}


def test_hand_counts_are_the_documented_ones():
  assert EXPECTED_COUNTS == {"cnn_bn": 421_866, "lstm": 81_674,
                             "vit": 139_018}


def _images(batch, seed=0, shape=(28, 28, 1)):
  return jax.random.uniform(jax.random.PRNGKey(seed), (batch, *shape),
                            jnp.float32)


def _shapes(name):
  """(params, state) shapes of a registered model, without computing them."""
  entry = zoo.get(name)
  return jax.eval_shape(
      functools.partial(entry.init_with_state, is_training=True),
      jax.random.PRNGKey(0), entry.example_input(2))


def _random_params(transformed, *args):
  """Parameters of `transformed` drawn at random on the host (shapes from
  tracing init: nothing to compile); biases included, none is zero."""
  shapes = jax.eval_shape(transformed.init, jax.random.PRNGKey(0), *args)
  rng = np.random.default_rng(1)
  return jax.tree.map(
      lambda x: jnp.asarray(0.2 * rng.standard_normal(x.shape), x.dtype),
      shapes)


@functools.lru_cache(maxsize=None)
def _init(name):
  """(params, state) of a registered model ({} state when stateless)."""
  entry = zoo.get(name)
  return jax.jit(functools.partial(entry.init_with_state, is_training=True))(
      jax.random.PRNGKey(0), entry.example_input(2))


# -- registration ----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MODELS))
def test_registered(name):
  arch, dataset = MODELS[name]
  assert name in zoo.list_models()
  entry = zoo.get(name)
  assert entry.arch == arch and entry.dataset == dataset
  assert entry.num_outputs == K and entry.input_shape == (28, 28, 1)
  # Only the BatchNorm model carries state (its running statistics).
  assert entry.stateful is (arch == "cnn_bn")
  if entry.stateful:
    assert isinstance(entry.transformed, hk.TransformedWithState)
  else:
    assert isinstance(entry.transformed, hk.Transformed)
  # Every model, stateful or not, also has the one (params, state) interface.
  assert isinstance(entry.transformed_with_state, hk.TransformedWithState)
  cfg = entry.config
  assert cfg["optimizer"]["name"] in ("adam", "adamw")
  assert cfg["schedule"]["name"] in ("cosine", "warmup_cosine")
  assert cfg["description"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_param_counts(name):
  entry = zoo.get(name)
  expected = EXPECTED_COUNTS[MODELS[name][0]]
  assert entry.param_count() == expected
  params, _ = _shapes(name)
  assert sum(x.size for x in jax.tree.leaves(params)) == expected
  for leaf in jax.tree.leaves(params):
    chex.assert_type(leaf, jnp.float32)


@pytest.mark.parametrize("name,overrides,expected", [
    ("cnn_bn_mnist", {"channels": (16, 32), "hidden_size": 64},
     cnn_bn_count(16, 32, 64)),
    ("cnn_bn_mnist", {"dense_batch_norm": False},
     cnn_bn_count(dense_bn=False)),
    ("lstm_mnist", {"hidden_size": 64, "num_layers": 2},
     lstm_count(64, 2)),
    ("vit_tiny_mnist", {"dim": 32, "depth": 2, "mlp_dim": 64},
     vit_count(dim=32, depth=2, mlp=64)),
    ("vit_tiny_mnist", {"patch_size": 14}, vit_count(patch=14, tokens=4)),
])
def test_param_counts_follow_overrides(name, overrides, expected):
  assert zoo.get(name, **overrides).param_count() == expected


def test_param_shapes():
  params, state = _shapes("cnn_bn_mnist")
  chex.assert_shape(params["batch_norm_cnn/conv_0"]["w"], (3, 3, 1, 32))
  assert "b" not in params["batch_norm_cnn/conv_0"]  # BN offset instead
  chex.assert_shape(params["batch_norm_cnn/dense"]["w"], (3136, 128))
  for bn, c in [("bn_0", 32), ("bn_1", 64), ("bn_dense", 128)]:
    assert params[f"batch_norm_cnn/{bn}"]["scale"].size == c
    assert params[f"batch_norm_cnn/{bn}"]["offset"].size == c
    for ema in ("mean_ema", "var_ema"):
      assert state[f"batch_norm_cnn/{bn}/~/{ema}"]["average"].size == c
  params, _ = _shapes("lstm_mnist")
  chex.assert_shape(params["lstm_classifier/lstm_0/linear"]["w"],
                    (28 + 128, 4 * 128))
  chex.assert_shape(params["lstm_classifier/head"]["w"], (128, K))
  params, _ = _shapes("vit_tiny_mnist")
  chex.assert_shape(params["vit/patch_embedding"]["w"], (49, 64))
  chex.assert_shape(params["vit"]["cls_token"], (1, 1, 64))
  chex.assert_shape(params["vit"]["position_embedding"], (17, 64))
  chex.assert_shape(params["vit/block_3/attention/query"]["w"], (64, 64))
  chex.assert_shape(params["vit/head"]["w"], (64, K))


# -- output shapes ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["cnn_bn_fashion_mnist", "lstm_fashion_mnist",
                                  "vit_tiny_fashion_mnist"])
def test_output_shapes(name):
  """Shapes and dtypes in both modes (traced only: the values are checked by
  the tests below and by the training runs)."""
  entry = zoo.get(name)
  params, state = _shapes(name)
  rng = jax.random.PRNGKey(1)  # for dropout in training
  for batch, is_training in [(1, False), (5, False), (5, True)]:
    x = jax.ShapeDtypeStruct((batch, 28, 28, 1), jnp.float32)
    apply = functools.partial(entry.apply_with_state, is_training=is_training)
    out, new_state = jax.eval_shape(apply, params, state, rng, x)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
    chex.assert_shape(out, (batch, K))
    chex.assert_type(out, jnp.float32)


# -- BatchNorm -------------------------------------------------------------------

def test_batchnorm_statistics_update_only_in_training():
  entry = zoo.get("cnn_bn_fashion_mnist")
  params, state = _init(entry.name)
  x = _images(8, seed=1)
  apply = jax.jit(entry.apply, static_argnames="is_training")

  _, trained = apply(params, state, jax.random.PRNGKey(0), x,
                     is_training=True)
  chex.assert_trees_all_equal_shapes_and_dtypes(trained, state)
  for module in state:
    assert not np.allclose(trained[module]["average"],
                           state[module]["average"]), module
    assert int(trained[module]["counter"]) == int(state[module]["counter"]) + 1

  out_1, same = apply(params, trained, jax.random.PRNGKey(1), x,
                      is_training=False)
  out_2, _ = apply(params, trained, jax.random.PRNGKey(2), x,
                   is_training=False)
  chex.assert_trees_all_equal(same, trained)  # evaluation leaves state alone
  chex.assert_trees_all_equal(out_1, out_2)   # and is deterministic
  # Evaluation uses the running statistics: an image's logits do not depend
  # on the rest of the batch. Training uses batch statistics: they do.
  others = x.at[1:].set(_images(7, seed=2))
  out_others, _ = apply(params, trained, None, others, is_training=False)
  chex.assert_trees_all_close(out_others[0], out_1[0], rtol=1e-5, atol=1e-5)
  train_x, _ = apply(params, trained, jax.random.PRNGKey(0), x,
                     is_training=True)
  train_others, _ = apply(params, trained, jax.random.PRNGKey(0), others,
                          is_training=True)
  assert not np.allclose(train_x[0], train_others[0], atol=1e-4)


def test_batchnorm_init_state_is_the_same_in_either_mode():
  entry = zoo.get("cnn_bn_mnist")
  x = entry.example_input()
  shapes = [jax.eval_shape(functools.partial(entry.init, is_training=t),
                           jax.random.PRNGKey(0), x) for t in (True, False)]
  chex.assert_trees_all_equal_shapes_and_dtypes(*shapes)


def test_pool_variant_changes_the_module():
  x = _images(3, seed=2)
  max_entry = zoo.get("cnn_bn_fashion_mnist")
  avg_entry = zoo.get("cnn_bn_fashion_mnist", pool="avg")
  assert max_entry.config["model"]["pool"] == "max"
  assert avg_entry.config["model"]["pool"] == "avg"
  assert avg_entry.param_count() == max_entry.param_count()
  params, state = _init("cnn_bn_fashion_mnist")
  out_max, _ = jax.jit(max_entry.apply)(params, state, None, x)
  out_avg, _ = jax.jit(avg_entry.apply)(params, state, None, x)
  assert not np.allclose(out_max, out_avg, atol=1e-4)
  with pytest.raises(ValueError, match="pool"):
    bad = zoo.get("cnn_bn_mnist", pool="median")
    bad.init(jax.random.PRNGKey(0), bad.example_input())


def test_pool_is_a_function_named_in_the_config():
  """The module takes the pooling function; the config's name resolves to
  it (`pool = "avg"` is hk.avg_pool)."""
  from zoo import pooling
  from zoo.models import cnn_bn
  entry = zoo.get("cnn_bn_fashion_mnist", pool="avg")
  direct = hk.transform_with_state(
      lambda x: cnn_bn.BatchNormCNN(K, pool=hk.avg_pool)(x))
  params, state = _init("cnn_bn_fashion_mnist")
  x = _images(3, seed=2)
  out, _ = jax.jit(direct.apply)(params, state, None, x)
  chex.assert_trees_all_close(
      out, jax.jit(entry.apply_with_state)(params, state, None, x)[0])
  assert pooling.get("avg") is hk.avg_pool
  assert pooling.get("max") is pooling.max_pool
  assert pooling.name_of(hk.avg_pool) == "avg"
  with pytest.raises(ValueError, match="did you mean max"):
    pooling.get("maxx")


# -- LSTM sequence mask ----------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _lstm(num_layers=1):
  def forward(x, lengths=None):
    return lstm_lib.LSTMClassifier(K, num_layers=num_layers)(x,
                                                             lengths=lengths)
  transformed = hk.without_apply_rng(hk.transform(forward))
  return jax.jit(transformed.apply), _random_params(transformed, _images(1))


@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_padded_rows_do_not_change_logits(num_layers):
  apply, params = _lstm(num_layers)
  x = _images(5, seed=3)
  lengths = jnp.array([28, 17, 5, 1, 0])
  rows = jnp.arange(28)[None, :, None, None]
  padded = rows >= lengths[:, None, None, None]
  # Whatever the rows at or past each length hold, the logits are the same
  # (all variants in one batch: one compilation).
  variants = [x] + [jnp.where(padded, noise, x) for noise in (
      _images(5, seed=4), jnp.zeros_like(x), jnp.full_like(x, 1e3))]
  for v in variants[1:]:
    assert not np.allclose(v, x)
  outs = apply(params, jnp.concatenate([*variants, x]),
               jnp.concatenate([jnp.tile(lengths, 4), jnp.full((5,), 28)]))
  outs = outs.reshape(5, 5, K)
  chex.assert_tree_all_finite(outs)
  out = outs[0]
  for other in outs[1:4]:
    chex.assert_trees_all_close(other, out, rtol=1e-6, atol=1e-6)
  # Full length is the default, and a shorter length changes the logits.
  full = apply(params, x)  # another batch size: rounding may differ a bit
  chex.assert_trees_all_close(outs[4], full, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(out[0], full[0], rtol=1e-5, atol=1e-5)
  assert not np.allclose(out[1], full[1])
  if num_layers == 1:
    # Length 17 is the same as reading the image cropped to 17 rows.
    chex.assert_trees_all_close(out[1], apply(params, x[1:2, :17])[0],
                                rtol=1e-5, atol=1e-5)
    # Padded rows get no gradient either.
    grad = jax.grad(lambda im: jnp.sum(apply(params, im, lengths)))(x)
    assert not np.any(np.asarray(jnp.where(padded, grad, 0.0)))
    assert np.any(np.asarray(grad[1, :17]))


def test_lstm_lengths_shape_is_checked():
  apply, params = _lstm()
  with pytest.raises(ValueError, match="lengths"):
    apply(params, _images(3), jnp.array([28, 28]))
  mask = lstm_lib.sequence_mask(jnp.array([2, 0]), 2, 3)
  chex.assert_trees_all_equal(
      mask, jnp.array([[True, False], [True, False], [False, False]]))


# -- ViT attention mask ----------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _vit():
  # Two blocks suffice to show that masking holds from layer to layer.
  def forward(x, mask=None):
    return vit_lib.ViT(K, depth=2)(x, mask=mask)
  transformed = hk.without_apply_rng(hk.transform(forward))
  return jax.jit(transformed.apply), _random_params(transformed, _images(1))


def _patch_pixels(token_mask, patch=7, grid=4):
  """(B, tokens) -> (B, 28, 28, 1): each token's value over its patch."""
  b = token_mask.shape[0]
  m = token_mask.reshape(b, grid, 1, grid, 1)
  m = jnp.broadcast_to(m, (b, grid, patch, grid, patch))
  return m.reshape(b, grid * patch, grid * patch, 1)


def test_vit_patchify_order():
  x = jnp.arange(28 * 28, dtype=jnp.float32).reshape(1, 28, 28, 1)
  p = vit_lib.patchify(x, 7)
  chex.assert_shape(p, (1, 16, 49))
  chex.assert_trees_all_equal(p[0, 5].reshape(7, 7), x[0, 7:14, 7:14, 0])
  marks = _patch_pixels(jnp.arange(16)[None] == 5)
  chex.assert_trees_all_equal(vit_lib.patchify(marks.astype(jnp.float32), 7)[0]
                              .sum(axis=1), (jnp.arange(16) == 5) * 49.0)


def test_vit_masked_tokens_do_not_change_logits():
  apply, params = _vit()
  x = _images(3, seed=7)
  mask = jax.random.bernoulli(jax.random.PRNGKey(8), 0.5, (3, 16))
  mask = mask.at[:, 0].set(True).at[2].set(False)  # row 2: CLS alone
  hidden = _patch_pixels(~mask)
  # Whatever the masked patches hold, the logits are the same (all variants
  # in one batch: one compilation).
  variants = [x] + [jnp.where(hidden, noise, x) for noise in (
      _images(3, seed=9), jnp.zeros_like(x), jnp.full_like(x, 50.0))]
  for v in variants[1:]:
    assert not np.allclose(v, x)
  outs = apply(params, jnp.concatenate([*variants, x]),
               jnp.concatenate([jnp.tile(mask, (4, 1)),
                                jnp.ones((3, 16), bool)]))
  outs = outs.reshape(5, 3, K)
  chex.assert_tree_all_finite(outs)
  out = outs[0]
  for other in outs[1:4]:
    chex.assert_trees_all_close(other, out, rtol=1e-5, atol=1e-5)
  # All-valid equals no mask; masking changes the output.
  full = apply(params, x)  # another batch size: rounding may differ a bit
  chex.assert_trees_all_close(outs[4], full, rtol=1e-5, atol=1e-5)
  assert not np.allclose(out, full, atol=1e-4)
  with pytest.raises(ValueError, match="mask"):
    apply(params, x, jnp.ones((3, 17), bool))


# -- real-data training ----------------------------------------------------------

SMALL = {"data.train_split": "train[:6400]", "data.test_split": "test[:1000]"}


@pytest.mark.parametrize("name,threshold", [
    ("cnn_bn_fashion_mnist", 0.75),
    ("lstm_fashion_mnist", 0.6),
    ("vit_tiny_fashion_mnist", 0.6),
])
def test_short_training_run(name, threshold):
  run = train(name, progress=False, devices=1, epochs=1, batch_size=64,
              **SMALL)
  res = run.result
  assert res["steps"] == 100 and res["devices"] == 1
  assert res["test_examples"] == 1000
  assert res["test_accuracy"] > threshold, res["test_accuracy"]
  chex.assert_tree_all_finite(run.params)
  if run.entry.stateful:
    _, init_state = _init(name)
    chex.assert_trees_all_equal_shapes_and_dtypes(run.model_state, init_state)
    for module, ema in run.model_state.items():  # one update per step
      assert int(ema["counter"]) == int(init_state[module]["counter"]) + 100
  else:
    assert run.model_state == {}


def test_batchnorm_model_trains_under_pmap():
  run = train("cnn_bn_fashion_mnist", progress=False, devices=2, epochs=1,
              batch_size=64, strategy="pmap",
              **{"data.train_split": "train[:1280]",
                 "data.test_split": "test[:500]"})
  res = run.result
  assert res["strategy"] == "pmap" and res["devices"] == 2
  assert res["steps"] == 20
  assert res["test_accuracy"] > 0.5, res["test_accuracy"]
  # The running statistics came back as one (averaged) copy with their
  # dtypes intact (the int32 step counters too), one update per step.
  _, init_state = _init("cnn_bn_fashion_mnist")
  chex.assert_trees_all_equal_shapes_and_dtypes(run.model_state, init_state)
  for module, ema in run.model_state.items():
    chex.assert_tree_all_finite(ema["average"])
    assert int(ema["counter"]) == int(init_state[module]["counter"]) + 20
