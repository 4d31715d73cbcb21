"""Configuration: read zoo/configs/<name>.toml, merge overrides, reject bad keys.

A config is a nested dict with the sections below. Defaults live here; each
config file states what differs for its model; overrides (`--set a.b=v`,
`zoo.get(name, **model_kw)`) come last. Every key is checked: the `model`
section against the architecture's constructor signature (model_schema: a
model's defaults are its constructor's), `optimizer` against the optax
function it names, the rest against DEFAULTS. Every value is then
checked against its range (VALUE_RANGES; model arguments by kind,
MODEL_ARG_KINDS), so a bad one is refused before any device work.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

if sys.version_info >= (3, 11):
  import tomllib
else:  # pragma: no cover
  import tomli as tomllib

from zoo.errors import (ConfigError, ConfigValueError, UnknownConfigKeyError,
                        article, close_matches)

Config = dict[str, Any]

DEFAULTS: Config = {
    "name": "",
    "description": "",
    "model": {"arch": ""},
    "data": {
        "dataset": "",          # TFDS name, e.g. "fashion_mnist"
        "classes": [],          # keep only these class ids, relabelled 0..k-1
        "train_split": "train",  # TFDS split syntax, e.g. "train[:90%]"
        "test_split": "test",
        # Your own arrays (dataset "custom", set by zoo.train(data=...)):
        # their image shape, class names and sha256, so that the entry is
        # sized to them and a resume with other arrays is refused.
        "image_shape": [],
        "class_names": [],
        "sha256": "",
    },
    "loss": {
        "name": "softmax_cross_entropy",
        "label_smoothing": 0.0,
        "l2": 0.0,              # weight of zoo.losses.l2_regularization
    },
    "optimizer": {"name": "adam", "learning_rate": 1e-3},
    "schedule": {
        "name": "constant",     # constant | cosine | warmup_cosine | linear
        "warmup_steps": 0,
        "end_factor": 0.0,      # final lr = learning_rate * end_factor
    },
    "train": {
        "batch_size": 128,      # global batch, split over devices/processes
        "epochs": 10,
        # Optimizer steps in all, instead of epochs (0: epochs x steps per
        # epoch); a run may then end mid-epoch. The schedule spans them.
        "steps": 0,
        # Also evaluate every N steps (0: only at epoch ends): rows with
        # "eval" true in metrics.jsonl.
        "eval_every": 0,
        # Evaluate (and return) an exponential moving average of the
        # parameters, ema = decay * ema + (1 - decay) * params after every
        # update (0: off; e.g. 0.999).
        "ema_decay": 0.0,
        "seed": 0,
        "eval_batch_size": 1000,
        "checkpoint_every": 0,  # steps; 0 = only at the end of training
        "keep_checkpoints": 3,
        "on_nonfinite": "stop",  # stop | skip
        "loop": "auto",         # auto | scan | python
        # Forward and backward pass in bfloat16 (jmp policy); parameters,
        # optimizer state, loss and evaluation stay float32.
        "compute_dtype": "float32",  # float32 | bfloat16
        # Start from these weights ("pretrained", a .safetensors weights
        # file or a model folder; "" =
        # fresh from the seed); heads of another shape start fresh.
        "init_from": "",
        "trainable": "all",     # all | head (the layer producing the logits)
    },
    # On-device augmentation of training images (zoo.data.augment); off by
    # default. crop_padding must also be at most half the image's size.
    "augment": {
        "crop_padding": 0,      # pad P pixels, then a random HxW crop; 0: off
        "padding_mode": "zero",  # zero | reflect
        "flip": False,          # mirror left-right with probability 0.5
    },
}

_SECTIONS = [k for k, v in DEFAULTS.items() if isinstance(v, dict)]
# float16 would also need loss scaling; bfloat16 has float32's exponent range.
COMPUTE_DTYPES = ("float32", "bfloat16")
OPTIMIZER_ALIASES = {"momentum": ("sgd", {"momentum": 0.9})}


def optimizer_factory(name: str) -> Callable[..., Any]:
  """The optax function an optimizer config names (sgd, adam, adamw, ...)."""
  import optax
  base = OPTIMIZER_ALIASES.get(name, (name, {}))[0]
  fn = getattr(optax, base, None)
  if fn is None or not callable(fn) or base.startswith("_"):
    raise ConfigError(f"unknown optimizer {name!r}: name an optax optimizer "
                      "such as sgd, momentum, adam, adamw, rmsprop, lamb.")
  return fn


def _check_type(key: str, value: Any, default: Any) -> Any:
  """Coerces `value` to the type of `default` where lossless, else raises."""
  if default is None or value is None:
    return value
  if isinstance(default, bool):
    if isinstance(value, bool):
      return value
  elif isinstance(default, int) and not isinstance(default, bool):
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  elif isinstance(default, float):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      if not math.isfinite(value):
        raise ConfigValueError(key, value, "a finite number",
                               "NaN and infinity are never valid settings")
      return float(value)
  elif isinstance(default, str):
    if isinstance(value, str):
      return value
  elif isinstance(default, (list, tuple)):
    if isinstance(value, (list, tuple)):
      return list(value)
  else:
    return value
  kind = type(default).__name__
  raise ConfigError(f"{key} must be {article(kind)} {kind} like {default!r}, "
                    f"got {value!r} ({type(value).__name__}).")


def _signature_defaults(fn: Callable[..., Any], skip: int) -> dict[str, Any]:
  params = list(inspect.signature(fn).parameters.values())[skip:]
  return {p.name: (None if p.default is inspect.Parameter.empty else p.default)
          for p in params
          if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


# Constructor arguments that take a function, and the config key that names
# it: argument -> (config key, module with names(), get(name), name_of(fn)).
# TOML cannot hold functions, so when a constructor's default is a function
# that module names (jax.nn.relu -> "relu"), the config holds the name and the
# registry resolves it with get() when it builds the module.
NAMED_FUNCTION_ARGS: dict[str, tuple[str, str]] = {
    "activation": ("activation", "zoo.activations"),
    "w_init": ("initializer", "zoo.initializers"),
    "pool": ("pool", "zoo.pooling"),
}


@dataclasses.dataclass(frozen=True)
class ModelArg:
  """One `[model]` key of an architecture: the constructor argument it feeds,
  its default as a config value, and, for a function named in the config, how
  a name becomes the argument (`resolve`, e.g. zoo.activations.get)."""
  arg: str
  default: Any
  resolve: Callable[[Any], Any] | None = None


def _constructor_parameters(
    build: Callable[..., Any]) -> list[inspect.Parameter]:
  """The keyword arguments of `build(num_outputs, ...)`: all but the first,
  *args/**kwargs, and an hk.Module's `name` (Haiku's, not a setting)."""
  params = list(inspect.signature(build).parameters.values())[1:]
  is_module = False
  if isinstance(build, type):
    import haiku as hk  # only now: this module imports no Haiku or JAX
    is_module = issubclass(build, hk.Module)
  return [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
          and not (is_module and p.name == "name")]


def _model_arg(p: inspect.Parameter) -> tuple[str, ModelArg]:
  default = None if p.default is inspect.Parameter.empty else p.default
  if p.name in NAMED_FUNCTION_ARGS and callable(default):
    key, module_name = NAMED_FUNCTION_ARGS[p.name]
    names = importlib.import_module(module_name)
    name = names.name_of(default)
    if name is not None:
      return key, ModelArg(p.name, name, names.get)
  if isinstance(default, tuple):
    default = list(default)
  return p.name, ModelArg(p.name, default)


def model_schema(build: Callable[..., Any]) -> dict[str, ModelArg]:
  """The `[model]` keys of an architecture (without `arch`), derived from the
  signature of its constructor `build(num_outputs, **kwargs)` (an hk.Module
  class or a function): one key per keyword argument, in order, its default
  the argument's (tuples as lists); a function default that zoo names
  (NAMED_FUNCTION_ARGS) becomes that name, under its config key (`w_init`
  -> `initializer`)."""
  params = _constructor_parameters(build)
  schema = dict(_model_arg(p) for p in params)
  if len(schema) != len(params):
    raise ConfigError(f"{build!r}: two constructor arguments map to the same "
                      "config key.")
  return schema


def model_defaults(build: Callable[..., Any]) -> dict[str, Any]:
  """An architecture's `[model]` defaults, by config key (see model_schema;
  its first argument, the number of outputs, comes from the dataset)."""
  return {k: a.default for k, a in model_schema(build).items()}


def model_kwargs(build: Callable[..., Any],
                 model: Mapping[str, Any]) -> dict[str, Any]:
  """The constructor's keyword arguments for a validated `[model]` section:
  names resolved to functions, lists as tuples."""
  schema = model_schema(build)
  kwargs = {}
  for key, value in model.items():
    if key == "arch":
      continue
    arg = schema[key]
    if arg.resolve is not None:
      value = arg.resolve(value)
    elif isinstance(value, list):
      value = tuple(value)
    kwargs[arg.arg] = value
  return kwargs


def validate(config: Config, arch_fn: Callable[..., Any] | None = None) -> Config:
  """Returns a checked copy of `config` with every default filled in;
  `arch_fn` is the architecture's constructor (its `[model]` schema, see
  model_schema; None: only `model.arch` is known)."""
  out = copy.deepcopy(DEFAULTS)
  for key, value in config.items():
    if key not in DEFAULTS:
      raise UnknownConfigKeyError(key, DEFAULTS)
    if key not in _SECTIONS:
      out[key] = _check_type(key, value, DEFAULTS[key])
      continue
    if not isinstance(value, Mapping):
      raise ConfigError(f"[{key}] must be a table of keys, got {value!r}.")
    if key == "model":
      valid = {"arch": ""} | (model_defaults(arch_fn) if arch_fn else {})
      out["model"] = dict(valid)
    elif key == "optimizer":
      name = value.get("name", DEFAULTS["optimizer"]["name"])
      valid = {"name": "", **_signature_defaults(optimizer_factory(name), 0)}
      if "learning_rate" in valid:  # required (no default): still a number
        valid["learning_rate"] = DEFAULTS["optimizer"]["learning_rate"]
      out["optimizer"] = {"name": name, "learning_rate": 1e-3}
    else:
      valid = DEFAULTS[key]
    for sub, v in value.items():
      if sub not in valid:
        raise UnknownConfigKeyError(f"{key}.{sub}", valid, where=f"[{key}]")
      out[key][sub] = _check_type(f"{key}.{sub}", v, valid[sub])
  if arch_fn is not None:
    out["model"] = {"arch": out["model"]["arch"], **model_defaults(arch_fn),
                    **{k: v for k, v in out["model"].items() if k != "arch"}}
  _check_values(out)
  return out


@dataclasses.dataclass(frozen=True)
class Allowed:
  """The allowed values of one kind of setting: a test, how a message says it,
  and a hint on how to fix a bad value. A choice of names keeps `names`
  (asked on use, so registries may grow) to suggest the closest ones."""
  text: str
  ok: Callable[[Any], bool]
  hint: str = ""
  names: Callable[[], list[str]] | None = None

  def check(self, key: str, value: Any) -> None:
    """Raises ConfigValueError naming `key`, `value`, the range and a fix."""
    if self.ok(value):
      return
    hints = [self.hint] if self.hint else []
    if self.names is not None:
      names = self.names()
      near = close_matches(value, names) if isinstance(value, str) else []
      hints = ([f"did you mean {', '.join(near)}?"] if near else []) + [
          f"choose one of: {', '.join(names)}"]
    raise ConfigValueError(key, value, self.text, " ".join(hints))


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v))


def int_range(lo: int, hi: int | None = None, hint: str = "") -> Allowed:
  """An int in lo..hi (hi None: no upper bound)."""
  text = f"an int >= {lo}" if hi is None else f"an int in {lo}..{hi}"
  return Allowed(text, lambda v: _is_int(v) and lo <= v and
                 (hi is None or v <= hi), hint)


def float_range(lo: float, hi: float | None = None, *, lo_open: bool = False,
                hi_open: bool = False, hint: str = "") -> Allowed:
  """A finite number between lo and hi; *_open leaves that bound out."""
  if hi is None:
    text = f"a finite number {'>' if lo_open else '>='} {lo:g}"
  else:
    text = (f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}"
            f"{')' if hi_open else ']'}")

  def ok(v: Any) -> bool:
    return (_is_number(v) and (v > lo if lo_open else v >= lo) and
            (hi is None or (v < hi if hi_open else v <= hi)))
  return Allowed(text, ok, hint)


def one_of(names: Callable[[], list[str]], what: str) -> Allowed:
  """A name that `names()` lists (an activation, a schedule, ...)."""
  return Allowed(f"a known {what}",
                 lambda v: isinstance(v, str) and v in names(), names=names)


def _fixed(*names: str) -> Callable[[], list[str]]:
  return lambda: list(names)


def _activation_names() -> list[str]:
  from zoo import activations
  return activations.names()


def _initializer_names() -> list[str]:
  from zoo import initializers
  return initializers.names()


def _pool_names() -> list[str]:
  from zoo import pooling
  return pooling.names()


UINT32_MAX = 2**32 - 1

# The range of every non-model setting, by dotted key.
VALUE_RANGES: dict[str, Allowed] = {
    "train.batch_size": int_range(1, hint="it is the global batch, e.g. 128"),
    "train.epochs": int_range(
        1, hint="e.g. 10, or set train.steps to count optimizer steps instead"),
    "train.steps": int_range(
        0, hint="a number of optimizer steps, or 0 to train for epochs"),
    "train.eval_every": int_range(
        0, hint="a number of steps, or 0 to evaluate at epoch ends only"),
    "train.ema_decay": float_range(0, 1, hi_open=True,
                                   hint="e.g. 0.999, or 0 for no average"),
    "train.seed": int_range(0, UINT32_MAX,
                            hint="pick a seed in that range, e.g. 0"),
    "train.eval_batch_size": int_range(1, hint="e.g. 1000"),
    "train.checkpoint_every": int_range(
        0, hint="a number of steps, or 0 to save only at the end"),
    "train.keep_checkpoints": int_range(
        1, hint="how many checkpoints to keep, e.g. 3"),
    "train.on_nonfinite": one_of(_fixed("stop", "skip"), "policy"),
    "train.loop": one_of(_fixed("auto", "scan", "python"), "loop"),
    "train.compute_dtype": one_of(_fixed(*COMPUTE_DTYPES), "compute dtype"),
    "train.init_from": Allowed(
        "'', 'pretrained', the path of a .safetensors weights file or of a "
        "model folder",
        lambda v: isinstance(v, str) and (
            v in ("", "pretrained") or v.endswith((".safetensors", ".npz"))
            or os.path.isdir(v)),
        "e.g. init_from='pretrained' or a file written by zoo.weights.save"),
    "train.trainable": one_of(_fixed("all", "head"), "trainable set"),
    "schedule.name": one_of(_fixed("constant", "cosine", "warmup_cosine",
                                   "linear"), "schedule"),
    "schedule.warmup_steps": int_range(0, hint="use 0 for no warm-up"),
    "schedule.end_factor": float_range(
        0, hint="the final learning rate is learning_rate * end_factor; "
        "0 decays to zero"),
    "optimizer.learning_rate": float_range(0, lo_open=True, hint="e.g. 1e-3"),
    "loss.label_smoothing": float_range(0, 1, hi_open=True,
                                        hint="e.g. 0.1, or 0 for none"),
    "loss.l2": float_range(0, hint="the weight of the L2 penalty; 0 for none"),
    "augment.crop_padding": int_range(
        0, hint="pixels of padding before a random crop, e.g. 2 or 4; 0 for "
        "none"),
    "augment.padding_mode": one_of(_fixed("zero", "reflect"), "padding mode"),
}


_EPOCHS_UNUSED = int_range(0, hint="e.g. 10")


def _positive_ints(v: Any) -> bool:
  """A positive int, or a list of them (per-layer widths or channels)."""
  if isinstance(v, (list, tuple)):
    return all(_is_int(x) and x >= 1 for x in v)
  return _is_int(v) and v >= 1


# Model arguments by kind: one range per kind, applied to whichever of these
# arguments an architecture declares (built in, or added with zoo.register).
MODEL_ARG_KINDS: dict[str, tuple[Allowed, tuple[str, ...]]] = {
    "size": (Allowed("a positive int, or a list of positive ints",
                     _positive_ints, "widths, channels, heads, layers and "
                     "patch sizes are counts, e.g. 128 or [256, 128]"),
             ("hidden_sizes", "channels", "hidden_size", "dim", "mlp_dim",
              "num_heads", "depth", "num_layers", "patch_size")),
    "rate": (float_range(0, 1, hi_open=True,
                         hint="a fraction, e.g. 0.1; 0 turns it off"),
             ("dropout", "bn_decay")),
    "epsilon": (float_range(0, lo_open=True, hint="a small number, e.g. 1e-5"),
                ("bn_eps",)),
    "activation": (one_of(_activation_names, "activation"), ("activation",)),
    "initializer": (one_of(_initializer_names, "initializer"),
                    ("initializer",)),
    "pool": (one_of(_pool_names, "pooling mode"), ("pool",)),
}
MODEL_ARG_RANGES: dict[str, Allowed] = {
    arg: allowed for allowed, args in MODEL_ARG_KINDS.values() for arg in args}


def _check_values(config: Config) -> None:
  """Range checks: every key of VALUE_RANGES, and every model argument of a
  kind in MODEL_ARG_KINDS."""
  steps = config["train"].get("steps")
  for key, allowed in VALUE_RANGES.items():
    section, sub = key.split(".")
    if key == "train.epochs" and _is_int(steps) and steps >= 1:
      allowed = _EPOCHS_UNUSED  # train.steps counts instead
    if sub in config[section]:
      allowed.check(key, config[section][sub])
  model = config["model"]
  for arg, value in model.items():
    if arg in MODEL_ARG_RANGES:
      MODEL_ARG_RANGES[arg].check(f"model.{arg}", value)
  if "dim" in model and "num_heads" in model and \
      model["dim"] % model["num_heads"]:
    raise ConfigValueError(
        "model.dim", model["dim"],
        f"a multiple of model.num_heads ({model['num_heads']})",
        "every attention head gets dim / num_heads features; change model.dim "
        "or model.num_heads")


def load_file(path: str | Path) -> Config:
  """Parses one TOML config file (no validation)."""
  path = Path(path)
  try:
    with path.open("rb") as f:
      return tomllib.load(f)
  except tomllib.TOMLDecodeError as e:
    raise ConfigError(f"{path}: not valid TOML: {e}") from None


def parse_value(text: str) -> Any:
  """Parses a `--set` value as a TOML literal (3e-4, true, [1, 2], "x");
  anything that is not a literal is taken as a plain string."""
  try:
    return tomllib.loads(f"v = {text}")["v"]
  except tomllib.TOMLDecodeError:
    return text


def resolve_key(config: Config, key: str) -> tuple[str, ...]:
  """Maps a dotted key to its path; a bare key names the one section that has
  it (e.g. "epochs" -> ("train", "epochs"))."""
  if "." in key:
    return tuple(key.split("."))
  if key in config and key not in _SECTIONS:
    return (key,)
  owners = [s for s in _SECTIONS if key in config.get(s, {})]
  if len(owners) == 1:
    return (owners[0], key)
  valid = [f"{s}.{k}" for s in _SECTIONS for k in config.get(s, {})]
  if len(owners) > 1:
    raise ConfigError(f"key {key!r} is ambiguous: write one of "
                      f"{', '.join(f'{s}.{key}' for s in owners)}.")
  raise UnknownConfigKeyError(key, valid)


def with_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
  """A copy of a validated `config` with dotted-key overrides applied (not yet
  re-validated: call `validate` on the result)."""
  out = copy.deepcopy(config)
  for key, value in overrides.items():
    path = resolve_key(out, key)
    node = out
    for part in path[:-1]:
      if part not in node or not isinstance(node[part], dict):
        raise UnknownConfigKeyError(key, [s for s in _SECTIONS])
      node = node[part]
    if path[-1] not in node and path[0] not in ("optimizer",):
      raise UnknownConfigKeyError(key, [f"{path[0]}.{k}" for k in node],
                                  where=f"[{path[0]}]")
    node[path[-1]] = value
  return out


def changes(old: Config, new: Config, prefix: str = "") -> list[tuple[str, Any, Any]]:
  """(dotted key, old value, new value) for every setting that differs."""
  out = []
  for key in sorted(set(old) | set(new), key=str):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += changes(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append((f"{prefix}{key}", a, b))
  return out
