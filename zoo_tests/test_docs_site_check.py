"""docs/check_site.py on tiny hand-made sites: a good one passes, and each
kind of breakage (image, missing page, missing #fragment, console error,
uncaught error, a request to another host, a 404) fails it with a line that
names the page and the problem. Runs Debian's Chromium through Playwright;
skipped where either is missing."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

pytest.importorskip("playwright")
CHROMIUM = os.environ.get("ZOO_CHROMIUM") or shutil.which("chromium")
if not CHROMIUM:
  pytest.skip("no chromium (apt-get install chromium)", allow_module_level=True)

CHECK = Path(__file__).resolve().parents[1] / "docs" / "check_site.py"


def png(width: int = 2, height: int = 1) -> bytes:
  """A valid RGB PNG, written by hand (no imaging library needed)."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))
  rows = b"".join(b"\x00" + b"\x80\x20\x20" * width for _ in range(height))
  return (b"\x89PNG\r\n\x1a\n"
          + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def page(body: str) -> str:
  return f"<!doctype html><html><head><title>t</title></head><body>{body}</body></html>"


GOOD = {
    "index.html": page('<img src="_images/dot.png" alt="dot">'
                       '<a href="guide/">guide</a> <a href="guide/intro.html#usage">usage</a>'
                       '<a href="#top" id="top">top</a> <a href="genindex.html">index</a>'
                       '<a href="https://example.com/">external</a> <a href="mailto:a@b.c">mail</a>'),
    "guide/index.html": page('<a href="../index.html">up</a> <a href="intro.html">intro</a>'),
    "guide/intro.html": page('<h2 id="usage">Usage</h2><a name="old-anchor"></a>'
                             '<a href="../guide/intro.html#old-anchor">old</a>'
                             '<script src="../_static/ok.js"></script>'),
    "genindex.html": page("<h1>Index</h1>"),
    "_static/ok.js": "document.title = 'ok';",
    "_static/not_a_page.html": page('<a href="nowhere.html">never opened</a>'),
}
BROKEN = {
    "good.html": page('<h2 id="here">Here</h2><a href="#here">here</a>'),
    "corrupt_image.html": page('<img src="corrupt.png">'),
    "missing_image.html": page('<img src="gone.png">'),
    "missing_page.html": page('<a href="nowhere.html">nowhere</a>'),
    "missing_fragment.html": page('<a href="good.html#not-there">not there</a>'),
    "console_error.html": page("<script>console.error('boom from the page')</script>"),
    "thrown_error.html": page("<script>throw new Error('kaboom')</script>"),
    "external_request.html": page('<script src="https://cdn.example.com/lib.js"></script>'),
    "missing_css.html": page('<link rel="stylesheet" href="_static/missing.css">'),
}


def write_site(root: Path, files: dict[str, str]) -> Path:
  for name, text in files.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)
  (root / "_images").mkdir(exist_ok=True)
  (root / "_images" / "dot.png").write_bytes(png())
  (root / "corrupt.png").write_bytes(b"this is not a png")
  return root


def run_check(*args, env=None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(CHECK), *map(str, args)],
                        capture_output=True, text=True, timeout=300,
                        env=env)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
  root = write_site(tmp_path_factory.mktemp("good"), GOOD)
  shots = root.parent / "shots"
  return run_check(root, "--screenshots", shots, "--shoot", "guide/intro.html"), shots


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
  return run_check(write_site(tmp_path_factory.mktemp("broken"), BROKEN))


def test_good_site_passes_with_every_page_opened(good):
  result, _ = good
  assert result.returncode == 0, result.stdout + result.stderr
  lines = result.stdout.splitlines()
  assert lines[:4] == ["ok  genindex.html (0 images, 0 links)",
                       "ok  guide/index.html (0 images, 2 links)",
                       "ok  guide/intro.html (0 images, 1 links)",
                       "ok  index.html (1 images, 4 links)"]
  # _static's pages are assets, not site pages: never opened.
  assert lines[4] == ("site: 4 pages, 1 images, 7 internal links checked, "
                      "1 external links not fetched, 0 failures")


def test_screenshot_is_a_full_page_png_1280_wide(good):
  result, shots = good
  assert result.returncode == 0, result.stdout + result.stderr
  data = (shots / "guide" / "intro.png").read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  assert struct.unpack(">I", data[16:20])[0] == 1280
  assert [p.name for p in shots.rglob("*.png")] == ["intro.png"]


@pytest.mark.parametrize("page_name, problem", [
    ("corrupt_image.html", "broken image corrupt.png"),
    ("missing_image.html", "broken image gone.png"),
    ("missing_image.html", "HTTP 404: /gone.png"),
    ("missing_page.html", "broken link nowhere.html (no such file)"),
    ("missing_fragment.html",
     "broken link good.html#not-there (no id 'not-there' on good.html)"),
    ("console_error.html", "console error: boom from the page"),
    ("thrown_error.html", "uncaught error: kaboom"),
    ("external_request.html", "request to another host blocked"),
    ("external_request.html", "https://cdn.example.com/lib.js"),
    ("missing_css.html", "HTTP 404: /_static/missing.css"),
])
def test_each_breakage_fails_naming_the_page_and_problem(broken, page_name, problem):
  assert broken.returncode == 1, broken.stdout + broken.stderr
  lines = [l for l in broken.stdout.splitlines()
           if l.startswith(f"FAIL {page_name}: ")]
  assert any(problem in l for l in lines), broken.stdout


def test_broken_site_reports_once_per_problem_and_passes_the_good_page(broken):
  out = broken.stdout.splitlines()
  assert "ok  good.html (0 images, 1 links)" in out
  # The blocked or missing request is one line, not also Chromium's
  # "Failed to load resource" console line.
  assert not [l for l in out if "Failed to load resource" in l], broken.stdout
  assert out[-1].startswith("site: 9 pages, 2 images, 3 internal links checked")
  assert out[-1].endswith(f" {sum(l.startswith('FAIL ') for l in out)} failures")


def test_no_chromium_is_one_clear_line_and_exit_2(tmp_path):
  write_site(tmp_path, {"index.html": page("x")})
  env = dict(os.environ, ZOO_CHROMIUM=str(tmp_path / "no-such-chromium"))
  result = run_check(tmp_path, env=env)
  assert result.returncode == 2
  assert result.stdout == ""
  assert result.stderr.strip().splitlines() == [
      f"check_site: error: ZOO_CHROMIUM={tmp_path / 'no-such-chromium'} is "
      "not an executable file: point it at Chromium, or apt-get install chromium"]
  env = dict(os.environ, PATH=str(tmp_path))
  env.pop("ZOO_CHROMIUM", None)
  result = run_check(tmp_path, env=env)
  assert result.returncode == 2
  assert "apt-get install chromium" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
