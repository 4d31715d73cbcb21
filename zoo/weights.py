"""Weights files: parameters (and model state) only, in safetensors.

What users load and ship (`zoo eval --weights`, pretrained weights, Hub
folders, exports); below both the registry and training. Each array is
stored under an explicit name, Haiku's module and parameter joined by "/"
(`small_cnn/conv_0/w`; model state under `model_state/`, e.g.
`model_state/batch_norm_cnn/bn_0/~/mean_ema/average`), and the header's
metadata names the model, its config digest and the arrays' sha256. The
safetensors library does the reading: a header that is too large, offsets
that overlap or leave gaps, sizes that do not match shapes, all refused
before any data is read; there is nothing to unpickle. Every array is then
checked against the model (name, shape, dtype) before its data is read, and
the data against the recorded sha256. Weights of a training run (its
checkpoints) are read by zoo.training.run_weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from zoo.errors import CheckpointError, InputError, WeightsNotFoundError
from zoo.fingerprint import params_sha256

STATE_PREFIX = "model_state/"
FORMAT_VERSION = "1"
SUFFIX = ".safetensors"

# safetensors' dtype names, for the dtypes numpy can hold.
_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16",
           "I16": "int16", "F16": "float16", "U32": "uint32", "I32": "int32",
           "F32": "float32", "U64": "uint64", "I64": "int64",
           "F64": "float64", "C64": "complex64"}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}

# The `# metadata` keys zoo writes into the header (all strings).
META_MODEL = "zoo.model"
META_CONFIG = "zoo.config_sha256"
META_PARAMS = "zoo.params_sha256"
META_STATE = "zoo.model_state_sha256"
META_VERSION = "zoo.format_version"


def names(tree, prefix: str = "") -> dict[str, Any]:
  """{"<module>/<name>": leaf} of a Haiku params or state tree (a mapping of
  modules to mappings of arrays), each name prefixed with `prefix`."""
  out = {}
  for module, leaves in (tree or {}).items():
    for name, leaf in leaves.items():
      out[f"{prefix}{module}/{name}"] = leaf
  return out


def nest(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """The Haiku tree of `names`' output (without its prefix): the module is
  everything before the last "/", the parameter what follows it."""
  tree: dict[str, dict[str, Any]] = {}
  for key, leaf in flat.items():
    module, name = key.rsplit("/", 1)
    tree.setdefault(module, {})[name] = leaf
  return tree


def specs(tree, prefix: str = "") -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{name: (shape, dtype)} of a tree's leaves, named as `names` does."""
  return {k: (tuple(v.shape), np.dtype(v.dtype))
          for k, v in names(tree, prefix).items()}


def template(entry):
  """(params, model_state) shapes of `entry`, with no device work."""
  params, model_state = jax.eval_shape(entry.init_with_state,
                                       jax.random.PRNGKey(0),
                                       entry.example_input())
  zeros = lambda t: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), t)
  return zeros(params), zeros(model_state)


def check(entry, params, model_state=None) -> None:
  """Raises InputError naming the first leaf whose path or shape is not
  `entry`'s own (from shapes alone, no device work): weights of another
  model or config would otherwise fail deep inside Haiku."""
  want = jax.eval_shape(entry.init_with_state, jax.random.PRNGKey(0),
                        entry.example_input())
  if params is None:
    raise InputError(f"params is None: pass {entry.name}'s parameters, e.g. "
                     "zoo.get(name, pretrained=True).params or a zoo.train "
                     "result's .params.")
  other = ("these weights belong to another model or config; pass the ones "
           f"trained for {entry.name} with this config.")
  for what, want_tree, got_tree in zip(("params", "model_state"), want,
                                       (params, model_state)):
    want_specs, got_specs = specs(want_tree), specs(got_tree or {})
    if got_tree is None and want_specs:
      raise InputError(f"{entry.name} normalizes with BatchNorm statistics: "
                       "pass its model_state too (e.g. entry.model_state).")
    for key, (shape, _) in want_specs.items():
      got = got_specs.get(key)
      if got is None or got[0] != shape:
        why = ("is missing" if got is None else
               f"has shape {got[0]}, {entry.name} expects {shape}")
        raise InputError(f"{what} {key} {why}: {other}")
    extra = sorted(set(got_specs) - set(want_specs))
    if extra:
      raise InputError(f"{what} {extra[0]} is not a parameter of "
                       f"{entry.name}: {other}")


def config_sha256(config: Mapping[str, Any]) -> str:
  """sha256 of a resolved config as canonical JSON (sorted keys)."""
  text = json.dumps(config, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()


def arrays_of(params, model_state=None) -> dict[str, np.ndarray]:
  """The {name: array} a weights file holds: host numpy, C order,
  little-endian, plain numeric dtypes."""
  out = {}
  for key, leaf in {**names(params), **names(model_state, STATE_PREFIX)
                    }.items():
    a = np.asarray(leaf)
    if a.dtype not in _NAMES:
      raise CheckpointError(f"{key}: dtype {a.dtype} cannot be stored in a "
                            "weights file; cast it (e.g. to float32) first.")
    if a.dtype.byteorder == ">":
      a = a.astype(a.dtype.newbyteorder("<"))
    out[key] = a if a.flags.c_contiguous else a.copy(order="C")
  clash = [k for k in names(params) if k.startswith(STATE_PREFIX)]
  if clash:
    raise CheckpointError(f"params {clash[0]}: a module named "
                          f"{STATE_PREFIX.rstrip('/')!r} cannot be told from "
                          "the model state in a weights file; rename it.")
  return out


def metadata(params, model_state=None, entry=None) -> dict[str, str]:
  """The header metadata zoo writes: format version, arrays' digests and,
  with `entry`, the model's name and config digest."""
  meta = {META_VERSION: FORMAT_VERSION,
          META_PARAMS: params_sha256(params),
          META_STATE: params_sha256(model_state or {})}
  if entry is not None:
    meta[META_MODEL] = entry.name
    meta[META_CONFIG] = config_sha256(entry.config)
  return meta


def save(path: str | os.PathLike, params, model_state=None, *,
         entry=None) -> Path:
  """Atomically writes params (and model state) to a .safetensors file; with
  `entry` (a ModelEntry) its header names the model and config digest."""
  from safetensors.numpy import save_file
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = arrays_of(params, model_state)
  fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=SUFFIX, dir=path.parent)
  os.close(fd)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide shared weights
  try:
    save_file(arrays, tmp, metadata=metadata(params, model_state, entry))
    _sort_metadata(tmp)
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return path


def _sort_metadata(file: str) -> None:
  """Rewrites the header's __metadata__ in sorted key order, in place and at
  the same length. safetensors writes it in hash-map order, which changes
  from one process to the next; sorted, the same weights always give the
  same bytes (and sha256)."""
  with open(file, "r+b") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    meta = header.pop("__metadata__", None)
    if not meta:
      return
    text = json.dumps({"__metadata__": dict(sorted(meta.items())), **header},
                      separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # never: the same JSON, reordered
      raise CheckpointError(f"{file}: cannot sort its header metadata.")
    f.seek(8)
    f.write(text.ljust(n, b" "))


def _sniff(path: Path) -> None:
  """Opens `path` and refuses, in one line, what is not safetensors at all:
  a missing file, a directory, an empty file, an .npz, a .npy, a pickle."""
  try:
    with path.open("rb") as f:
      head = f.read(16)
  except FileNotFoundError:
    raise WeightsNotFoundError(f"{path} does not exist: check the path.") \
        from None
  except IsADirectoryError:
    raise CheckpointError(
        f"{path} is a directory, not a weights file: pass the .safetensors "
        "file, a Hub folder holding model.safetensors (zoo.get(name, "
        "pretrained=DIR)), or a run's directory with --workdir.") from None
  except OSError as e:
    raise CheckpointError(f"{path} cannot be read: {e.strerror or e}.") \
        from None
  if not head:
    raise CheckpointError(f"{path}: the file is empty (0 bytes): it was not "
                          "written completely; save or download it again.")
  if head.startswith(b"PK\x03\x04") and _zip_holds_pickle(path):
    raise CheckpointError(
        f"refused: {path} is a zip holding a Python pickle (torch.save "
        "writes these); loading one can run arbitrary code, so it was not "
        "read. Save weights with zoo.weights.save (safetensors).")
  if head.startswith(b"PK\x03\x04"):
    raise CheckpointError(
        f"{path} is an .npz archive (zoo's weights format before "
        "safetensors): convert it once with `python -m zoo.weights "
        f"{path}`, which writes {path.with_suffix(SUFFIX).name} beside it.")
  if head.startswith(b"\x93NUMPY"):
    raise CheckpointError(f"{path} is a single .npy array, not a weights "
                          "file: save weights with zoo.weights.save.")
  if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04",
                                           b"\x05"):
    raise CheckpointError(
        f"refused: {path} is a Python pickle (torch.save or pickle.dump "
        "writes these); loading one can run arbitrary code, so it was not "
        "read. Save weights with zoo.weights.save (safetensors).")
  if len(head) < 8 or struct.unpack("<Q", head[:8])[0] > path.stat().st_size:
    raise CheckpointError(
        f"{path} is not a safetensors file, or it is truncated (its header "
        "length is larger than the file): save or download it again.")


def _zip_holds_pickle(path: Path) -> bool:
  """Whether a zip's directory names a pickle member (torch.save's
  archive/data.pkl); only names are read, never a member."""
  import zipfile
  try:
    with zipfile.ZipFile(path) as z:
      return any(n.endswith((".pkl", ".pickle")) for n in z.namelist())
  except (zipfile.BadZipFile, OSError, ValueError):
    return False


def read(path: str | os.PathLike, expected: Mapping[str, tuple] | None = None,
         *, check_digests: bool = True) -> tuple[dict[str, np.ndarray],
                                                  dict[str, str]]:
  """({name: array}, header metadata) of a weights file, read by the
  safetensors library. With `expected` ({name: (shape, dtype)}) every array
  must be in it with that shape and dtype, and each of its names in the
  file, checked from the header before any data is read; the data is then
  checked against the digests the header records."""
  from safetensors import SafetensorError, safe_open
  path = Path(path)
  _sniff(path)
  try:
    with safe_open(str(path), framework="numpy") as f:
      meta = dict(f.metadata() or {})
      declared = {}
      for key in f.keys():
        piece = f.get_slice(key)
        declared[key] = (tuple(piece.get_shape()), piece.get_dtype())
      _check_declared(path, declared, expected)
      arrays = {k: f.get_tensor(k) for k in declared}
  except SafetensorError as e:
    raise CheckpointError(
        f"refused: {path} is not a valid safetensors file ({e}): it is "
        "damaged or was crafted; save or download it again.") from None
  if check_digests:
    _check_digests(path, arrays, meta)
  return arrays, meta


def _check_declared(path: Path, declared, expected) -> None:
  """Refuses names, shapes and dtypes the header declares that are not
  plain weights, or not the model's (`expected`)."""
  for key, (shape, dtype) in declared.items():
    if dtype not in _DTYPES:
      raise CheckpointError(
          f"refused: {path}: {key} has dtype {dtype}, which zoo does not "
          "read (plain bool, integer, float16/32/64 and complex64 only).")
    if key.startswith("/") or "/" not in key or any(
        ord(c) < 32 for c in key):
      raise CheckpointError(
          f"refused: {path}: {key!r} is not a weights name (zoo writes "
          "'<module>/<parameter>', e.g. small_cnn/conv_0/w); was it written "
          "by zoo.weights.save?")
  if expected is None:
    return
  for key, (shape, dtype) in declared.items():
    if key not in expected:
      raise CheckpointError(
          f"{path} does not match the model: it holds {key}, which the model "
          "lacks. Was it saved for another model or config?")
    want_shape, want_dtype = expected[key]
    want_dtype = _NAMES.get(np.dtype(want_dtype), str(want_dtype))
    if shape != tuple(want_shape) or dtype != want_dtype:
      raise CheckpointError(
          f"{path}: {key} has shape {shape} dtype {_DTYPES[dtype]}, the model "
          f"expects shape {tuple(want_shape)} dtype {_DTYPES.get(want_dtype, want_dtype)}. "
          "Was it saved for another model or config?")
  missing = sorted(set(expected) - set(declared))
  if missing:
    raise CheckpointError(
        f"{path} does not match the model: {missing[0]} is missing"
        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        + ". Was it saved for another model or config?")


def _check_digests(path: Path, arrays, meta: Mapping[str, str]) -> None:
  """Refuses data that does not hash to the digests the header records."""
  params = nest({k: v for k, v in arrays.items()
                 if not k.startswith(STATE_PREFIX)})
  state = nest({k[len(STATE_PREFIX):]: v for k, v in arrays.items()
                if k.startswith(STATE_PREFIX)})
  for what, tree, key in (("parameters", params, META_PARAMS),
                          ("model state", state, META_STATE)):
    if key in meta and params_sha256(tree) != meta[key]:
      raise CheckpointError(
          f"{path}: its {what} do not match the sha256 its header records "
          f"({meta[key][:12]}...): the file is damaged; save or download it "
          "again.")


def load(entry, path: str | os.PathLike):
  """(params, model_state) for `entry` from a weights file, verified."""
  params_t, state_t = template(entry)
  expected = {**specs(params_t), **specs(state_t, STATE_PREFIX)}
  try:
    arrays, _ = read(path, expected)
  except WeightsNotFoundError:
    raise WeightsNotFoundError(
        f"weights file {path} does not exist: check the path, or train the "
        f"model first (zoo train {entry.name} --workdir DIR) and load the run "
        "with --workdir DIR.") from None
  params = nest({k: v for k, v in arrays.items()
                 if not k.startswith(STATE_PREFIX)})
  state = nest({k[len(STATE_PREFIX):]: v for k, v in arrays.items()
                if k.startswith(STATE_PREFIX)})
  # The template's own structure (and order), filled with the file's arrays.
  fill = lambda t, got: {m: {n: got[m][n] for n in leaves}
                         for m, leaves in t.items()}
  return fill(params_t, params), fill(state_t, state)


def convert_npz(old: str | os.PathLike, new: str | os.PathLike | None = None
                ) -> Path:
  """Re-writes an .npz of zoo's former format (members named
  "params['<module>']['<name>']") as safetensors; numpy reads it, without
  pickle. Returns the new file's path."""
  import re
  old = Path(old)
  new = Path(new) if new else old.with_suffix(SUFFIX)
  pattern = re.compile(r"(params|model_state)\['([^']+)'\]\['([^']+)'\]")
  trees: dict[str, dict[str, Any]] = {"params": {}, "model_state": {}}
  with np.load(old, allow_pickle=False) as npz:
    for key in npz.files:
      match = pattern.fullmatch(key)
      if not match:
        raise CheckpointError(f"{old}: member {key!r} is not one of zoo's "
                              "weights; only zoo's own .npz files convert.")
      part, module, name = match.groups()
      trees[part].setdefault(module, {})[name] = npz[key]
  return save(new, trees["params"], trees["model_state"])


def main(argv: list[str] | None = None) -> int:
  """`python -m zoo.weights OLD.npz [NEW.safetensors]`: converts once."""
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) not in (1, 2):
    print("usage: python -m zoo.weights OLD.npz [NEW.safetensors]",
          file=sys.stderr)
    return 2
  try:
    print(f"wrote {convert_npz(*argv)}")
  except (OSError, ValueError) as e:
    print(f"zoo: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
