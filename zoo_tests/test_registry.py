"""zoo.registry: names, lookup errors, entries, overrides and zoo.register."""
import os
from pathlib import Path

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chex
import zoo
from zoo import registry
from zoo.errors import ConfigError, UnknownConfigKeyError, UnknownModelError

EXPECTED = [
    "cnn_fashion_mnist", "cnn_mnist", "logreg_binary_fashion_mnist",
    "logreg_fashion_mnist", "logreg_mnist", "mlp_fashion_mnist", "mlp_mnist",
]
EXPECTED_DATASETS = {
    "cnn_fashion_mnist": "fashion_mnist", "cnn_mnist": "mnist",
    "logreg_binary_fashion_mnist": "fashion_mnist",
    "logreg_fashion_mnist": "fashion_mnist", "logreg_mnist": "mnist",
    "mlp_fashion_mnist": "fashion_mnist", "mlp_mnist": "mnist",
}


# -- list_models ---------------------------------------------------------------

def test_list_models_is_sorted_and_complete():
  names = zoo.list_models()
  assert names == sorted(names)
  assert len(names) == len(set(names))
  for name in EXPECTED:
    assert name in names


def test_list_models_wildcard():
  fashion = zoo.list_models("*fashion*")
  assert fashion == sorted(fashion)
  assert set(fashion) >= {"logreg_fashion_mnist", "mlp_fashion_mnist",
                          "cnn_fashion_mnist", "logreg_binary_fashion_mnist"}
  assert all("fashion" in n for n in fashion)
  assert "mlp_mnist" not in fashion
  assert zoo.list_models("cnn_*") == [n for n in zoo.list_models()
                                      if n.startswith("cnn_")]
  assert zoo.list_models("no_such_thing*") == []


# -- unknown names ---------------------------------------------------------------

def test_unknown_model_error_is_key_error_with_suggestions():
  with pytest.raises(UnknownModelError) as info:
    zoo.get("cnn_fashon_mnist")
  err = info.value
  assert isinstance(err, KeyError)
  assert isinstance(err, zoo.ZooError)
  assert err.name == "cnn_fashon_mnist"
  assert err.suggestions[0] == "cnn_fashion_mnist"
  msg = str(err)
  assert "cnn_fashon_mnist" in msg
  assert "Did you mean: cnn_fashion_mnist" in msg
  # str() is the message itself, not KeyError's quoted repr.
  assert not msg.startswith(("'", '"'))


def test_unknown_model_is_catchable_as_key_error():
  with pytest.raises(KeyError):
    zoo.get("mlp_mnsit")
  with pytest.raises(UnknownModelError, match="mlp_mnist"):
    zoo.get("mlp_mnsit")


@pytest.mark.parametrize("name", [123, None, 1.5, ["mlp_mnist"]])
def test_non_string_name_is_a_clear_error(name):
  with pytest.raises(UnknownModelError) as info:
    zoo.get(name)
  assert isinstance(info.value, zoo.ZooError)
  msg = str(info.value)
  assert "model name must be a string" in msg and repr(name) in msg
  assert "zoo list" in msg


def test_list_models_non_string_pattern():
  with pytest.raises(zoo.ZooError, match="pattern must be a string.*123"):
    zoo.list_models(123)


# -- entries ---------------------------------------------------------------------

@pytest.mark.parametrize("name", EXPECTED)
def test_entry_fields(name):
  entry = zoo.get(name)
  assert isinstance(entry, zoo.ModelEntry)
  assert entry.name == name
  assert entry.dataset == EXPECTED_DATASETS[name]
  assert entry.input_shape == (28, 28, 1)
  assert isinstance(entry.config, dict)
  assert entry.config["model"]["arch"] in ("logistic", "mlp", "cnn")
  assert entry.config["data"]["dataset"] == entry.dataset
  # Measured here: the Fashion-MNIST family; MNIST cannot be reached here.
  if entry.dataset == "mnist":
    assert entry.baseline is None
  else:
    assert entry.baseline is None or 0.5 < entry.baseline["test_accuracy_mean"] <= 1
  assert isinstance(entry.transformed, hk.Transformed)
  assert callable(entry.transformed.init) and callable(entry.transformed.apply)
  assert callable(entry.loss)
  if name == "logreg_binary_fashion_mnist":
    assert entry.is_binary
    assert entry.num_classes == 2
    assert entry.num_outputs == 1
    assert entry.class_names == ("Sneaker", "Ankle boot")
  else:
    assert not entry.is_binary
    assert entry.num_classes == 10
    assert entry.num_outputs == 10
  assert zoo.get(name) is entry  # no overrides: the registered entry itself


@pytest.mark.parametrize("name", ["logreg_mnist", "mlp_fashion_mnist",
                                  "cnn_mnist", "logreg_binary_fashion_mnist"])
def test_init_apply_with_haiku_signatures(name):
  entry = zoo.get(name)
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, *entry.input_shape))
  params = entry.transformed.init(jax.random.PRNGKey(0), x)
  # apply(params, rng, x, is_training), positionally and by keyword.
  out = entry.transformed.apply(params, None, x, False)
  out_kw = entry.apply(params, jax.random.PRNGKey(2), x, is_training=False)
  chex.assert_shape(out, (3, entry.num_outputs))
  chex.assert_type(out, jnp.float32)
  chex.assert_trees_all_close(out, out_kw)
  loss = entry.loss(out, jnp.array([0, 1, 0]))
  chex.assert_shape(loss, ())
  assert np.isfinite(float(loss))


def test_example_input():
  entry = zoo.get("mlp_mnist")
  x = entry.example_input(5)
  chex.assert_shape(x, (5, 28, 28, 1))
  chex.assert_type(x, jnp.float32)


# -- model overrides -------------------------------------------------------------

def test_get_with_overrides_changes_config_and_params():
  base = zoo.get("mlp_mnist")
  assert base.param_count() == 235_146
  entry = zoo.get("mlp_mnist", activation="gelu", hidden_sizes=(512, 256),
                  initializer="xavier_uniform")
  model = entry.config["model"]
  assert model["activation"] == "gelu"
  assert list(model["hidden_sizes"]) == [512, 256]
  assert model["initializer"] == "xavier_uniform"
  assert entry.param_count() == (784 * 512 + 512) + (512 * 256 + 256) + (
      256 * 10 + 10)
  params = jax.eval_shape(entry.init, jax.random.PRNGKey(0),
                          entry.example_input())
  chex.assert_shape(params["mlp_classifier/~/mlp/~/linear_0"]["w"], (784, 512))
  # The registered entry is untouched.
  assert base.config["model"]["activation"] == "relu"
  assert list(base.config["model"]["hidden_sizes"]) == [256, 128]
  assert zoo.get("mlp_mnist").param_count() == 235_146


def test_override_activation_changes_outputs():
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 28, 28, 1))
  relu = zoo.get("mlp_mnist")
  gelu = zoo.get("mlp_mnist", activation="gelu")
  params = relu.init(jax.random.PRNGKey(0), x)
  out_relu = relu.apply(params, None, x)
  out_gelu = gelu.apply(params, None, x)
  assert not np.allclose(out_relu, out_gelu)


def test_cnn_override_param_count():
  entry = zoo.get("cnn_mnist", channels=(16, 32), hidden_size=64)
  expected = (9 * 1 * 16 + 16) + (9 * 16 * 32 + 32) + (7 * 7 * 32 * 64 + 64) + (
      64 * 10 + 10)
  assert entry.param_count() == expected


def test_misspelled_override_key():
  with pytest.raises(UnknownConfigKeyError) as info:
    zoo.get("mlp_mnist", activaton="gelu")
  assert isinstance(info.value, KeyError)
  assert isinstance(info.value, ConfigError)
  assert "activaton" in str(info.value)
  assert "model.activation" in info.value.suggestions


def test_override_wrong_type():
  with pytest.raises(ConfigError, match="hidden_sizes"):
    zoo.get("mlp_mnist", hidden_sizes="big")


def test_override_bad_activation_fails_at_get():
  """Refused by config validation, before anything is built or initialized
  (it used to pass zoo.get and fail only at init)."""
  with pytest.raises(ConfigError, match="gelu"):
    zoo.get("mlp_mnist", activation="gleu")


# -- check_images ----------------------------------------------------------------

def test_check_images():
  registry.check_images(jnp.zeros((2, 28, 28, 1)), (28, 28, 1))
  with pytest.raises(zoo.InputError, match="NHWC"):
    registry.check_images(jnp.zeros((28, 28, 1)), (28, 28, 1))
  with pytest.raises(zoo.InputError, match=r"\(2, 1, 28, 28\)"):
    registry.check_images(jnp.zeros((2, 1, 28, 28)), (28, 28, 1))
  with pytest.raises(zoo.InputError, match="uint8"):
    registry.check_images(jnp.zeros((2, 28, 28, 1), jnp.uint8), (28, 28, 1))
  with pytest.raises(zoo.InputError, match="array"):
    registry.check_images([[0.0]], (28, 28, 1))


@pytest.mark.parametrize("lo, hi", [(0.0, 255.0), (-0.5, 0.5), (0.0, np.inf),
                                    (0.0, np.nan)])
def test_float_images_outside_0_1_are_refused_where_they_enter(lo, hi):
  """The training data's rule (zoo.data.arrays) for every way images reach a
  model outside training: apply, apply_with_state, features; checked on the
  host before any device work, for numpy and jax arrays alike."""
  entry = zoo.get("cnn_fashion_mnist", pretrained=True)
  x = np.full((2, 28, 28, 1), lo, np.float32)
  x[1, 0, 0, 0] = hi
  calls = [lambda x: entry.apply(entry.params, None, x),
           lambda x: entry.apply_with_state(entry.params, {}, None, x)[0],
           lambda x: entry.features(entry.params, x)]
  for call in calls:
    for images in (x, jnp.asarray(x)):
      with pytest.raises(zoo.InputError) as e:
        call(images)
      msg = str(e.value)
      assert msg == ("images hold NaN values: fix or drop those images."
                     if hi != hi else
                     f"images are float with values in [{lo:g}, {hi:g}]; float "
                     "images must be in [0, 1]: divide by 255, or pass uint8 "
                     "images through zoo.data.to_float.")
  for call in calls:  # the edges pass, and under jit values are not checked
    assert call(np.clip(np.nan_to_num(x), 0, 1)).shape[0] == 2
  assert jax.jit(calls[0])(x).shape == (2, 10)


# -- zoo.register ----------------------------------------------------------------

class _Tiny(hk.Module):

  def __init__(self, num_outputs, width):
    super().__init__(name="tiny")
    self.num_outputs, self.width = num_outputs, width

  def __call__(self, x, is_training=False):
    x = hk.Flatten()(x)
    x = jax.nn.relu(hk.Linear(self.width)(x))
    return hk.Linear(self.num_outputs)(x)


@pytest.fixture
def tiny_model():
  name = "zz_test_tiny_mlp"

  @zoo.register(name, dataset="fashion_mnist",
                config={"train": {"epochs": 2}, "description": "test model"})
  def tiny(num_outputs, width=8):
    return _Tiny(num_outputs, width)

  yield name
  registry.unregister(name)


def test_register_adds_model(tiny_model):
  assert tiny_model in zoo.list_models()
  assert tiny_model in zoo.list_models("*tiny*")
  assert zoo.list_models() == sorted(zoo.list_models())
  entry = zoo.get(tiny_model)
  assert entry.dataset == "fashion_mnist"
  assert entry.config["train"]["epochs"] == 2
  assert entry.config["model"] == {"arch": tiny_model, "width": 8}
  assert entry.baseline is None
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
  params = entry.init(jax.random.PRNGKey(1), x)
  out = entry.apply(params, None, x, False)
  chex.assert_shape(out, (4, 10))
  assert entry.param_count() == 784 * 8 + 8 + 8 * 10 + 10
  wide = zoo.get(tiny_model, width=16)
  assert wide.param_count() == 784 * 16 + 16 + 16 * 10 + 10
  with pytest.raises(UnknownConfigKeyError, match="widht"):
    zoo.get(tiny_model, widht=16)


class _TinyWithArgs(hk.Module):
  """A user module registered as a class, taking an activation function."""

  def __init__(self, num_outputs, width=8, activation=jax.nn.relu,
               name=None):
    super().__init__(name=name or "tiny")
    self.num_outputs, self.width = num_outputs, width
    self.activation = activation

  def __call__(self, x, is_training=False):
    x = hk.Flatten()(x)
    x = self.activation(hk.Linear(self.width)(x))
    return hk.Linear(self.num_outputs)(x)


def test_register_a_class_with_a_function_argument():
  """A class registers like a function (its `name` is no setting); a
  function default that zoo names is a name in the config, resolved again
  when the module is built."""
  name = "zz_test_tiny_class"
  assert zoo.register(name, dataset="mnist")(_TinyWithArgs) is _TinyWithArgs
  try:
    entry = zoo.get(name)
    assert entry.config["model"] == {"arch": name, "width": 8,
                                     "activation": "relu"}
    gelu = zoo.get(name, activation="gelu", width=4)
    assert gelu.config["model"]["activation"] == "gelu"
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 28, 28, 1))
    params = gelu.init(jax.random.PRNGKey(1), x)
    direct = hk.transform(lambda x: _TinyWithArgs(10, 4, jax.nn.gelu)(x))
    chex.assert_trees_all_close(gelu.apply(params, None, x),
                                direct.apply(params, None, x))
    with pytest.raises(ConfigError, match="did you mean gelu"):
      zoo.get(name, activation="gleu")
  finally:
    registry.unregister(name)


def test_register_keeps_string_arguments_as_they_are():
  """User code that resolves names itself still gets the names."""
  name = "zz_test_tiny_strings"
  seen = []

  @zoo.register(name, dataset="mnist")
  def tiny(num_outputs, activation="relu", initializer="he_normal"):
    seen.append((activation, initializer))
    return _Tiny(num_outputs, 4)

  try:
    entry = zoo.get(name, activation="tanh")
    assert entry.config["model"] == {"arch": name, "activation": "tanh",
                                     "initializer": "he_normal"}
    jax.eval_shape(entry.init, jax.random.PRNGKey(0), entry.example_input())
    assert seen == [("tanh", "he_normal")]
  finally:
    registry.unregister(name)


def test_register_twice_is_an_error(tiny_model):
  with pytest.raises(ConfigError, match="already registered"):
    zoo.register(tiny_model, dataset="mnist")(lambda n: _Tiny(n, 4))


def test_register_cannot_replace_builtin():
  with pytest.raises(ConfigError, match="already registered"):
    zoo.register("mlp_mnist", dataset="mnist")(lambda n: _Tiny(n, 4))
  # Nor may it hijack a built-in architecture name used by other models.
  with pytest.raises(ConfigError, match="already registered"):
    zoo.register("cnn", dataset="mnist")(lambda n: _Tiny(n, 4))
  assert zoo.get("cnn_mnist").param_count() == 421_642
  assert "cnn" in registry.architectures()


def test_register_bad_config_leaves_nothing_behind():
  name = "zz_test_bad_dataset"
  with pytest.raises(ConfigError, match="mnist"):
    zoo.register(name, dataset="mnsit")(lambda n: _Tiny(n, 4))
  assert name not in zoo.list_models()
  assert name not in registry.architectures()
  try:  # the name is free again once the mistake is fixed
    zoo.register(name, dataset="mnist")(lambda n, width=4: _Tiny(n, width))
    assert name in zoo.list_models()
  finally:
    registry.unregister(name)


def test_unregister_removes(tiny_model):
  registry.unregister(tiny_model)
  assert tiny_model not in zoo.list_models()
  with pytest.raises(UnknownModelError):
    zoo.get(tiny_model)
  registry.unregister(tiny_model)  # idempotent


# -- pretrained weights and overrides -----------------------------------------------

def test_pretrained_with_overrides_says_why():
  """The shipped weights are for the registered config: an override that
  changes the architecture is refused, saying so (not "not measured")."""
  from zoo import pretrained
  assert zoo.get("mlp_fashion_mnist").baseline["pretrained"]
  with pytest.raises(pretrained.PretrainedNotAvailableError) as info:
    zoo.get("mlp_fashion_mnist", pretrained=True, activation="gelu")
  msg = str(info.value)
  assert "registered config" in msg and "architecture" in msg
  assert "model.activation: 'relu' -> 'gelu'" in msg
  assert "--set model.activation=gelu" in msg
  assert "not measured" not in msg
  # An override equal to the registered value changes nothing: weights load.
  entry = zoo.get("mlp_fashion_mnist", pretrained=True, activation="relu")
  assert entry.params is not None


# -- layout: one architecture table, no shim, no import cycle -------------------

def test_models_do_not_import_the_registry():
  """zoo.registry imports zoo.models; the models register into
  zoo.models.base and import nothing of the registry."""
  import ast
  import pathlib
  import zoo.models
  for path in pathlib.Path(zoo.models.__file__).parent.glob("*.py"):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom):
        names = [f"{node.module}.{a.name}" for a in node.names]
      elif isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      else:
        continue
      assert not any(n.startswith("zoo.registry") for n in names), path


def test_dataset_facts_come_from_the_catalog():
  import pathlib
  from zoo.data import catalog
  assert not (pathlib.Path(zoo.__file__).parent / "datasets.py").exists()
  entry = zoo.get("logreg_binary_fashion_mnist")
  info = catalog.get("fashion_mnist")
  assert entry.input_shape == info.image_shape
  assert entry.class_names == (info.class_names[7], info.class_names[9])
  with pytest.raises(ConfigError, match=r"data.dataset: unknown dataset "
                     r"'fashon_mnist'; did you mean fashion_mnist"):
    registry.with_config(entry, {"data.dataset": "fashon_mnist"})


def test_configs_ship_inside_the_package_and_a_broken_install_says_so(
    tmp_path, monkeypatch):
  """The built-in configs are package data (zoo/configs, what a wheel
  carries); a missing or empty folder is an error naming it, never an empty
  registry."""
  from zoo import registry as registry_lib
  shipped = registry_lib.configs_dir()
  assert shipped == Path(zoo.__file__).parent / "configs"
  stems = {p.stem for p in shipped.glob("*.toml")}
  assert "cnn_mnist" in stems and stems <= set(zoo.list_models())
  monkeypatch.setattr(registry_lib, "PACKAGE_DIR", tmp_path)
  with pytest.raises(zoo.ZooError, match=r"configs folder .* is missing: this zoo "
                     r"install is broken; reinstall it"):
    registry_lib.configs_dir()
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "README.txt").write_text("not a config")
  with pytest.raises(zoo.ZooError, match=r"holds no \*\.toml config"):
    registry_lib.configs_dir()


def test_import_from_the_folder_that_holds_a_clone_named_zoo(tmp_path):
  """`python -c "import zoo"` run beside a clone named zoo: Python finds the
  clone's top folder first; with no __init__.py there it would be an empty
  namespace package ("module 'zoo' has no attribute 'list_models'"). The
  repository's top-level __init__.py loads the real package instead."""
  import shutil
  import subprocess
  import sys
  repo = Path(__file__).resolve().parent.parent
  clone = tmp_path / "zoo"  # a clone as `git clone .../zoo` names it
  clone.mkdir()
  (clone / "zoo").symlink_to(repo / "zoo")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["JAX_PLATFORMS"] = "cpu"

  def run(*flags):
    return subprocess.run(
        [sys.executable, *flags, "-c", "import zoo; print(getattr(zoo, "
         "'__file__', None)); print(len(zoo.list_models()))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  bare = run("-S")  # no site-packages: only the clone can be found
  assert bare.stdout.splitlines() == ["None"]  # a namespace package
  assert "has no attribute 'list_models'" in bare.stderr
  shutil.copy(repo / "__init__.py", clone / "__init__.py")
  fixed = run()
  assert fixed.returncode == 0, fixed.stderr[-2000:]
  assert fixed.stdout.splitlines() == [str(clone / "zoo" / "__init__.py"),
                                       str(len(zoo.list_models()))]
