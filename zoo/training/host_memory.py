"""Host memory on the CPU: glibc malloc settings that keep XLA's per-step
scratch buffers mapped from one step to the next.

XLA's CPU runtime allocates each execution's scratch space (the small CNN's
activations and gradients: one 42 MB block per step at batch 128) with
malloc and frees it when the step ends. glibc serves a block that large with
a fresh mmap and unmaps it on free, so every step faults in about 10,000 new
pages: on a 2-core VM that was a third of the CNN's step
(`python bench/host_memory.py`). Four `mallopt` settings make glibc keep the
block and hand it out again, as tcmalloc does by design:

- M_MMAP_MAX = 0: large blocks come from the heap, not from mmap;
- M_TRIM_THRESHOLD and M_TOP_PAD: freed heap memory stays mapped;
- M_ARENA_MAX = 1: threads that start afterwards (XLA's worker threads,
  when set before JAX's CPU client starts) allocate from the main heap,
  which has no size limit; a thread's own heap holds at most 64 MB, so a
  larger block (the CNN at batch 512) could not be kept there.

They change no number a step computes, only where its memory comes from.
zoo sets them on the CPU only (`keep_step_buffers`), once per process,
before JAX's backend starts where it can tell that JAX can only use the CPU
(`cpu_only`), otherwise when the run's platform is known; a run that ends
gives its free memory back (`release`). `ZOO_HOST_MALLOC=system` leaves
malloc as it is; with another allocator preloaded (LD_PRELOAD tcmalloc or
jemalloc) or without glibc, zoo changes nothing.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil

from zoo.errors import ConfigError

ENV = "ZOO_HOST_MALLOC"
MODES = ("auto", "system")
# (glibc tunable, its mallopt parameter in malloc.h, zoo's value): no mmap
# for large blocks, freed memory kept (trim threshold, top pad), one arena.
SETTINGS = (("mmap_max", -4, 0), ("trim_threshold", -1, 2**31 - 1),
            ("top_pad", -2, 64 << 20), ("arena_max", -8, 1))
# The same as GLIBC_TUNABLES, for a process started with them
# (bench/peer_cpu.py --tuned-pytorch gives them to PyTorch).
GLIBC_TUNABLES = ":".join(f"glibc.malloc.{name}={value}"
                          for name, _, value in SETTINGS)
PRELOADED_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")

_state: str | None = None  # what keep_step_buffers did in this process


def mode() -> str:
  """ZOO_HOST_MALLOC: "auto" (the default: zoo's settings on the CPU) or
  "system" (malloc left as it is)."""
  value = os.environ.get(ENV, "auto").strip().lower() or "auto"
  if value not in MODES:
    raise ConfigError(
        f"{ENV}={os.environ[ENV]!r} is not one of {', '.join(MODES)}: unset "
        f"it (zoo keeps XLA's step buffers on the CPU) or set {ENV}=system "
        "to leave malloc as it is.")
  return value


def _asked_platforms() -> str:
  """The platforms JAX was asked for (JAX_PLATFORMS, jax_platforms), or ""."""
  import jax  # pylint: disable=g-import-not-at-top  (starts no backend)
  return (os.environ.get("JAX_PLATFORMS")
          or getattr(jax.config, "jax_platforms", None) or "")


def cpu_only() -> bool:
  """True when JAX can only run on the CPU here, decided without starting a
  backend: JAX_PLATFORMS (or jax_platforms) names cpu first, or, with no
  platform asked for, no accelerator plugin (a `jax_plugins` package or
  entry point, libtpu) is installed."""
  asked = _asked_platforms()
  if asked.strip():
    return asked.split(",")[0].strip().lower() == "cpu"
  if importlib.metadata.entry_points(group="jax_plugins"):
    return False
  if importlib.util.find_spec("jax_plugins") is not None:
    import jax_plugins  # pylint: disable=g-import-not-at-top
    if any(pkgutil.iter_modules(jax_plugins.__path__)):
      return False
  return (importlib.util.find_spec("libtpu") is None
          and not os.environ.get("TPU_LIBRARY_PATH"))


def _libc_mallopt():
  """glibc's mallopt, or (None, why not)."""
  try:
    version = os.confstr("CS_GNU_LIBC_VERSION") or ""
  except (ValueError, OSError, AttributeError):
    version = ""
  if not version.startswith("glibc"):
    return None, "not glibc"
  preload = os.environ.get("LD_PRELOAD", "")
  preloaded = [a for a in PRELOADED_ALLOCATORS if a in preload]
  if preloaded:
    return None, f"{preloaded[0]} preloaded"
  try:
    return ctypes.CDLL(None).mallopt, version
  except (OSError, AttributeError):
    return None, "no mallopt"


def keep_step_buffers(platform: str | None = None) -> str | None:
  """Sets glibc's malloc to keep freed memory mapped, once per process, when
  `platform` is "cpu" (None: when `cpu_only()`, before a backend starts).

  Returns what this process runs with: "kept" (zoo's settings), "system"
  (ZOO_HOST_MALLOC=system), "not glibc", "tcmalloc preloaded", ...; None
  while nothing is decided (not the CPU, or not known yet)."""
  global _state
  if _state is not None:
    return _state
  if mode() == "system":
    _state = "system"
    return _state
  if platform is None:
    if not cpu_only():
      return None
  elif platform != "cpu":
    return None
  mallopt, why = _libc_mallopt()
  if mallopt is None:
    _state = why
    return _state
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  ok = all(mallopt(param, value) == 1 for _, param, value in SETTINGS)
  _state = "kept" if ok else "mallopt refused"
  return _state


def state() -> str | None:
  """What `keep_step_buffers` decided in this process (None: nothing)."""
  return _state


def between_releases(fn):
  """`fn` with `release()` before and after it: an evaluation between
  training steps neither keeps the steps' buffers resident while it runs nor
  leaves its own behind (each comes back with one round of page faults)."""
  def wrapped(*args, **kwargs):
    release()
    try:
      return fn(*args, **kwargs)
    finally:
      release()
  return wrapped


def release() -> None:
  """Gives the heap's free memory back to the system (glibc malloc_trim)
  when zoo's settings are on: a run calls it when it ends, so that a
  finished run does not hold its scratch buffers."""
  if _state != "kept":
    return
  try:
    ctypes.CDLL(None).malloc_trim(ctypes.c_size_t(0))
  except (OSError, AttributeError):
    pass
