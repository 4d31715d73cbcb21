"""A local stand-in for the Hugging Face Hub's file downloads, for tests.

CI has no internet. This serves model repos from memory on 127.0.0.1 (a
free port), answering what the real `huggingface_hub.hf_hub_download`
(2.4.0, httpx2) asks of the Hub, with the Hub's own headers, so the client
and its cache run unchanged:

  HEAD/GET {endpoint}/{repo_id}/resolve/{revision}/{filename}
    revision: a branch (or tag) given to add_repo, or a 40-hex commit sha,
    URL-quoted as the client sends it (safe=""; "refs%2Fpr%2F1").
    200 with X-Repo-Commit, ETag, Content-Length, Content-Type,
    Accept-Ranges, Content-Disposition. A text ("git") file's ETag is its
    git blob sha1, sha1(b"blob <size>\\0" + data); an "LFS" file
    (*.safetensors, *.bin, *.npz, ... see LFS_SUFFIXES, or over 10 MB) also
    has X-Linked-Etag (its sha256) and X-Linked-Size, which the client
    prefers, so its blob is named by its sha256.
    An LFS file is answered, as on the Hub, by a 302 to a "CDN": another
    origin (http://localhost:PORT/cdn-lfs/..., same server), so the client
    stops at the redirect, takes the metadata from it and GETs the CDN
    URL (StandIn(cdn=False) serves LFS bytes from /resolve directly).
    404s carry the Hub's X-Error-Code / X-Error-Message headers and a JSON
    {"error": ...} body: RepoNotFound -> RepositoryNotFoundError,
    RevisionNotFound -> RevisionNotFoundError, EntryNotFound (with
    X-Repo-Commit, which the client uses to cache the miss under .no_exist)
    -> RemoteEntryNotFoundError.
    GET honours Range ("bytes=N-", "bytes=N-M": 206 + Content-Range; 416
    past the end): the client sends one when it resumes a download cut off
    mid-body, within the same hf_hub_download call.
  Anything else (/api/..., other methods): a plain 404 / 501.

Fault switches: tamper() serves other bytes for a file while still
advertising the original's ETag/sha256 and size; cut() drops the
connection part-way through a body (the client resumes with Range); count()
and log tell which requests came in (a cache hit makes none); stop() ends
the server (a stopped stand-in refuses connections).

Pointing huggingface_hub at it. huggingface_hub reads its settings from the
environment ONCE, when `huggingface_hub.constants` is first imported
(ENDPOINT and the /resolve URL template, HF_HUB_CACHE, HF_HUB_OFFLINE,
HF_HUB_DISABLE_XET, HF_HUB_DISABLE_IMPLICIT_TOKEN, the token path, ...);
setting os.environ later changes nothing (test_hub_standin checks this). A
pytest process may well have imported it already, so there are two ways:

  * In the test process: `standin.configure(monkeypatch, home)` (the `hub`
    fixture below does it). It monkeypatches those attributes of
    `huggingface_hub.constants` (every reader in file_download / utils._http
    looks them up there at call time), sets the same environment variables
    (for code that reads os.environ, and for subprocesses), drops any
    inherited token / staging / offline variables, and closes the client's
    shared httpx2 session (so a new one picks up NO_PROXY and holds no
    connection to an earlier stand-in). Call it again with offline=True to
    go offline. Plain `hf_hub_download(repo_id, filename)`, without
    endpoint= or cache_dir=, then goes to the stand-in and caches under
    home/hub.
  * In a subprocess: `env=standin.subprocess_env(home, offline=...)`, the
    environment with HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_XET_CACHE,
    HF_HUB_OFFLINE (0/1), HF_HUB_DISABLE_XET=1, HF_HUB_DISABLE_TELEMETRY=1,
    HF_HUB_DISABLE_IMPLICIT_TOKEN=1, HF_HUB_DISABLE_PROGRESS_BARS=1,
    HF_HUB_DISABLE_UPDATE_CHECK=1, NO_PROXY=127.0.0.1,localhost, and
    without HF_TOKEN, HUGGING_FACE_HUB_TOKEN, HF_TOKEN_PATH,
    HF_OIDC_RESOURCE, HUGGINGFACE_CO_STAGING (which would override
    HF_ENDPOINT), HUGGINGFACE_HUB_CACHE, TRANSFORMERS_OFFLINE. A fresh
    interpreter reads them at import; this is the route for zoo's CLI.

Xet: the stand-in never sends X-Xet-Hash, so the client never takes its
xet path even with hf_xet installed; HF_HUB_DISABLE_XET=1 is set anyway.

    with serve() as hub:               # or the `hub` pytest fixture
      commit = hub.add_repo("zoo/tiny", {"config.json": b"{}",
                                         "model.safetensors": weights})
      hub.configure(monkeypatch, tmp_path / "hf")
      path = huggingface_hub.hf_hub_download("zoo/tiny", "config.json")
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import http.server
import json
import os
import re
import socket
import sys
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote

import pytest

# Suffixes the Hub's default .gitattributes stores in LFS (the ones a model
# folder has), and the size over which the Hub takes only LFS files.
LFS_SUFFIXES = (".safetensors", ".bin", ".npz", ".npy", ".msgpack", ".h5",
                ".pt", ".pth", ".ckpt", ".onnx", ".tflite", ".pkl", ".pickle",
                ".gz", ".zip", ".tar", ".zst", ".arrow", ".parquet", ".model")
LFS_MIN_SIZE = 10 * 1024 * 1024

# Environment variables a subprocess must not inherit: a token (sent to the
# stand-in), another endpoint, cache or offline setting.
UNSET_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
              "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING",
              "HUGGINGFACE_HUB_CACHE", "HUGGINGFACE_ASSETS_CACHE",
              "HF_ASSETS_CACHE", "TRANSFORMERS_OFFLINE",
              "HF_HUB_ENABLE_HF_TRANSFER")

_COMMIT = re.compile(r"[0-9a-f]{40}")


def git_blob_sha1(data: bytes) -> str:
  """The git object id of a blob: the Hub's ETag of a non-LFS file."""
  return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def is_lfs(filename: str, size: int) -> bool:
  return filename.lower().endswith(LFS_SUFFIXES) or size > LFS_MIN_SIZE


class _File:
  """One file at one commit, with the metadata the Hub advertises."""

  def __init__(self, name: str, data: bytes, lfs: bool | None = None):
    self.name, self.data = name, bytes(data)
    self.lfs = is_lfs(name, len(data)) if lfs is None else lfs
    self.sha256 = sha256(self.data)
    self.etag = self.sha256 if self.lfs else git_blob_sha1(self.data)


class _Repo:

  def __init__(self):
    self.branches: dict[str, str] = {}  # branch or tag -> commit
    self.commits: dict[str, dict[str, _File]] = {}

  def resolve(self, revision: str) -> str | None:
    if revision in self.branches:
      return self.branches[revision]
    return revision if revision in self.commits else None


class StandIn:
  """A running stand-in: `endpoint`, add_repo(), faults, configure(), stop()."""

  def __init__(self, cdn: bool = True, cdn_host: str = "localhost"):
    self.cdn, self.cdn_host = cdn, cdn_host
    self._lock = threading.Lock()
    self._repos: dict[str, _Repo] = {}
    self._tampered: dict[tuple[str, str], bytes] = {}  # (repo, sha256)
    self._cuts: dict[tuple[str, str], list[int]] = {}  # -> [after, times]
    self.log: list[tuple[str, str]] = []  # (method, path), in order
    self._connections: set[socket.socket] = set()
    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                   _handler(self))
    self._server.daemon_threads = True
    self.port = self._server.server_address[1]
    self.endpoint = f"http://127.0.0.1:{self.port}"
    self.cdn_endpoint = f"http://{cdn_host}:{self.port}"
    self._thread = threading.Thread(target=self._server.serve_forever,
                                    kwargs={"poll_interval": 0.05},
                                    name="hub-standin", daemon=True)
    self._thread.start()
    self.stopped = False
    self.home: Path | None = None

  # ---- content ----------------------------------------------------------

  def add_repo(self, repo_id: str, files: dict[str, bytes],
               revision: str = "main",
               lfs: set[str] | frozenset[str] | None = None) -> str:
    """Puts `files` at `revision` (a branch or tag, moved if it exists) of
    model repo `repo_id` and returns the commit sha: sha1 of the repo id and
    the files, so the same content gives the same commit. Earlier commits
    stay reachable by their sha. `lfs` forces those names to be LFS files
    (others: by LFS_SUFFIXES / size)."""
    entries = {name: _File(name, data, True if lfs and name in lfs else None)
               for name, data in files.items()}
    digest = hashlib.sha1(repo_id.encode())
    for name in sorted(entries):
      digest.update(b"\0%s\0%s" % (name.encode(), entries[name].sha256.encode()))
    commit = digest.hexdigest()
    with self._lock:
      repo = self._repos.setdefault(repo_id, _Repo())
      repo.commits[commit] = entries
      repo.branches[revision] = commit
    return commit

  def file(self, repo_id: str, filename: str, revision: str = "main") -> _File:
    """The entry the stand-in serves (its .data, .sha256, .etag, .lfs)."""
    with self._lock:
      repo = self._repos[repo_id]
      return repo.commits[repo.resolve(revision)][filename]

  # ---- faults -----------------------------------------------------------

  def tamper(self, repo_id: str, filename: str, data: bytes | None = None,
             revision: str = "main") -> bytes:
    """From now on, GETs of that file (its content, in this repo, at any
    revision; through /resolve or the CDN) return `data` (default: the
    original with its first byte flipped, so the same size) while HEADs and
    GETs still advertise the original's ETag, sha256 and size. Returns the
    bytes served."""
    f = self.file(repo_id, filename, revision)
    if data is None:
      data = bytes([f.data[0] ^ 0xFF]) + f.data[1:] if f.data else b"\0"
    with self._lock:
      self._tampered[(repo_id, f.sha256)] = bytes(data)
    return bytes(data)

  def cut(self, repo_id: str, filename: str, after: int, times: int = 1,
          revision: str = "main") -> None:
    """The next `times` GETs of that file's bytes send the headers (full
    Content-Length) and `after` bytes of the body, then drop the connection."""
    f = self.file(repo_id, filename, revision)
    with self._lock:
      self._cuts[(repo_id, f.sha256)] = [after, times]

  def count(self, method: str | None = None, path: str | None = None) -> int:
    """Requests so far, of `method` if given, whose path (unquoted, without
    the query) contains `path` if given."""
    with self._lock:
      return sum(1 for m, p in self.log
                 if (method is None or m == method)
                 and (path is None or path in p))

  # ---- pointing huggingface_hub at it -----------------------------------

  def env(self, home: str | os.PathLike, offline: bool = False
          ) -> dict[str, str]:
    """The variables that send huggingface_hub (read at its import) here,
    with its cache etc. under `home` (HF_HOME; the cache is home/hub)."""
    home = Path(home)
    no_proxy = ",".join(filter(None, [
        "127.0.0.1", "localhost", self.cdn_host,
        os.environ.get("NO_PROXY") or os.environ.get("no_proxy")]))
    return {"HF_ENDPOINT": self.endpoint,
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"),
            "HF_XET_CACHE": str(home / "xet"),
            "HF_HUB_OFFLINE": "1" if offline else "0",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "NO_PROXY": no_proxy, "no_proxy": no_proxy}

  def subprocess_env(self, home: str | os.PathLike, offline: bool = False,
                     base: dict[str, str] | None = None) -> dict[str, str]:
    """A whole environment for a subprocess: `base` (os.environ) without
    UNSET_VARS, plus env()."""
    environ = {k: v for k, v in (os.environ if base is None else base).items()
               if k not in UNSET_VARS}
    environ.update(self.env(home, offline))
    return environ

  def configure(self, monkeypatch: pytest.MonkeyPatch,
                home: str | os.PathLike, offline: bool = False) -> Path:
    """Points the already-imported huggingface_hub of this process here
    (see the module docstring); undone by monkeypatch. Returns the cache
    directory (home/hub)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    for name in UNSET_VARS:
      monkeypatch.delenv(name, raising=False)
    for name, value in self.env(home, offline).items():
      monkeypatch.setenv(name, value)
    patched = {
        "ENDPOINT": self.endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE":
            self.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": offline,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
    }
    for name, value in patched.items():
      monkeypatch.setattr(constants, name, value)
    # A fresh shared client, made after NO_PROXY is set, with no pooled
    # connection to an earlier stand-in (stop() closes it again).
    _http.close_session()
    self.home = home
    return home / "hub"

  def stop(self) -> None:
    """Ends the server and every open (keep-alive) connection to it."""
    if self.stopped:
      return
    self.stopped = True
    self._server.shutdown()
    self._server.server_close()
    with self._lock:
      connections = list(self._connections)
    for conn in connections:
      with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    self._thread.join(timeout=5)
    # This process's huggingface_hub client keeps connections in a pool.
    http_module = sys.modules.get("huggingface_hub.utils._http")
    if http_module is not None:
      http_module.close_session()

  def __enter__(self) -> "StandIn":
    return self

  def __exit__(self, *exc) -> None:
    self.stop()

  # ---- serving (called by the handler) ----------------------------------

  def _lookup(self, repo_id: str, revision: str, filename: str):
    """(status, error code, message, commit, file) for a /resolve path."""
    with self._lock:
      repo = self._repos.get(repo_id)
      if repo is None:
        return 404, "RepoNotFound", "Repository not found", None, None
      commit = repo.resolve(revision)
      if commit is None:
        return (404, "RevisionNotFound", f"Invalid rev id: {revision}",
                None, None)
      f = repo.commits[commit].get(filename)
      if f is None:
        return 404, "EntryNotFound", "Entry not found", commit, None
      return 200, None, None, commit, f

  def _body(self, repo_id: str, f: _File) -> tuple[bytes, int | None]:
    """The bytes a GET sends (tampered?), and where to cut them (or None)."""
    with self._lock:
      key = (repo_id, f.sha256)
      data = self._tampered.get(key, f.data)
      cut = self._cuts.get(key)
      after = None
      if cut and cut[1] > 0:
        after, cut[1] = cut[0], cut[1] - 1
      return data, after


def _content_type(filename: str) -> str:
  if filename.endswith(".json"):
    return "application/json; charset=utf-8"
  if filename.endswith((".md", ".txt", ".yaml", ".yml", ".py", ".cfg")):
    return "text/plain; charset=utf-8"
  return "application/octet-stream"


def _parse_resolve(path: str) -> tuple[str, str, str] | None:
  """(repo_id, revision, filename) of /{repo_id}/resolve/{rev}/{file}."""
  parts = path.lstrip("/").split("/")
  for i in (1, 2):  # "gpt2/resolve/..." or "org/name/resolve/..."
    if len(parts) > i + 2 and parts[i] == "resolve" and all(parts[:i + 3]):
      return (unquote("/".join(parts[:i])), unquote(parts[i + 1]),
              unquote("/".join(parts[i + 2:])))
  return None


def _handler(standin: StandIn):

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Hub
    server_version = "hub-standin"

    def setup(self):
      super().setup()
      with standin._lock:
        standin._connections.add(self.connection)

    def finish(self):
      with standin._lock:
        standin._connections.discard(self.connection)
      with contextlib.suppress(OSError):
        super().finish()

    def log_message(self, *args):  # quiet; see standin.log
      pass

    def do_HEAD(self):
      self._serve(head=True)

    def do_GET(self):
      self._serve(head=False)

    # ---- responses --------------------------------------------------------

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"",
              head: bool = False, length: int | None = None,
              cut_after: int | None = None):
      self.send_response(status)
      headers = {"Content-Length": str(len(body) if length is None
                                       else length), **headers}
      for k, v in headers.items():
        self.send_header(k, v)
      self.end_headers()
      if head:
        return
      if cut_after is not None and cut_after < len(body):
        self.wfile.write(body[:cut_after])
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
          self.connection.shutdown(socket.SHUT_RDWR)
        return
      self.wfile.write(body)

    def _error(self, head: bool, status: int, code: str | None,
               message: str, commit: str | None = None):
      headers = {"Content-Type": "application/json; charset=utf-8",
                 "X-Error-Message": message}
      if code is not None:
        headers["X-Error-Code"] = code
      if commit is not None:
        headers["X-Repo-Commit"] = commit
      self._send(status, headers, json.dumps({"error": message}).encode(),
                 head)

    def _bytes(self, head: bool, repo_id: str, f: _File,
               headers: dict[str, str]):
      """200 or, for a Range, 206 / 416, with the (maybe tampered) bytes."""
      data, cut_after = (f.data, None) if head else standin._body(repo_id, f)
      headers = {"Accept-Ranges": "bytes", **headers}
      size = len(data)
      wanted = self.headers.get("Range")
      if wanted is None or head:
        return self._send(200, headers, data, head, cut_after=cut_after)
      match = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
      if not match or match.groups() == ("", ""):
        return self._send(200, headers, data, cut_after=cut_after)
      first, last = match.groups()
      if first == "":  # the last N bytes
        start, end = max(size - int(last), 0), size - 1
      else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
      if start >= size or end < start:
        headers["Content-Range"] = f"bytes */{size}"
        return self._send(416, headers)
      headers["Content-Range"] = f"bytes {start}-{end}/{size}"
      self._send(206, headers, data[start:end + 1], cut_after=cut_after)

    def _serve(self, head: bool):
      raw = self.path.split("?", 1)[0]
      with standin._lock:
        standin.log.append((self.command, unquote(raw)))
      if raw.startswith("/cdn-lfs/"):
        return self._serve_cdn(head, raw[len("/cdn-lfs/"):])
      parsed = _parse_resolve(raw)
      if parsed is None:
        return self._error(head, 404, None,
                           f"hub_standin serves no {unquote(raw)}")
      repo_id, revision, filename = parsed
      status, code, message, commit, f = standin._lookup(
          repo_id, revision, filename)
      if f is None:
        return self._error(head, status, code, message, commit)
      headers = {"X-Repo-Commit": commit, "ETag": f'"{f.etag}"',
                 "Content-Type": _content_type(filename),
                 "Content-Disposition":
                     f"inline; filename*=UTF-8''{quote(Path(filename).name)}"
                     f'; filename="{Path(filename).name}"',
                 "Vary": "Origin, Accept-Encoding"}
      if f.lfs:
        headers["X-Linked-Etag"] = f'"{f.sha256}"'
        headers["X-Linked-Size"] = str(len(f.data))
      if f.lfs and standin.cdn:
        location = (f"{standin.cdn_endpoint}/cdn-lfs/{quote(repo_id)}/"
                    f"{f.sha256}?filename={quote(Path(filename).name)}")
        headers.update({"Location": location,
                        "Content-Type": "text/plain; charset=utf-8"})
        return self._send(302, headers, head=head)
      self._bytes(head, repo_id, f, headers)

    def _serve_cdn(self, head: bool, rest: str):
      repo_id, _, oid = unquote(rest).rpartition("/")
      with standin._lock:
        repo = standin._repos.get(repo_id)
        found = next((f for files in (repo.commits.values() if repo else ())
                      for f in files.values() if f.lfs and f.sha256 == oid),
                     None)
      if found is None:
        return self._send(404, {"Content-Type": "application/xml"},
                          b"<Error><Code>NoSuchKey</Code></Error>", head)
      self._bytes(head, repo_id, found,
                  {"ETag": f'"{found.sha256}"',
                   "Content-Type": "application/octet-stream"})

  return Handler


@contextlib.contextmanager
def serve(**kwargs) -> Iterator[StandIn]:
  """A started StandIn(**kwargs), stopped on exit."""
  standin = StandIn(**kwargs)
  try:
    yield standin
  finally:
    standin.stop()


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Iterator[StandIn]:
  """A running stand-in with this process's huggingface_hub pointed at it
  (configure(), cache under tmp_path/"hf"/hub; hub.home is tmp_path/"hf").
  Use it from a test module with `from zoo_tests.hub_standin import hub`."""
  with serve() as standin:
    standin.configure(monkeypatch, tmp_path / "hf")
    yield standin
