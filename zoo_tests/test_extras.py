"""TensorFlow and TFDS are extras, not the core install: the core never
imports them, and using what needs them without them is one line naming the
extra to install. Absence is made real for the process (sys.modules[name] =
None makes every import of it fail), so this runs where the extras are
installed too; the floor smoke run (scripts/test.sh) runs it without them."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zoo import cli
from zoo import data as zoo_data
from zoo.data import tfds_source
from zoo.errors import MissingExtraError, ZooError

REPO = Path(__file__).resolve().parent.parent
DEBIAN = "/usr/share/datasets/fashion-mnist"
needs_debian = pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN, "train-images-idx3-ubyte.gz")),
    reason="needs Debian's dataset-fashion-mnist")


@pytest.fixture
def without(monkeypatch):
  """`without("tensorflow", ...)`: those modules cannot be imported (nor
  found) in this test, as in a core install."""
  def hide(*names):
    for name in names:
      for loaded in [m for m in sys.modules if m == name
                     or m.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, loaded)
      monkeypatch.setitem(sys.modules, name, None)
  return hide


@pytest.fixture(autouse=True)
def isolated_data(tmp_path, monkeypatch):
  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
  zoo_data.clear_memory_cache()
  yield
  zoo_data.clear_memory_cache()


def test_core_use_imports_neither_tensorflow_nor_tfds(tmp_path):
  """Registry, a forward pass, data from the offline files, a split slice
  and StableHLO export, in a fresh interpreter: no TF or TFDS module is
  loaded, even where they are installed."""
  code = """
import sys, jax, numpy as np, zoo
from zoo import export
entry = zoo.get("cnn_fashion_mnist", pretrained=True)
x = np.zeros((2, 28, 28, 1), np.float32)
logits, _ = entry.apply_with_state(entry.params, entry.model_state, None, x)
assert logits.shape == (2, 10)
import zoo.data
try:  # the offline files, where Debian's package is installed
  zoo.data.load("fashion_mnist", "test[:1%]", download=False)
except zoo.data.DataNotFoundError:
  pass
export.export_stablehlo(entry, entry.params, entry.model_state, sys.argv[1])
bad = sorted(m for m in sys.modules if m.split(".")[0] in
             ("tensorflow", "tensorflow_datasets", "keras"))
assert not bad, bad[:5]
print("ok")
"""
  out = subprocess.run(
      [sys.executable, "-c", code, str(tmp_path / "cnn.stablehlo")],
      env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "ok"


def test_tfds_without_its_extra_names_it(without):
  without("tensorflow_datasets")
  with pytest.raises(MissingExtraError) as e:
    tfds_source.import_tfds()
  msg = str(e.value)
  assert isinstance(e.value, ZooError) and isinstance(e.value, ImportError)
  assert "tensorflow-datasets" in msg and "pip install 'zoo[tfds]'" in msg
  assert "\n" not in msg
  assert not tfds_source.available()


def test_savedmodel_export_without_tf_is_one_line_naming_the_extra(
    without, capsys, tmp_path):
  without("tensorflow")
  code = cli.main(["export", "logreg_fashion_mnist", "--weights", "pretrained",
                   "--format", "savedmodel", "--out", str(tmp_path / "sm")])
  out, err = capsys.readouterr()
  assert code == 2 and out == ""
  assert err.startswith("zoo: error: SavedModel export") and err.count("\n") == 1
  assert "pip install 'zoo[tf]'" in err
  assert not (tmp_path / "sm").exists()


def test_prepare_tfds_copy_without_tfds_is_one_line(without, capsys, tmp_path):
  from zoo.data import tfds_local  # pylint: disable=g-import-not-at-top
  without("tensorflow_datasets", "tensorflow")
  if not os.path.isfile(os.path.join(DEBIAN, "train-images-idx3-ubyte.gz")):
    pytest.skip("needs Debian's dataset-fashion-mnist")
  with pytest.raises(SystemExit) as e:
    tfds_local.main(["--data-dir", str(tmp_path / "out")])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "pip install 'zoo[tfds]'" in err


@needs_debian
def test_without_tfds_a_prepared_copy_gives_way_to_the_offline_files(
    without, tmp_path):
  """A prepared TFDS folder that cannot be read without TFDS is passed over
  for the IDX files (the same examples in the same order)."""
  version_dir = tmp_path / "tfds" / "fashion_mnist" / "3.0.1"
  version_dir.mkdir(parents=True)
  (version_dir / "dataset_info.json").write_text("{}")
  without("tensorflow_datasets", "tensorflow")
  split = zoo_data.load("fashion_mnist", "test[:100]", download=False)
  assert split.source.startswith("idx"), split.source
  assert split.images.shape == (100, 28, 28, 1) and split.labels.shape == (100,)


def test_without_tfds_missing_data_says_which_extra_downloads(
    without, tmp_path):
  without("tensorflow_datasets", "tensorflow")
  with pytest.raises(zoo_data.DataNotFoundError) as e:
    zoo_data.load("fashion_mnist", "test", data_dir=tmp_path)
  msg = str(e.value)
  assert "or pip install 'zoo[tfds]' to download it" in msg
  assert "\n" not in msg
