"""Chunked SHA-256 (pooch style)."""
from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_SIZE = 8 * 1024 * 1024
"""Bytes hashed per ``update`` call: large enough that hashlib releases the GIL and syscalls amortise."""


def update_from_file(digest, path: str | Path, limit: int | None = None,
                     chunk_size: int = CHUNK_SIZE) -> int:
    """Feed ``path`` (its first ``limit`` bytes when given) into ``digest``; return bytes read."""
    total = 0
    with open(path, "rb", buffering=0) as fh:
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


def file_sha256(path: str | Path, chunk_size: int = CHUNK_SIZE) -> str:
    digest = hashlib.sha256()
    update_from_file(digest, path, chunk_size=chunk_size)
    return digest.hexdigest()
