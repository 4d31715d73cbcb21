"""`zoo list [PATTERN]`: registered models with dataset, baseline and
description."""
from __future__ import annotations

import argparse
import sys


def add(sub) -> None:
  p = sub.add_parser("list", help="list registered models")
  p.add_argument("pattern", nargs="?", default=None,
                 help="fnmatch pattern, e.g. '*fashion*'")
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  from zoo import registry
  names = registry.list_models(args.pattern)
  if not names:
    print(f"no model matches {args.pattern!r}", file=sys.stderr)
    return 1
  width = max(map(len, names))
  for name in names:
    entry = registry.get(name)
    acc = entry.baseline.get("test_accuracy_mean") if entry.baseline else None
    acc = f"{100 * acc:6.2f}%" if acc is not None else "   n/a "
    print(f"{name:<{width}}  {entry.dataset:<14} {acc}  "
          f"{entry.config['description']}")
  return 0
