"""The `zoo` command: list | info | train | eval | baselines.

Errors the user can fix (bad name, bad key, missing data, bad flags) are
ZooErrors: they print one line `zoo: error: ...` and exit with status 2, as
argparse's usage errors do; a traceback means a bug in zoo.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from zoo.errors import ZooError


def _cmd_list(args: argparse.Namespace) -> int:
  import zoo
  names = zoo.list_models(args.pattern)
  if not names:
    print(f"no model matches {args.pattern!r}", file=sys.stderr)
    return 1
  width = max(map(len, names))
  for name in names:
    entry = zoo.get(name)
    acc = entry.baseline.get("test_accuracy_mean") if entry.baseline else None
    acc = f"{100 * acc:6.2f}%" if acc is not None else "   n/a "
    print(f"{name:<{width}}  {entry.dataset:<14} {acc}  "
          f"{entry.config['description']}")
  return 0


def layer_summary(entry) -> list[tuple[str, str, int]]:
  """(module, parameter shapes, count) per Haiku module, in init order."""
  import jax
  params, _ = jax.eval_shape(entry.init_with_state, jax.random.PRNGKey(0),
                             entry.example_input())
  rows = []
  for module, leaves in params.items():
    desc = ", ".join(f"{k}{tuple(v.shape)}" for k, v in leaves.items())
    rows.append((module, desc, sum(v.size for v in leaves.values())))
  return rows


def _cmd_info(args: argparse.Namespace) -> int:
  import zoo
  entry = zoo.get(args.name)
  rows = layer_summary(entry)
  total = sum(r[2] for r in rows)
  print(f"{entry.name}: {entry.config['description']}")
  print(f"  dataset     {entry.dataset} (input {entry.input_shape}, "
        f"{entry.num_classes} classes: {', '.join(entry.class_names)})")
  print(f"  parameters  {total:,}")
  w = max(len(r[0]) for r in rows)
  for module, desc, count in rows:
    print(f"    {module:<{w}}  {desc:<40} {count:>12,}")
  print("  config")
  for section, values in entry.config.items():
    if isinstance(values, dict):
      print(f"    [{section}] " + ", ".join(f"{k}={v!r}"
                                          for k, v in values.items()))
  b = entry.baseline
  if b:
    print(f"  baseline    {100 * b['test_accuracy_mean']:.2f}% ± "
          f"{100 * b['test_accuracy_std']:.2f} test accuracy over "
          f"{b['seeds']} seeds, {b['epochs']} epochs, on {b['devices']}x "
          f"{b['device_kind']} ({b.get('date', '')}); reproduce: "
          f"{b['command']}")
    if b.get("pretrained"):
      print(f"  pretrained  zoo.get({entry.name!r}, pretrained=True): "
            f"{100 * b['pretrained']['test_accuracy']:.2f}% "
            f"(seed {b['pretrained']['seed']})")
  else:
    print("  baseline    not measured yet (zoo baselines "
          f"{entry.name} measures it)")
  return 0


def one_line(message: str) -> str:
  """`message` on one line: its lines joined, indentation dropped."""
  return " ".join(line.strip() for line in str(message).splitlines()
                  if line.strip())


class _Parser(argparse.ArgumentParser):
  """argparse with one-line usage errors (status 2), like every zoo error."""

  def error(self, message: str):
    self.exit(2, f"zoo: error: {one_line(message)} (see `{self.prog} "
                 "--help`)\n")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="zoo", description="A model zoo for JAX built on Haiku.")
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("list", help="list registered models")
  p.add_argument("pattern", nargs="?", default=None,
                 help="fnmatch pattern, e.g. '*fashion*'")
  p.set_defaults(func=_cmd_list)
  p = sub.add_parser("info", help="layers, parameters, config and baseline")
  p.add_argument("name")
  p.set_defaults(func=_cmd_info)
  for add in _EXTRA_COMMANDS:
    add(sub)
  return parser


_EXTRA_COMMANDS = []  # filled by the train/eval/baselines modules


def _register_extra_commands() -> None:
  from zoo.train import baselines, cli_commands
  _EXTRA_COMMANDS[:] = [*cli_commands.COMMANDS, baselines.add_command]


def main(argv: Sequence[str] | None = None) -> int:
  _register_extra_commands()
  args = build_parser().parse_args(argv)
  try:
    return args.func(args)
  except ZooError as e:
    print(f"zoo: error: {one_line(e)}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("zoo: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
