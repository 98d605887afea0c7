"""Chunked SHA-256 (pooch style)."""
from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_SIZE = 8 * 1024 * 1024
"""Bytes hashed per ``update`` call: large enough that hashlib releases the GIL and syscalls amortise."""


def update_from_file(digest, path: str | Path | int, limit: int | None = None,
                     chunk_size: int = CHUNK_SIZE) -> int:
    """Feed ``path`` (its first ``limit`` bytes when given) into ``digest``; return bytes read.
    ``path`` may be an open descriptor, read from where it stands and left open."""
    total = 0
    with open(path, "rb", buffering=0, closefd=not isinstance(path, int)) as fh:
        buf = bytearray(chunk_size)
        view = memoryview(buf)
        while limit is None or total < limit:
            want = chunk_size if limit is None else min(chunk_size, limit - total)
            n = fh.readinto(view[:want])
            if not n:
                break
            digest.update(view[:n])
            total += n
    return total


def file_sha256(path: str | Path | int, chunk_size: int = CHUNK_SIZE) -> str:
    digest = hashlib.sha256()
    update_from_file(digest, path, chunk_size=chunk_size)
    return digest.hexdigest()


HASH_QUEUE_DEPTH = 8
"""Chunks that may wait for the background hasher: bounds memory to about 8 x the read size."""


class BackgroundHasher:
    """Feeds a digest from one helper thread, so hashing overlaps network reads and disk writes.

    hashlib releases the GIL on large updates, so on two cores a download runs at the speed
    of the slower of (socket + write) and SHA-256, not of their sum. Chunks are hashed in order.
    """

    def __init__(self, digest, depth: int = HASH_QUEUE_DEPTH):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.digest = digest
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self._pending: deque = deque()

    def update(self, data: bytes) -> None:
        self._pending.append(self._pool.submit(self.digest.update, data))
        while len(self._pending) > self.depth:
            self._pending.popleft().result()

    def __enter__(self) -> "BackgroundHasher":
        return self

    def __exit__(self, *exc) -> None:
        """Wait for every queued chunk: the digest is complete (or abandoned) afterwards."""
        while self._pending:
            self._pending.popleft().result()
        self._pool.shutdown(wait=True)
