"""Optimizer and learning-rate schedule from a config, via optax."""
from __future__ import annotations

from typing import Any

import jax
import optax

from zoo import config as config_lib
from zoo.errors import ConfigError


def schedule(cfg: dict[str, Any], total_steps: int) -> optax.Schedule:
  """The learning-rate schedule of `cfg["schedule"]` over `total_steps`."""
  lr = cfg["optimizer"]["learning_rate"]
  s = cfg["schedule"]
  end = lr * s["end_factor"]
  warmup = min(s["warmup_steps"], max(total_steps - 1, 0))
  decay_steps = max(total_steps, warmup + 1)
  if s["name"] == "constant":
    if warmup:
      return optax.join_schedules(
          [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)],
          [warmup])
    return optax.constant_schedule(lr)
  if s["name"] in ("cosine", "warmup_cosine"):
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else lr, peak_value=lr, warmup_steps=warmup,
        decay_steps=decay_steps, end_value=end)
  if s["name"] == "linear":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup),
         optax.linear_schedule(lr, end, decay_steps - warmup)], [warmup])
  raise ConfigError(f"unknown schedule {s['name']!r}")


def optimizer(cfg: dict[str, Any], total_steps: int,
              head: frozenset[str] = frozenset()) -> optax.GradientTransformation:
  """The optax optimizer named in `cfg["optimizer"]`, driven by the schedule.

  Keys other than `name` are passed to the optax function as they are named
  there (e.g. b1, b2, eps, momentum, nesterov, weight_decay). With
  `train.trainable = "head"` only the modules in `head` (the layer producing
  the logits, zoo.training.state.head_modules) are updated: an
  `optax.multi_transform` gives every other leaf `optax.set_to_zero()`, so
  they keep their values exactly (and no optimizer state).
  """
  tx = _optimizer(cfg, total_steps)
  if cfg["train"]["trainable"] == "all":
    return tx
  if not head:
    raise ConfigError("train.trainable='head' needs the model's head modules.")

  def labels(params):
    return {m: jax.tree.map(lambda _: "head" if m in head else "frozen", leaves)
            for m, leaves in params.items()}
  return optax.multi_transform({"head": tx, "frozen": optax.set_to_zero()},
                               labels)


def _optimizer(cfg: dict[str, Any], total_steps: int) -> optax.GradientTransformation:
  """The configured optimizer for every parameter (see `optimizer`)."""
  opt = dict(cfg["optimizer"])
  name = opt.pop("name")
  opt.pop("learning_rate")
  factory = config_lib.optimizer_factory(name)
  defaults = config_lib.OPTIMIZER_ALIASES.get(name, (name, {}))[1]
  kwargs = {**defaults, **opt}
  try:
    return factory(learning_rate=schedule(cfg, total_steps), **kwargs)
  except TypeError as e:
    raise ConfigError(f"optimizer {name!r}: {e}") from None
