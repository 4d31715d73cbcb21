"""docs/models/ holds exactly what docs/model_pages.py generates: a current
page per registered model and none for another, every picture a page shows,
and evaluation pictures made from the weights shipped now."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

import zoo
from zoo import pretrained
from zoo.pretrained import shipped_card

REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "docs" / "model_pages.py"
PAGES_DIR = REPO / "docs" / "models"
REGENERATE = "run `python docs/model_pages.py` and commit docs/models/"
# A figure's path, an image's, or a relative link's target.
FIGURE = re.compile(r"^```\{figure\}\s+(\S+)", re.MULTILINE)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def gen():
  """docs/model_pages.py, imported by path (docs/ is not a package)."""
  spec = importlib.util.spec_from_file_location("model_pages", GENERATOR)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def pages(gen) -> dict[str, str]:
  return gen.render_all()


def test_every_page_is_current(pages):
  for file, text in sorted(pages.items()):
    path = PAGES_DIR / file
    assert path.is_file(), f"docs/models/{file} is missing: {REGENERATE}"
    assert path.read_text(encoding="utf-8") == text, (
        f"docs/models/{file} is stale (the registry, a weight card or "
        f"zoo/baselines.json changed): {REGENERATE}")


def test_a_page_per_registered_model_and_no_other(pages):
  names = set(zoo.list_models())
  assert set(pages) == {f"{n}.md" for n in names} | {"index.md"}
  on_disk = {p.stem for p in PAGES_DIR.glob("*.md")} - {"index"}
  assert on_disk - names == set(), f"pages of no registered model: {REGENERATE}"
  assert names - on_disk == set(), f"models without a page: {REGENERATE}"
  index = pages["index.md"]
  toctree = index.split("```{toctree}")[1]
  for name in names:
    assert f"]({name}.md)" in index and f"\n{name}\n" in toctree


def targets(text: str) -> list[str]:
  """Local files a page shows or links to (no URLs, no in-page anchors)."""
  found = FIGURE.findall(text) + LINK.findall(text)
  return [t.split("#")[0] for t in found
          if "://" not in t and not t.startswith(("#", "mailto:"))]


def test_every_referenced_image_and_page_exists(pages):
  for file, text in sorted(pages.items()):
    for target in targets(text):
      assert (PAGES_DIR / target).is_file(), (
          f"docs/models/{file} refers to {target}, which does not exist"
          + (": run `python docs/model_pages.py --images`"
             if target.startswith("images/") else ""))


def test_pictures_come_from_the_shipped_weights(gen):
  shipped = [n for n in zoo.list_models() if shipped_card(zoo.get(n))]
  assert len(shipped) >= 8
  for name in shipped:
    record_file = PAGES_DIR / "images" / f"{name}.json"
    assert record_file.is_file(), f"{name}: {record_file} missing"
    record = json.loads(record_file.read_text())
    card = shipped_card(zoo.get(name))
    hint = (f"docs/models/images/ of {name} show other weights than the "
            "shipped ones: run `python docs/model_pages.py --images`")
    assert record["params_sha256"] == card["weights"]["params_sha256"], hint
    assert record["weights_sha256"] == pretrained.sha256(
        pretrained.path(name)), hint
    assert record["examples"] > 0 and 0 < record["accuracy"] <= 1


def test_check_mode_reports_stale_missing_and_extra_pages(gen, pages,
                                                          tmp_path, capsys,
                                                          monkeypatch):
  monkeypatch.setattr(gen, "render_all", lambda: pages)  # rendered once
  out = tmp_path / "models"
  assert gen.main(["--out", str(out)]) == 0
  shutil.copytree(PAGES_DIR / "images", out / "images")
  capsys.readouterr()
  assert gen.main(["--check", "--out", str(out)]) == 0
  assert capsys.readouterr().out == ""
  name = zoo.list_models()[0]
  page = out / f"{name}.md"
  page.write_text(page.read_text() + "\nan edit by hand\n")
  (out / "index.md").unlink()
  (out / "not_a_model.md").write_text("# not_a_model\n")
  before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
  assert gen.main(["--check", "--out", str(out)]) == 1
  report = capsys.readouterr().out
  assert f"stale: {name}.md" in report
  assert "missing: index.md" in report
  assert "extra: not_a_model.md" in report
  assert "python docs/model_pages.py" in report
  after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
  assert after == before, "--check must write nothing"


def test_check_mode_reports_pictures_of_other_weights(gen, pages, tmp_path,
                                                      capsys, monkeypatch):
  monkeypatch.setattr(gen, "render_all", lambda: pages)
  out = tmp_path / "models"
  gen.write(out, pages)
  shutil.copytree(PAGES_DIR / "images", out / "images")
  name = next(n for n in zoo.list_models() if shipped_card(zoo.get(n)))
  record = out / "images" / f"{name}.json"
  data = json.loads(record.read_text())
  record.write_text(json.dumps({**data, "params_sha256": "0" * 64}))
  assert gen.main(["--check", "--out", str(out)]) == 1
  report = capsys.readouterr().out
  assert f"stale images: images/{name}.json" in report
  assert "--images" in report


def test_config_blocks_read_back_as_the_config(gen):
  import tomllib
  for name in zoo.list_models():
    config = zoo.get(name).config
    assert tomllib.loads(gen.to_toml(config)) == json.loads(
        json.dumps(config))
