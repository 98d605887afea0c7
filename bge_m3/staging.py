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

import queue
import secrets
import threading
from typing import Any, Sequence

from bge_m3.records import PREFIX

FLUSH_BYTES = 8 * 1024 * 1024
"""Pending result bytes that trigger a send to the staging key: one round trip of at most about
this much, small next to a pass's output on the real model and far below Redis' query buffer."""


SENDS_AHEAD = 2
"""Flushes a background sender (``Staging(background=True)``) may hold not yet sent: bounds the
worker's memory when Redis takes the bytes slower than the passes make them."""


class Staging:
    """With ``background``, flushes are sent by a thread of their own, in order, so that the task
    thread goes on serialising items while Redis takes the previous ones (on a GPU host the two
    were the longest path of a big job); ``drain`` waits for them and raises what a send raised."""

    def __init__(self, redis: Any, job_id: str, ttl: int, flush_bytes: int = FLUSH_BYTES,
                 background: bool = False):
        self.redis = redis
        self.ttl = max(1, int(ttl))  # until the finish renames it: the job's time limit and a margin
        self.flush_bytes = flush_bytes
        self.background = background
        self.key = f"{PREFIX}:staging:{job_id}:{secrets.token_hex(8)}"
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.sent_bytes = 0
        self.sent_chunks = 0
        self._outbox: queue.Queue | None = None
        self._sender: threading.Thread | None = None
        self._error: BaseException | None = None

    def add(self, chunks: Sequence[bytes]) -> None:
        """Queue ``chunks`` (the next ones in order); sends once FLUSH_BYTES are pending."""
        if not chunks:
            return
        self.pending.extend(chunks)
        self.pending_bytes += sum(len(c) for c in chunks)
        if self.pending_bytes >= self.flush_bytes:
            self.flush()

    def flush(self, pipe: Any = None) -> None:
        """Send what is pending: on ``pipe`` (queued, the caller executes it; only once what the
        background sender holds is sent, so the finish that follows sees every chunk), to the
        background sender, or now."""
        if pipe is not None:
            self.drain()
        if not self.pending:
            return
        chunks = self.pending
        self.sent_bytes += self.pending_bytes
        self.sent_chunks += len(chunks)
        self.pending, self.pending_bytes = [], 0
        if pipe is not None:
            self._push(pipe, chunks)
        elif self.background:
            self._send_later(chunks)
        else:
            own = self.redis.pipeline(transaction=False)
            self._push(own, chunks)
            own.execute()

    def drain(self) -> None:
        """Wait until the background sender has sent everything; raise what a send raised."""
        if self._sender is not None:
            self._outbox.put(None)
            self._sender.join()
            self._sender = None
        if self._error is not None:
            raise self._error

    def discard(self) -> None:
        """Drop what was sent (the job failed): nothing renames the key now."""
        self.pending, self.pending_bytes = [], 0
        try:
            self.drain()
        except Exception:  # noqa: BLE001 - the stream is being dropped anyway
            pass
        if self.sent_chunks:
            self.redis.delete(self.key)

    def _push(self, pipe: Any, chunks: list[Any]) -> None:
        pipe.rpush(self.key, *chunks)
        pipe.expire(self.key, self.ttl)

    def _send_later(self, chunks: list[Any]) -> None:
        if self._error is not None:
            raise self._error
        if self._sender is None:
            self._outbox = queue.Queue(maxsize=SENDS_AHEAD)
            self._sender = threading.Thread(target=self._send_loop, name="bge-m3-staging", daemon=True)
            self._sender.start()
        self._outbox.put(chunks)  # blocks while SENDS_AHEAD flushes wait: Redis sets the pace

    def _send_loop(self) -> None:
        while True:
            chunks = self._outbox.get()
            if chunks is None:
                return
            if self._error is not None:
                continue  # keep taking, so that the task thread never blocks on a dead sender
            try:
                pipe = self.redis.pipeline(transaction=False)
                self._push(pipe, chunks)
                pipe.execute()
            except BaseException as exc:  # noqa: BLE001 - raised in the task thread by drain()
                self._error = exc
