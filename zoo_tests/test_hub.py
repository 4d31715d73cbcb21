"""Hub-style model folders (config.json, model.safetensors, README.md):
`zoo export --format hub|safetensors` writes them, `zoo.get(name,
pretrained=FOLDER or REPO_ID)` and `--weights` load them, each file checked;
loading by repo id goes through the real huggingface_hub client against a
local stand-in Hub (zoo_tests/hub_standin.py): its download, its cache,
HF_HUB_OFFLINE, and a blob whose bytes are not the sha256 it was served
under."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

import zoo
from zoo import cli, export as export_lib, hub as hub_lib, pretrained, weights
from zoo.errors import CheckpointError, WeightsNotFoundError, ZooError
from zoo_tests.hub_standin import hub  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[1]
MODEL = "logreg_fashion_mnist"


@pytest.fixture(scope="module")
def shipped():
  return zoo.get(MODEL, pretrained=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, shipped):
  """The shipped weights exported by the CLI as a Hub folder."""
  out = tmp_path_factory.mktemp("export") / "logreg"
  assert cli.main(["export", MODEL, "--weights", "pretrained", "--format",
                   "hub", "--out", str(out)]) == 0
  return out


def _files(folder: Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_export_writes_the_shipped_folder(folder):
  """The export of the shipped weights is the shipped folder, byte for
  byte (same weights, same measured card)."""
  assert sorted(p.name for p in folder.iterdir()) == sorted(hub_lib.FILES)
  assert _files(folder) == _files(pretrained.folder(MODEL))
  record = json.loads((folder / "config.json").read_text())
  assert record["library_name"] == "zoo" and record["model"] == MODEL
  assert record["files"]["model.safetensors"]["sha256"] == \
      pretrained.sha256(folder / "model.safetensors")


def test_folder_loads_by_path_and_with_weights(folder, shipped, capsys,
                                               tmp_path):
  entry = zoo.get(MODEL, pretrained=str(folder))
  chex.assert_trees_all_equal(entry.params, shipped.params)
  assert entry.weights_card == shipped.weights_card
  assert entry.weights_card["evaluation"]["test_accuracy"] == \
      shipped.baseline["pretrained"]["test_accuracy"]
  assert cli.main(["eval", MODEL, "--weights", str(folder),
                   "--out", str(tmp_path / "eval")]) == 0

  assert "accuracy" in capsys.readouterr().out


def test_export_of_other_weights_has_an_unmeasured_card(tmp_path, shipped):
  """Weights zoo did not measure get a card that claims no accuracy; a
  config override in the folder rebuilds that config on load."""
  name = "mlp_fashion_mnist"
  entry = zoo.get(name, activation="gelu")
  params, state = entry.init_with_state(jax.random.PRNGKey(1),
                                        entry.example_input())
  out = export_lib.export(entry, params, state, tmp_path / "gelu", "hub")
  card = json.loads((out / "config.json").read_text())["card"]
  assert card["evaluation"] is None and card["baseline"] is None
  assert card["reproduce"]["command"] is None
  assert card["license"]["weights"] is None
  assert "accuracy" not in (out / "README.md").read_text().split("---")[1]
  loaded = zoo.get(name, pretrained=str(out))
  assert loaded.config == entry.config
  chex.assert_trees_all_equal(loaded.params, params)


def test_export_safetensors_file_loads_with_weights(tmp_path, shipped):
  out = tmp_path / "w.safetensors"
  assert cli.main(["export", MODEL, "--weights", "pretrained", "--format",
                   "safetensors", "--out", str(out)]) == 0
  assert out.read_bytes() == pretrained.path(MODEL).read_bytes()
  params, _ = weights.load(zoo.get(MODEL), out)
  chex.assert_trees_all_equal(params, shipped.params)


def test_export_refuses_to_overwrite_what_is_not_a_model_folder(
    folder, tmp_path, shipped, capsys):
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("keep me")
  argv = ["export", MODEL, "--weights", "pretrained", "--format", "hub"]
  assert cli.main(argv + ["--out", str(mine)]) == 2
  assert "already exists" in capsys.readouterr().err
  assert cli.main(argv + ["--out", str(mine), "--force"]) == 2
  assert "not a zoo model folder" in capsys.readouterr().err
  assert (mine / "notes.txt").read_text() == "keep me"
  copy = tmp_path / "copy"
  shutil.copytree(folder, copy)
  assert cli.main(argv + ["--out", str(copy), "--force"]) == 0
  assert _files(copy) == _files(folder)
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_folders_are_refused_in_one_line(folder, tmp_path):
  other = tmp_path / "other"
  shutil.copytree(folder, other)
  with pytest.raises(pretrained.PretrainedNotAvailableError,
                     match="holds weights of 'logreg_fashion_mnist', not "
                     "'mlp_fashion_mnist'"):
    zoo.get("mlp_fashion_mnist", pretrained=str(other))
  changed = tmp_path / "changed"
  shutil.copytree(folder, changed)
  raw = bytearray((changed / "model.safetensors").read_bytes())
  raw[-1] ^= 1
  (changed / "model.safetensors").write_bytes(bytes(raw))
  with pytest.raises(CheckpointError, match="does not match the sha256 its "
                     "config.json records"):
    zoo.get(MODEL, pretrained=str(changed))
  bare = tmp_path / "bare"
  bare.mkdir()
  with pytest.raises(WeightsNotFoundError, match="has no config.json"):
    zoo.get(MODEL, pretrained=str(bare))
  (bare / "config.json").write_text("{not json")
  (bare / "model.safetensors").write_bytes(b"")
  with pytest.raises(CheckpointError, match="not valid JSON"):
    zoo.get(MODEL, pretrained=str(bare))
  (bare / "config.json").write_text('{"model": "x"}')
  with pytest.raises(CheckpointError, match="not a zoo model config"):
    zoo.get(MODEL, pretrained=str(bare))
  with pytest.raises(WeightsNotFoundError, match="no such folder, and not a "
                     "Hub repo id"):
    zoo.get(MODEL, pretrained="no such dir")
  with pytest.raises(ZooError, match="pass True"):
    zoo.get(MODEL, pretrained=3)


# --- by repo id, through huggingface_hub and the stand-in Hub ---------------

def test_loads_by_repo_id_then_from_the_cache_offline(hub, folder, shipped,
                                                      monkeypatch):
  commit = hub.add_repo("zoo-org/logreg", _files(folder))
  entry = zoo.get(MODEL, pretrained="zoo-org/logreg")
  chex.assert_trees_all_equal(entry.params, shipped.params)
  assert entry.weights_card == shipped.weights_card
  assert hub.count("GET", "/cdn-lfs/") == 1
  blobs = hub.home / "hub" / "models--zoo-org--logreg" / "blobs"
  assert (blobs / hub.file("zoo-org/logreg", "model.safetensors").sha256
          ).is_file()  # cached under its sha256
  # By revision (a commit), and by hf:// URL: from the cache.
  got = zoo.get(MODEL, pretrained=f"hf://zoo-org/logreg@{commit}")
  chex.assert_trees_all_equal(got.params, shipped.params)
  assert hub.count("GET", "/cdn-lfs/") == 1
  # Offline: the cache alone, no request at all.
  before = hub.count()
  hub.configure(monkeypatch, hub.home, offline=True)
  got = zoo.get(MODEL, pretrained="zoo-org/logreg")
  chex.assert_trees_all_equal(got.params, shipped.params)
  assert hub.count() == before
  with pytest.raises(WeightsNotFoundError, match="not in the local cache"):
    zoo.get(MODEL, pretrained="zoo-org/never-downloaded")


def test_tampered_download_is_refused(hub, folder):
  hub.add_repo("zoo-org/logreg", _files(folder))
  hub.tamper("zoo-org/logreg", "model.safetensors")
  with pytest.raises(CheckpointError, match="does not match the sha256 the "
                     "Hub gives for it") as e:
    zoo.get(MODEL, pretrained="zoo-org/logreg")
  assert "\n" not in str(e.value)


def test_missing_repo_revision_or_file(hub, folder):
  with pytest.raises(WeightsNotFoundError, match="was not found"):
    zoo.get(MODEL, pretrained="zoo-org/nothing")
  hub.add_repo("zoo-org/logreg", _files(folder))
  with pytest.raises(WeightsNotFoundError, match="has no revision 'v9'"):
    zoo.get(MODEL, pretrained="zoo-org/logreg@v9")
  files = _files(folder)
  del files["model.safetensors"]
  hub.add_repo("zoo-org/half", files)
  with pytest.raises(WeightsNotFoundError, match="has no model.safetensors"):
    zoo.get(MODEL, pretrained="zoo-org/half")


def test_cli_evaluates_by_repo_id(hub, folder, tmp_path):
  """A fresh `zoo eval` process, huggingface_hub configured by the
  environment alone (HF_ENDPOINT, HF_HUB_CACHE, HF_HUB_OFFLINE)."""
  hub.add_repo("zoo-org/logreg", _files(folder))
  run = lambda offline: subprocess.run(
      [sys.executable, "-m", "zoo.cli", "eval", MODEL, "--weights",
       "zoo-org/logreg", "--out", str(tmp_path / "eval")],
      capture_output=True, text=True, cwd=tmp_path, env=hub.subprocess_env(tmp_path / "hf", offline=offline),
      timeout=300)
  online = run(False)
  assert online.returncode == 0, online.stderr
  served = hub.count()
  offline = run(True)
  assert offline.returncode == 0, offline.stderr
  assert offline.stdout == online.stdout and hub.count() == served
  assert json.loads((tmp_path / "eval" / "eval.json").read_text())[
      "accuracy"] == json.loads(online.stdout)["accuracy"]
  shutil.rmtree(tmp_path / "hf")
  missing = run(True)
  assert missing.returncode == 2
  assert missing.stderr.count("\n") == 1 and "local cache" in missing.stderr


def test_upload_recipe_names_the_folder_files():
  """The documented upload is huggingface_hub's own upload_folder."""
  guide = (REPO / "docs" / "guides" / "pretrained.md").read_text()
  assert "HfApi().upload_folder(" in guide
  assert "zoo export cnn_fashion_mnist --weights pretrained --format hub" \
      in guide
  assert set(hub_lib.FILES) == {"config.json", "model.safetensors",
                                "README.md"}
