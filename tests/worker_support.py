"""Helpers for the worker tests: enqueue without the API, read results back as numpy."""
from __future__ import annotations

from typing import Any

from bge_m3 import codec
from bge_m3.jobs import JobStore
from bge_m3.queue import TASK_NAME, make_celery, redis_client
from bge_m3.settings import Settings


class Queue:
    """Create job records and send their messages exactly as the API does."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.redis = redis_client(settings.redis_dsn)
        self.store = JobStore(self.redis, settings.result_ttl)
        self.celery = make_celery(settings)

    def submit(self, texts: list[Any], modes: tuple[str, ...] = ("dense",), max_length: int = 512,
               truncate: bool = True) -> str:
        job = self.store.create({"texts": texts, "modes": list(modes), "max_length": max_length,
                                 "truncate": truncate})
        self.send(job.id)
        return job.id

    def send(self, job_id: str) -> None:
        """Send the message of a job record already created."""
        self.celery.send_task(TASK_NAME, kwargs={"job_id": job_id}, task_id=job_id)

    def wait(self, job_id: str, timeout: float = 60.0):
        """Block (pub/sub) until the job is terminal or ``timeout`` passes."""
        return self.store.wait(job_id, timeout)

    def stats(self, hostname: str) -> dict[str, int]:
        from bge_m3.workers import STATS_PREFIX

        return {k: int(v) for k, v in self.redis.hgetall(STATS_PREFIX + hostname).items()}

    def close(self) -> None:
        self.celery.close()


def dense(item: dict) -> Any:
    import numpy as np

    return np.array(codec.unpack_floats(item["dense"]), dtype=np.float32)


def colbert(item: dict) -> Any:
    import numpy as np

    shape = item["colbert"]["shape"]
    return np.array(codec.unpack_floats(item["colbert"]), dtype=np.float32).reshape(shape)
