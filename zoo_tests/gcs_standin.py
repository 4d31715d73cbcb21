"""A local stand-in for Google Cloud Storage, for gs:// workdir tests.

gcp-storage-emulator serves the GCS JSON API on 127.0.0.1 from a local
directory, in its own process (so it outlives the runs a test kills). The
environment of `env()` points zoo's two GCS clients at it, the way they are
pointed at any GCS endpoint: orbax's tensorstore through
TENSORSTORE_GCS_HTTP_URL, and etils.epath through fsspec/gcsfs
(STORAGE_EMULATOR_HOST, with EPATH_USE_TF=false: TensorFlow's own GCS client
has no endpoint override). Nothing in zoo knows it is talking to a stand-in.

    python -m zoo_tests.gcs_standin PORT DIR BUCKET   # what start() runs
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUCKET = "zoo-test"


class StandIn:
  """A running emulator: `url`, `env()` for clients, `stop()`."""

  def __init__(self, root: Path, bucket: str = BUCKET):
    self.root, self.bucket = Path(root), bucket
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      self.port = s.getsockname()[1]
    self.url = f"http://127.0.0.1:{self.port}"
    self.root.mkdir(parents=True, exist_ok=True)
    # Its output goes to a file: an unread pipe would fill and stall it.
    self.log = self.root / "standin.log"
    with self.log.open("w") as log:
      self.proc = subprocess.Popen(
          [sys.executable, "-m", "zoo_tests.gcs_standin", str(self.port),
           str(self.root), bucket], cwd=REPO, stdout=log, stderr=log,
          env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.monotonic() + 30
    while True:
      try:
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        break
      except OSError:
        if self.proc.poll() is not None or time.monotonic() > deadline:
          self.stop()
          raise RuntimeError("the GCS stand-in did not start: "
                             + self.log.read_text()[-2000:])
        time.sleep(0.1)

  def env(self) -> dict[str, str]:
    """Variables that send gs:// traffic to the stand-in."""
    return {"STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "EPATH_USE_TF": "false",
            # No storage-control API here to ask a bucket's type.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "GOOGLE_CLOUD_PROJECT": "zoo-test"}

  def uri(self, *parts: str) -> str:
    return "/".join([f"gs://{self.bucket}", *parts])

  def stop(self) -> None:
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()


def _with_generations(objects) -> None:
  """Teaches the emulator what tensorstore relies on and it lacks: an
  object's generation in the `x-goog-generation` header of a download, and
  the ifGenerationMatch / ifGenerationNotMatch preconditions of reads,
  media uploads and deletes (412, or 304 for a read of an unchanged
  object), as GCS answers them."""
  from http import HTTPStatus

  from gcp_storage_emulator.exceptions import NotFound

  def generation(storage, bucket, name):
    try:
      return str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
      return None

  def guarded(handler, read_, name_of):
    def run(request, response, storage, *args, **kwargs):
      bucket, name = request.params.get("bucket_name"), name_of(request)
      read = read_ or "media" in (request.query.get("alt") or [])
      if name is not None:
        current = generation(storage, bucket, name)
        match = (request.query.get("ifGenerationMatch") or [None])[0]
        not_match = (request.query.get("ifGenerationNotMatch") or [None])[0]
        if match is not None and current != (None if match == "0" else match):
          response.status = HTTPStatus.PRECONDITION_FAILED
          return None
        if not_match is not None and current is not None and (
            current == not_match):
          response.status = (HTTPStatus.NOT_MODIFIED if read
                             else HTTPStatus.PRECONDITION_FAILED)
          return None
        if read and current is not None:
          response["x-goog-generation"] = current
          response["x-goog-metageneration"] = "1"
      return handler(request, response, storage, *args, **kwargs)
    return run

  by_object = lambda request: request.params.get("object_id")
  objects.download = guarded(objects.download, True, by_object)
  objects.get = guarded(objects.get, False, by_object)
  objects.delete = guarded(objects.delete, False, by_object)
  objects.insert = guarded(  # media uploads name the object in the query
      objects.insert, False,
      lambda request: (request.query.get("name") or [None])[0])


def _serve(port: int, root: str, bucket: str) -> None:
  import logging
  logging.basicConfig(level=logging.INFO)  # a line per request, to the log
  import http.server
  import threading
  from gcp_storage_emulator.handlers import objects
  _with_generations(objects)
  # One thread per connection (clients keep connections open, which would
  # stall a one-thread server), one request handled at a time.
  http.server.HTTPServer = http.server.ThreadingHTTPServer
  http.server.ThreadingHTTPServer.daemon_threads = True
  from gcp_storage_emulator import server as emulator
  lock = threading.Lock()
  for verb in ("GET", "POST", "PUT", "DELETE", "PATCH"):
    def serialised(self, _handle=getattr(emulator.RequestHandler,
                                         f"do_{verb}")):
      with lock:
        return _handle(self)
    setattr(emulator.RequestHandler, f"do_{verb}", serialised)
  create_server = emulator.create_server
  server = create_server("127.0.0.1", port, in_memory=False,
                         default_bucket=bucket, data_dir=root)
  server.start()
  try:
    while True:
      time.sleep(3600)
  finally:
    server.stop()


if __name__ == "__main__":
  _serve(int(sys.argv[1]), sys.argv[2], sys.argv[3])
