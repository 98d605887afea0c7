"""A job result's stored form: its JSON text as a list of compressed chunks.

Concatenating the decompressed chunks gives the JSON text. A worker builds the
result out of order (texts finish in length-sorted batches, not in job order), so
each item is compressed on its own as soon as it is serialised, on a pool whose
threads run while the forward passes go on (zlib drops the GIL), and the chunks are
put in job order at the end. One Redis value per item also keeps a result of
gigabytes (10,000 ColBERT texts) far below Redis' 512 MB limit on one value.
"""
from __future__ import annotations

import json
import os
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

INLINE_COMPRESS_BYTES = 64 * 1024
"""An item this small is compressed by the thread that serialised it: a pool hand-off would
cost more than the compression (the common one-short-text job)."""

COMPRESS_THREADS = min(16, os.cpu_count() or 1)
"""Threads of the process-wide compression pool (created on first use, never at import)."""

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def compress(*parts: bytes) -> bytes:
    """Huffman-only deflate of the concatenated ``parts``. Coding base64's 64-letter alphabet takes
    it back to ~6 bits a letter, so float16 ColBERT costs ~1.95 bytes a value in Redis instead
    of 2.67; skipping LZ77 matching (useless on float bits) makes it ~3x faster than level 1."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_HUFFMAN_ONLY)
    return b"".join([*(packer.compress(p) for p in parts), packer.flush()])


def encode(result: Any) -> list[bytes]:
    """The stored form of a JSON-able result: one chunk."""
    return [compress(json.dumps(result, separators=(",", ":")).encode())]


def decode(chunks: Sequence[bytes]) -> Any:
    return json.loads(b"".join(zlib.decompress(c) for c in chunks))


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=COMPRESS_THREADS, thread_name_prefix="bge-m3-compress")
        return _pool


class ItemsResult:
    """``{**header, "items": [...]}`` built from items serialised in any order.

    ``add(i, parts)`` takes item ``i``'s JSON text in pieces and compresses it on the pool at once;
    ``chunks()`` waits for them and returns the stored form in job order.
    """

    def __init__(self, header: dict[str, Any], count: int):
        head = json.dumps(header, separators=(",", ":")).encode()
        self._head = head[:-1] + (b"," if header else b"") + b'"items":['
        self._items: list[Future | None] = [None] * count

    def add(self, index: int, parts: Sequence[bytes]) -> None:
        comma = b"," if index else b""
        if sum(len(p) for p in parts) <= INLINE_COMPRESS_BYTES:
            done: Future = Future()
            done.set_result(compress(comma, *parts))
            self._items[index] = done
        else:
            self._items[index] = _get_pool().submit(compress, comma, *parts)

    def cancel(self) -> None:
        for future in self._items:
            if future is not None:
                future.cancel()

    def chunks(self) -> list[bytes]:
        if any(f is None for f in self._items):
            raise ValueError("not every item was added")
        return [compress(self._head), *(f.result() for f in self._items), compress(b"]}")]
