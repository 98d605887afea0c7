"""The worker's Celery app: the shared config plus what only a consuming worker needs.

Both ``bge-m3 worker`` and ``celery -A worker worker`` use this app, so both run
the same start-up gate in ``worker_init`` (see ``worker.signals``).
"""
from __future__ import annotations

from typing import Any

from bge_m3.queue import TASK_NAME, make_celery
from bge_m3.settings import Settings

PROC_ALIVE_TIMEOUT = 600.0
"""Seconds a (prefork) child may take to come up: above a cold 2.3 GB model load on a slow disk."""


def worker_config(settings: Settings) -> dict[str, Any]:
    # The transport's unacked-restore sweep (a quarter of the visibility timeout, at most 10 s)
    # is in the shared config (bge_m3.queue.celery_config), as the API sends with it too.
    return {
        # Each thread holds one job; the in-process batcher merges the threads' texts, so
        # the pool size *is* the batching window. Multiplier 1: at most worker_threads jobs
        # are reserved (unacked) by one worker, and a crash returns exactly those.
        "worker_pool": "threads",
        "worker_concurrency": settings.worker_threads,
        "worker_prefetch_multiplier": 1,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_retry_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_proc_alive_timeout": PROC_ALIVE_TIMEOUT,
        "worker_send_task_events": False,
        "worker_lost_wait": 10.0,
    }


def create_app(settings: Settings | None = None):
    settings = settings or Settings.from_env()
    app = make_celery(settings, name="bge_m3_worker")
    app.conf.update(worker_config(settings))
    app.bge_m3_settings = settings

    from worker import tasks

    app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True,
             max_retries=settings.max_retries, ignore_result=True)(tasks.embed)

    from worker import brokerfix, signals, steps

    brokerfix.install()
    signals.connect(app)
    app.steps["consumer"].add(steps.Consuming)
    return app
