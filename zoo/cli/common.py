"""What `zoo train` and `zoo eval` share: the model, data and workdir
arguments, and `--set key=value` parsing."""
from __future__ import annotations

import argparse

from zoo import config as config_lib


def parse_sets(items) -> dict:
  """`--set key=value` items as dotted-key overrides (values as TOML)."""
  out = {}
  for item in items or []:
    if "=" not in item:
      raise config_lib.ConfigError(
          f"--set {item!r}: write key=value, e.g. optimizer.learning_rate=3e-4")
    key, value = item.split("=", 1)
    out[key.strip()] = config_lib.parse_value(value.strip())
  return out


def add_common(p: argparse.ArgumentParser) -> None:
  """NAME, --data-dir and --workdir."""
  p.add_argument("name", help="registered model (see `zoo list`)")
  p.add_argument("--data-dir", default=None,
                 help="TFDS data dir or folder with IDX files "
                      "(default: $ZOO_DATA_DIR, $TFDS_DATA_DIR, system paths)")
  p.add_argument("--workdir", default=None, help="run directory")
