"""A local fake of the hub's ``/resolve/`` protocol, with fault injection and byte counting.

It serves a folder as ``{repo}@{revision}``, the way huggingface.co does:

* ``HEAD|GET /{repo}/resolve/{rev}/{path}``: files at least ``lfs_threshold`` bytes are
  "LFS": a 302 to ``http://{cdn_host}:{port}/cdn/{sha256}`` with ``X-Repo-Commit``,
  ``X-Linked-Etag`` (the quoted sha256) and ``X-Linked-Size``. Smaller files are plain
  git blobs: 200 with ``ETag`` (the git blob sha1) and ``Content-Length``.
* ``GET /cdn/{sha256}``: the body; ``Range: bytes=N-`` gives 206 with ``Content-Range``.
* ``GET /api/models/{repo}/revision/{rev}?blobs=true``: ``HfApi.model_info`` metadata.

``cdn_host`` defaults to ``localhost`` so the CDN is another *host* than the endpoint
(``127.0.0.1``) while being the same server: that is how tests see whether a token
leaks to a redirect. Faults are queued per test with :meth:`FakeHub.fault`.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
"""The commit the fake hub reports for its one revision."""

WRITE_CHUNK = 16 * 1024
"""Bytes per socket write when a body is throttled, corrupted or cut (faults need small steps)."""

FAULT_KINDS = {"down", "status", "cut", "ignore_range", "corrupt", "wrong_etag", "wrong_size"}
"""down: close without answering; status: answer ``code`` (``retry_after`` header optional);
cut: close after ``after`` body bytes; ignore_range: 200 with the whole body; corrupt: flip
one byte; wrong_etag/wrong_size: lie in the HEAD/redirect metadata."""


@dataclass
class Fault:
    kind: str
    path: str | None
    times: int | None
    on: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class HubFile:
    path: Path
    size: int
    sha256: str
    git_sha1: str


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self, folder: Path, repo_id: str, *, revision: str = "main",
                 commit: str = COMMIT, lfs_threshold: int = 1024, cdn_host: str = "localhost"):
        self.repo_id, self.revision, self.commit = repo_id, revision, commit
        self.lfs_threshold, self.cdn_host = lfs_threshold, cdn_host
        self.files: dict[str, HubFile] = {}
        for path in sorted(Path(folder).rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and not any(p.startswith(".") for p in rel.split("/")):
                data = path.read_bytes()
                self.files[rel] = HubFile(path, len(data), hashlib.sha256(data).hexdigest(),
                                          _git_sha1(data))
        self.by_sha = {f.sha256: rel for rel, f in self.files.items()}
        self.faults: list[Fault] = []
        self.rate: float | None = None  # body bytes per second, None = unthrottled
        self.lock = threading.Lock()
        self.bytes_served: Counter = Counter()
        self.body_gets: Counter = Counter()
        self.sending = 0  # bodies being written right now
        self.log: list[dict] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fault(self, kind: str, path: str | None = None, times: int | None = 1, on: str = "body",
              **params) -> None:
        """Inject ``kind`` for ``path`` (any file when None), ``times`` times (None: always).

        ``on`` is ``body`` (the request that would carry the bytes), ``head`` or ``any``.
        """
        assert kind in FAULT_KINDS, kind
        with self.lock:
            self.faults.append(Fault(kind, path, times, on, params))

    def take(self, kind: str, rel: str | None, stage: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.kind != kind or (fault.path and fault.path != rel):
                    continue
                if fault.on not in ("any", stage) or fault.times == 0:
                    continue
                if fault.times is not None:
                    fault.times -= 1
                return fault
        return None

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()
            self.bytes_served.clear()
            self.body_gets.clear()
            self.log.clear()

    def requests_for(self, rel: str, method: str | None = None) -> list[dict]:
        with self.lock:
            return [r for r in self.log if r["file"] == rel and method in (None, r["method"])]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_HEAD(self) -> None:
            self._route("HEAD")

        def do_GET(self) -> None:
            self._route("GET")

        def _record(self, rel: str | None, status: int | str) -> None:
            with hub.lock:
                hub.log.append({"method": self.command, "path": self.path, "file": rel,
                                "status": status, "time": time.monotonic(),
                                "auth": self.headers.get("Authorization"),
                                "host": self.headers.get("Host"),
                                "range": self.headers.get("Range")})

        def _route(self, method: str) -> None:
            path = unquote(urlsplit(self.path).path)
            if path.startswith("/api/models/"):
                return self._model_info(path)
            rel, stage = None, "head" if method == "HEAD" else "body"
            if path.startswith("/cdn/"):
                rel, lfs_hop = hub.by_sha.get(path[len("/cdn/"):]), False
            elif "/resolve/" in path:
                repo, _, rest = path.lstrip("/").partition("/resolve/")
                rev, _, rel = rest.partition("/")
                if repo != hub.repo_id or rev not in (hub.revision, hub.commit):
                    rel = None
                lfs_hop = rel in hub.files and hub.files[rel].size >= hub.lfs_threshold
                if lfs_hop:
                    stage = "head"
            if rel not in hub.files:
                self._record(rel, 404)
                return self._reply(404, {"X-Error-Code": "EntryNotFound"})
            if hub.take("down", rel, stage):
                self._record(rel, "down")
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            fault = hub.take("status", rel, stage)
            if fault:
                self._record(rel, fault.params["code"])
                extra = {"Retry-After": str(fault.params["retry_after"])} \
                    if "retry_after" in fault.params else {}
                return self._reply(fault.params["code"], extra)
            if lfs_hop:
                return self._redirect(rel)
            self._body(rel, method, hub.files[rel], git_blob="/resolve/" in path)

        def _meta(self, rel: str, lfs: bool) -> dict:
            info = hub.files[rel]
            sha = "f" * 64 if hub.take("wrong_etag", rel, "head") else info.sha256
            size = info.size + 1 if hub.take("wrong_size", rel, "head") else info.size
            if lfs:
                return {"X-Repo-Commit": hub.commit, "X-Linked-Etag": f'"{sha}"',
                        "X-Linked-Size": str(size), "ETag": f'"{sha}"'}
            return {"X-Repo-Commit": hub.commit, "ETag": f'"{info.git_sha1}"'}

        def _redirect(self, rel: str) -> None:
            headers = self._meta(rel, lfs=True)
            headers["Location"] = f"http://{hub.cdn_host}:{hub.port}/cdn/{hub.files[rel].sha256}"
            self._record(rel, 302)
            self._reply(302, headers)

        def _reply(self, code: int, headers: dict) -> None:
            self.send_response(code)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _body(self, rel: str, method: str, info: HubFile, git_blob: bool) -> None:
            start = 0
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes=") and not hub.take("ignore_range", rel, "body"):
                start = int(ranged[len("bytes="):].split("-")[0])
            if start >= info.size and info.size:
                self._record(rel, 416)
                return self._reply(416, {"Content-Range": f"bytes */{info.size}"})
            code = 206 if start else 200
            self.send_response(code)
            headers = self._meta(rel, lfs=False) if git_blob else {"ETag": f'"{info.sha256}"'}
            for key, value in headers.items():
                self.send_header(key, value)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{info.size - 1}/{info.size}")
            self.send_header("Content-Length", str(info.size - start))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self._record(rel, code)
            if method == "HEAD":
                return
            with hub.lock:
                hub.body_gets[rel] += 1
                hub.sending += 1
            try:
                self._send(rel, info, start)
            finally:
                with hub.lock:
                    hub.sending -= 1

        def _send(self, rel: str, info: HubFile, start: int) -> None:
            cut = hub.take("cut", rel, "body")
            corrupt = hub.take("corrupt", rel, "body")
            limit = info.size - start if cut is None else min(cut.params["after"], info.size - start)
            with open(info.path, "rb") as fh:
                if cut is None and corrupt is None and hub.rate is None:
                    sent = self.connection.sendfile(fh, start, limit)
                    with hub.lock:
                        hub.bytes_served[rel] += sent
                    return
                fh.seek(start)
                sent = 0
                while sent < limit:
                    chunk = bytearray(fh.read(min(WRITE_CHUNK, limit - sent)))
                    if corrupt is not None and sent == 0:
                        chunk[len(chunk) // 2] ^= 0x01
                    try:
                        self.wfile.write(chunk)
                    except OSError:
                        break
                    sent += len(chunk)
                    with hub.lock:
                        hub.bytes_served[rel] += len(chunk)
                    if hub.rate:
                        time.sleep(len(chunk) / hub.rate)
            if cut is not None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        def _model_info(self, path: str) -> None:
            repo, _, rev = path[len("/api/models/"):].partition("/revision/")
            if repo != hub.repo_id or rev not in (hub.revision, hub.commit):
                return self._reply(404, {"X-Error-Code": "RevisionNotFound"})
            siblings = []
            for rel, info in hub.files.items():
                item = {"rfilename": rel, "size": info.size, "blobId": info.git_sha1}
                if info.size >= hub.lfs_threshold:
                    item["lfs"] = {"size": info.size, "sha256": info.sha256, "pointerSize": 134}
                siblings.append(item)
            body = json.dumps({"id": hub.repo_id, "modelId": hub.repo_id, "sha": hub.commit,
                               "private": False, "siblings": siblings}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def serve_forever(folder: str, repo_id: str, revision: str, port_file: str) -> None:
    """Run a hub in this process (for the bench); writes its URL to ``port_file``."""
    hub = FakeHub(Path(folder), repo_id, revision=revision)
    Path(port_file).write_text(hub.url)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    import sys

    serve_forever(*sys.argv[1:5])
    os._exit(0)
