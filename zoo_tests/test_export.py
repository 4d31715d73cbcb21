"""`zoo export`: every architecture's shipped weights as a jax.export
(StableHLO) artifact and a TF SavedModel, each run by a program that can
import neither zoo nor Haiku (the export guide's consumer snippets, near verbatim)
and giving entry.apply_with_state's logits at two batch sizes; their JSON;
atomic writes; and the command's one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import zoo
from zoo import cli, registry, weights
from zoo import export as export_lib
from zoo.errors import ZooError, installed
from zoo.training import loop
from zoo.fingerprint import params_sha256

ARCHS = ("logreg", "logreg_binary", "mlp", "cnn", "cnn_bn", "lstm", "vit_tiny")
MODELS = tuple(f"{a}_fashion_mnist" for a in ARCHS)
BATCHES = (5, 2)  # two sizes: the batch dimension is symbolic
RTOL = ATOL = 1e-5

# jax2tf puts JAX's StableHLO inside the SavedModel, and TensorFlow runs it
# only if its XLA reads that StableHLO version: JAX 0.10.2 with TF 2.21 does
# (measured), JAX 0.11.2 and 0.12 with TF 2.21 do not (JAX writes v1.18.0,
# TF reads up to v1.13.7), and zoo then refuses in one line instead of
# writing a SavedModel that cannot run.
JAX_MINOR = tuple(int(p) for p in jax.__version__.split(".")[:2])
SAVEDMODEL_RUNS = JAX_MINOR <= (0, 10)
needs_savedmodel = pytest.mark.skipif(
    not SAVEDMODEL_RUNS, reason=f"TensorFlow cannot run a SavedModel of JAX "
    f"{jax.__version__} (test_savedmodel_refused_where_tf_cannot_run_it)")

# The export guide's consumer snippets (docs/guides/export.md, verbatim:
# test_the_export_guide_shows_these_snippets); the consumer runs them with
# the path and the images replaced.
PATH_HLO = "cnn_fashion_mnist.stablehlo"
PATH_SM = "cnn_fashion_mnist_savedmodel"
RANDOM_IMAGES = "np.random.rand(8, 28, 28, 1).astype(np.float32)"
SNIPPET_STABLEHLO = """\
import json, jax.export, numpy as np
exported = jax.export.deserialize(bytearray(open("cnn_fashion_mnist.stablehlo", "rb").read()))
meta = json.load(open("cnn_fashion_mnist.stablehlo.json"))
images = np.random.rand(8, 28, 28, 1).astype(np.float32)  # NHWC in [0, 1], any batch size
logits = np.asarray(exported.call(images))
print([meta["class_names"][i] for i in logits.argmax(-1)])
"""
SNIPPET_SAVEDMODEL = """\
import json, numpy as np, tensorflow as tf
model = tf.saved_model.load("cnn_fashion_mnist_savedmodel")
meta = json.load(open("cnn_fashion_mnist_savedmodel/assets.extra/zoo.json"))
images = np.random.rand(8, 28, 28, 1).astype(np.float32)  # NHWC in [0, 1], any batch size
logits = model.signatures["serving_default"](images=tf.constant(images))["logits"].numpy()
print([meta["class_names"][i] for i in logits.argmax(-1)])
"""

# Runs in a fresh interpreter where `import zoo` and `import haiku` fail:
# each snippet for each artifact and batch size; logits go to OUT.npz.
CONSUMER = """\
import io, json, sys, contextlib
import numpy as np
for name in ("zoo", "haiku"):
  try:
    __import__(name)
  except ImportError:
    pass
  else:
    sys.exit(f"{name} is importable in the consumer")
job = json.load(open(sys.argv[1]))
images_all = np.load(job["images"])
out, printed = {}, {}
for model, path in job["artifacts"].items():
  for n in job["batches"]:
    code = job["snippet"].replace(job["path"], path).replace(
        job["random_images"], f"images_all[:{n}]")
    ns = {"images_all": images_all}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
      exec(code, ns)
    out[f"{model}/{n}"] = np.asarray(ns["logits"])
    printed[f"{model}/{n}"] = buf.getvalue()
    if "model" in ns:  # the SavedModel: also called directly, and its spec
      out[f"{model}/{n}/call"] = ns["model"](images_all[:n]).numpy()
      spec = ns["model"].signatures["serving_default"].structured_input_signature
      printed[f"{model}/spec"] = repr(spec)
np.savez(job["out"], **out)
json.dump(printed, open(job["printed"], "w"))
"""


def _env(shadow: Path) -> dict:
  """An environment whose Python finds shadow/zoo.py and shadow/haiku first
  (both raise ImportError) and not the repository."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(PYTHONPATH=str(shadow), JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3")
  return env


def _consume(tmp: Path, artifacts: dict, images: np.ndarray, snippet: str,
             path: str):
  """Runs CONSUMER over `artifacts` without zoo or Haiku: (logits, printed)."""
  shadow = tmp / "shadow"
  (shadow / "haiku").mkdir(parents=True, exist_ok=True)
  for file in (shadow / "zoo.py", shadow / "haiku" / "__init__.py"):
    file.write_text("raise ImportError('not available to the consumer')\n")
  np.save(tmp / "images.npy", images)
  job = {"images": str(tmp / "images.npy"), "batches": BATCHES,
         "artifacts": {k: str(v) for k, v in artifacts.items()},
         "snippet": snippet, "path": path, "random_images": RANDOM_IMAGES,
         "out": str(tmp / "logits.npz"), "printed": str(tmp / "printed.json")}
  (tmp / "job.json").write_text(json.dumps(job))
  (tmp / "consumer.py").write_text(CONSUMER)
  proc = subprocess.run([sys.executable, str(tmp / "consumer.py"),
                         str(tmp / "job.json")], cwd=tmp, env=_env(shadow),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(tmp / "logits.npz") as f:
    logits = dict(f)
  return logits, json.loads((tmp / "printed.json").read_text())


@pytest.fixture(scope="module")
def models():
  """{name: (entry with its shipped weights, images, reference logits)}."""
  images = np.random.RandomState(0).rand(max(BATCHES), 28, 28, 1)
  images = images.astype(np.float32)
  out = {}
  for name in MODELS:
    entry = zoo.get(name, pretrained=True)
    logits, _ = entry.apply_with_state(entry.params, entry.model_state, None,
                                       images, False)
    out[name] = entry, images, np.asarray(logits)
  return out


def _export_all(models, directory: Path, fmt: str) -> dict:
  suffix = ".stablehlo" if fmt == "stablehlo" else "_savedmodel"
  return {name: export_lib.export(entry, entry.params, entry.model_state,
                                  directory / f"{name}{suffix}", fmt)
          for name, (entry, _, _) in models.items()}


@pytest.fixture(scope="module")
def stablehlo(models, tmp_path_factory):
  """Every model exported once as stablehlo: {name: path}."""
  return _export_all(models, tmp_path_factory.mktemp("stablehlo"),
                     "stablehlo")


@pytest.fixture(scope="module")
def savedmodel(models, tmp_path_factory):
  """Every model exported once as a SavedModel: {name: path}."""
  return _export_all(models, tmp_path_factory.mktemp("savedmodel"),
                     "savedmodel")


def _check_logits(models, logits, printed, keys=("",)):
  for name, (entry, _, ref) in models.items():
    for n in BATCHES:
      for key in keys:
        got = logits[f"{name}/{n}{key}"]
        assert got.shape == (n, entry.num_outputs), (name, n, key)
        np.testing.assert_allclose(got, ref[:n], rtol=RTOL, atol=ATOL,
                                   err_msg=f"{name} batch {n}{key}")
      want = [entry.class_names[i] for i in ref[:n].argmax(-1)]
      assert printed[f"{name}/{n}"].strip() == repr(want)


# --- the artifacts run without zoo or Haiku -----------------------------------

def test_stablehlo_runs_without_zoo_or_haiku(models, stablehlo,
                                             tmp_path_factory):
  images = next(iter(models.values()))[1]
  logits, printed = _consume(tmp_path_factory.mktemp("hlo_consumer"),
                             stablehlo, images, SNIPPET_STABLEHLO, PATH_HLO)
  _check_logits(models, logits, printed)


@needs_savedmodel
def test_savedmodel_runs_without_zoo_or_haiku(models, savedmodel,
                                              tmp_path_factory):
  images = next(iter(models.values()))[1]
  logits, printed = _consume(tmp_path_factory.mktemp("sm_consumer"),
                             savedmodel, images, SNIPPET_SAVEDMODEL, PATH_SM)
  _check_logits(models, logits, printed, keys=("", "/call"))
  for name in MODELS:  # any batch size, float32 NHWC images
    spec = printed[f"{name}/spec"]
    assert "shape=(None, 28, 28, 1)" in spec and "tf.float32" in spec, spec
    assert "name='images'" in spec, spec


def test_stablehlo_has_symbolic_batch_and_weights_baked_in(models,
                                                           stablehlo):
  for name, path in stablehlo.items():
    exported = jax.export.deserialize(bytearray(path.read_bytes()))
    (aval,) = exported.in_avals  # the images only: the weights are constants
    assert not isinstance(aval.shape[0], int), (name, aval.shape)
    assert aval.shape[1:] == (28, 28, 1) and aval.dtype == np.float32
    assert exported.platforms == export_lib.DEFAULT_PLATFORMS
    entry = models[name][0]
    assert exported.out_avals[0].shape[1:] == (entry.num_outputs,)


@pytest.mark.parametrize("fmt", ["stablehlo", pytest.param(
    "savedmodel", marks=needs_savedmodel)])
def test_metadata_beside_each_artifact(models, fmt, request):
  paths = request.getfixturevalue(fmt)
  for name, path in paths.items():
    entry = models[name][0]
    meta = json.loads(export_lib.metadata_path(path, fmt).read_text())
    assert meta["model"] == name and meta["format"] == fmt
    assert meta["input"] == {"shape": [None, 28, 28, 1], "dtype": "float32",
                             "layout": "NHWC", "range": [0.0, 1.0],
                             "batch": "any size >= 1"}
    assert meta["output"]["shape"] == [None, entry.num_outputs]
    assert meta["class_names"] == list(entry.class_names)
    assert meta["params_sha256"] == params_sha256(entry.params)
    assert meta["params_sha256"] == entry.baseline["params_sha256_seed0"]
    assert ("model_state_sha256" in meta) == entry.stateful
  binary = json.loads(export_lib.metadata_path(
      paths["logreg_binary_fashion_mnist"], fmt).read_text())
  assert binary["class_names"] == ["Sneaker", "Ankle boot"]
  assert "probability of 'Ankle boot'" in binary["output"]["meaning"]
  if fmt == "savedmodel":
    assert export_lib.metadata_path(paths["cnn_fashion_mnist"],
                                    "savedmodel").parent.name == "assets.extra"


@pytest.mark.skipif(SAVEDMODEL_RUNS, reason=f"JAX {jax.__version__}'s "
                    "SavedModels run (test_savedmodel_runs_without_zoo_...)")
def test_savedmodel_refused_where_tf_cannot_run_it(tmp_path, capsys):
  """JAX 0.12's StableHLO is newer than TensorFlow's XLA reads: `zoo export
  --format savedmodel` says so in one line, names StableHLO as the path, and
  writes nothing; StableHLO export of the same model works."""
  tf = pytest.importorskip("tensorflow")
  out = tmp_path / "cnn_savedmodel"
  err = _one_line_error(capsys, "export", "cnn_fashion_mnist", "--weights",
                        "pretrained", "--format", "savedmodel", "--out",
                        str(out))
  assert (f"SavedModel export does not work with JAX {jax.__version__} and "
          f"TensorFlow {tf.__version__}: JAX writes StableHLO v") in err
  assert "Export --format stablehlo" in err
  assert list(tmp_path.iterdir()) == []  # no artifact, no temporaries
  assert cli.main(["export", "cnn_fashion_mnist", "--weights", "pretrained",
                   "--format", "stablehlo", "--out",
                   str(tmp_path / "cnn.stablehlo")]) == 0


@pytest.mark.skipif(not installed("tensorflow"), reason="needs zoo[tf]")
def test_savedmodel_export_prints_no_tensorflow_log_lines(tmp_path):
  """TF's C++ logging (absl's pre-init lines, "failed call to cuInit" on a
  machine without a GPU, XLA's kernel errors) stays off stderr: a refusal
  is its one line, a success prints none."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}
  env.update(PYTHONPATH=str(Path(__file__).resolve().parent.parent),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "zoo.cli", "export", "logreg_fashion_mnist",
       "--weights", "pretrained", "--format", "savedmodel", "--out",
       str(tmp_path / "sm")], env=env, capture_output=True, text=True,
      timeout=300)
  lines = proc.stderr.splitlines()
  assert "cuInit" not in proc.stderr and "absl" not in proc.stderr
  if SAVEDMODEL_RUNS:
    assert proc.returncode == 0 and lines == [], proc.stderr[-3000:]
  else:
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("zoo: error: SavedModel export does not work")


# --- the command ----------------------------------------------------------------

def _one_line_error(capsys, *argv) -> str:
  code = cli.main(list(argv))
  out, err = capsys.readouterr()
  assert code == 2, err
  assert out == "" and "Traceback" not in err
  assert err.startswith("zoo: error: ") and err.count("\n") == 1, err
  return err


def _parser_error(capsys, *argv) -> str:
  with pytest.raises(SystemExit) as e:
    cli.main(list(argv))
  _, err = capsys.readouterr()
  assert e.value.code == 2
  assert err.startswith("zoo: error: ") and err.count("\n") == 1, err
  return err


def test_cli_pretrained_refuses_existing_out_and_force_replaces(tmp_path,
                                                                 capsys):
  out = tmp_path / "sub" / "logreg.stablehlo"
  args = ["export", "logreg_fashion_mnist", "--weights", "pretrained",
          "--format", "stablehlo", "--out", str(out), "--platforms", "cpu"]
  assert cli.main(args) == 0
  printed = capsys.readouterr().out
  assert str(out) in printed and f"{out}.json" in printed
  exported = jax.export.deserialize(bytearray(out.read_bytes()))
  assert exported.platforms == ("cpu",)
  out.write_bytes(b"old")
  assert "already exists" in _one_line_error(capsys, *args)
  assert out.read_bytes() == b"old"
  assert cli.main(args + ["--force"]) == 0
  capsys.readouterr()
  assert out.read_bytes() != b"old"
  assert sorted(p.name for p in out.parent.iterdir()) == [
      "logreg.stablehlo", "logreg.stablehlo.json"]  # no temporaries left
  # --force never replaces something of another kind (a folder here).
  assert "is not a file" in _one_line_error(
      capsys, *args[:-3], str(tmp_path), "--force")


def test_cli_workdir_uses_the_runs_config(tmp_path, capsys):
  """A run with a model override (a narrower MLP) exports with its own
  config, and gives the run's logits."""
  workdir = tmp_path / "run"
  run = loop.train("mlp_fashion_mnist", workdir=workdir, epochs=1,
                   batch_size=128, devices=1, progress=False,
                   **{"model.hidden_sizes": [16],
                      "data.train_split": "train[:256]",
                      "data.test_split": "test[:100]"})
  out = tmp_path / "mlp.stablehlo"
  assert cli.main(["export", "mlp_fashion_mnist", "--workdir", str(workdir),
                   "--format", "stablehlo", "--out", str(out),
                   "--platforms", "cpu"]) == 0
  capsys.readouterr()
  entry = registry.with_config(registry.get("mlp_fashion_mnist"),
                               {"model.hidden_sizes": [16]})
  images = np.random.RandomState(1).rand(3, 28, 28, 1).astype(np.float32)
  want, _ = entry.apply_with_state(run.params, run.model_state, None, images)
  got = jax.export.deserialize(bytearray(out.read_bytes())).call(images)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  meta = json.loads(Path(f"{out}.json").read_text())
  assert meta["params_sha256"] == run.result["params_sha256"]
  err = _one_line_error(capsys, "export", "cnn_fashion_mnist", "--workdir",
                        str(workdir), "--format", "stablehlo", "--out",
                        str(tmp_path / "cnn.stablehlo"))
  assert "holds a run of 'mlp_fashion_mnist'" in err


@pytest.fixture(scope="module")
def mlp_weights(tmp_path_factory):
  """The shipped MLP weights as a .npz file."""
  entry = zoo.get("mlp_fashion_mnist", pretrained=True)
  path = tmp_path_factory.mktemp("weights") / "mlp.npz"
  return weights.save(path, entry.params, entry.model_state)


@pytest.mark.parametrize("argv, words", [
    (["cnn_fashion_mnist", "--weights", "{tmp}/missing.npz"],
     ["missing.npz", "no such file"]),
    (["cnn_fashion_mnist", "--weights", "{mlp}"], ["{mlp}"]),  # another model
    (["cnn_mnist", "--weights", "pretrained"],
     ["no pretrained weights ship for 'cnn_mnist'"]),
    (["cnn_fashion_mnist", "--workdir", "{tmp}/nowhere"],
     ["--workdir", "no such directory"]),
    (["cnn_fashion_mnist", "--weights", "pretrained", "--platforms", "gpu"],
     ["platforms", "'gpu'", "cuda"]),
    (["cnn_fashon_mnist", "--weights", "pretrained"],
     ["unknown model", "cnn_fashion_mnist"]),
])
def test_cli_errors_are_one_line(argv, words, mlp_weights, tmp_path, capsys):
  sub = lambda s: s.format(tmp=tmp_path, mlp=mlp_weights)
  err = _one_line_error(capsys, "export", *map(sub, argv), "--format",
                        "stablehlo", "--out", str(tmp_path / "x.stablehlo"))
  for word in words:
    assert sub(word) in err, err
  assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("argv, words", [
    (["--weights", "pretrained", "--format", "onnx"], ["--format", "onnx"]),
    (["--format", "stablehlo"], ["--weights", "--workdir", "required"]),
    (["--weights", "pretrained", "--workdir", "x", "--format", "stablehlo"],
     ["not allowed with"]),
])
def test_cli_usage_errors_are_one_line(argv, words, tmp_path, capsys):
  err = _parser_error(capsys, "export", "cnn_fashion_mnist", *argv, "--out",
                      str(tmp_path / "x"))
  for word in words:
    assert word in err, err


def test_library_refuses_unknown_format_and_existing_out(models, tmp_path):
  entry = models["logreg_fashion_mnist"][0]
  with pytest.raises(ZooError, match="unknown export format 'onnx'"):
    export_lib.export(entry, entry.params, {}, tmp_path / "x", "onnx")
  (tmp_path / "taken").mkdir()
  for fmt in export_lib.FORMATS:
    with pytest.raises(ZooError, match="already exists"):
      export_lib.export(entry, entry.params, {}, tmp_path / "taken", fmt)


# --- a crash never leaves a half-written artifact -------------------------------

@pytest.mark.parametrize("fmt", ["stablehlo", pytest.param(
    "savedmodel", marks=needs_savedmodel)])
def test_crash_leaves_no_partial_artifact_and_keeps_the_old(models, tmp_path,
                                                            monkeypatch, fmt):
  entry = models["logreg_fashion_mnist"][0]
  out = tmp_path / "model"
  export_lib.export(entry, entry.params, {}, out, fmt, platforms=("cpu",))
  before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))

  def crash(*args, **kwargs):  # after the artifact's bytes are written
    raise KeyboardInterrupt
  monkeypatch.setattr(export_lib, "_write_json", crash)
  for target, overwrite in ((tmp_path / "new", False), (out, True)):
    with pytest.raises(KeyboardInterrupt):
      export_lib.export(entry, entry.params, {}, target, fmt,
                        platforms=("cpu",), overwrite=overwrite)
  after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
  assert after == before  # the old artifact intact, no temporaries


# --- a model that cannot be exported says why -----------------------------------

def test_model_without_a_symbolic_batch_is_a_clear_error(tmp_path):
  import haiku as hk

  @zoo.register("fixed_batch_export_test", dataset="fashion_mnist")
  class FixedBatch(hk.Module):
    """Reads the batch size as a Python int: not batch-polymorphic."""

    def __init__(self, num_outputs, name=None):
      super().__init__(name=name)
      self.num_outputs = num_outputs

    def __call__(self, x, is_training=False):
      x = x.reshape(int(x.shape[0]), -1)
      return hk.Linear(self.num_outputs)(x)
  try:
    entry = zoo.get("fixed_batch_export_test")
    params, state = entry.init_with_state(jax.random.PRNGKey(0),
                                          entry.example_input())
    # SavedModel needs zoo[tf] (the floor's core install has none).
    for fmt in [f for f in export_lib.FORMATS
                if f != "savedmodel" or installed("tensorflow")]:
      with pytest.raises(ZooError, match=f"cannot be exported to {fmt} for "
                         "cpu, cuda with a symbolic batch dimension"):
        export_lib.export(entry, params, state, tmp_path / "x", fmt)
    assert list(tmp_path.iterdir()) == []
  finally:
    registry.unregister("fixed_batch_export_test")


def test_the_export_guide_shows_these_snippets():
  guide = (Path(__file__).resolve().parents[1] / "docs" / "guides" /
           "export.md").read_text()
  assert SNIPPET_STABLEHLO in guide and SNIPPET_SAVEDMODEL in guide
