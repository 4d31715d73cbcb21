"""Open every page of a built site in headless Chromium and check it works.

On every `.html` page under HTML_DIR (Sphinx's `_static` and `_sources` aside;
viewcode's `_modules`, the index and the search page included) it checks that
every image decoded, every internal link reaches a file of the site (and its
#fragment an id on that page), the console shows no error, and no request
failed. The site is served on 127.0.0.1 and requests to any other host are
blocked and reported: the site must work offline. External links are counted,
never fetched.

    python docs/check_site.py docs/_build/html
    python docs/check_site.py docs/_build/html --screenshots docs/_build/screenshots \\
        --shoot models/cnn_fashion_mnist.html api.html

Chromium is Debian's (`apt-get install chromium`), found on PATH or at
$ZOO_CHROMIUM, and driven through Playwright; no browser is downloaded.
Exit status: 0 all pages good, 1 something failed, 2 could not run.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import html.parser
import http.server
import os
import shutil
import sys
import threading
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

SKIP_DIRS = {"_static", "_sources"}   # Sphinx's assets and page sources
VIEWPORT = {"width": 1280, "height": 800}
LOAD_TIMEOUT_MS = 30_000
SETTLE_TIMEOUT_MS = 5_000

# In the page: every <img> loaded (lazy ones made eager first) and decoded;
# the ones that did not, by their address.
BROKEN_IMAGES_JS = """async () => {
  const imgs = Array.from(document.images);
  for (const img of imgs) if (img.loading === "lazy") img.loading = "eager";
  await Promise.all(imgs.map(img => img.decode().catch(() => {})));
  return {count: imgs.length,
          broken: imgs.filter(img => !(img.complete && img.naturalWidth > 0))
                      .map(img => img.getAttribute("src") || img.currentSrc || "(no src)")};
}"""
# In the page: every <a href>, as written and as the browser resolved it.
LINKS_JS = """() => Array.from(document.querySelectorAll("a[href]"),
    a => [a.getAttribute("href"), a.href])"""


class UsageError(Exception):
  """The check could not run at all (no browser, no site): exit 2."""


@dataclasses.dataclass
class PageResult:
  """What one page showed: its counts and its problems, one line each."""
  page: str
  images: int = 0
  internal: int = 0
  external: int = 0
  problems: list[str] = dataclasses.field(default_factory=list)
  opened: bool = True    # False: a --shoot name that is no page of the site

  def fail(self, reason: str) -> None:
    if reason not in self.problems:    # the same broken link twice: one line
      self.problems.append(reason)

  def lines(self) -> list[str]:
    if not self.problems:
      return [f"ok  {self.page} ({self.images} images, {self.internal} links)"]
    return [f"FAIL {self.page}: {p}" for p in self.problems]


class _Anchors(html.parser.HTMLParser):
  """The fragment targets of a page: every element id, and <a name>."""

  def __init__(self):
    super().__init__()
    self.names: set[str] = set()

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if attrs.get("id"):
      self.names.add(attrs["id"])
    if tag == "a" and attrs.get("name"):
      self.names.add(attrs["name"])


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
  """The ids (and <a name>s) written in the HTML file at path."""
  parser = _Anchors()
  parser.feed(path.read_text(encoding="utf-8", errors="replace"))
  return frozenset(parser.names)


def find_chromium() -> str:
  """Debian's Chromium: $ZOO_CHROMIUM if set, else `chromium` on PATH."""
  chosen = os.environ.get("ZOO_CHROMIUM")
  if chosen:
    if not (os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
      raise UsageError(f"ZOO_CHROMIUM={chosen} is not an executable file: "
                       "point it at Chromium, or apt-get install chromium")
    return chosen
  found = shutil.which("chromium")
  if not found:
    raise UsageError("no Chromium found (chromium on PATH, or $ZOO_CHROMIUM): "
                     "apt-get install chromium")
  return found


def site_pages(root: Path) -> list[str]:
  """Every .html page under root, relative and sorted, assets aside."""
  pages = []
  for path in root.rglob("*.html"):
    parts = path.relative_to(root).parts
    if parts[0] in SKIP_DIRS or any(p.startswith(".") for p in parts):
      continue
    pages.append(path.relative_to(root).as_posix())
  return sorted(pages)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  """Serves the site without a log line per request."""

  def log_message(self, format, *args):
    pass


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
  """The site over http on 127.0.0.1, a free port, in a thread; (server, base URL)."""
  handler = functools.partial(_QuietHandler, directory=str(root))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  server.daemon_threads = True
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server, f"http://127.0.0.1:{server.server_address[1]}"


def same_origin(url: str, base: str) -> bool:
  """Whether url is on the local server (base has no trailing slash)."""
  return url == base or url.startswith(base + "/")


def site_file(root: Path, url: str) -> Path:
  """The file of the site that url (on the local server) names."""
  path = root / unquote(urlsplit(url).path).lstrip("/")
  if urlsplit(url).path.endswith("/") or path.is_dir():
    path = path / "index.html"
  return path


def link_problem(root: Path, url: str) -> str | None:
  """Why an internal link does not resolve (None when it does)."""
  target = site_file(root, url)
  if not target.resolve().is_relative_to(root) or not target.is_file():
    return "no such file"
  fragment = urlsplit(url).fragment
  if fragment and target.suffix == ".html":
    names = anchors(target)
    if fragment not in names and unquote(fragment) not in names:
      return f"no id {unquote(fragment)!r} on {target.relative_to(root).as_posix()}"
  return None


def check_links(page, result: PageResult, root: Path, base: str) -> None:
  """Internal links must resolve; external http(s) ones are only counted."""
  for written, resolved in page.evaluate(LINKS_JS):
    scheme = urlsplit(resolved).scheme
    if same_origin(resolved, base):
      result.internal += 1
      why = link_problem(root, resolved)
      if why:
        result.fail(f"broken link {written} ({why})")
    elif scheme in ("http", "https"):
      result.external += 1
    # mailto:, tel:, javascript: and the like: nothing to check offline.


def check_images(page, result: PageResult) -> None:
  """Every <img> on the page loaded and decoded."""
  images = page.evaluate(BROKEN_IMAGES_JS)
  result.images = images["count"]
  for src in images["broken"]:
    result.fail(f"broken image {src} (did not load or decode)")


def watch(page, result: PageResult, base: str) -> None:
  """Report console errors, uncaught exceptions, failed and blocked requests.

  A request that failed is reported once, as a request; Chromium's own
  console line for it ("Failed to load resource") is not repeated."""
  reported: set[str] = set()

  def block_foreign(route):
    url = route.request.url
    if same_origin(url, base) or urlsplit(url).scheme in ("data", "blob"):
      route.continue_()
      return
    reported.add(url)
    result.fail(f"request to another host blocked (the site must work "
                f"offline): {url}")
    route.abort("blockedbyclient")

  def on_failed(request):
    if request.url not in reported:
      reported.add(request.url)
      result.fail(f"request failed: {request.url} ({request.failure})")

  def on_response(response):
    if same_origin(response.url, base) and response.status >= 400:
      reported.add(response.url)
      result.fail(f"HTTP {response.status}: {response.url[len(base):]}")

  def on_console(message):
    if message.type != "error":
      return
    where = message.location.get("url", "")
    if message.text.startswith("Failed to load resource") and where in reported:
      return
    line = message.location.get("lineNumber", -1) + 1   # Playwright's is 0-based
    at = f" (at {where[len(base):] if same_origin(where, base) else where}" \
         f":{line})" if where else ""
    result.fail(f"console error: {message.text}{at}")

  page.route("**/*", block_foreign)
  page.on("requestfailed", on_failed)
  page.on("response", on_response)
  page.on("console", on_console)
  page.on("pageerror", lambda error: result.fail(f"uncaught error: {error}"))


def check_page(browser, root: Path, base: str, name: str,
               shot: Path | None = None) -> PageResult:
  """Load one page as a first-time visitor (a fresh context: no storage left
  by other pages), check it, and screenshot it if asked."""
  from playwright.sync_api import TimeoutError as PlaywrightTimeout
  result = PageResult(name)
  context = browser.new_context(viewport=VIEWPORT, service_workers="block")
  page = context.new_page()
  watch(page, result, base)
  try:
    page.goto(f"{base}/{quote(name)}", wait_until="load",
              timeout=LOAD_TIMEOUT_MS)
    try:   # requests made after `load` (search index, lazy assets)
      page.wait_for_load_state("networkidle", timeout=SETTLE_TIMEOUT_MS)
    except PlaywrightTimeout:
      pass
    check_images(page, result)
    check_links(page, result, root, base)
    if shot is not None:
      shot.parent.mkdir(parents=True, exist_ok=True)
      page.evaluate("document.fonts.ready.then(() => true)")
      page.screenshot(path=str(shot), full_page=True)
  except PlaywrightTimeout:
    result.fail(f"did not load within {LOAD_TIMEOUT_MS // 1000} s")
  finally:
    context.close()
  return result


def shot_path(shots: Path | None, shoot: set[str], name: str) -> Path | None:
  """Where the screenshot of page name goes, when it is one to take."""
  if shots is None or name not in shoot:
    return None
  return shots / (name[:-len(".html")] + ".png")


def check_site(root: Path, shots: Path | None = None,
               shoot: tuple[str, ...] = ()) -> list[PageResult]:
  """Check every page of the site at root, printing each page's lines."""
  root = root.resolve()
  pages = site_pages(root)
  if not pages:
    raise UsageError(f"no .html pages under {root}: build the site first")
  executable = find_chromium()
  try:
    from playwright.sync_api import sync_playwright
  except ImportError:
    raise UsageError("Playwright is not installed: pip install -e '.[docs]'")
  results = [PageResult(name, problems=["--shoot: no such page in the site"],
                        opened=False)
             for name in shoot if name not in pages]
  for r in results:
    print(*r.lines(), sep="\n", flush=True)
  server, base = serve(root)
  try:
    with sync_playwright() as p:
      browser = p.chromium.launch(executable_path=executable)
      for name in pages:
        result = check_page(browser, root, base, name,
                            shot_path(shots, set(shoot), name))
        print(*result.lines(), sep="\n", flush=True)
        results.append(result)
      browser.close()
  finally:
    server.shutdown()
    server.server_close()
  return results


def summary(results: list[PageResult]) -> str:
  """The last line: what was checked and how much failed."""
  pages = [r for r in results if r.opened]
  failures = sum(len(r.problems) for r in results)
  return (f"site: {len(pages)} pages, {sum(r.images for r in results)} images, "
          f"{sum(r.internal for r in results)} internal links checked, "
          f"{sum(r.external for r in results)} external links not fetched, "
          f"{failures} failures")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("html_dir", type=Path, help="the built site, e.g. docs/_build/html")
  p.add_argument("--screenshots", type=Path, metavar="DIR",
                 help="save full-page PNGs (1280 px wide) of the --shoot pages here")
  p.add_argument("--shoot", nargs="+", default=[], metavar="PAGE",
                 help="pages to screenshot, relative to HTML_DIR, e.g. api.html")
  args = p.parse_args(argv)
  if bool(args.screenshots) != bool(args.shoot):
    p.error("--screenshots DIR and --shoot PAGE ... go together")
  try:
    results = check_site(args.html_dir, args.screenshots,
                         tuple(args.shoot))
  except UsageError as e:
    print(f"check_site: error: {e}", file=sys.stderr)
    return 2
  print(summary(results))
  return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
  sys.exit(main())
