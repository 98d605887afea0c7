"""The API's one link to Redis: submit a job, read it, wait for it.

Submitting is one atomic script: the capacity check, the Celery message (by task name,
``bge_m3.queue.task_message``) and the job record with its TTL. Either both are written
or neither, so a client never sees a job id that no worker will ever receive, and a worker
never receives a message without its job. A synchronous route blocks in Redis on its job's
done list (``JobStore.await_end``); a long-poll rides the process's one shared subscription
(``bge_m3.events``), since several clients may poll one job.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Iterator

import redis as redis_lib

from api.errors import ApiError, shown
from bge_m3.events import JobEvents
from bge_m3.jobs import JobStore
from bge_m3.records import TERMINAL, Job, QueueFull, events_key, new_job_id
from bge_m3.queue import QUEUE_NAME, redis_client, task_message
from bge_m3.settings import Settings
from bge_m3.workers import ready_workers

log = logging.getLogger("bge_m3.api")

RETRY_AFTER_SECONDS = 5
"""``Retry-After`` sent with 429 (queue full) and 503 (nothing to serve)."""

BROKEN = (redis_lib.exceptions.ConnectionError, redis_lib.exceptions.TimeoutError)
"""What a lost Redis connection raises (TimeoutError is not a ConnectionError in redis-py)."""

RECONNECT_DELAY = 0.5
"""Seconds a synchronous wait pauses after losing Redis before it blocks again."""

READY_CACHE_SECONDS = 1.0
"""How long sync routes reuse one read of the readiness records (a SCAN per request otherwise);
small next to READY_TTL, the time a dead worker's record lingers anyway."""


class Backend:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.redis = redis_client(settings.redis_dsn)
        self.events = JobEvents(self.redis, events_key("*"), events_key(""))
        self.store = JobStore(self.redis, settings.result_ttl, events=self.events)
        self._ready: tuple[float, list[dict[str, Any]]] = (0.0, [])

    # -- submit -------------------------------------------------------------------------------
    def require_worker(self) -> list[dict[str, Any]]:
        read_at, workers = self._ready
        if not workers or time.monotonic() - read_at > READY_CACHE_SECONDS:
            workers = ready_workers(self.redis)
            self._ready = (time.monotonic(), workers)
        if not workers:
            raise ApiError(503, "no_ready_worker", "no verified worker is ready to serve",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return workers

    def submit(self, params: dict[str, Any], owner: str) -> Job:
        """Record and enqueue a job atomically, or answer 429 (queue full) / 503 (unusable)."""
        job_id = new_job_id()
        with self._refusals():
            return self.store.create(params, owner=owner, job_id=job_id, message=task_message(job_id),
                                     queue=QUEUE_NAME, max_queued=self.settings.max_queued)

    def run(self, params: dict[str, Any], owner: str, timeout: float) -> tuple[Job | None, Any, bool]:
        """Submit and wait for the job: (the job as last read, None if it vanished; its result if
        it succeeded; whether this read is the first to see it finished). A job that finishes
        within the first wait costs one round trip in all: the create, a BLPOP on its done
        list, and the reads queued behind it. Losing Redis after the submit does not fail the
        request: it blocks again once Redis is back, until the deadline."""
        deadline = time.monotonic() + timeout
        job_id = new_job_id()
        try:
            with self._refusals():
                done, result, first = self.store.create_and_await(
                    params, owner, timeout, job_id=job_id, message=task_message(job_id),
                    queue=QUEUE_NAME, max_queued=self.settings.max_queued)
        except BROKEN as broken:
            done, result, first = self._find(job_id, deadline, broken)
        while not (done is None or done.status in TERMINAL or time.monotonic() >= deadline):
            try:
                done, result, first = self.store.await_end(job_id, deadline - time.monotonic())
            except BROKEN:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(RECONNECT_DELAY)
        return done, result, first

    def _find(self, job_id: str, deadline: float, broken: Exception) -> tuple[Job | None, Any, bool]:
        """The connection broke during the create, so whether the job exists is unknown until
        Redis answers again. One never created is Redis's 503: nothing ran, a retry is safe."""
        while True:
            time.sleep(RECONNECT_DELAY)
            try:
                found = self.store.read(job_id, observe=True)
            except BROKEN:
                if time.monotonic() >= deadline:
                    raise broken from None
                continue
            if found[0] is None:
                raise broken
            return found

    @contextmanager
    def _refusals(self) -> Iterator[None]:
        """The store's refusals of a new job as API errors: 429 queue full, 503 unusable queue."""
        try:
            yield
        except QueueFull as full:
            raise ApiError(429, "queue_full",
                           f"{full.depth} {'job is' if full.depth == 1 else 'jobs are'} queued "
                           f"(BGE_M3_MAX_QUEUED={self.settings.max_queued})",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        except (redis_lib.exceptions.OutOfMemoryError, redis_lib.exceptions.ReadOnlyError):
            raise  # Redis's own refusal (the app's handler: 503 redis_unavailable), not the queue's
        except redis_lib.exceptions.ResponseError as exc:  # e.g. the queue key is not a list
            log.warning("enqueue failed: %s", exc)
            raise ApiError(503, "queue_unavailable", "the job queue is not usable; try again",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None

    # -- read ---------------------------------------------------------------------------------
    def visible(self, job_id: str, owner: str) -> Job:
        job = self.store.get(job_id) if _plausible_id(job_id) else None
        if job is None or job.owner != owner:
            raise ApiError(404, "job_not_found", f"no job {shown(job_id)} (unknown, expired or not yours)")
        return job

    def first_observation(self, job: Job) -> bool:
        """True exactly once per finished job, across API processes (for latency histograms)."""
        return self.store.observe(job.id)


def _plausible_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
