"""One download attempt of one file from one endpoint, resumable across processes.

Bytes go to ``.NAME.incomplete`` beside the final file, with a JSON sidecar
``.NAME.incomplete.json`` naming the endpoint, its etag and the offset. A later
attempt (or a later process, after a kill) resumes from the partial file only when
the server answers 206 at exactly our offset, and only when the bytes already there
came from the same endpoint or from one reporting the same etag. The SHA-256 is
computed while streaming (the existing prefix first), and the file is renamed to
its final name only when it matches: a wrong file never appears under that name.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import time
from pathlib import Path
from typing import Callable

import requests
import urllib3

from verify.endpoint import Endpoint, RemoteMeta, status_error
from verify.errors import BadContentError, TransientError
from verify.hashes import BackgroundHasher, update_from_file
from verify.manifest import FileEntry
from verify.retry import LOW_SPEED_BYTES, LOW_SPEED_WINDOW

READ_CHUNK = 1024 * 1024
"""Most bytes taken from the socket per read: big enough to amortise, small enough to resume finely."""

NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError,
                   http.client.HTTPException, ConnectionError, TimeoutError)
"""What a cut connection raises mid-body; disk errors (other OSErrors) are not retried."""

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class Partial:
    """The temp file and sidecar of one manifest entry inside the model folder."""

    def __init__(self, final: Path):
        self.final = final
        self.path = final.with_name(f".{final.name}.incomplete")
        self.sidecar = final.with_name(f".{final.name}.incomplete.json")

    def size(self) -> int:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return 0
        if not os.path.isfile(self.path) or os.path.islink(self.path):
            self.remove()
            return 0
        return st.st_size

    def read_sidecar(self) -> dict:
        try:
            data = json.loads(self.sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_sidecar(self, endpoint: str, etag: str | None, offset: int, entry: FileEntry) -> None:
        tmp = self.sidecar.with_name(self.sidecar.name + ".tmp")
        data = json.dumps({"endpoint": endpoint, "etag": etag, "offset": offset,
                           "sha256": entry.sha256, "size": entry.size}).encode()
        # O_NOFOLLOW, as for the partial file: a link planted there must not redirect the write.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, self.sidecar)

    def remove(self) -> None:
        for path in (self.path, self.sidecar):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def resume_offset(self, endpoint: str, meta: RemoteMeta, entry: FileEntry) -> int:
        """Bytes that may be kept; anything not safe to splice is deleted first."""
        have = self.size()
        if not have:
            return 0
        side = self.read_sidecar()
        same_file = side.get("sha256") == entry.sha256 and side.get("size") == entry.size
        if side.get("endpoint") == endpoint:
            same_source = side.get("etag") == meta.etag
        else:
            same_source = meta.etag is not None and side.get("etag") == meta.etag
        if not (same_file and same_source) or have > entry.size:
            self.remove()
            return 0
        return have


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    match = _CONTENT_RANGE.match((value or "").strip())
    if not match:
        return None
    total = match.group(3)
    return int(match.group(1)), int(match.group(2)), None if total == "*" else int(total)


def fetch(endpoint: Endpoint, repo_id: str, revision: str, entry: FileEntry, final: Path,
          meta: RemoteMeta, on_bytes: Callable[[int, int], None] | None = None,
          floor: tuple[int, float] = (LOW_SPEED_BYTES, LOW_SPEED_WINDOW)) -> str:
    """Bring ``final`` to the manifest's bytes from ``endpoint`` or raise; return a short outcome.

    ``on_bytes(n, offset)`` is called with every chunk written (progress) and once with
    ``(0, offset)`` when the attempt starts. ``floor`` is (bytes, seconds): a body slower than
    that is dropped (``TransientError`` without progress; see ``verify.retry.LOW_SPEED_BYTES``).
    """
    part = Partial(final)
    offset = part.resume_offset(str(endpoint), meta, entry)
    digest = hashlib.sha256()
    if offset:
        update_from_file(digest, part.path, offset)
    start = offset
    if offset < entry.size or entry.size == 0:
        start, offset, digest = _stream(endpoint, repo_id, revision, entry, part, meta, digest,
                                        offset, on_bytes, floor)
    actual = digest.hexdigest()
    if actual != entry.sha256:
        part.remove()
        raise BadContentError(f"sha256 mismatch: expected {entry.sha256}, got {actual}")
    with open(part.path, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(part.path, final)
    part.remove()
    _fsync_dir(final.parent)
    return f"resumed at byte {start}" if start else "downloaded"


def _stream(endpoint: Endpoint, repo_id: str, revision: str, entry: FileEntry, part: Partial,
            meta: RemoteMeta, digest, offset: int, on_bytes,
            floor: tuple[int, float]) -> tuple[int, int, object]:
    """Append the body from ``offset``; (the offset it really started at, the end, the digest):
    a server that ignores Range sends the whole file again."""
    resp = endpoint.get(repo_id, revision, entry.path, offset)
    with resp:
        if resp.status_code == 206:
            got = parse_content_range(resp.headers.get("Content-Range"))
            if got is None or got[0] != offset:
                part.remove()
                raise TransientError(f"GET: Content-Range {resp.headers.get('Content-Range')!r} "
                                     f"does not start at byte {offset}; starting over")
        elif resp.status_code == 200:
            if offset:  # the server ignored Range: truncate and take the whole body
                offset, digest = 0, hashlib.sha256()
        elif resp.status_code == 416:
            part.remove()
            raise TransientError("GET: HTTP 416 for our offset; starting over")
        else:
            raise status_error(resp, "GET")
        part.write_sidecar(str(endpoint), meta.etag, offset, entry)
        fd = os.open(part.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        start = offset
        try:
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
            if on_bytes:
                on_bytes(0, offset)
            least, window = floor
            window_start, window_bytes = time.monotonic(), 0
            with BackgroundHasher(digest) as hasher:
                while True:
                    chunk = resp.raw.read1(READ_CHUNK)
                    if not chunk:
                        break
                    if offset + len(chunk) > entry.size:
                        part.remove()
                        raise BadContentError(f"body longer than the manifest's {entry.size} bytes")
                    _write_all(fd, chunk)
                    hasher.update(chunk)
                    offset += len(chunk)
                    if on_bytes:
                        on_bytes(len(chunk), offset)
                    window_bytes += len(chunk)
                    if time.monotonic() - window_start >= window:
                        if window_bytes < least:
                            raise TransientError(
                                f"GET: {window_bytes} bytes in {window:g}s, under the floor of "
                                f"{least} (kept to byte {offset} for a resume)", slow=True)
                        window_start, window_bytes = time.monotonic(), 0
        except NETWORK_ERRORS as exc:
            raise TransientError(f"GET: connection cut at byte {offset} ({type(exc).__name__})",
                                 connection=False) from None
        finally:
            os.close(fd)
            if os.path.exists(part.path):
                part.write_sidecar(str(endpoint), meta.etag, offset, entry)
    if offset < entry.size:
        raise TransientError(f"GET: body ended at byte {offset} of {entry.size}")
    return start, offset, digest


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable: a crash right after it must not bring the old name back."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
