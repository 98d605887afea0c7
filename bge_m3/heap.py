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


def freeze() -> int:
    """Collect once, then move every surviving object to the permanent generation; returns how
    many objects are frozen. Call it after start-up is done (model loaded, app built), in the
    process that serves: a fork after it would copy the frozen objects' pages on their next
    refcount change anyway."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
