"""JAX's persistent compilation cache for zoo's runs: a model's second run
starts without compiling.

A fresh process spends most of a short run compiling: 3 of the MLP's 7
seconds for one epoch on a 2-core CPU (initialisation, the epoch's scan,
evaluation). JAX can keep compiled executables on disk and load them in
later processes (`jax_compilation_cache_dir`); zoo turns that on for its
runs in `$ZOO_CACHE_DIR/jax` (default `~/.cache/zoo/jax`), caching every
compilation that took 0.1 s or more. It changes no number: a cached
executable is the one the compiler would build.

A folder that cannot be written leaves the cache off, with one warning. A
multi-process run (`jax.distributed`) is left to JAX's own setting, since
its processes may share one folder on a machine: set
JAX_COMPILATION_CACHE_DIR for a pod. Where JAX's cache is already set (JAX_COMPILATION_CACHE_DIR or
`jax.config.update`), zoo uses that one; `ZOO_COMPILATION_CACHE=off` turns
zoo's off. JAX decides once per process, at the first compilation, whether
it caches: a process that compiled something before its first zoo run
keeps running without the cache. JAX writes an entry in one go but not
atomically: if a process dies in that moment, JAX warns that it cannot read
the entry on every later run and compiles instead; deleting the folder
clears it.
"""
from __future__ import annotations

import logging
import os

from zoo.data import cache as data_cache
from zoo.errors import ConfigError

log = logging.getLogger("zoo.train")

ENV = "ZOO_COMPILATION_CACHE"
MODES = ("auto", "off")
# Compilations quicker than this are not written (JAX's default is 1 s,
# which leaves out the epoch scans and evaluation steps of small models).
MIN_COMPILE_SECONDS = 0.1


def mode() -> str:
  """ZOO_COMPILATION_CACHE: "auto" (the default) or "off"."""
  value = os.environ.get(ENV, "auto").strip().lower() or "auto"
  if value not in MODES:
    raise ConfigError(
        f"{ENV}={os.environ[ENV]!r} is not one of {', '.join(MODES)}: unset "
        f"it (zoo caches compiled steps in {default_dir()}) or set {ENV}=off;"
        " JAX_COMPILATION_CACHE_DIR picks another folder.")
  return value


def default_dir() -> str:
  """Where zoo keeps JAX's cache: $ZOO_CACHE_DIR/jax (~/.cache/zoo/jax)."""
  return os.path.join(data_cache.cache_dir(), "jax")


def _jax_cache_dir() -> str | None:
  """The folder JAX's cache is set to already (env or config), or None."""
  import jax  # pylint: disable=g-import-not-at-top
  return str(jax.config.jax_compilation_cache_dir or "") or None


def enable() -> str | None:
  """Points JAX's persistent compilation cache at zoo's folder unless JAX
  already has one or ZOO_COMPILATION_CACHE=off; returns the folder in use
  (None: no cache). Call before the process's first compilation."""
  import jax  # pylint: disable=g-import-not-at-top  (starts no backend)
  if mode() == "off":
    return None
  current = _jax_cache_dir()
  if current:
    return current
  is_initialized = getattr(jax.distributed, "is_initialized", lambda: False)
  if is_initialized():
    return None  # several processes: JAX_COMPILATION_CACHE_DIR is theirs
  path = default_dir()
  try:
    os.makedirs(path, exist_ok=True)
    writable = os.access(path, os.W_OK | os.X_OK)
  except OSError:
    writable = False
  if not writable:
    log.warning("compilation cache off: %s cannot be written (set "
                "ZOO_CACHE_DIR to a writable folder, or %s=off)", path, ENV)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      MIN_COMPILE_SECONDS)
  return path
