"""Leases this process could not drop when their delivery ended, dropped once Redis answers.

A delivery that hands its job back because Redis failed cannot release its lease then. In this
process the lease is known to be dead (``Runtime.delivery_live``), but another worker sees a live
holder and its delivery of the same job waited the lease out: the job's time limit and a minute
more (11 minutes by default) after a Redis outage of a few seconds. And the job's record still
said running, though nothing ran it. The heartbeat drops them, and the job reads queued again.
"""
from __future__ import annotations

import threading
from typing import Any

import redis


class Releases:
    """Leases (key -> holder, job id) to release when Redis answers again."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def defer(self, key: str, holder: str, job_id: str) -> None:
        with self._lock:
            self._pending[key] = (holder, job_id)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def retry(self, store: Any) -> None:
        """Release each pending lease and requeue its job (only while its holder still holds the
        lease: the script checks); stop at the first Redis error, to try again at the next beat."""
        with self._lock:
            todo = list(self._pending.items())
        for key, (holder, job_id) in todo:
            try:
                store.release_lease(key, holder, requeue=job_id)
            except redis.RedisError:
                return
            with self._lock:
                if self._pending.get(key, ("",))[0] == holder:
                    del self._pending[key]
