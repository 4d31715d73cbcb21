"""Optimizer and learning-rate schedule from a config, via optax."""
from __future__ import annotations

from typing import Any

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


def optimizer(cfg: dict[str, Any], total_steps: int) -> optax.GradientTransformation:
  """The optax optimizer named in `cfg["optimizer"]`, driven by the schedule.

  Keys other than `name` are passed to the optax function as they are named
  there (e.g. b1, b2, eps, momentum, nesterov, weight_decay).
  """
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
