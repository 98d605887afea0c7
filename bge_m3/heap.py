"""Keeping the garbage collector off a long-lived server's permanent objects.

A worker that has loaded torch, transformers and the model holds a few hundred thousand
objects that live as long as the process; the API holds tens of thousands. CPython's full
collection walks all of them (measured on the 2-core VM: ~0.25 s in a worker, ~15 ms in the
API), and the objects one big job allocates (futures, rows, result items) trigger one every few
jobs: a quarter-second stall of every job in the worker, GPU idle meanwhile. Frozen after
start-up, they are never scanned again; a collection pays only for what requests allocated.
"""
from __future__ import annotations

import gc
from typing import Any


def freeze() -> int:
    """Collect once, then move every surviving object to the permanent generation; returns how
    many objects are frozen. Call it after start-up is done (model loaded, app built), in the
    process that serves: a fork after it would copy the frozen objects' pages on their next
    refcount change anyway."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


TRIM_AFTER_BYTES = 16 * 1024 * 1024
"""Bytes a response must have written for its end to hand freed memory back (``trim``)."""

_libc: Any = None


def trim() -> bool:
    """Hand the allocator's free memory back to the system (glibc's ``malloc_trim``); False where
    there is none (another libc). A streamed response of a big result frees its rows in a
    thread's own malloc arena, which glibc keeps: a soak run's API grew 63 MB -> 405 MB in
    minutes of big reads and never shrank."""
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    _libc(0)
    return True
