"""The `zoo` command, one file per subcommand: list | info | train | eval |
baselines | export.

Errors the user can fix (bad name, bad key, missing data, bad flags) are
ZooErrors: they print one line `zoo: error: ...` and exit with status 2, as
argparse's usage errors do; a traceback means a bug in zoo.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Sequence

from zoo.errors import ZooError

def one_line(message: str) -> str:
  """`message` on one line: its lines joined, indentation dropped."""
  return " ".join(line.strip() for line in str(message).splitlines()
                  if line.strip())


class _OneLineLogs(logging.Formatter):
  """Log records as one line each, `zoo: warning: ...` or, for a library,
  `gcsfs: error: ...`: no tracebacks (a library's retry log would otherwise
  print one before zoo's own one-line error)."""

  def format(self, record: logging.LogRecord) -> str:
    who = record.name.split(".")[0] or "root"
    return f"{who}: {record.levelname.lower()}: {one_line(record.getMessage())}"


class _StderrHandler(logging.StreamHandler):
  """Writes to whatever sys.stderr is when a record comes."""

  def emit(self, record: logging.LogRecord) -> None:
    self.stream = sys.stderr
    super().emit(record)


@contextlib.contextmanager
def one_line_logs():
  """While the command runs, warnings and errors of zoo and its libraries
  go to stderr one line each, in place of the stderr handler some library
  installs with logging.basicConfig; restored afterwards (for callers of
  `main` in Python, e.g. tests)."""
  root = logging.getLogger()
  handlers, level = list(root.handlers), root.level
  ours = _StderrHandler()
  ours.setFormatter(_OneLineLogs())
  root.handlers = [h for h in handlers if type(h) is not logging.StreamHandler
                   or h.stream not in (sys.stderr, sys.__stderr__)] + [ours]
  root.setLevel(logging.WARNING)
  try:
    yield
  finally:
    root.handlers = handlers
    root.setLevel(level)


class _Parser(argparse.ArgumentParser):
  """argparse with one-line usage errors (status 2), like every zoo error."""

  def error(self, message: str):
    self.exit(2, f"zoo: error: {one_line(message)} (see `{self.prog} "
                 "--help`)\n")


def build_parser() -> argparse.ArgumentParser:
  """The parser of every subcommand (each module's `add` registers its own)."""
  from zoo.cli import baselines, evaluate, export, info, listing, train
  import zoo
  parser = _Parser(
      prog="zoo", description="A model zoo for JAX built on Haiku.")
  # The running code's own version (setup.cfg reads the same attribute).
  parser.add_argument("--version", action="version",
                      version=f"zoo {zoo.__version__}")
  sub = parser.add_subparsers(dest="command", required=True)
  for command in (listing, info, train, evaluate, baselines, export):
    command.add(sub)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    with one_line_logs():
      return args.func(args)
  except ZooError as e:
    print(f"zoo: error: {one_line(e)}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("zoo: interrupted", file=sys.stderr)
    return 130
  except BrokenPipeError:  # `zoo list | head`: the reader has what it wanted
    # Python would report the failed flush of stdout at exit; point it at
    # /dev/null instead (the recipe in Python's signal module docs).
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, as a shell reports a tool killed by it
