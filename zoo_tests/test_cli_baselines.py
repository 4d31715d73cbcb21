"""`zoo baselines`: README and curves are written only where named."""
import shutil
from pathlib import Path

from zoo import cli
from zoo.training import baselines

REPO = Path(__file__).resolve().parents[1]


def test_table_is_rewritten_only_in_the_named_readme(tmp_path, capsys):
  readme = tmp_path / "README.md"
  readme.write_text(f"intro\n{baselines.TABLE_BEGIN}\nstale\n"
                    f"{baselines.TABLE_END}\noutro\n")
  curves = tmp_path / "docs" / "baselines"
  curves.mkdir(parents=True)
  shutil.copy(REPO / "docs" / "baselines" / "cnn_fashion_mnist.png", curves)
  assert cli.main(["baselines", "cnn_fashion_mnist", "--table", "--readme",
                   str(readme), "--curves-dir", str(curves)]) == 0
  text = readme.read_text()
  assert text.startswith("intro\n") and text.endswith("outro\n")
  assert "stale" not in text
  # Speed is the bench's to report (it depends on the machine's load).
  assert "images/s" not in text
  row = next(l for l in text.splitlines() if l.startswith(
      "| `cnn_fashion_mnist` |"))
  assert "[png](docs/baselines/cnn_fashion_mnist.png)" in row
  # A model without a curve there gets no link.
  assert "[png]" not in next(l for l in text.splitlines() if l.startswith(
      "| `mlp_fashion_mnist` |"))
  # Unmeasured models (MNIST is not reachable here) have no row: their
  # docs pages say so.
  assert "`cnn_mnist`" not in text


def test_table_links_each_model_to_its_docs_page(tmp_path):
  page = tmp_path / "docs" / "models" / "cnn_fashion_mnist.md"
  page.parent.mkdir(parents=True)
  page.write_text("# cnn_fashion_mnist\n")
  readme = tmp_path / "README.md"
  readme.write_text(f"{baselines.TABLE_BEGIN}\n{baselines.TABLE_END}\n")
  assert cli.main(["baselines", "*fashion*", "--table", "--readme",
                   str(readme)]) == 0
  lines = readme.read_text().splitlines()
  assert any(l.startswith("| [`cnn_fashion_mnist`](docs/models/"
                          "cnn_fashion_mnist.md) |") for l in lines)
  assert any(l.startswith("| `mlp_fashion_mnist` |") for l in lines)


def test_table_needs_a_named_readme_with_markers(tmp_path, capsys):
  assert cli.main(["baselines", "--table"]) == 2
  assert "--readme" in capsys.readouterr().err
  plain = tmp_path / "README.md"
  plain.write_text("no markers here\n")
  assert cli.main(["baselines", "--table", "--readme", str(plain)]) == 2
  err = capsys.readouterr().err
  assert "no baseline table markers" in err and err.count("\n") == 1
  assert plain.read_text() == "no markers here\n"


def test_the_readme_table_is_the_generated_one():
  """The README's table is what `zoo baselines --table` writes from
  zoo/baselines.json now (re-run it after measuring)."""
  import json
  from zoo import registry
  text = (REPO / "README.md").read_text()
  shown = text.split(baselines.TABLE_BEGIN, 1)[1].split(
      baselines.TABLE_END, 1)[0].strip()
  want = baselines.table(json.loads(registry.BASELINES_FILE.read_text()),
                         registry.list_models(), REPO / "docs" / "baselines",
                         REPO)
  assert shown == want, ("README.md's baseline table is stale: run `zoo "
                         "baselines --table --readme README.md --curves-dir "
                         "docs/baselines`")
