"""One pub/sub connection per API process that wakes every request waiting for a job.

A wait used to open its own subscription (a connection, SUBSCRIBE, and UNSUBSCRIBE per
request). Here one thread holds a PSUBSCRIBE to every job's channel and sets the events of
whoever registered for that job. A watcher registers *before* it looks at the job (or before
the job even exists), so a finish published in between is never missed.

When the connection breaks, watchers keep waiting (a Redis restart need not fail a request);
once the subscription is back every watcher is woken to re-read its job, so a finish
published during the gap is found that way.
The thread starts on first use, never at import, so it lives in the process that waits
(a gunicorn worker, not the master that forked it).
"""
from __future__ import annotations

import logging
import threading
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

log = logging.getLogger("bge_m3.events")

READY_TIMEOUT = 5.0
"""Seconds a first watcher waits for the subscription before giving up (Redis is down)."""

RECONNECT_DELAY = 0.5
"""Seconds between attempts to subscribe again after the connection broke."""

POLL_SECONDS = 1.0
"""How long one read on the subscription blocks, bounding how late ``close`` is noticed."""


class JobEvents:
    def __init__(self, redis: Any, pattern: str, prefix: str):
        self._redis = redis
        self._pattern = pattern          # e.g. "bge-m3:events:*"
        self._prefix = prefix            # channel = prefix + job id
        self._lock = threading.Lock()
        self._watchers: dict[str, set[threading.Event]] = defaultdict(set)
        self._ready = threading.Event()
        self._closed = threading.Event()
        self._lost = False
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, job_id: str) -> Iterator[threading.Event]:
        """An event set whenever ``job_id`` changes to a terminal state (or may have: after a
        reconnect). Clear it before each re-read of the job."""
        self._ensure_started()
        woke = threading.Event()
        with self._lock:
            self._watchers[job_id].add(woke)
        try:
            yield woke
        finally:
            with self._lock:
                watchers = self._watchers.get(job_id)
                if watchers is not None:
                    watchers.discard(woke)
                    if not watchers:
                        del self._watchers[job_id]

    def close(self) -> None:
        self._closed.set()
        self._wake_all()

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="bge-m3-events", daemon=True)
                self._thread.start()
        if not self._ready.wait(READY_TIMEOUT):
            import redis

            raise redis.exceptions.ConnectionError("the job event subscription is not established")

    def _wake_all(self) -> None:
        with self._lock:
            for watchers in self._watchers.values():
                for woke in watchers:
                    woke.set()

    def _run(self) -> None:
        while not self._closed.is_set():
            pubsub = self._redis.pubsub()
            try:
                pubsub.psubscribe(self._pattern)
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=POLL_SECONDS)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        if self._lost:
                            log.info("job event subscription is back")
                        self._lost = False
                        # Wake first: anything finished while we were away is re-read. Only then
                        # is the subscription ready, so a watch begun after it is not woken for
                        # nothing (tests/test_events.py once caught that race).
                        self._wake_all()
                        self._ready.set()
                    elif message["type"] == "pmessage":
                        self._deliver(message["channel"])
            except Exception as exc:  # noqa: BLE001 - Redis restarts must not kill the thread
                if not self._lost:  # once per outage, not once per retry
                    log.warning("job event subscription lost (%s); subscribing again every %g s",
                                type(exc).__name__, RECONNECT_DELAY)
                self._lost = True
                self._ready.clear()
                self._closed.wait(RECONNECT_DELAY)
            finally:
                try:
                    pubsub.close()
                except Exception:  # noqa: BLE001
                    pass

    def _deliver(self, channel: str) -> None:
        if not channel.startswith(self._prefix):
            return
        with self._lock:
            for woke in self._watchers.get(channel[len(self._prefix):], ()):
                woke.set()
