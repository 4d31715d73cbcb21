"""zoo.config: validation of every section, types, overrides, parse_value."""
import pytest

import zoo
from zoo import config as config_lib
from zoo import registry
from zoo.errors import ConfigError, ConfigValueError, UnknownConfigKeyError
from zoo.models import base as arch_table
from zoo.models.cnn import SmallCNN as cnn
from zoo.models.mlp import MLPClassifier as mlp

CONFIG_FILES = sorted(registry.configs_dir().glob("*.toml"))


def _unknown_key(config, arch_fn=None):
  with pytest.raises(UnknownConfigKeyError) as info:
    config_lib.validate(config, arch_fn)
  assert isinstance(info.value, KeyError)
  assert isinstance(info.value, ConfigError)
  return info.value


# -- unknown keys ---------------------------------------------------------------

@pytest.mark.parametrize("section,key,suggestion", [
    ("data", "datset", "dataset"),
    ("loss", "label_smothing", "label_smoothing"),
    ("schedule", "warmup_step", "warmup_steps"),
    ("train", "batchsize", "batch_size"),
    ("train", "epoch", "epochs"),
])
def test_misspelled_key_in_section(section, key, suggestion):
  err = _unknown_key({section: {key: 1}})
  assert err.key == f"{section}.{key}"
  assert f"{section}.{key}" in str(err)
  assert suggestion in err.suggestions
  assert "Did you mean" in str(err)


def test_misspelled_model_key():
  err = _unknown_key({"model": {"arch": "mlp", "hiden_sizes": [8]}}, mlp)
  assert err.key == "model.hiden_sizes"
  assert "model.hiden_sizes" in str(err)
  assert "hidden_sizes" in err.suggestions
  # A key of another architecture is not valid either.
  err = _unknown_key({"model": {"arch": "mlp", "channels": [8]}}, mlp)
  assert "model.channels" in str(err)
  # Without an architecture only `arch` is known.
  _unknown_key({"model": {"arch": "mlp", "dropout": 0.1}})


def test_misspelled_optimizer_key():
  err = _unknown_key({"optimizer": {"name": "adam", "learing_rate": 1e-3}})
  assert "optimizer.learing_rate" in str(err)
  assert "learning_rate" in err.suggestions


def test_misspelled_top_level_key():
  err = _unknown_key({"descripton": "x"})
  assert err.key == "descripton"
  assert "descripton" in str(err) and "description" in err.suggestions
  err = _unknown_key({"trian": {"epochs": 1}})
  assert "trian" in str(err) and "train" in err.suggestions


# -- optimizer keys follow optax's signatures ------------------------------------

def test_optimizer_keys_checked_against_optax():
  cfg = config_lib.validate({"optimizer": {"name": "adam", "b1": 0.8,
                                           "eps": 1e-6}})
  assert cfg["optimizer"] == {"name": "adam", "learning_rate": 1e-3,
                              "b1": 0.8, "eps": 1e-6}
  err = _unknown_key({"optimizer": {"name": "sgd", "b1": 0.9}})
  assert "optimizer.b1" in str(err)
  cfg = config_lib.validate({"optimizer": {"name": "sgd", "momentum": 0.9,
                                           "nesterov": True}})
  assert cfg["optimizer"]["nesterov"] is True
  # `momentum` is sgd with momentum: sgd's keys.
  cfg = config_lib.validate({"optimizer": {"name": "momentum",
                                           "nesterov": True}})
  assert cfg["optimizer"]["name"] == "momentum"
  _unknown_key({"optimizer": {"name": "momentum", "b2": 0.9}})
  cfg = config_lib.validate({"optimizer": {"name": "adamw",
                                           "weight_decay": 0.05}})
  assert cfg["optimizer"]["weight_decay"] == 0.05


def test_optimizer_value_types():
  with pytest.raises(ConfigError, match="optimizer.b1"):
    config_lib.validate({"optimizer": {"name": "adam", "b1": "high"}})
  with pytest.raises(ConfigError, match="optimizer.learning_rate"):
    config_lib.validate({"optimizer": {"name": "adam",
                                       "learning_rate": "fast"}})
  cfg = config_lib.validate({"optimizer": {"name": "sgd", "learning_rate": 1}})
  assert cfg["optimizer"]["learning_rate"] == 1.0
  assert isinstance(cfg["optimizer"]["learning_rate"], float)


def test_unknown_optimizer():
  with pytest.raises(ConfigError, match="unknown optimizer 'adma'"):
    config_lib.validate({"optimizer": {"name": "adma"}})
  assert config_lib.optimizer_factory("momentum").__name__ == "sgd"


# -- types and values -----------------------------------------------------------

@pytest.mark.parametrize("config,match", [
    ({"train": {"batch_size": "big"}}, "train.batch_size"),
    ({"train": {"batch_size": 12.5}}, "train.batch_size"),
    ({"train": {"epochs": True}}, "train.epochs"),
    ({"loss": {"label_smoothing": "0.1"}}, "loss.label_smoothing"),
    ({"loss": {"l2": False}}, "loss.l2"),
    ({"data": {"classes": 7}}, "data.classes"),
    ({"data": {"dataset": 3}}, "data.dataset"),
    ({"name": 5}, "name"),
    ({"train": 5}, r"\[train\]"),
])
def test_wrong_type(config, match):
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(config)


def test_wrong_model_type():
  with pytest.raises(ConfigError, match="model.hidden_size"):
    config_lib.validate({"model": {"arch": "cnn", "hidden_size": "wide"}}, cnn)


@pytest.mark.parametrize("config", [
    {"train": {"batch_size": 0}},
    {"train": {"epochs": -1}},
    {"train": {"on_nonfinite": "ignore"}},
    {"train": {"loop": "fast"}},
    {"train": {"compute_dtype": "float16"}},
    {"schedule": {"name": "exponential"}},
])
def test_bad_values(config):
  with pytest.raises(ConfigError):
    config_lib.validate(config)


def test_int_accepted_for_float():
  cfg = config_lib.validate({"loss": {"label_smoothing": 0, "l2": 1},
                             "schedule": {"end_factor": 0}})
  for value in (cfg["loss"]["label_smoothing"], cfg["loss"]["l2"],
                cfg["schedule"]["end_factor"]):
    assert isinstance(value, float)
  assert cfg["loss"]["l2"] == 1.0


def test_defaults_filled_and_input_untouched():
  raw = {"model": {"arch": "mlp", "hidden_sizes": (64,)},
         "train": {"epochs": 3}}
  cfg = config_lib.validate(raw, mlp)
  assert raw == {"model": {"arch": "mlp", "hidden_sizes": (64,)},
                 "train": {"epochs": 3}}
  assert cfg["train"]["epochs"] == 3
  assert cfg["train"]["batch_size"] == config_lib.DEFAULTS["train"]["batch_size"]
  assert cfg["model"] == {"arch": "mlp", "hidden_sizes": [64],
                          "activation": "relu", "initializer": "he_normal",
                          "dropout": 0.0}
  assert set(cfg) == set(config_lib.DEFAULTS)
  assert cfg["optimizer"] == {"name": "adam", "learning_rate": 1e-3}
  assert config_lib.DEFAULTS["train"]["epochs"] == 10  # not mutated


# -- overrides ------------------------------------------------------------------

def _base():
  return zoo.get("mlp_mnist").config


def test_with_overrides_bare_and_dotted_keys():
  base = _base()
  cfg = config_lib.with_overrides(base, {
      "epochs": 3, "learning_rate": 3e-4, "dataset": "fashion_mnist",
      "model.activation": "gelu", "loss.label_smoothing": 0.1,
      "train.batch_size": 64})
  assert cfg["train"]["epochs"] == 3
  assert cfg["optimizer"]["learning_rate"] == 3e-4
  assert cfg["data"]["dataset"] == "fashion_mnist"
  assert cfg["model"]["activation"] == "gelu"
  assert cfg["loss"]["label_smoothing"] == 0.1
  assert cfg["train"]["batch_size"] == 64
  assert base["train"]["epochs"] == 15  # the original is untouched
  assert config_lib.validate(cfg, mlp)["train"]["epochs"] == 3


def test_with_overrides_new_optimizer_keys():
  cfg = config_lib.with_overrides(_base(), {"optimizer.name": "sgd",
                                            "optimizer.momentum": 0.9})
  cfg = config_lib.validate(cfg, mlp)
  assert cfg["optimizer"] == {"name": "sgd", "learning_rate": 1e-3,
                              "momentum": 0.9}
  cfg = config_lib.with_overrides(_base(), {"optimizer.b1": 0.9,
                                            "optimizer.name": "sgd"})
  with pytest.raises(UnknownConfigKeyError, match="optimizer.b1"):
    config_lib.validate(cfg, mlp)


def test_resolve_key():
  base = _base()
  assert config_lib.resolve_key(base, "epochs") == ("train", "epochs")
  assert config_lib.resolve_key(base, "l2") == ("loss", "l2")
  assert config_lib.resolve_key(base, "name") == ("name",)
  assert config_lib.resolve_key(base, "a.b") == ("a", "b")
  ambiguous = {**base, "model": {**base["model"], "epochs": 1}}
  with pytest.raises(ConfigError, match="ambiguous"):
    config_lib.resolve_key(ambiguous, "epochs")


@pytest.mark.parametrize("key,named", [
    ("epoch", "epoch"),
    ("train.epoch", "train.epoch"),
    ("model.activaton", "model.activaton"),
    ("trian.epochs", "trian.epochs"),
])
def test_with_overrides_unknown_key(key, named):
  with pytest.raises(UnknownConfigKeyError) as info:
    config_lib.with_overrides(_base(), {key: 1})
  assert named in str(info.value)
  assert isinstance(info.value, KeyError)


def test_bare_key_suggestion():
  with pytest.raises(UnknownConfigKeyError) as info:
    config_lib.with_overrides(_base(), {"batchsize": 32})
  assert "train.batch_size" in info.value.suggestions


def test_with_config_revalidates():
  entry = zoo.get("mlp_mnist")
  new = registry.with_config(entry, {"epochs": 2, "model.dropout": 0.2})
  assert new.config["train"]["epochs"] == 2
  assert new.config["model"]["dropout"] == 0.2
  assert new.name == entry.name
  with pytest.raises(ConfigError, match="train.epochs"):
    registry.with_config(entry, {"epochs": "many"})
  with pytest.raises(ConfigError, match="unknown dataset"):
    registry.with_config(entry, {"dataset": "mnsit"})


# -- parse_value ----------------------------------------------------------------

@pytest.mark.parametrize("text,value", [
    ("3e-4", 3e-4),
    ("0.5", 0.5),
    ("10", 10),
    ("true", True),
    ("false", False),
    ("[1, 2]", [1, 2]),
    ('"x"', "x"),
    ("gelu", "gelu"),
    ("fashion_mnist", "fashion_mnist"),
    ("train[:90%]", "train[:90%]"),
])
def test_parse_value(text, value):
  parsed = config_lib.parse_value(text)
  assert parsed == value
  assert type(parsed) is type(value)


# -- the shipped configs --------------------------------------------------------

def test_config_files_exist():
  names = {p.stem for p in CONFIG_FILES}
  assert names >= {"logreg_mnist", "mlp_mnist", "cnn_mnist",
                   "logreg_fashion_mnist", "mlp_fashion_mnist",
                   "cnn_fashion_mnist", "logreg_binary_fashion_mnist"}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_config_file_validates(path):
  raw = config_lib.load_file(path)
  raw.setdefault("name", path.stem)
  build = arch_table.get(raw["model"]["arch"]).build
  cfg = config_lib.validate(raw, build)
  assert cfg["description"]
  assert cfg["data"]["dataset"] in ("mnist", "fashion_mnist")
  assert path.stem in zoo.list_models()
  assert zoo.get(path.stem).config == cfg


def _leaves(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, (*prefix, key))
    else:
      yield (*prefix, key), value


def _restated_defaults(raw):
  """The dotted keys of `raw` (a config file's content) set to their default:
  DEFAULTS, the architecture constructor's, the optax optimizer's."""
  build = arch_table.get(raw["model"]["arch"]).build
  optimizer = raw.get("optimizer", {}).get(
      "name", config_lib.DEFAULTS["optimizer"]["name"])
  defaults = config_lib.validate({"model": {"arch": raw["model"]["arch"]},
                                  "optimizer": {"name": optimizer}}, build)
  defaults["model"]["arch"] = ""  # no default: every config names one
  defaults["optimizer"] = {
      **config_lib._signature_defaults(config_lib.optimizer_factory(optimizer),
                                       0),
      **config_lib.DEFAULTS["optimizer"]}
  restated = []
  for key, value in _leaves(raw):
    node = defaults
    for part in key:
      node = node.get(part) if isinstance(node, dict) else None
    if value == node:
      restated.append(".".join(key))
  return restated


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_files_state_only_what_differs(path):
  """A config file restates no default: every model default lives in one
  place, its module's constructor."""
  assert _restated_defaults(config_lib.load_file(path)) == []
  old_style = {"model": {"arch": "cnn", "hidden_size": 128, "dropout": 0.5},
               "optimizer": {"name": "adam", "learning_rate": 1e-3},
               "train": {"batch_size": 128}}
  assert _restated_defaults(old_style) == [
      "model.hidden_size", "optimizer.name", "optimizer.learning_rate",
      "train.batch_size"]


def test_model_schema_maps_functions_to_names():
  """Constructor arguments that take functions are names in the config:
  `w_init` is `initializer`, and `model_kwargs` resolves the names."""
  import jax
  from zoo import activations, initializers
  from zoo.models.cnn_bn import BatchNormCNN
  from zoo import pooling
  schema = config_lib.model_schema(BatchNormCNN)
  assert list(schema) == ["channels", "hidden_size", "activation",
                          "initializer", "pool", "dense_batch_norm",
                          "bn_decay", "bn_eps", "dropout"]
  assert schema["initializer"].arg == "w_init"
  assert schema["initializer"].default == "he_normal"
  assert "name" not in schema and "w_init" not in schema
  model = {"arch": "cnn_bn", "channels": [8, 16], "activation": "gelu",
           "initializer": "xavier_uniform", "pool": "avg", "bn_eps": 1e-3}
  assert config_lib.model_kwargs(BatchNormCNN, model) == {
      "channels": (8, 16), "activation": jax.nn.gelu,
      "w_init": initializers.get("glorot_uniform"), "pool": pooling.get("avg"),
      "bn_eps": 1e-3}
  assert activations.get("gelu") is jax.nn.gelu


def test_load_file_errors(tmp_path):
  bad = tmp_path / "bad.toml"
  bad.write_text("[train\nepochs = ")
  with pytest.raises(ConfigError, match="not valid TOML"):
    config_lib.load_file(bad)


# -- ranges: every setting, every model argument -----------------------------------

@pytest.mark.parametrize("key, bad, allowed", [
    ("train.seed", -1, "0..4294967295"),
    ("train.seed", 2**32, "0..4294967295"),
    ("train.seed", 99999999999999999999, "0..4294967295"),
    ("train.batch_size", 0, ">= 1"),
    ("train.epochs", -1, ">= 1"),
    ("train.epochs", 0, ">= 1"),
    ("train.eval_batch_size", 0, ">= 1"),
    ("train.checkpoint_every", -5, ">= 0"),
    ("train.keep_checkpoints", 0, ">= 1"),
    ("schedule.warmup_steps", -10, ">= 0"),
    ("schedule.end_factor", -0.5, ">= 0"),
    ("optimizer.learning_rate", 0.0, "> 0"),
    ("optimizer.learning_rate", -1e-3, "> 0"),
    ("optimizer.learning_rate", float("nan"), "finite"),
    ("optimizer.learning_rate", float("inf"), "finite"),
    ("loss.label_smoothing", 1.0, "[0, 1)"),
    ("loss.label_smoothing", -0.1, "[0, 1)"),
    ("loss.l2", -1e-4, ">= 0"),
    ("loss.l2", float("-inf"), "finite"),
])
def test_out_of_range_values(key, bad, allowed):
  section, sub = key.split(".")
  with pytest.raises(ConfigValueError) as info:
    config_lib.validate({section: {sub: bad}})
  err = info.value
  assert isinstance(err, ConfigError)
  assert err.key == key
  msg = str(err)
  assert msg.startswith(f"{key} must be ") and allowed in msg
  assert f"got {bad!r}" in msg
  assert "\n" not in msg


@pytest.mark.parametrize("key, edge", [
    ("train.seed", 0), ("train.seed", 2**32 - 1), ("train.epochs", 1),
    ("train.checkpoint_every", 0), ("train.keep_checkpoints", 1),
    ("schedule.warmup_steps", 0), ("schedule.end_factor", 0.0),
    ("loss.label_smoothing", 0.0), ("loss.label_smoothing", 0.999),
    ("loss.l2", 0.0), ("optimizer.learning_rate", 1e-12),
])
def test_range_edges_are_allowed(key, edge):
  section, sub = key.split(".")
  assert config_lib.validate({section: {sub: edge}})[section][sub] == edge


def test_zero_epochs_only_with_steps(monkeypatch):
  """No epochs would "train" nothing and report the initial accuracy, so
  train.epochs >= 1, unless train.steps counts instead (epochs then unused);
  zoo.train refuses it before loading data."""
  cfg = config_lib.validate({"train": {"epochs": 0, "steps": 5}})
  assert cfg["train"]["epochs"] == 0
  with pytest.raises(ConfigValueError, match="train.epochs must be an int >= 0"):
    config_lib.validate({"train": {"epochs": -1, "steps": 5}})
  import zoo.data
  monkeypatch.setattr(zoo.data, "load", lambda *a, **k: pytest.fail("loaded"))
  with pytest.raises(ConfigValueError) as e:
    zoo.train("mlp_fashion_mnist", epochs=0, progress=False)
  assert str(e.value) == ("train.epochs must be an int >= 1, got 0: e.g. 10, "
                          "or set train.steps to count optimizer steps "
                          "instead.")


def test_type_errors_say_an_int():
  with pytest.raises(ConfigError) as e:
    config_lib.validate({"train": {"epochs": 1.5}})
  assert str(e.value) == ("train.epochs must be an int like 10, got 1.5 "
                          "(float).")
  with pytest.raises(ConfigError, match="must be a float like"):
    config_lib.validate({"loss": {"l2": "x"}})


def test_non_finite_floats_are_refused_in_every_section():
  for config in ({"optimizer": {"name": "adam", "b1": float("inf")}},
                 {"schedule": {"end_factor": float("nan")}},
                 {"model": {"arch": "mlp", "dropout": float("nan")}}):
    with pytest.raises(ConfigValueError, match="finite"):
      config_lib.validate(config, mlp)


def test_every_model_argument_has_a_range():
  """Each argument of each built-in architecture is range-checked by its
  kind (booleans need only their type)."""
  for arch in registry.architectures():
    build = arch_table.get(arch).build
    for arg, default in config_lib.model_defaults(build).items():
      assert arg in config_lib.MODEL_ARG_RANGES or isinstance(default, bool), (
          arch, arg)
  # One range per kind of value, shared by every argument of that kind.
  assert (config_lib.MODEL_ARG_RANGES["dropout"] is
          config_lib.MODEL_ARG_RANGES["bn_decay"])
  assert (config_lib.MODEL_ARG_RANGES["hidden_sizes"] is
          config_lib.MODEL_ARG_RANGES["num_heads"])


@pytest.mark.parametrize("name, arg, bad, words", [
    ("mlp_fashion_mnist", "hidden_sizes", ["a"], ["positive int"]),
    ("mlp_fashion_mnist", "hidden_sizes", [-5], ["positive int"]),
    ("mlp_fashion_mnist", "hidden_sizes", [256, 0], ["positive int"]),
    ("mlp_fashion_mnist", "hidden_sizes", [True], ["positive int"]),
    ("mlp_fashion_mnist", "dropout", 2.0, ["[0, 1)"]),
    ("mlp_fashion_mnist", "dropout", -0.1, ["[0, 1)"]),
    ("mlp_fashion_mnist", "activation", "gleu", ["did you mean gelu",
                                                 "choose one of"]),
    ("mlp_fashion_mnist", "initializer", "he", ["he_normal"]),
    ("cnn_fashion_mnist", "channels", [32, -64], ["positive int"]),
    ("cnn_fashion_mnist", "hidden_size", 0, ["positive int"]),
    ("cnn_fashion_mnist", "dropout", 1.0, ["[0, 1)"]),
    ("cnn_bn_fashion_mnist", "pool", "median", ["max", "avg"]),
    ("cnn_bn_fashion_mnist", "bn_decay", 1.5, ["[0, 1)"]),
    ("cnn_bn_fashion_mnist", "bn_eps", 0.0, ["> 0"]),
    ("cnn_bn_fashion_mnist", "channels", [0], ["positive int"]),
    ("lstm_fashion_mnist", "hidden_size", -1, ["positive int"]),
    ("lstm_fashion_mnist", "num_layers", 0, ["positive int"]),
    ("lstm_fashion_mnist", "initializer", "glorot", ["glorot_uniform"]),
    ("vit_tiny_fashion_mnist", "patch_size", 0, ["positive int"]),
    ("vit_tiny_fashion_mnist", "dim", 0, ["positive int"]),
    ("vit_tiny_fashion_mnist", "depth", 0, ["positive int"]),
    ("vit_tiny_fashion_mnist", "num_heads", -4, ["positive int"]),
    ("vit_tiny_fashion_mnist", "mlp_dim", 0, ["positive int"]),
    ("vit_tiny_fashion_mnist", "dim", 30, ["multiple of model.num_heads"]),
    ("vit_tiny_fashion_mnist", "activation", "rleu", ["relu"]),
    ("vit_tiny_fashion_mnist", "dropout", 1.0, ["[0, 1)"]),
    ("logreg_fashion_mnist", "initializer", "one", ["zeros"]),
])
def test_bad_model_argument_refused_by_get(name, arg, bad, words):
  """Refused when the config is validated, before anything is built."""
  with pytest.raises(ConfigValueError) as info:
    zoo.get(name, **{arg: bad})
  assert info.value.key == f"model.{arg}"
  msg = str(info.value)
  assert msg.startswith(f"model.{arg} must be ") and f"got {bad!r}" in msg
  for word in words:
    assert word in msg, msg


def test_patch_size_must_tile_the_image():
  with pytest.raises(ConfigError, match=r"model.patch_size .* 28x28.* got 5"):
    zoo.get("vit_tiny_fashion_mnist", patch_size=5)
  assert zoo.get("vit_tiny_fashion_mnist", patch_size=4).config[
      "model"]["patch_size"] == 4


def test_ranges_apply_to_registered_architectures():
  """A zoo.register'd architecture's arguments get the same checks by kind."""
  name = "zz_test_ranges"

  @zoo.register(name, dataset="fashion_mnist")
  def tiny(num_outputs, hidden_size=8, dropout=0.0, width=4):
    raise AssertionError("not built in this test")

  try:
    with pytest.raises(ConfigValueError, match="model.dropout"):
      zoo.get(name, dropout=1.5)
    with pytest.raises(ConfigValueError, match="model.hidden_size"):
      zoo.get(name, hidden_size=0)
    assert zoo.get(name, width=-1).config["model"]["width"] == -1  # its own
  finally:
    registry.unregister(name)


def test_train_validates_before_loading_data(monkeypatch):
  from zoo import data as zoo_data

  def no(*args, **kwargs):
    raise AssertionError("data loaded before validation")
  monkeypatch.setattr(zoo_data, "load", no)
  with pytest.raises(ConfigValueError, match="train.seed"):
    zoo.train("mlp_fashion_mnist", seed=-1)
  with pytest.raises(ConfigValueError, match="model.dropout"):
    zoo.train("mlp_fashion_mnist", **{"model.dropout": 2.0})


def test_changes_lists_differing_keys():
  base = _base()
  new = registry.with_config(zoo.get("mlp_mnist"),
                             {"model.activation": "gelu", "epochs": 3}).config
  assert config_lib.changes(base, new) == [
      ("model.activation", "relu", "gelu"), ("train.epochs", 15, 3)]
  assert config_lib.changes(base, base) == []
