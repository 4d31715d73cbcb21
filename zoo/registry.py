"""The model registry: registered models, get/list/register.

An *architecture* is a module constructor `build(num_outputs, **kwargs) ->
hk.Module`, usually the hk.Module class itself; zoo/models/*.py register
theirs in the architecture table, zoo.models.base. A *registered model* is an
architecture plus a config (zoo/configs/<name>.toml or `zoo.register`): dataset,
hyper-parameters, optimizer, training schedule, and its measured baseline.
The config's `[model]` section follows the constructor's signature
(zoo.config.model_schema): its defaults are the constructor's, and a config
names the functions (activation, initializer, pooling) that the constructor
takes as callables; `ModelEntry.module()` resolves them.
"""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
import functools
import json
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

import haiku as hk
import jax
import jax.numpy as jnp

from zoo import config as config_lib
from zoo import losses
from zoo import models  # noqa: F401  (registers the built-in architectures)
from zoo.data import catalog
from zoo.data.catalog import CUSTOM
from zoo.data.errors import UnknownDatasetError
from zoo.errors import (ConfigError, InputError, UnknownModelError, ZooError,
                        close_matches)
from zoo.models import base
from zoo.models.base import Architecture

ArchFn = Callable[..., hk.Module]

_MODELS: dict[str, "ModelEntry"] = {}
_LOCK = threading.Lock()
_LOADED = False

PACKAGE_DIR = Path(__file__).resolve().parent
BASELINES_FILE = PACKAGE_DIR / "baselines.json"


def configs_dir() -> Path:
  """Where the built-in configs live: zoo/configs, installed as package data.

  A missing or empty folder means a broken install (say, a wheel built
  without its package data), so it is an error, never an empty registry."""
  folder = PACKAGE_DIR / "configs"
  if not folder.is_dir() or not any(folder.glob("*.toml")):
    state = "is missing" if not folder.is_dir() else "holds no *.toml config"
    raise ZooError(f"zoo's built-in model configs folder {folder} {state}: "
                   f"this zoo install is broken; reinstall it (pip install "
                   f"--force-reinstall zoo, or pip install -e . in a clone).")
  return folder


def architectures() -> list[str]:
  """Sorted names of every architecture (built in or added by `register`)."""
  _ensure_loaded()
  return base.names()


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """A registered model: everything needed to build, train and judge it.

  `init_with_state` / `apply_with_state` are the one interface for every
  model, stateful or not::

      params, model_state = entry.init_with_state(rng, images, is_training)
      logits, model_state = entry.apply_with_state(params, model_state, rng,
                                                   images, is_training)

  (a stateless model's state is {}). `init` / `apply` / `transformed` keep
  Haiku's own signatures, which differ with `stateful`.

  `features(params, images, model_state)` gives the representation the
  classifier head sees, with the same parameters. `zoo.get(name,
  pretrained=True)` sets `params`, `model_state` and `weights_card` (what
  the shipped weights are and how to use them, zoo.cards).
  """
  name: str
  config: dict[str, Any]
  baseline: dict[str, Any] | None = None
  # Set by zoo.get(name, pretrained=...): the weights read.
  params: Any = dataclasses.field(default=None, repr=False, compare=False)
  model_state: Any = dataclasses.field(default=None, repr=False, compare=False)
  # Set with them: reads their card when `weights_card` is first asked for.
  card_loader: Callable[[], dict[str, Any] | None] | None = dataclasses.field(
      default=None, repr=False, compare=False)

  @functools.cached_property
  def weights_card(self) -> dict[str, Any] | None:
    """The card of the weights in `params` (what they are, how good, how to
    use them anywhere; zoo.cards), read on first use; None without."""
    return self.card_loader() if self.card_loader else None

  @property
  def arch(self) -> str:
    return self.config["model"]["arch"]

  @property
  def architecture(self) -> Architecture:
    """The registered constructor (and whether its module keeps state)."""
    return base.get(self.arch)

  @property
  def dataset(self) -> str:
    """The TFDS name of the dataset it is trained on."""
    return self.config["data"]["dataset"]

  @property
  def input_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of one float32 image in [0, 1]."""
    if self.dataset == CUSTOM:  # your own arrays: their shape is recorded
      return tuple(self.config["data"]["image_shape"])
    return catalog.get(self.dataset).image_shape

  @property
  def class_names(self) -> tuple[str, ...]:
    if self.dataset == CUSTOM:
      return tuple(self.config["data"]["class_names"])
    names = catalog.get(self.dataset).class_names
    classes = self.config["data"]["classes"]
    return tuple(names[c] for c in classes) if classes else names

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_outputs(self) -> int:
    """Width of the logits: 1 for a binary (sigmoid) model."""
    return 1 if self.is_binary else self.num_classes

  @property
  def is_binary(self) -> bool:
    return self.config["loss"]["name"] == "binary_cross_entropy"

  @property
  def stateful(self) -> bool:
    """Whether the module keeps Haiku state (BatchNorm statistics). Only
    `transformed` depends on it; prefer the `*_with_state` pair."""
    return self.architecture.stateful

  def module(self) -> hk.Module:
    """Builds the hk.Module (call only inside a Haiku transform): the
    constructor called with the `[model]` config, names (activation,
    initializer, pooling) resolved to the functions it takes."""
    build = self.architecture.build
    return build(self.num_outputs,
                 **config_lib.model_kwargs(build, self.config["model"]))

  def _forward(self) -> Callable[..., jax.Array]:
    """`forward(images, is_training=False) -> logits`, to be transformed."""
    input_shape = self.input_shape

    def forward(images: jax.Array, is_training: bool = False) -> jax.Array:
      check_images(images, input_shape)
      return self.module()(images, is_training=is_training)
    return forward

  @functools.cached_property
  def transformed_with_state(self) -> hk.TransformedWithState:
    """`hk.transform_with_state` of `forward(images, is_training=False)`, for
    every model: `.init(rng, images, is_training) -> (params, model_state)`,
    `.apply(params, model_state, rng, images, is_training) -> (logits,
    model_state)`; a stateless model's state is {}."""
    return hk.transform_with_state(self._forward())

  @property
  def init_with_state(self):
    """`(rng, images, is_training=False) -> (params, model_state)`."""
    return self.transformed_with_state.init

  @property
  def apply_with_state(self):
    """`(params, model_state, rng, images, is_training=False) -> (logits,
    model_state)`."""
    return self.transformed_with_state.apply

  @functools.cached_property
  def transformed(self) -> hk.Transformed | hk.TransformedWithState:
    """Haiku's own transform: `transformed_with_state` for a stateful model,
    `hk.transform` (no state in or out) otherwise."""
    if self.stateful:
      return self.transformed_with_state
    return hk.transform(self._forward())

  @property
  def init(self):
    return self.transformed.init

  @property
  def apply(self):
    return self.transformed.apply

  def _features_forward(self) -> Callable[..., jax.Array]:
    """`features(images, is_training=False) -> (B, width)`, to be
    transformed: the module's `features` method, on a module built exactly
    as `_forward` builds it, so Haiku gives every parameter the same name."""
    input_shape = self.input_shape

    def features(images: jax.Array, is_training: bool = False) -> jax.Array:
      check_images(images, input_shape)
      module = self.module()
      method = getattr(module, "features", None)
      if not callable(method):
        raise InputError(
            f"{self.name}'s module {type(module).__name__} has no "
            "features(x, is_training=False) method: add one that returns "
            "what its head sees, decorated with @hk.name_like(\"__call__\") "
            "so its parameters keep their names, and call it from __call__.")
      return method(images, is_training=is_training)
    return features

  @functools.cached_property
  def features_transformed(self) -> hk.TransformedWithState:
    """`hk.transform_with_state` of `features(images, is_training=False)`:
    `.apply(params, model_state, rng, images, is_training) -> (features,
    model_state)`, with the parameters of `transformed_with_state`."""
    return hk.transform_with_state(self._features_forward())

  @functools.cached_property
  def _features_eval(self) -> Callable[..., jax.Array]:
    apply = self.features_transformed.apply
    return jax.jit(lambda params, model_state, images:
                   apply(params, model_state, None, images, False)[0])

  def features(self, params, images: jax.Array,
               model_state=None) -> jax.Array:
    """The representation the classifier head sees, (batch, width), in
    evaluation mode (no dropout; BatchNorm uses its moving averages).

    What it is per architecture: the CNNs' dense layer after its activation
    (and BatchNorm), before dropout and logits; the MLP's last hidden layer
    after its activation; the LSTM's last valid hidden state; the ViT's CLS
    token after the final LayerNorm; for logistic regression the flattened
    input. The head applied to it gives `apply`'s logits. Compiled with
    `jax.jit` once per batch shape.

    Args:
      params: The model's parameters (e.g. `entry.params` of a pretrained
        entry, or a trained run's).
      images: float32 (B, H, W, C) in [0, 1] (zoo.data.to_float).
      model_state: Haiku state (BatchNorm statistics); needed by stateful
        models (`entry.model_state`), ignored otherwise.
    """
    if model_state is None:
      if self.stateful:
        raise InputError(
            f"{self.name} normalizes with BatchNorm statistics: pass them, "
            "e.g. entry.features(entry.params, images, entry.model_state).")
      model_state = {}
    check_images(images, self.input_shape)  # values too: not under jit
    return self._features_eval(params, model_state, images)

  def loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The configured loss (mean over the batch); L2 is added by the step."""
    cfg = self.config["loss"]
    return losses.get(cfg["name"])(logits, labels,
                                   label_smoothing=cfg["label_smoothing"])

  def example_input(self, batch: int = 1) -> jax.Array:
    return jnp.zeros((batch, *self.input_shape), jnp.float32)

  def param_count(self) -> int:
    """Number of parameters (computed from shapes, no device work)."""
    params, _ = jax.eval_shape(self.init_with_state, jax.random.PRNGKey(0),
                               self.example_input())
    return sum(x.size for x in jax.tree.leaves(params))


def check_images(images: jax.Array, input_shape: tuple[int, ...]) -> None:
  """Raises InputError unless `images` is float (B, *input_shape) in [0, 1];
  the values are checked where they are known (not under jit), like
  training data's (zoo.data.arrays), so 0..255 floats cannot pass silently."""
  if not hasattr(images, "shape") or not hasattr(images, "dtype"):
    raise InputError(f"expected an array of images, got {type(images)}.")
  if tuple(images.shape[1:]) != tuple(input_shape) or images.ndim != 4:
    raise InputError(
        f"expected images of shape (batch, {', '.join(map(str, input_shape))})"
        f" (NHWC), got {tuple(images.shape)}. Add a batch axis or reshape.")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise InputError(
        f"expected float images in [0, 1], got dtype {images.dtype}. Convert "
        "with zoo.data.to_float (uint8 -> float32 / 255).")
  if isinstance(images, jax.core.Tracer) or not images.size:
    return
  lo, hi = float(images.min()), float(images.max())
  if lo != lo or hi != hi:  # min and max are NaN if any value is
    raise InputError("images hold NaN values: fix or drop those images.")
  if not (lo >= 0 and hi <= 1):
    raise InputError(
        f"images are float with values in [{lo:g}, {hi:g}]; float images must "
        "be in [0, 1]: divide by 255, or pass uint8 images through "
        "zoo.data.to_float.")


def _dataset_info(name: Any) -> catalog.DatasetInfo:
  """The catalog's facts about `data.dataset`; an unknown name is a config
  mistake, so a ConfigError with the closest known names."""
  try:
    return catalog.get(name)
  except UnknownDatasetError:
    hint = (close_matches(name, catalog.DATASETS) if isinstance(name, str)
            else [])
    raise ConfigError(
        f"data.dataset: unknown dataset {name!r}"
        + (f"; did you mean {', '.join(hint)}?" if hint else ".")
        + f" Known: {', '.join(sorted(catalog.DATASETS))}.") from None


def _check_patch(cfg: Mapping[str, Any], shape, dataset: str) -> None:
  """A model's `patch_size` (if it has one) tiles its images."""
  patch = cfg["model"].get("patch_size")
  h, w = shape[:2]
  if isinstance(patch, int) and (h % patch or w % patch):
    divisors = [p for p in range(1, min(h, w) + 1) if not h % p and not w % p]
    raise ConfigError(
        f"model.patch_size must divide the {h}x{w} images of {dataset}, got "
        f"{patch}: choose one of {', '.join(map(str, divisors))}.")


def _check_custom(cfg: Mapping[str, Any]) -> None:
  """Dataset "custom" (your own arrays, zoo.data.arrays) records their
  image shape, two or more class names and their sha256; a catalog dataset
  records none of these."""
  d = cfg["data"]
  if d["dataset"] != CUSTOM:
    for key in ("image_shape", "class_names", "sha256"):
      if d[key]:
        raise ConfigError(
            f"data.{key} describes your own arrays; it is set by "
            "zoo.train(name, data=..., test_data=...) or zoo train --data, "
            "not by hand: remove it.")
    return
  shape, names, digest = d["image_shape"], d["class_names"], d["sha256"]
  if (len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape)
      or len(names) < 2 or not isinstance(digest, str) or len(digest) != 64
      or d["classes"]):
    raise ConfigError(
        "data.dataset 'custom' is your own arrays: pass them with "
        "zoo.train(name, data=(images, labels), test_data=...) or zoo train "
        "NAME --data FILE.npz rather than setting data.* by hand.")
  _check_patch(cfg, shape, "your data")
  if cfg["loss"]["name"] == "binary_cross_entropy" and len(names) != 2:
    raise ConfigError(f"binary_cross_entropy needs exactly two classes; your "
                      f"labels have {len(names)}: use a softmax model.")


def _check_data(cfg: Mapping[str, Any]) -> None:
  """The dataset exists, `data.classes` are distinct ids within it, the
  splits parse, and a model's `patch_size` (if it has one) tiles its images.
  Your own arrays (dataset "custom") are checked by _check_custom."""
  _check_custom(cfg)
  if cfg["data"]["dataset"] == CUSTOM:
    return
  info = _dataset_info(cfg["data"]["dataset"])
  _check_patch(cfg, info.image_shape, info.name)
  classes = cfg["data"]["classes"]
  bad = [c for c in classes if not isinstance(c, int) or
         not 0 <= c < info.num_classes]
  if bad or len(set(classes)) != len(classes) or len(classes) == 1:
    raise ConfigError(
        f"data.classes {classes} must be two or more distinct class ids in "
        f"0..{info.num_classes - 1} of {info.name}, or empty for all.")
  from zoo.data import splits  # TFDS's split syntax, checked without data
  for key in ("train_split", "test_split"):
    try:
      splits.check(cfg["data"][key], info.num_examples)
    except ZooError as e:
      raise ConfigError(f"data.{key}: {e}") from None
  if cfg["loss"]["name"] == "binary_cross_entropy" and len(classes) != 2:
    raise ConfigError("binary_cross_entropy needs exactly two data.classes "
                      "(the first becomes label 0, the second label 1).")


def _load_baselines() -> dict[str, Any]:
  if not BASELINES_FILE.exists():
    return {}
  return json.loads(BASELINES_FILE.read_text())


def _make_entry(name: str, raw: Mapping[str, Any], baselines) -> ModelEntry:
  raw = copy.deepcopy(dict(raw))
  raw.setdefault("name", name)
  arch = raw.get("model", {}).get("arch")
  if not arch:
    raise ConfigError(f"config for {name!r} must set model.arch.")
  cfg = config_lib.validate(raw, base.get(arch).build)
  _check_data(cfg)
  return ModelEntry(name=name, config=cfg, baseline=baselines.get(name))


def _ensure_loaded() -> None:
  global _LOADED
  if _LOADED:
    return
  with _LOCK:
    if _LOADED:
      return
    baselines = _load_baselines()
    for path in sorted(configs_dir().glob("*.toml")):
      raw = config_lib.load_file(path)
      try:
        entry = _make_entry(path.stem, raw, baselines)
      except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
      _MODELS.setdefault(entry.name, entry)
    _LOADED = True


def list_models(pattern: str | None = None) -> list[str]:
  """Sorted registered names, filtered by an fnmatch pattern such as
  `"*fashion*"`."""
  if pattern is not None and not isinstance(pattern, str):
    raise ConfigError(f"the pattern must be a string such as '*fashion*', got "
                      f"{pattern!r} ({type(pattern).__name__}).")
  _ensure_loaded()
  names = sorted(_MODELS)
  return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get(name: str, **model_overrides) -> ModelEntry:
  """The registered model `name`, with `model_overrides` applied to its
  `[model]` config (e.g. activation="gelu", hidden_sizes=(512, 256)); no
  weights (zoo.get(name, pretrained=...) adds them)."""
  _ensure_loaded()
  if not isinstance(name, str) or name not in _MODELS:
    raise UnknownModelError(name, _MODELS)
  entry = _MODELS[name]
  if model_overrides:
    entry = with_config(entry, {f"model.{k}": v
                                for k, v in model_overrides.items()})
  return entry


def with_config(entry: ModelEntry, overrides: Mapping[str, Any]) -> ModelEntry:
  """A copy of `entry` with dotted-key config overrides, validated."""
  cfg = config_lib.with_overrides(entry.config, overrides)
  cfg = config_lib.validate(cfg, base.get(cfg["model"]["arch"]).build)
  _check_data(cfg)
  baseline = entry.baseline if cfg == entry.config else None
  return ModelEntry(name=entry.name, config=cfg, baseline=baseline)


def register(name: str, *, dataset: str, config: Mapping[str, Any] | None = None,
             stateful: bool = False):
  """Decorator: registers a user architecture as model `name`::

      @zoo.register("tiny_mlp", dataset="fashion_mnist",
                    config={"train": {"epochs": 2}})
      def tiny_mlp(num_outputs, width=32):
        return MyModule(num_outputs, width)

  The decorated constructor is a function or an hk.Module class taking the
  number of outputs, then keyword arguments whose defaults become its
  `[model]` config (see zoo.config.model_schema); `stateful=True` for a
  module with Haiku state. The model then trains, evaluates and shows in the
  CLI like a built-in one.
  """
  def decorator(build: ArchFn) -> ArchFn:
    _ensure_loaded()
    if name in _MODELS or name in base.names():
      raise ConfigError(f"model {name!r} is already registered; pick another "
                        "name.")
    base.add(name, build, stateful=stateful)
    raw = copy.deepcopy(dict(config or {}))
    raw.setdefault("model", {})["arch"] = name
    raw.setdefault("data", {})["dataset"] = dataset
    try:
      _MODELS[name] = _make_entry(name, raw, _load_baselines())
    except Exception:
      base.remove(name)  # a bad config must not leave it behind
      raise
    return build
  return decorator


def unregister(name: str) -> None:
  """Removes a model added with `register` (for tests and notebooks)."""
  _ensure_loaded()
  _MODELS.pop(name, None)
  base.remove(name)
