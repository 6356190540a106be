"""A fake `gs://` for tests: one local directory seen through every client the package uses for remote paths.

- etils.epath (config.json, metrics.jsonl, teacher-store manifest, orbax's directories): an fsspec filesystem
  registered for the `gs` / `gcs` protocols, as gcsfs is in production. It keeps GCS's object semantics where our
  code could trip on them: a file being written appears only when closed, and append mode silently overwrites
  (gcsfs warns "Append mode 'a' is not supported in GCS. Using overwrite mode instead.").
- TensorStore (orbax's array data) and ArrayRecord's reader: their own C++ GCS clients, pointed at a small GCS JSON
  API server on 127.0.0.1 (TENSORSTORE_GCS_HTTP_URL, CLOUD_STORAGE_EMULATOR_ENDPOINT) that serves the same directory.

Object `gs://BUCKET/KEY` is the file `ROOT/BUCKET/KEY`; its generation is the file's mtime in nanoseconds.
"""
from __future__ import annotations

import contextlib
import http.server
import importlib
import io
import json
import os
import tempfile
import threading
import urllib.parse
import warnings

import fsspec
from fsspec.implementations.local import LocalFileSystem


class _PublishOnClose(io.FileIO):
  """A write handle whose object appears only on close (like a GCS upload)."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, self._tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".upload-")
    os.close(fd)
    super().__init__(self._tmp, "w")
    self._final = path

  def close(self):
    if not self.closed:
      super().close()
      os.replace(self._tmp, self._final)


class FakeGcsFileSystem(LocalFileSystem):
  """fsspec filesystem for `gs://` backed by ROOT (set by `fake_gcs`)."""

  root = ""
  protocol = ("gs", "gcs")

  @classmethod
  def _strip_protocol(cls, path):
    path = os.fspath(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        path = path[len(prefix):]
        break
    path = path.rstrip("/")
    if path.startswith(cls.root):  # Already mapped.
      return path
    return os.path.join(cls.root, path)

  def _unmap(self, local: str) -> str:
    return os.path.relpath(local, self.root)

  def glob(self, path, **kwargs):  # epath prefixes "gs://" to what this returns.
    return [self._unmap(p) for p in super().glob(path, **kwargs)]

  def _open(self, path, mode="rb", **kwargs):
    if "a" in mode:
      warnings.warn("Append mode 'a' is not supported in GCS. Using overwrite mode instead.")
      mode = mode.replace("a", "w")
    if "w" in mode:
      return _PublishOnClose(self._strip_protocol(path))
    return super()._open(path, mode, **kwargs)


class _Handler(http.server.BaseHTTPRequestHandler):
  """The GCS JSON API calls TensorStore's and ArrayRecord's GCS clients make."""

  protocol_version = "HTTP/1.1"
  root = ""

  def log_message(self, *args):
    del args

  def _reply(self, code: int, body: bytes = b"", content_type: str = "application/json", headers=()):
    self.send_response(code)
    for k, v in headers:
      self.send_header(k, v)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _error(self, code: int, message: str):
    self._reply(code, json.dumps({"error": {"code": code, "message": message}}).encode())

  def _parse(self):
    url = urllib.parse.urlsplit(self.path)
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
    parts = url.path.split("/")
    return parts, query

  def _resource(self, bucket: str, name: str) -> dict:
    st = os.stat(os.path.join(self.root, bucket, name))
    return {"kind": "storage#object", "bucket": bucket, "name": name, "size": str(st.st_size),
            "generation": str(st.st_mtime_ns), "metageneration": "1",
            "id": f"{bucket}/{name}/{st.st_mtime_ns}"}

  def _generation(self, bucket: str, name: str) -> int:
    path = os.path.join(self.root, bucket, name)
    return os.stat(path).st_mtime_ns if os.path.isfile(path) else 0

  def _preconditions_fail(self, query, bucket, name) -> bool:
    generation = self._generation(bucket, name)
    if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != generation:
      self._error(412, "precondition failed")
      return True
    return False

  def do_GET(self):  # pylint: disable=invalid-name
    parts, query = self._parse()
    # /storage/v1/b/BUCKET/o            (list)
    # /storage/v1/b/BUCKET/o/NAME       (metadata, or ?alt=media for the bytes)
    if parts[1:4] != ["storage", "v1", "b"] or len(parts) < 6 or parts[5] != "o":
      return self._error(404, f"unsupported {self.path}")
    bucket = parts[4]
    if len(parts) == 6 or parts[6] == "":
      return self._list(bucket, query)
    name = urllib.parse.unquote("/".join(parts[6:]))
    path = os.path.join(self.root, bucket, name)
    if not os.path.isfile(path):
      return self._error(404, f"no such object {bucket}/{name}")
    if self._preconditions_fail(query, bucket, name):
      return None
    generation = self._generation(bucket, name)
    if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == generation:
      return self._reply(304)
    if query.get("alt") != "media":
      return self._reply(200, json.dumps(self._resource(bucket, name)).encode())
    with open(path, "rb") as f:
      data = f.read()
    headers = [("x-goog-generation", str(generation)), ("x-goog-metageneration", "1"),
               ("x-goog-stored-content-length", str(len(data)))]
    ranges = self.headers.get("Range")
    if not ranges:
      return self._reply(200, data, "application/octet-stream", headers)
    start_text, _, end_text = ranges.removeprefix("bytes=").partition("-")
    if not start_text:  # suffix range: the last N bytes
      start, end = max(len(data) - int(end_text), 0), len(data) - 1
    else:
      start, end = int(start_text), min(int(end_text) if end_text else len(data) - 1, len(data) - 1)
    if start >= len(data) and len(data):
      return self._reply(416, b"", headers=[("Content-Range", f"bytes */{len(data)}")])
    body = data[start:end + 1]
    headers.append(("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}"))
    return self._reply(206, body, "application/octet-stream", headers)

  do_HEAD = do_GET

  def _list(self, bucket: str, query):
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
    start, end = query.get("startOffset", ""), query.get("endOffset", "")
    names = []
    base = os.path.join(self.root, bucket)
    for dirpath, _, files in os.walk(base):
      for f in files:
        if f.startswith(".upload-"):
          continue
        names.append(os.path.relpath(os.path.join(dirpath, f), base).replace(os.sep, "/"))
    items, prefixes = [], set()
    for name in sorted(names):
      if not name.startswith(prefix) or (start and name < start) or (end and name >= end):
        continue
      rest = name[len(prefix):]
      if delimiter and delimiter in rest:
        prefixes.add(prefix + rest.split(delimiter)[0] + delimiter)
        continue
      items.append(self._resource(bucket, name))
    body = {"kind": "storage#objects", "items": items}
    if prefixes:
      body["prefixes"] = sorted(prefixes)
    return self._reply(200, json.dumps(body).encode())

  def do_POST(self):  # pylint: disable=invalid-name
    parts, query = self._parse()
    # /upload/storage/v1/b/BUCKET/o?uploadType=media&name=NAME
    length = int(self.headers.get("Content-Length") or 0)
    data = self.rfile.read(length)
    if parts[1:5] != ["upload", "storage", "v1", "b"] or query.get("uploadType") != "media":
      return self._error(400, f"unsupported upload {self.path}")
    bucket, name = parts[5], query["name"]
    if self._preconditions_fail(query, bucket, name):
      return None
    path = os.path.join(self.root, bucket, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".upload-")
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
    return self._reply(200, json.dumps(self._resource(bucket, name)).encode())

  def do_DELETE(self):  # pylint: disable=invalid-name
    parts, query = self._parse()
    bucket, name = parts[4], urllib.parse.unquote("/".join(parts[6:]))
    path = os.path.join(self.root, bucket, name)
    if not os.path.isfile(path):
      return self._error(404, f"no such object {bucket}/{name}")
    if self._preconditions_fail(query, bucket, name):
      return None
    os.unlink(path)
    return self._reply(204)


@contextlib.contextmanager
def fake_gcs(root: str):
  """Within the block, `gs://BUCKET/KEY` is ROOT/BUCKET/KEY for epath, TensorStore and ArrayRecord."""
  from etils.epath import backend
  handler = type("Handler", (_Handler,), {"root": root})
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  url = f"http://127.0.0.1:{server.server_address[1]}"
  env = {"TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",
         "CLOUD_STORAGE_EMULATOR_ENDPOINT": url}
  # orbax asks google-cloud-storage whether a bucket has a hierarchical namespace; the fake's buckets have none.
  from orbax.checkpoint._src.path import gcs_utils  # pylint: disable=g-import-not-at-top
  saved_hns = gcs_utils.is_hierarchical_namespace_enabled
  gcs_utils.is_hierarchical_namespace_enabled = lambda path: False
  saved_env = {k: os.environ.get(k) for k in env}
  saved_impl = {p: fsspec.registry.get(p) for p in ("gs", "gcs")}
  os.environ.update(env)
  FakeGcsFileSystem.root = root
  for p in ("gs", "gcs"):
    fsspec.register_implementation(p, FakeGcsFileSystem, clobber=True)
  FakeGcsFileSystem.clear_instance_cache()
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  try:
    yield url
  finally:
    gcs_utils.is_hierarchical_namespace_enabled = saved_hns
    server.shutdown()
    server.server_close()
    for k, v in saved_env.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    registry = importlib.import_module("fsspec.registry")._registry  # pylint: disable=protected-access
    for p, impl in saved_impl.items():
      if impl is None:
        registry.pop(p, None)
      else:
        registry[p] = impl
    backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
