"""SIGKILL of a worker mid-job loses nothing: the unacked message comes back and a restarted worker
finishes the job. Redis restores a dead worker's unacked messages once they are older than the
visibility timeout, on the next worker's periodic restore pass, so this test uses a short one."""
from __future__ import annotations

import signal

import numpy as np

from tests.support import settings_on_db, spawn_worker, wait_for
from tests.worker_support import Queue

VISIBILITY = 8
"""Seconds before the dead worker's message is restored (the worker sweeps every 2 s then)."""


def test_sigkill_mid_job_then_restart_completes_the_job(base_settings, redis_server, tmp_path):
    settings = settings_on_db(base_settings, redis_server, "kill", visibility_timeout=VISIBILITY,
                              time_limit=VISIBILITY - 1, max_texts=20000, max_batch_tokens=1024)
    queue = Queue(settings)
    first = spawn_worker(settings, tmp_path)
    # Big enough that it is still running when the kill lands (small batches: many passes).
    rng = np.random.default_rng(3)
    words = "embedding vector search retrieval model dense sparse colbert hybrid".split()
    texts = [" ".join(rng.choice(words, size=30)) for _ in range(6000)]
    job_id = queue.submit(texts, ("dense",), max_length=64)
    wait_for(lambda: queue.store.get(job_id).status == "running", 30, 0.01, "job running")
    first.stop(signal.SIGKILL)
    assert first.proc.returncode == -signal.SIGKILL
    job = queue.store.get(job_id)
    assert job.status == "running" and job.attempts == 1  # killed mid-job, nothing recorded

    second = spawn_worker(settings, tmp_path)
    try:
        job = queue.wait(job_id, VISIBILITY + 40)
        assert job.status == "succeeded", (job.status, job.error, second.output()[-2000:])
        assert job.attempts == 2
        assert len(queue.store.result(job_id)["items"]) == len(texts)
    finally:
        second.stop()
        queue.close()
