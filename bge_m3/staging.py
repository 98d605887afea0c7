"""A big result streamed to Redis while its job still runs.

Texts finish pass by pass, and each item is handed out as soon as it is serialised, out of
job order (``payload.ItemsResult.take_ready``; the result's last element says the order).
Sending them as they come, rather than the whole result after the last forward pass, overlaps
the Redis writes (hundreds of MB of ColBERT vectors for a 2,000-text job on the real model)
with the passes still running, leaves only the last pass's items to send after it, and bounds
what the worker holds in memory to about FLUSH_BYTES of items instead of the job.

The chunks go to a private key; the finish script renames it into place only if the job is
not already terminal (``JobStore.succeed_staged``), so a reader never sees half a result and a
redelivered duplicate never overwrites one.
"""
from __future__ import annotations

import secrets
from typing import Any, Sequence

from bge_m3.records import PREFIX

FLUSH_BYTES = 8 * 1024 * 1024
"""Pending result bytes that trigger a send to the staging key: one round trip of at most about
this much, small next to a pass's output on the real model and far below Redis' query buffer."""


class Staging:
    def __init__(self, redis: Any, job_id: str, ttl: int, flush_bytes: int = FLUSH_BYTES):
        self.redis = redis
        self.ttl = max(1, int(ttl))  # until the finish renames it: the job's time limit and a margin
        self.flush_bytes = flush_bytes
        self.key = f"{PREFIX}:staging:{job_id}:{secrets.token_hex(8)}"
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.sent_bytes = 0
        self.sent_chunks = 0

    def add(self, chunks: Sequence[bytes]) -> None:
        """Queue ``chunks`` (the next ones in order); sends once FLUSH_BYTES are pending."""
        if not chunks:
            return
        self.pending.extend(chunks)
        self.pending_bytes += sum(len(c) for c in chunks)
        if self.pending_bytes >= self.flush_bytes:
            self.flush()

    def flush(self, pipe: Any = None) -> None:
        """Send what is pending: on ``pipe`` (queued, the caller executes it) or now."""
        if not self.pending:
            return
        own = pipe is None
        pipe = self.redis.pipeline(transaction=False) if own else pipe
        pipe.rpush(self.key, *self.pending)
        pipe.expire(self.key, self.ttl)
        self.sent_bytes += self.pending_bytes
        self.sent_chunks += len(self.pending)
        self.pending, self.pending_bytes = [], 0
        if own:
            pipe.execute()

    def discard(self) -> None:
        """Drop what was sent (the job failed): nothing renames the key now."""
        self.pending, self.pending_bytes = [], 0
        if self.sent_chunks:
            self.redis.delete(self.key)
