"""The model registry: architectures, registered models, get/list/register.

An *architecture* is a constructor `fn(num_outputs, **kwargs) -> hk.Module`
(models/*.py register theirs with `@architecture`). A *registered model* is an
architecture plus a config (configs/<name>.toml or `zoo.register`): dataset,
hyper-parameters, optimizer, training schedule, and its measured baseline.
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
from zoo import datasets, losses
from zoo.errors import ConfigError, InputError, UnknownModelError, ZooError

ArchFn = Callable[..., hk.Module]

_ARCHITECTURES: dict[str, tuple[ArchFn, bool]] = {}
_MODELS: dict[str, "ModelEntry"] = {}
_LOCK = threading.Lock()
_LOADED = False

PACKAGE_DIR = Path(__file__).resolve().parent
BASELINES_FILE = PACKAGE_DIR / "baselines.json"


def configs_dir() -> Path:
  """Where the built-in configs live: installed with the package as
  zoo/configs, or at the repository root in a source checkout."""
  for candidate in (PACKAGE_DIR / "configs", PACKAGE_DIR.parent / "configs"):
    if candidate.is_dir():
      return candidate
  raise ZooError("zoo's configs/ directory is missing: reinstall the package "
                 "(pip install -e .).")


def architecture(name: str, *, stateful: bool = False):
  """Registers an architecture constructor under `name`.

  `stateful=True` marks modules with state (e.g. BatchNorm statistics): they
  are transformed with `hk.transform_with_state`.
  """
  def decorator(fn: ArchFn) -> ArchFn:
    _ARCHITECTURES[name] = (fn, stateful)
    return fn
  return decorator


def architectures() -> list[str]:
  _ensure_loaded()
  return sorted(_ARCHITECTURES)


def _arch(name: str) -> tuple[ArchFn, bool]:
  try:
    return _ARCHITECTURES[name]
  except KeyError:
    raise ConfigError(f"unknown architecture {name!r}; known: "
                      f"{', '.join(sorted(_ARCHITECTURES))}.") from None


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """A registered model: everything needed to build, train and judge it."""
  name: str
  config: dict[str, Any]
  baseline: dict[str, Any] | None = None
  # Set by zoo.get(name, pretrained=True): the shipped seed-0 weights.
  params: Any = dataclasses.field(default=None, repr=False, compare=False)
  model_state: Any = dataclasses.field(default=None, repr=False, compare=False)

  @property
  def arch(self) -> str:
    return self.config["model"]["arch"]

  @property
  def dataset(self) -> str:
    """The TFDS name of the dataset it is trained on."""
    return self.config["data"]["dataset"]

  @property
  def input_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of one float32 image in [0, 1]."""
    return datasets.info(self.dataset).image_shape

  @property
  def class_names(self) -> tuple[str, ...]:
    names = datasets.info(self.dataset).class_names
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
    return _arch(self.arch)[1]

  def module(self) -> hk.Module:
    """Builds the hk.Module (call only inside a Haiku transform)."""
    fn, _ = _arch(self.arch)
    kwargs = {k: v for k, v in self.config["model"].items() if k != "arch"}
    kwargs = {k: tuple(v) if isinstance(v, list) else v
              for k, v in kwargs.items()}
    return fn(self.num_outputs, **kwargs)

  @functools.cached_property
  def transformed(self) -> hk.Transformed | hk.TransformedWithState:
    """`hk.transform`(`_with_state`) of `forward(images, is_training=False)`;
    `.init`/`.apply` have Haiku's own signatures."""
    input_shape = self.input_shape

    def forward(images: jax.Array, is_training: bool = False) -> jax.Array:
      check_images(images, input_shape)
      return self.module()(images, is_training=is_training)

    if self.stateful:
      return hk.transform_with_state(forward)
    return hk.transform(forward)

  @property
  def init(self):
    return self.transformed.init

  @property
  def apply(self):
    return self.transformed.apply

  def loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The configured loss (mean over the batch); L2 is added by the step."""
    cfg = self.config["loss"]
    return losses.get(cfg["name"])(logits, labels,
                                   label_smoothing=cfg["label_smoothing"])

  def example_input(self, batch: int = 1) -> jax.Array:
    return jnp.zeros((batch, *self.input_shape), jnp.float32)

  def param_count(self) -> int:
    """Number of parameters (computed from shapes, no device work)."""
    shapes = jax.eval_shape(self.transformed.init, jax.random.PRNGKey(0),
                            self.example_input())
    params = shapes[0] if self.stateful else shapes
    return sum(x.size for x in jax.tree.leaves(params))


def check_images(images: jax.Array, input_shape: tuple[int, ...]) -> None:
  """Raises InputError unless `images` is float (B, *input_shape)."""
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


def _check_classes(cfg: Mapping[str, Any]) -> None:
  """The dataset exists, `data.classes` are distinct ids within it, and a
  model's `patch_size` (if it has one) tiles its images."""
  info = datasets.info(cfg["data"]["dataset"])
  patch = cfg["model"].get("patch_size")
  h, w = info.image_shape[:2]
  if isinstance(patch, int) and (h % patch or w % patch):
    divisors = [p for p in range(1, min(h, w) + 1) if not h % p and not w % p]
    raise ConfigError(
        f"model.patch_size must divide the {h}x{w} images of {info.name}, got "
        f"{patch}: choose one of {', '.join(map(str, divisors))}.")
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
  cfg = config_lib.validate(raw, _arch(arch)[0])
  _check_classes(cfg)
  return ModelEntry(name=name, config=cfg, baseline=baselines.get(name))


def _ensure_loaded() -> None:
  global _LOADED
  if _LOADED:
    return
  with _LOCK:
    if _LOADED:
      return
    import zoo.models  # noqa: F401  (registers the built-in architectures)
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
  """Sorted registered names, filtered by an fnmatch pattern ("*fashion*")."""
  if pattern is not None and not isinstance(pattern, str):
    raise ConfigError(f"the pattern must be a string such as '*fashion*', got "
                      f"{pattern!r} ({type(pattern).__name__}).")
  _ensure_loaded()
  names = sorted(_MODELS)
  return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get(name: str, *, pretrained: bool = False, **model_overrides) -> ModelEntry:
  """The registered model `name`, with `model_overrides` applied to its
  `[model]` config (e.g. activation="gelu", hidden_sizes=(512, 256))."""
  _ensure_loaded()
  if not isinstance(name, str) or name not in _MODELS:
    raise UnknownModelError(name, _MODELS)
  entry = _MODELS[name]
  if model_overrides:
    entry = with_config(entry, {f"model.{k}": v
                                for k, v in model_overrides.items()})
  if pretrained:
    from zoo import pretrained as pretrained_lib
    entry = pretrained_lib.attach(entry)
  return entry


def with_config(entry: ModelEntry, overrides: Mapping[str, Any]) -> ModelEntry:
  """A copy of `entry` with dotted-key config overrides, validated."""
  cfg = config_lib.with_overrides(entry.config, overrides)
  cfg = config_lib.validate(cfg, _arch(cfg["model"]["arch"])[0])
  _check_classes(cfg)
  baseline = entry.baseline if cfg == entry.config else None
  return ModelEntry(name=entry.name, config=cfg, baseline=baseline)


def register(name: str, *, dataset: str, config: Mapping[str, Any] | None = None,
             stateful: bool = False):
  """Decorator: registers a user architecture as model `name`.

      @zoo.register("tiny_mlp", dataset="fashion_mnist",
                    config={"train": {"epochs": 2}})
      def tiny_mlp(num_outputs, width=32):
        return MyModule(num_outputs, width)

  The model then trains, evaluates and shows in the CLI like a built-in one.
  """
  def decorator(fn: ArchFn) -> ArchFn:
    _ensure_loaded()
    if name in _MODELS or name in _ARCHITECTURES:
      raise ConfigError(f"model {name!r} is already registered; pick another "
                        "name.")
    architecture(name, stateful=stateful)(fn)
    raw = copy.deepcopy(dict(config or {}))
    raw.setdefault("model", {})["arch"] = name
    raw.setdefault("data", {})["dataset"] = dataset
    try:
      _MODELS[name] = _make_entry(name, raw, _load_baselines())
    except Exception:
      _ARCHITECTURES.pop(name, None)  # a bad config must not leave it behind
      raise
    return fn
  return decorator


def unregister(name: str) -> None:
  """Removes a model added with `register` (for tests and notebooks)."""
  _ensure_loaded()
  _MODELS.pop(name, None)
  _ARCHITECTURES.pop(name, None)
