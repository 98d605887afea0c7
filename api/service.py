"""The API's one link to Redis: submit a job, read it, wait for it.

Submitting is one atomic script: the capacity check, the Celery message (by task name,
``bge_m3.queue.task_message``) and the job record with its TTL. Either both are written
or neither, so a client never sees a job id that no worker will ever receive, and a worker
never receives a message without its job. Waiting rides the process's one shared
subscription (``bge_m3.events``).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import redis as redis_lib

from api.errors import ApiError
from bge_m3.events import JobEvents
from bge_m3.jobs import TERMINAL, Job, JobStore, QueueFull, events_key, new_job_id
from bge_m3.queue import QUEUE_NAME, redis_client, task_message
from bge_m3.settings import Settings
from bge_m3.workers import ready_workers

log = logging.getLogger("bge_m3.api")

RETRY_AFTER_SECONDS = 5
"""``Retry-After`` sent with 429 (queue full) and 503 (nothing to serve)."""

READY_CACHE_SECONDS = 1.0
"""How long sync routes reuse one read of the readiness records (a SCAN per request otherwise);
small next to READY_TTL, the time a dead worker's record lingers anyway."""


class Backend:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.redis = redis_client(settings.redis_url)
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

    def submit(self, params: dict[str, Any], owner: str, job_id: str | None = None) -> Job:
        """Record and enqueue a job atomically, or answer 429 (queue full) / 503 (unusable)."""
        job_id = job_id or new_job_id()
        try:
            return self.store.create(params, owner=owner, job_id=job_id, message=task_message(job_id),
                                     queue=QUEUE_NAME, max_queued=self.settings.max_queued)
        except QueueFull as full:
            raise ApiError(429, "queue_full",
                           f"{full.depth} jobs are queued (BGE_M3_MAX_QUEUED={self.settings.max_queued})",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        except redis_lib.exceptions.ResponseError as exc:  # e.g. the queue key is not a list
            log.warning("enqueue failed: %s", exc)
            raise ApiError(503, "queue_unavailable", "the job queue is not usable; try again",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None

    def run(self, params: dict[str, Any], owner: str, timeout: float) -> tuple[Job | None, Any, bool]:
        """Submit and wait for the job: (the job as last read, None if it vanished; its result if
        it succeeded; whether this read is the first to see it finished). The watch is
        registered before the job exists, and the finished job, its result and that flag come
        back in one round trip."""
        job_id = new_job_id()
        with self.events.watch(job_id) as woke:
            self.submit(params, owner, job_id)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                woke.wait(max(0.0, left))
                woke.clear()
                done, result, first = self.store.read(job_id, observe=True)
                if done is None or done.status in TERMINAL or left <= 0:
                    return done, result, first

    # -- read ---------------------------------------------------------------------------------
    def visible(self, job_id: str, owner: str) -> Job:
        job = self.store.get(job_id) if _plausible_id(job_id) else None
        if job is None or job.owner != owner:
            raise ApiError(404, "job_not_found", f"no job {job_id} (unknown, expired or not yours)")
        return job

    def first_observation(self, job: Job) -> bool:
        """True exactly once per finished job, across API processes (for latency histograms)."""
        return self.store.observe(job.id)


def _plausible_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
