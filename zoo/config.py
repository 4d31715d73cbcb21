"""Configuration: read configs/<name>.toml, merge overrides, reject bad keys.

A config is a nested dict with the sections below. Defaults live here; each
config file states what differs for its model; overrides (`--set a.b=v`,
`zoo.get(name, **model_kw)`) come last. Every key is checked: the `model`
section against the architecture's constructor signature, `optimizer` against
the optax function it names, the rest against DEFAULTS.
"""
from __future__ import annotations

import copy
import inspect
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

if sys.version_info >= (3, 11):
  import tomllib
else:  # pragma: no cover
  import tomli as tomllib

from zoo.errors import ConfigError, UnknownConfigKeyError

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
        "seed": 0,
        "eval_batch_size": 1000,
        "checkpoint_every": 0,  # steps; 0 = only at the end of training
        "keep_checkpoints": 3,
        "on_nonfinite": "stop",  # stop | skip
        "loop": "auto",         # auto | scan | python
        # Forward and backward pass in bfloat16 (jmp policy); parameters,
        # optimizer state, loss and evaluation stay float32.
        "compute_dtype": "float32",  # float32 | bfloat16
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
      return float(value)
  elif isinstance(default, str):
    if isinstance(value, str):
      return value
  elif isinstance(default, (list, tuple)):
    if isinstance(value, (list, tuple)):
      return list(value)
  else:
    return value
  raise ConfigError(f"{key} must be a {type(default).__name__} like "
                    f"{default!r}, got {value!r} ({type(value).__name__}).")


def _signature_defaults(fn: Callable[..., Any], skip: int) -> dict[str, Any]:
  params = list(inspect.signature(fn).parameters.values())[skip:]
  return {p.name: (None if p.default is inspect.Parameter.empty else p.default)
          for p in params
          if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def model_defaults(arch_fn: Callable[..., Any]) -> dict[str, Any]:
  """An architecture's keyword defaults (its first argument, the number of
  outputs, comes from the dataset)."""
  return {k: (list(v) if isinstance(v, tuple) else v)
          for k, v in _signature_defaults(arch_fn, skip=1).items()}


def validate(config: Config, arch_fn: Callable[..., Any] | None = None) -> Config:
  """Returns a checked copy of `config` with every default filled in."""
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


def _check_values(config: Config) -> None:
  train, sched = config["train"], config["schedule"]
  if train["batch_size"] < 1 or train["epochs"] < 0:
    raise ConfigError("train.batch_size must be >= 1 and train.epochs >= 0.")
  if train["on_nonfinite"] not in ("stop", "skip"):
    raise ConfigError("train.on_nonfinite must be 'stop' or 'skip', got "
                      f"{train['on_nonfinite']!r}.")
  if train["loop"] not in ("auto", "scan", "python"):
    raise ConfigError("train.loop must be 'auto', 'scan' or 'python', got "
                      f"{train['loop']!r}.")
  if train["compute_dtype"] not in COMPUTE_DTYPES:
    raise ConfigError("train.compute_dtype must be 'float32' or 'bfloat16', "
                      f"got {train['compute_dtype']!r}.")
  if sched["name"] not in ("constant", "cosine", "warmup_cosine", "linear"):
    raise ConfigError("schedule.name must be one of constant, cosine, "
                      f"warmup_cosine, linear; got {sched['name']!r}.")


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
