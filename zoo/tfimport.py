"""TensorFlow, imported quietly and kept off the GPUs (which JAX may hold).

TF's C++ logging would break zoo's one-line output. TF reads
`TF_CPP_MIN_LOG_LEVEL` once, at import: it is 3 then, unless you set it to
something other than the 1 that `import jax` sets by default; the lines TF's
libraries print while loading, before that level applies (absl's "All log
messages before absl::InitializeLog()", "Could not find cuda drivers"), are
filtered from stderr by the same level. Other stderr output passes through.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

from zoo.errors import require

# A glog/absl line: severity, MMDD, time, thread id, file:line].
_LOG_LINE = re.compile(r"([IWEF])\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] ")
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog()"
_JAX_DEFAULT = "1"  # jax/__init__.py sets it so unless it is set


def _level() -> str:
  """The level TF is imported with: yours, else 3."""
  level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
  return "3" if level in (None, _JAX_DEFAULT) else level


@contextlib.contextmanager
def _env(name: str, value: str):
  """`os.environ[name]` is `value` inside, what it was afterwards."""
  old = os.environ.get(name)
  os.environ[name] = value
  try:
    yield
  finally:
    if old is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = old


def _dropped(line: str, level: str) -> bool:
  """Whether TF's `line` is below the log level the user asked for."""
  level = int(level) if level.isdigit() else 0
  m = _LOG_LINE.match(line)
  if m:
    return "IWEF".index(m[1]) < level
  return level > 0 and line.startswith(_ABSL_BANNER)


@contextlib.contextmanager
def _filtered_stderr(level: str):
  """File descriptor 2 goes to a temporary file; afterwards what is not a
  TF log line below `level` is written to sys.stderr."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError, AttributeError):  # no stderr: nothing to filter
    saved = None
  if saved is None:
    yield
    return
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      text = tmp.read().decode(errors="replace")
      sys.stderr.write("".join(line for line in text.splitlines(True)
                               if not _dropped(line, level)))


def import_tf(what: str, extra: str):
  """TensorFlow, quiet and with no GPU visible to it, or MissingExtraError
  naming zoo[extra] when it is not installed. `what` needs it."""
  level = _level()
  loaded = sys.modules.get("tensorflow") is not None
  with _env("TF_CPP_MIN_LOG_LEVEL", level), (
      contextlib.nullcontext() if loaded else _filtered_stderr(level)):
    tf = require("tensorflow", what, extra, "tensorflow")
    try:
      tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF's devices are initialised already: leave them
      pass
  return tf
