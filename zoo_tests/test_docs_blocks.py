"""Every Python and shell block of the README and the docs runs as written.

Each block runs in a fresh process, as a new user pasting it would run it:
the blocks of one page in order, in one empty temporary directory (so a block
may use files an earlier block of the page wrote, never its variables), on
the offline Fashion-MNIST, with one CPU device. A block that cannot run here
is preceded by `<!-- docs-test: skip: REASON -->`, and the reason is required.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md"] + [
    p for p in (REPO / "docs").rglob("*.md") if "_build" not in p.parts])
RUNNERS = {"python": [sys.executable, "-"], "bash": ["bash", "-euo", "pipefail", "-s"]}
ALIASES = {"py": "python", "python3": "python", "sh": "bash", "shell": "bash"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
SKIP = re.compile(r"<!--\s*docs-test:\s*skip:\s*(?P<why>\S.*?)\s*-->")
# Paths of the checkout that the docs' commands name (bench/..., scripts/...).
LINKED = ("bench", "scripts")


@dataclasses.dataclass(frozen=True)
class Block:
  page: Path
  line: int        # 1-based line of the opening fence
  language: str    # "python" or "bash"
  code: str
  skip: str | None  # the stated reason, when the page says not to run it

  def where(self) -> str:
    return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
  """The fenced Python and shell blocks of a Markdown page, in order (MyST
  directives such as ```{toctree} and other languages are not code to run)."""
  lines = page.read_text().splitlines()
  found, i = [], 0
  while i < len(lines):
    m = FENCE.match(lines[i])
    if not m:
      i += 1
      continue
    fence, info = m["fence"], m["info"].strip()
    start, body = i, []
    i += 1
    while i < len(lines) and not lines[i].strip().startswith(fence):
      body.append(lines[i])
      i += 1
    i += 1
    words = info.split()
    language = ALIASES.get(words[0], words[0]) if words else ""
    if language not in RUNNERS:
      continue
    before = next((l for l in reversed(lines[:start]) if l.strip()), "")
    skip = SKIP.search(before)
    found.append(Block(page, start + 1, language,
                       textwrap.dedent("\n".join(body)) + "\n",
                       skip["why"] if skip else None))
  return found


def environment() -> dict[str, str]:
  """A new user's environment: this Python's `zoo` command first on PATH and
  the checkout's zoo importable, one CPU device (no test-suite XLA flags)."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "PYTEST_XDIST_WORKER", "PYTHONPATH")}
  env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent),
                                 env.get("PATH", "")])
  env["PYTHONPATH"] = str(REPO)
  env["JAX_PLATFORMS"] = "cpu"
  env["MPLBACKEND"] = "Agg"
  return env


def test_every_page_has_blocks_and_every_skip_says_why():
  """The extraction finds the README's blocks, and a skip marker without a
  reason is not a skip marker (the block runs)."""
  readme = blocks(REPO / "README.md")
  assert sum(b.language == "python" for b in readme) >= 1
  assert sum(b.language == "bash" for b in readme) >= 1
  for page in PAGES:
    for block in blocks(page):
      if block.skip is not None:
        assert len(block.skip) >= 10, f"{block.where()}: say why it is skipped"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_block_runs_as_written(page, tmp_path):
  page_blocks = blocks(page)
  if not page_blocks:
    pytest.skip(f"{page.name} has no Python or shell blocks")
  for name in LINKED:
    (tmp_path / name).symlink_to(REPO / name)
  env, ran = environment(), 0
  for block in page_blocks:
    if block.skip is not None:
      continue
    proc = subprocess.run(RUNNERS[block.language], input=block.code,
                          cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, (
        f"{block.where()} ({block.language}) exited {proc.returncode}:\n"
        f"{block.code}\n--- stdout\n{proc.stdout[-3000:]}\n"
        f"--- stderr\n{proc.stderr[-3000:]}")
    ran += 1
  if not ran:
    pytest.skip(f"every block of {page.name} is marked skip")
