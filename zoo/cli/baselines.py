"""`zoo baselines [PATTERN] [--seeds N]`: measure reference baselines and
record them (zoo/baselines.json, shipped seed-0 weights and their weights
cards, zoo/pretrained/<name>/: model.safetensors, config.json, README.md);
with --readme and
--curves-dir, also regenerate that README's table and copy the curves."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add(sub) -> None:
  p = sub.add_parser("baselines", help="measure reference baselines (several "
                     "seeds) and record them in zoo/baselines.json")
  p.add_argument("pattern", nargs="?", default="*",
                 help="fnmatch pattern of models, e.g. '*fashion*'")
  p.add_argument("--seeds", type=int, default=3,
                 help="training runs per model, seeds 0..N-1 (default 3)")
  p.add_argument("--data-dir", default=None,
                 help="TFDS data dir or folder with IDX files (as zoo train)")
  p.add_argument("--runs-dir", default="runs/baselines",
                 help="where the runs are kept (default %(default)s)")
  p.add_argument("--readme", type=Path, default=None, metavar="README.md",
                 help="rewrite the table between this file's baseline "
                      "markers (e.g. the repository's README.md)")
  p.add_argument("--curves-dir", type=Path, default=None, metavar="DIR",
                 help="copy each model's seed-0 learning curve here (e.g. "
                      "docs/baselines)")
  p.add_argument("--table", action="store_true",
                 help="measure nothing: only regenerate --readme's table")
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  from zoo import pretrained, registry
  from zoo.data.errors import DataNotFoundError
  from zoo.errors import ConfigError
  from zoo.training import baselines
  names = registry.list_models(args.pattern)
  if not names:
    raise ConfigError(f"no model matches {args.pattern!r}")
  if args.table and args.readme is None:
    raise ConfigError("--table regenerates the table of --readme FILE: name "
                      "the file.")
  status = 0
  for name in [] if args.table else names:
    try:
      b = baselines.measure(name, args.seeds, data_dir=args.data_dir,
                            runs_dir=args.runs_dir, curves_dir=args.curves_dir)
    except DataNotFoundError as e:
      print(f"{name}: not measured here: {e}", file=sys.stderr)
      status = 1
      continue
    baselines.record(name, b)
    print(f"{name}: {100 * b['test_accuracy_mean']:.2f}% "
          f"± {100 * b['test_accuracy_std']:.2f} over {args.seeds} seeds; "
          f"weights and card in {pretrained.PRETRAINED_DIR}")
  if args.readme is not None:
    if not baselines.update_readme(args.readme, args.curves_dir):
      raise ConfigError(f"{args.readme} has no baseline table markers "
                        f"({baselines.TABLE_BEGIN} ... {baselines.TABLE_END}).")
    print(f"updated the baseline table in {args.readme}")
  return status
