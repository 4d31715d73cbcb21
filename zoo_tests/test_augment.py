"""On-device augmentation (zoo.data.augment, `[augment]`): what each image
becomes, how keys are drawn (per step, per example, the same under jit, pmap
and mesh), that it is off by default without changing the step, that a
resumed run stays bit-exact, and that a run with it still learns."""
import copy

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import config as config_lib
from zoo import registry
from zoo.data import augment
from zoo.training import loop, strategies
from zoo.training.optim import optimizer
from zoo.training.state import init_state
from zoo.training.step import augment_batch, make_train_step

H, W, C = 28, 28, 1
OFF = config_lib.DEFAULTS["augment"]


def _images(batch=64, seed=0, shape=(H, W, C)):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (batch, *shape)).astype(np.float32) / 255


def _offsets(out, image, padding, mode):
  """Every (dy, dx) whose window of the padded `image` is `out`."""
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)),
                  mode={"zero": "constant", "reflect": "reflect"}[mode])
  h, w = image.shape[:2]
  return [(dy, dx) for dy in range(2 * padding + 1)
          for dx in range(2 * padding + 1)
          if np.array_equal(padded[dy:dy + h, dx:dx + w], out)]


# --- the pure functions -----------------------------------------------------

class AugmentTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_and_dtypes_preserved(self):
    for cfg in ({"crop_padding": 4}, {"flip": True},
                {"crop_padding": 2, "padding_mode": "reflect", "flip": True}):
      for shape in ((H, W, C), (32, 24, 3)):
        x = jnp.asarray(_images(8, shape=shape))
        out = self.variant(lambda k, x: augment.augment(k, x, cfg))(
            jax.random.PRNGKey(0), x)
        chex.assert_equal_shape([out, x])
        chex.assert_type(out, jnp.float32)

  def test_off_is_the_identity(self):
    x = jnp.asarray(_images(4))
    assert augment.augment(jax.random.PRNGKey(0), x, OFF) is x
    assert not augment.enabled(OFF) and not augment.enabled({})

  def test_flip_gives_the_image_or_its_mirror(self):
    x = _images(64)
    out = np.asarray(jax.jit(lambda k, x: augment.augment(
        k, x, {"flip": True}))(jax.random.PRNGKey(1), x))
    flipped = []
    for o, i in zip(out, x):
      same, mirror = np.array_equal(o, i), np.array_equal(o, i[:, ::-1])
      assert same or mirror
      flipped.append(mirror)
    assert 0 < sum(flipped) < len(flipped)  # p = 0.5: both occur


@pytest.mark.parametrize("mode", ["zero", "reflect"])
@pytest.mark.parametrize("padding", [2, 4])
def test_crop_is_a_window_of_the_padded_image(mode, padding):
  x = _images(32, seed=padding)
  cfg = {"crop_padding": padding, "padding_mode": mode}
  out = np.asarray(jax.jit(lambda k, x: augment.augment(k, x, cfg))(
      jax.random.PRNGKey(2), x))
  offsets = set()
  for o, i in zip(out, x):
    found = _offsets(o, i, padding, mode)
    assert found, "not a window of the padded input"
    offsets.update(found)
  assert len(offsets) > 4  # random offsets, not one fixed shift


def test_crop_and_flip_together_is_a_mirrored_window():
  x = _images(16, seed=3)
  cfg = {"crop_padding": 2, "padding_mode": "zero", "flip": True}
  out = np.asarray(augment.augment(jax.random.PRNGKey(4), jnp.asarray(x), cfg))
  for o, i in zip(out, x):
    assert _offsets(o, i, 2, "zero") or _offsets(o[:, ::-1], i, 2, "zero")


def test_padding_above_half_the_image_is_one_line_config_error():
  with pytest.raises(zoo.ConfigError) as e:
    augment.check({"crop_padding": 15}, (H, W, C))
  assert "augment.crop_padding" in str(e.value) and "0..14" in str(e.value)
  assert "\n" not in str(e.value)
  augment.check({"crop_padding": 14}, (H, W, C))
  entry = registry.with_config(zoo.get("logreg_fashion_mnist"),
                               {"augment.crop_padding": 15})
  with pytest.raises(zoo.ConfigError, match="0..14"):
    make_train_step(entry, optimizer(entry.config, 10))


@pytest.mark.parametrize("override, match", [
    ({"augment.crop_padding": -1}, "augment.crop_padding must be an int >= 0"),
    ({"augment.crop_padding": 2.0}, "augment.crop_padding must be an int"),
    ({"augment.flip": 1}, "augment.flip must be a bool"),
    ({"augment.padding_mode": "wrap"}, "choose one of: zero, reflect"),
    ({"augment.flipp": True}, "unknown key .augment.flipp.*augment.flip"),
])
def test_bad_settings_are_one_line_config_errors(override, match):
  with pytest.raises(zoo.ConfigError, match=match) as e:
    registry.with_config(zoo.get("mlp_fashion_mnist"), override)
  assert "\n" not in str(e.value)


# --- keys: per step, per example, per device --------------------------------

CFG = {"crop_padding": 4, "padding_mode": "zero", "flip": True}


def _step_key(seed, step):
  """The train step's key for `step` of a run with `seed` (as make_train_step
  and init_state derive it)."""
  rng = jax.random.split(jax.random.PRNGKey(seed))[1]
  return jax.random.fold_in(rng, jnp.int32(step))


def test_same_seed_and_step_same_augmentation_other_steps_differ():
  x = jnp.asarray(_images(32))
  run = jax.jit(lambda k, x: augment_batch(k, x, CFG))
  a = run(_step_key(0, 5), x)
  np.testing.assert_array_equal(a, run(_step_key(0, 5), x))
  for other in (_step_key(0, 6), _step_key(1, 5)):
    assert not np.array_equal(a, run(other, x))
  # Different per example: the same image in every slot comes out varied.
  same = jnp.broadcast_to(x[:1], x.shape)
  out = np.asarray(run(_step_key(0, 5), same))
  assert len({o.tobytes() for o in out}) > 8


def test_pmap_devices_augment_their_own_examples_as_the_global_batch():
  """Device d of a pmap augments block d of the global batch exactly as
  jit does the whole batch: different images per device, same result."""
  x = jnp.asarray(_images(32))
  key = _step_key(0, 3)
  ref = np.asarray(jax.jit(lambda k, x: augment_batch(k, x, CFG))(key, x))
  out = jax.pmap(lambda x: augment_batch(key, x, CFG, "batch"),
                 axis_name="batch", devices=jax.devices()[:4])(
                     x.reshape(4, 8, H, W, C))
  np.testing.assert_array_equal(np.asarray(out).reshape(ref.shape), ref)


def _run_strategy(strategy_name, devices, steps=3, **overrides):
  entry = registry.with_config(zoo.get("mlp_fashion_mnist"), overrides)
  tx = optimizer(entry.config, total_steps=100)
  state = jax.device_get(init_state(entry, tx, seed=0))
  strat = strategies.make(strategy_name, devices)
  _, run_scan = strat.compile(make_train_step(entry, tx,
                                              axis_name=strat.axis_name))
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (256, H, W, C), dtype=np.uint8)
  labels = rng.integers(0, 10, (256,)).astype(np.int32)
  rows = np.random.default_rng(2).permutation(256)[:steps * 16].reshape(
      steps, 16)
  s, metrics = run_scan(strat.put_state(state),
                        *strat.put_data(images, labels), strat.put_indices(rows))
  return strat.get_state(s).params, strat.host_metrics(metrics)


def test_train_step_with_augmentation_agrees_under_jit_pmap_and_mesh():
  """The same global batch augmented the same way: plain SGD gives the
  same parameters up to the gradients' round-off (as in test_step)."""
  kw = {"optimizer.name": "sgd", "optimizer.learning_rate": 0.1,
        "augment.crop_padding": 2, "augment.flip": True}
  ref, ref_metrics = _run_strategy("jit", 1, **kw)
  plain, _ = _run_strategy("jit", 1, **{k: v for k, v in kw.items()
                                        if k.startswith("optimizer")})
  assert not np.array_equal(jax.tree.leaves(ref)[0],
                            jax.tree.leaves(plain)[0])
  for strategy_name, devices in [("pmap", 4), ("mesh", 4)]:
    params, metrics = _run_strategy(strategy_name, devices, **kw)
    chex.assert_trees_all_close(params, ref, rtol=2e-5, atol=2e-6,
                                custom_message=f"{strategy_name} x{devices}")
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"],
                               rtol=1e-5)


# --- off by default: configs and the step unchanged -------------------------

PRE_AUGMENT_SECTIONS = {"name", "description", "model", "data", "loss",
                        "optimizer", "schedule", "train"}


# Registered recipes made to use augmentation (the others predate it).
AUGMENTED = {"cnn_bn_aug_fashion_mnist": {"crop_padding": 2,
                                          "padding_mode": "zero",
                                          "flip": True}}


@pytest.mark.parametrize("name", zoo.list_models())
def test_registered_configs_only_gain_the_augment_defaults(name):
  """Configs from before `[augment]` keep it off (their baselines do not
  move); the recipes made for it have what they state."""
  cfg = zoo.get(name).config
  assert cfg["augment"] == AUGMENTED.get(name, {
      "crop_padding": 0, "padding_mode": "zero", "flip": False})
  assert set(cfg) - PRE_AUGMENT_SECTIONS == {"augment"}


@pytest.mark.parametrize("name", ["mlp_fashion_mnist", "cnn_fashion_mnist"])
def test_default_step_is_the_step_without_augmentation(name):
  """With the defaults the step's jaxpr and outputs are those of a config
  from before `[augment]` existed; turning it on changes the jaxpr."""
  entry = zoo.get(name)
  older = copy.deepcopy(entry.config)
  del older["augment"]
  before = registry.ModelEntry(name=name, config=older)
  tx = optimizer(entry.config, total_steps=10)
  state = init_state(entry, tx, seed=0)
  x = jnp.asarray(_images(16))
  y = jnp.arange(16, dtype=jnp.int32) % 10

  def jaxpr(e):
    return str(jax.make_jaxpr(make_train_step(e, tx))(state, x, y))
  assert jaxpr(entry) == jaxpr(before)
  on = registry.with_config(entry, {"augment.flip": True})
  assert jaxpr(on) != jaxpr(entry)
  assert "dynamic_slice" not in jaxpr(entry)
  a = jax.jit(make_train_step(entry, tx))(state, x, y)
  b = jax.jit(make_train_step(before, tx))(state, x, y)
  jax.tree.map(np.testing.assert_array_equal, a, b)


# --- real runs: resume is bit-exact, and it still learns --------------------

RUN = dict(epochs=2, batch_size=128, checkpoint_every=4, devices=1,
           progress=False, **{"data.train_split": "train[:2048]",
                              "data.test_split": "test[:500]",
                              "train.loop": "python",
                              "augment.crop_padding": 2,
                              "augment.padding_mode": "reflect",
                              "augment.flip": True})
TIMING = ("images_per_second", "seconds", "wall_seconds")


def _numbers(history):
  return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def test_resume_with_augmentation_is_bit_identical(tmp_path,
                                                  sigterm_when_epoch_starts):
  """A SIGTERM just before epoch 2 (as in test_checkpoint): the run saves
  mid-epoch at step 17 and stops; re-running resumes to exactly the
  parameters and metrics of an uninterrupted run, which differ from a run
  without augmentation."""
  train = lambda workdir, **kw: loop.train("logreg_fashion_mnist",
                                           workdir=workdir, **{**RUN, **kw})
  ref = train(tmp_path / "ref")
  with sigterm_when_epoch_starts(1), pytest.raises(loop.Preempted,
                                                   match="saved step 17 "):
    train(tmp_path / "resumed")
  out = train(tmp_path / "resumed")
  assert out.result["params_sha256"] == ref.result["params_sha256"]
  assert _numbers(out.history) == _numbers(ref.history)
  plain = train(tmp_path / "plain", **{"augment.crop_padding": 0,
                                       "augment.flip": False})
  assert plain.result["params_sha256"] != ref.result["params_sha256"]


def test_training_with_augmentation_still_learns():
  out = loop.train("mlp_fashion_mnist", epochs=2, batch_size=64, devices=1,
                   progress=False, **{"data.train_split": "train[:4096]",
                                      "data.test_split": "test[:1000]",
                                      "augment.crop_padding": 2,
                                      "augment.flip": True})
  assert out.result["config"]["augment"]["flip"] is True
  assert out.result["test_accuracy"] > 0.6, out.result["test_accuracy"]
