"""A worker's statistics: counters gathered in memory, flushed to its hash in Redis.

Each forward pass adds to the counters in memory only: a Redis round trip there would sit
between every pass and its results. A job flushes them in the same round trip as, and before,
its terminal write (``Counters.pipeline``), so a reader that sees the job finished also sees
the passes that served it; the heartbeat flushes what jobs ending without a write left.
"""
from __future__ import annotations

import collections
import threading
from typing import Any

from worker.pending import BatchStats

STATS_TTL = 7 * 24 * 3600
"""Seconds a worker's statistics hash outlives its last update."""


class Counters:
    def __init__(self, redis: Any, key: str):
        self.redis = redis
        self.key = key
        self._counts: collections.Counter[str] = collections.Counter()
        self._counts_lock = threading.Lock()
        self._flush_lock = threading.RLock()

    def add_batch(self, stats: BatchStats) -> None:
        with self._counts_lock:
            self._counts.update(forward_passes=1, batches=1, batch_texts=stats.texts,
                                tokens=stats.tokens, padded_tokens=stats.padded_tokens)

    def pipeline(self, **fields: int) -> Any:
        """A pipeline (not yet executed) adding ``fields`` and the counters gathered since the
        last flush to the hash; the caller executes it, usually together with the job's
        terminal write (``JobStore.succeed_staged``/``fail``). Counted at most once: a pipeline
        that fails loses its counts rather than risk adding those that did land twice."""
        # Taking the flush lock waits out a heartbeat flush in flight: counters it took from a
        # job's batches land before that job's terminal write, which readers rely on.
        with self._flush_lock, self._counts_lock:
            pending, self._counts = self._counts, collections.Counter()
        pending.update(fields)
        pipe = self.redis.pipeline(transaction=False)
        for name, value in pending.items():
            pipe.hincrby(self.key, name, int(value))
        pipe.expire(self.key, STATS_TTL)
        return pipe

    def flush(self) -> None:
        """Write what passes counted since the last flush (the heartbeat's)."""
        with self._flush_lock:  # see pipeline(): a job's end waits for this flush
            self.pipeline().execute()
