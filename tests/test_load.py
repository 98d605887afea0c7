"""Load through the real stack: 2,000 jobs from 50 concurrent HTTP clients, mixed sizes and modes,
with 1 and with 2 worker processes. Every job completes once and equals a direct encode.

Texts are at most MAX_CHARS characters here so each run takes about a minute on the 2-core CI
box; ``bench/load_bench.py`` runs the same code with texts up to 2,000 characters (README).
"""
from __future__ import annotations

import pytest

from bench.load_bench import check, job_specs, report, run_load, text_pool
from bge_m3.records import PREFIX
from tests.stack_support import Reference, start_api
from tests.support import settings_on_db

pytestmark = pytest.mark.slow

JOBS = 2000
CLIENTS = 50
MAX_CHARS = 60
"""Longest text of the test's mix (the bench uses 2,000)."""


@pytest.fixture(scope="module")
def workload(tiny_model):
    pool = text_pool(MAX_CHARS)
    return pool, Reference(tiny_model.dir).items(pool), job_specs(JOBS)


@pytest.mark.parametrize("workers", [1, 2])
def test_load_every_job_once_and_correct(workers, workload, base_settings, redis_server,
                                         worker_factory, tmp_path):
    pool, reference, specs = workload
    settings = settings_on_db(base_settings, redis_server, "load", max_queued=JOBS + 1)
    started = [worker_factory(settings) for _ in range(workers)]
    api = start_api(settings, tmp_path, threads=CLIENTS + 8)
    try:
        outcomes, wall = run_load(api.url, pool, specs, CLIENTS)
    finally:
        api.stop()
    problems = check(outcomes, specs, reference)
    assert problems == [], problems[:10]
    redis = redis_server.client(int(settings.redis_url.rsplit("=", 1)[1]))
    records = list(redis.scan_iter(f"{PREFIX}:job:*", count=1000))
    assert len(records) == JOBS
    pipe = redis.pipeline(transaction=False)
    for key in records:
        pipe.hget(key, "attempts")
    assert set(pipe.execute()) == {"1"}  # no job ran twice
    done = sum(int(redis.hget(f"bge-m3:stats:{w.hostname}", "jobs") or 0) for w in started)
    assert done == JOBS
    print("\n" + "\n".join(report(outcomes, wall, CLIENTS, workers).lines()))
