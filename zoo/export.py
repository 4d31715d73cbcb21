"""Exports a model with its weights for use without zoo or Haiku.

Two compiled formats (FORMATS), both in inference mode (is_training=False: no dropout, a
stateful model's BatchNorm statistics), taking float32 NHWC images in [0, 1]
of any batch size and returning logits:

  stablehlo   `jax.export`'s serialized artifact, weights baked in as
              constants; `jax.export.deserialize(blob).call(images)`.
  savedmodel  a TensorFlow SavedModel through jax2tf (native serialization:
              the same StableHLO inside an XlaCallModule op), weights as
              tf.Variables; its `serving_default` signature maps
              `images` to `logits`, and the loaded object is callable.

Two weights-only formats (WEIGHTS_FORMATS), for zoo, Haiku or any
safetensors reader, and for sharing on the Hugging Face Hub:

  safetensors one weights file (zoo.weights; its header names the model)
  hub         a model folder (zoo.hub): config.json, model.safetensors and
              README.md, loadable with zoo.get(name, pretrained=FOLDER) and
              ready for huggingface_hub's upload_folder

Each compiled artifact carries a small JSON that says what it takes and returns
(model, input shape, dtype and range, class names in output order, the
params' sha256): `<out>.json` beside a stablehlo file,
`<out>/assets.extra/zoo.json` inside a SavedModel (TF Serving's place for
files the graph does not use). Artifacts are written to a temporary name
and renamed into place, so a crash never leaves a half-written one.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from zoo.errors import ZooError

FORMATS = ("stablehlo", "savedmodel")
WEIGHTS_FORMATS = ("safetensors", "hub")
# Lowered for CPUs and NVIDIA GPUs by default, so the artifact runs on either.
DEFAULT_PLATFORMS = ("cpu", "cuda")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
SAVEDMODEL_META = Path("assets.extra") / "zoo.json"


class ExportError(ZooError, ValueError):
  """A model cannot be exported as asked (format, path, platforms, model)."""


def metadata_path(path: str | os.PathLike, fmt: str) -> Path:
  """Where the JSON describing the artifact at `path` is written (for
  safetensors, the file itself: its header)."""
  path = Path(path)
  if fmt == "hub":
    from zoo import hub
    return path / hub.CONFIG
  if fmt == "safetensors":
    return path
  return (path / SAVEDMODEL_META if fmt == "savedmodel"
          else path.with_name(path.name + ".json"))


def metadata(entry, params, model_state, fmt: str,
             platforms=DEFAULT_PLATFORMS) -> dict:
  """What a consumer needs to use the artifact without zoo."""
  import jax

  import zoo
  from zoo.fingerprint import params_sha256
  h, w, c = entry.input_shape
  if entry.is_binary:
    output = (f"one logit per image: sigmoid(logit) is the probability of "
              f"{entry.class_names[1]!r}, 1 - it of {entry.class_names[0]!r}")
  else:
    output = (f"{entry.num_outputs} logits per image, one per class in "
              "class_names order (softmax gives probabilities)")
  meta = {
      "model": entry.name,
      "arch": entry.arch,
      "dataset": entry.dataset,
      "format": fmt,
      "input": {"shape": [None, h, w, c], "dtype": "float32",
                "layout": "NHWC", "range": [0.0, 1.0],
                "batch": "any size >= 1"},
      "output": {"name": "logits", "shape": [None, entry.num_outputs],
                 "dtype": "float32", "meaning": output},
      "class_names": list(entry.class_names),
      "params_sha256": params_sha256(params),
      "platforms": list(platforms),
      "mode": "inference (is_training=False)",
      "zoo_version": zoo.__version__,
      "jax_version": jax.__version__,
  }
  if jax.tree.leaves(model_state or {}):
    meta["model_state_sha256"] = params_sha256(model_state)
  if fmt == "savedmodel":
    meta["signature"] = {"name": "serving_default", "inputs": "images",
                         "outputs": "logits"}
  return meta


def check_platforms(platforms) -> tuple[str, ...]:
  """`platforms` as a tuple, if they are distinct names jax.export knows."""
  platforms = tuple(platforms)
  bad = [p for p in platforms if p not in PLATFORMS]
  if bad or not platforms or len(set(platforms)) != len(platforms):
    raise ExportError(f"platforms (--platforms) must be distinct names among "
                      f"{', '.join(PLATFORMS)}, got {', '.join(platforms)!r}.")
  return platforms


def check_out(path: Path, fmt: str, overwrite: bool) -> None:
  """Refuses an existing `path` unless `overwrite`, and even then anything
  but an artifact of the same format (never a user's other file or folder)."""
  if not (path.exists() or path.is_symlink()):
    return
  if fmt == "hub":
    from zoo import hub
    is_same = hub.is_folder(path)
  elif fmt == "savedmodel":
    is_same = path.is_dir() and (path / "saved_model.pb").is_file()
  else:
    is_same = path.is_file()
  if not overwrite:
    raise ExportError(f"{path} already exists: choose another --out, or pass "
                      "--force (overwrite=True) to replace it.")
  if path.is_symlink() or not is_same:
    what = {"savedmodel": "a SavedModel directory",
            "hub": "a zoo model folder"}.get(fmt, "a file")
    raise ExportError(f"{path} exists and is not {what}; refusing to replace "
                      "it: choose another --out.")


def _inference_fn(entry, params=None, model_state=None):
  """images -> logits in inference mode; with params, they are closed over
  (constants), else it takes (params, model_state, images)."""
  def logits(p, s, images):
    return entry.apply_with_state(p, s, None, images, False)[0]
  if params is None:
    return logits
  return lambda images: logits(params, model_state, images)


def _batch_shape(entry) -> str:
  h, w, c = entry.input_shape
  return f"b, {h}, {w}, {c}"


def _cannot(entry, fmt: str, platforms, e: Exception) -> ExportError:
  """Why JAX could not trace or lower the model as asked (usually a user
  model that reads the batch size as a Python int)."""
  return ExportError(f"{entry.name} cannot be exported to {fmt} for "
                     f"{', '.join(platforms)} with a symbolic batch "
                     f"dimension: {type(e).__name__}: {e}")


def _write_json(directory: Path, meta: dict) -> Path:
  """`meta` in a temporary file in `directory`, to be renamed into place."""
  fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=directory)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(meta, f, indent=1)
      f.write("\n")
    _umask_mode(Path(tmp))
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return Path(tmp)


def _umask_mode(path: Path) -> None:
  """The mode a plain create would give (mkstemp/mkdtemp's 0600/0700 would
  hide a shared artifact)."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def export_stablehlo(entry, params, model_state, path: str | os.PathLike, *,
                     platforms=DEFAULT_PLATFORMS,
                     overwrite: bool = False) -> Path:
  """Writes `jax.export`'s serialized inference function of `entry` with
  these weights baked in, batch dimension symbolic, and `<path>.json`."""
  import jax
  import jax.export  # noqa: F401  (a submodule JAX < 0.8 does not import)
  import jax.numpy as jnp
  import numpy as np
  path = Path(path)
  platforms = check_platforms(platforms)
  check_out(path, "stablehlo", overwrite)
  params, model_state = jax.tree.map(np.asarray, (params, model_state or {}))
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(_batch_shape(entry)),
                              jnp.float32)
  try:
    exported = jax.export.export(jax.jit(_inference_fn(entry, params,
                                                       model_state)),
                                 platforms=platforms)(spec)
  except ZooError:
    raise
  except Exception as e:  # a user model that is not batch-polymorphic
    raise _cannot(entry, "stablehlo", platforms, e) from e
  blob = exported.serialize()
  meta = metadata(entry, params, model_state, "stablehlo", platforms)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".stablehlo",
                             dir=path.parent)
  tmp, tmp_meta = Path(tmp), None
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(blob)
    _umask_mode(tmp)
    tmp_meta = _write_json(path.parent, meta)
    # The description first, the artifact last: an artifact is never
    # without its JSON.
    os.replace(tmp_meta, metadata_path(path, "stablehlo"))
    os.replace(tmp, path)
  except BaseException:
    for t in (tmp, tmp_meta):
      if t is not None:
        t.unlink(missing_ok=True)
    raise
  return path


def import_tf():
  """TensorFlow for SavedModel export (quiet, off the GPUs: zoo.tfimport),
  or MissingExtraError naming zoo[tf]."""
  from zoo import tfimport
  return tfimport.import_tf("SavedModel export (--format savedmodel)", "tf")


def export_savedmodel(entry, params, model_state, path: str | os.PathLike, *,
                      platforms=DEFAULT_PLATFORMS,
                      overwrite: bool = False) -> Path:
  """Writes a TensorFlow SavedModel of `entry`'s inference function through
  jax2tf (weights as tf.Variables, batch dimension polymorphic): signature
  `serving_default(images) -> {"logits": ...}`, and the loaded object
  itself maps images to logits. Its JSON is `assets.extra/zoo.json`."""
  import jax
  import numpy as np
  path = Path(path)
  platforms = check_platforms(platforms)
  check_out(path, "savedmodel", overwrite)
  tf = import_tf()
  from jax.experimental import jax2tf
  params, model_state = jax.tree.map(np.asarray, (params, model_state or {}))
  h, w, c = entry.input_shape
  module = tf.Module()
  variable = lambda a: tf.Variable(a, trainable=False)
  module.params = tf.nest.map_structure(variable, params)
  module.model_state = tf.nest.map_structure(variable, model_state)
  logits_tf = jax2tf.convert(
      _inference_fn(entry), polymorphic_shapes=[None, None,
                                                f"({_batch_shape(entry)})"],
      with_gradient=False, native_serialization_platforms=platforms)
  spec = tf.TensorSpec([None, h, w, c], tf.float32, name="images")

  @tf.function(input_signature=[spec], autograph=False)
  def call(images):
    return logits_tf(module.params, module.model_state, images)

  @tf.function(input_signature=[spec], autograph=False)
  def serve(images):
    return {"logits": call(images)}

  try:
    serve.get_concrete_function()  # converts (and lowers) here, once
  except ZooError:
    raise
  except Exception as e:  # a user model that is not batch-polymorphic
    raise _cannot(entry, "savedmodel", platforms, e) from e
  if "cpu" in platforms:
    _check_tf_runs_it(tf, serve, spec)
  module.__call__ = call
  meta = metadata(entry, params, model_state, "savedmodel", platforms)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=".tmp_", suffix=".savedmodel",
                              dir=path.parent))
  old = None
  try:
    tf.saved_model.save(module, str(tmp),
                        signatures={"serving_default": serve})
    (tmp / SAVEDMODEL_META).parent.mkdir(exist_ok=True)
    os.replace(_write_json(tmp, meta), tmp / SAVEDMODEL_META)
    _umask_mode(tmp)
    if path.exists():  # overwrite, checked above: move the old one aside
      old = Path(tempfile.mkdtemp(prefix=".old_", dir=path.parent))
      os.replace(path, old / "savedmodel")
    os.replace(tmp, path)
  except BaseException:
    if old is not None and not path.exists():
      os.replace(old / "savedmodel", path)  # put the old artifact back
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  finally:
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  return path


def _check_tf_runs_it(tf, serve, spec) -> None:
  """Runs the converted function once in TensorFlow (one image, on CPU), so
  that a SavedModel that TensorFlow cannot execute is never written.

  jax2tf embeds JAX's StableHLO in an XlaCallModule op; JAX writes the
  StableHLO version of about four weeks before its release, and TensorFlow's
  XLA reads only the versions it was built with. JAX 0.11.2 and 0.12 write
  v1.18.0, and TensorFlow 2.21, the newest, reads up to v1.13.7 (measured
  here; JAX 0.10.2 works with it)."""
  import jax
  try:
    with tf.device("/CPU:0"):
      serve(tf.zeros([1, *spec.shape[1:]], tf.float32))
  except tf.errors.InvalidArgumentError as e:
    text = str(e)
    if "deserialize" not in text:
      raise
    made = re.search(r"produced by: StableHLO_v([\d.]+)", text)
    read = re.search(r"using StableHLO_v([\d.]+)", text)
    versions = (f": JAX writes StableHLO v{made[1]}, TensorFlow's XLA reads up "
                f"to v{read[1]}" if made and read else "")
    raise ExportError(
        f"SavedModel export does not work with JAX {jax.__version__} and "
        f"TensorFlow {tf.__version__}{versions}. Export --format stablehlo "
        "(it runs with jax.export alone), or make the SavedModel where JAX "
        "<= 0.10 is installed (Python 3.11).") from None


def export(entry, params, model_state, path: str | os.PathLike, fmt: str,
           **kwargs) -> Path:
  """Exports in format `fmt` (one of FORMATS); see export_stablehlo and
  export_savedmodel for the keyword arguments."""
  if fmt in WEIGHTS_FORMATS:
    return export_weights(entry, params, model_state, path, fmt,
                          overwrite=kwargs.get("overwrite", False))
  if fmt not in FORMATS:
    raise ExportError(f"unknown export format {fmt!r}: choose one of "
                      f"{', '.join(FORMATS + WEIGHTS_FORMATS)}.")
  fn = export_stablehlo if fmt == "stablehlo" else export_savedmodel
  return fn(entry, params, model_state, path, **kwargs)


def export_weights(entry, params, model_state, path: str | os.PathLike,
                   fmt: str, *, overwrite: bool = False) -> Path:
  """Writes `entry`'s weights as one safetensors file or a Hub-style model
  folder (both atomically). The folder's card is the measured one when the
  weights are the shipped ones, otherwise a card without measurements."""
  from zoo import hub, weights
  path = Path(path)
  check_out(path, fmt, overwrite)
  weights.check(entry, params, model_state)
  if fmt == "hub":
    return hub.write_folder(path, entry, params, model_state,
                            overwrite=overwrite)
  return weights.save(path, params, model_state, entry=entry)
