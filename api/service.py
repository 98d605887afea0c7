"""The API's one link to Redis and Celery: submit a job, read it, wait for it.

Order of writes: the job record (with its TTL) goes to Redis first, then the
message is published by task name; if publishing fails the record is deleted,
so a client never sees a job id that no worker will ever receive.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from api.errors import ApiError
from bge_m3.jobs import Job, JobStore, job_key
from bge_m3.queue import QUEUE_NAME, TASK_NAME, make_celery, queue_depth, redis_client
from bge_m3.settings import Settings
from bge_m3.workers import ready_workers

log = logging.getLogger("bge_m3.api")

PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
"""Bounds how long a publish retries against a broken broker before the API answers 503."""

RETRY_AFTER_SECONDS = 5
"""``Retry-After`` sent with 429 (queue full) and 503 (nothing to serve)."""

READY_CACHE_SECONDS = 1.0
"""How long sync routes reuse one read of the readiness records (a SCAN per request otherwise);
small next to READY_TTL, the time a dead worker's record lingers anyway."""

OBSERVED_FIELD = "observed"
"""Job-hash field set once by the first API process to record a finished job's latency."""

_OBSERVE_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], ARGV[1], '1')
"""


class Backend:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.redis = redis_client(settings.redis_url)
        self.store = JobStore(self.redis, settings.result_ttl)
        self.celery = make_celery(settings, name="bge_m3_api")
        self._observe_once = self.redis.register_script(_OBSERVE_ONCE)
        self._ready: tuple[float, list[dict[str, Any]]] = (0.0, [])

    # -- submit -------------------------------------------------------------------------------
    def check_capacity(self) -> None:
        depth = queue_depth(self.redis)
        if depth >= self.settings.max_queued:
            raise ApiError(429, "queue_full",
                           f"{depth} jobs are queued (BGE_M3_MAX_QUEUED={self.settings.max_queued})",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

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
        self.check_capacity()
        job = self.store.create(params, owner=owner)
        try:
            self.celery.send_task(TASK_NAME, kwargs={"job_id": job.id}, task_id=job.id,
                                  queue=QUEUE_NAME, retry=True, retry_policy=PUBLISH_RETRY)
        except Exception as exc:  # kombu raises many kinds; all mean "not published"
            log.warning("publish of job %s failed: %s", job.id, type(exc).__name__)
            try:
                self.store.delete(job.id)
            except Exception:  # Redis gone too: the record's TTL still bounds its life
                log.warning("could not delete unpublished job %s", job.id)
            raise ApiError(503, "queue_unavailable", "the job queue is not reachable; try again",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        return job

    # -- read ---------------------------------------------------------------------------------
    def visible(self, job_id: str, owner: str) -> Job:
        job = self.store.get(job_id) if _plausible_id(job_id) else None
        if job is None or job.owner != owner:
            raise ApiError(404, "job_not_found", f"no job {job_id} (unknown, expired or not yours)")
        return job

    def first_observation(self, job: Job) -> bool:
        """True exactly once per finished job, across API processes (for latency histograms)."""
        return bool(self._observe_once(keys=[job_key(job.id)], args=[OBSERVED_FIELD]))


def _plausible_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
