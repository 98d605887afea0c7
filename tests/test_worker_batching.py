"""Batching across jobs in a real worker: shared forward passes, big jobs split, failures isolated."""
from __future__ import annotations

import numpy as np
import pytest

from tests.support import settings_on_db, spawn_worker
from tests.worker_support import Queue, dense

BATCH_TOKENS = 2048


@pytest.fixture(scope="module")
def served(base_settings, redis_server, tmp_path_factory):
    # A 20 ms linger makes sharing independent of how fast this busy CI box delivers messages.
    settings = settings_on_db(base_settings, redis_server, "batching", batch_wait_ms=20.0,
                              max_batch_tokens=BATCH_TOKENS, max_texts=5000)
    worker = spawn_worker(settings, tmp_path_factory.mktemp("batching-worker"))
    queue = Queue(settings)
    yield queue, worker
    queue.close()
    worker.stop()


def test_concurrent_jobs_share_forward_passes(served):
    queue, worker = served
    before = queue.stats(worker.hostname)
    ids = [queue.submit([f"job {i} says hello world", f"weather today {i}"], ("dense", "sparse"))
           for i in range(32)]
    jobs = [queue.wait(job_id, 60) for job_id in ids]
    assert [job.status for job in jobs] == ["succeeded"] * 32, [j.error for j in jobs]
    after = queue.stats(worker.hostname)
    passes = after["forward_passes"] - before.get("forward_passes", 0)
    assert after["jobs"] - before.get("jobs", 0) == 32
    assert after["texts"] - before.get("texts", 0) == 64
    assert 1 <= passes < 32, passes
    assert all(job.stats["forward_passes"] >= 1 for job in jobs)


def test_large_job_is_split_across_token_budget_batches(served, tiny_model):
    from tokenizers import Tokenizer

    queue, _ = served
    rng = np.random.default_rng(7)
    words = "the quick brown fox jumps over lazy dog query document 今天 天气".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(0, 40)))) for _ in range(3000)]
    job = queue.wait(queue.submit(texts, ("dense",), max_length=512), 120)
    assert job.status == "succeeded", job.error
    items = queue.store.result(job.id)["items"]
    tokenizer = Tokenizer.from_file(str(tiny_model.dir / "tokenizer.json"))
    expected = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    assert [item["tokens"] for item in items] == expected  # every text, in order
    assert job.stats["tokens"] == sum(expected)
    assert job.stats["forward_passes"] >= sum(expected) // BATCH_TOKENS
    # The same text gives the same vector whichever batch it landed in.
    first = {}
    for text, item in zip(texts, items):
        if text in first:
            assert np.allclose(dense(item), first[text], atol=1e-5)
        first.setdefault(text, dense(item))


def test_big_colbert_result_is_streamed_while_the_job_runs(served):
    """A result over bge_m3.staging.FLUSH_BYTES goes to Redis in stretches while its job runs and
    lands whole, in order, at the finish; a small one travels with the finish alone."""
    from bge_m3.staging import FLUSH_BYTES

    queue, _ = served
    words = "the quick brown fox jumps over lazy dog query document passage".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(40 + i % 20)) for i in range(2500)]
    job = queue.wait(queue.submit(texts, ("dense", "colbert"), max_length=512), 180)
    assert job.status == "succeeded", job.error
    assert job.stats["streamed_bytes"] >= FLUSH_BYTES
    items = queue.store.result(job.id)["items"]
    assert len(items) == len(texts)
    assert all(item["colbert"]["shape"] == [item["tokens"] - 1, 32] for item in items)
    assert sum(item["tokens"] for item in items) == job.stats["tokens"]
    assert queue.store.result_bytes(job.id) > FLUSH_BYTES
    assert queue.redis.keys("bge-m3:staging:*") == []
    small = queue.wait(queue.submit(["a small one"], ("dense", "colbert")))
    assert small.status == "succeeded" and small.stats["streamed_bytes"] == 0


def test_bad_input_fails_only_its_own_job(served):
    queue, _ = served
    long_text = "dense sparse colbert " * 400
    bad = queue.submit(["fine", long_text], ("dense",), max_length=256, truncate=False)
    good = [queue.submit(["fine", long_text], ("dense", "colbert"), max_length=256) for _ in range(3)]
    wrong_type = queue.submit(["ok", 7], ("dense",))
    empty = queue.submit([], ("dense",))
    bad_job = queue.wait(bad)
    assert bad_job.status == "failed"
    assert bad_job.error["code"] == "too_long"
    assert "texts[1]" in bad_job.error["message"] and "256" in bad_job.error["message"]
    for job_id in good:
        job = queue.wait(job_id)
        assert job.status == "succeeded", job.error
        assert [item["tokens"] for item in queue.store.result(job_id)["items"]][1] == 256
    for job_id, fragment in ((wrong_type, "texts[1] is not a string"), (empty, "non-empty")):
        job = queue.wait(job_id)
        assert job.status == "failed" and job.error["code"] == "invalid_request"
        assert fragment in job.error["message"]
    assert queue.store.result(bad) is None


def test_empty_text_is_valid(served):
    queue, _ = served
    job = queue.wait(queue.submit(["", "x"], ("dense", "sparse", "colbert")))
    assert job.status == "succeeded", job.error
    empty = queue.store.result(job.id)["items"][0]
    assert empty["tokens"] == 2 and empty["sparse"] == {"indices": [], "values": []}
    assert empty["colbert"]["shape"] == [1, 32] and empty["colbert"]["dtype"] == "float16"


def test_readiness_record(served, tiny_model):
    import json

    from verify.manifest import load_manifest

    queue, worker = served
    info = json.loads(queue.redis.get("bge-m3:worker:" + worker.hostname))
    manifest = load_manifest(tiny_model.manifest)
    assert info["model"] == manifest.repo_id and info["revision"] == manifest.revision
    assert info["manifest_digest"] == manifest.digest()
    assert info["max_batch_tokens"] == BATCH_TOKENS and info["dimension"] == 32
    assert info["device"] == "cpu" and info["dtype"] == "float32" and info["pid"] == worker.proc.pid
    assert info["accepting"] is True and len(info["instance"]) == 16  # consuming, not draining
    # torch, transformers and the model are frozen out of the collector after the warm-up.
    assert info["frozen_objects"] > 100_000
    assert 0 < queue.redis.ttl("bge-m3:worker:" + worker.hostname) <= 15


def test_poison_job_ends_failed_instead_of_looping(served):
    """A job whose earlier deliveries all died with their worker (attempts at the limit) is failed
    by the next delivery, not run again: JobStore.start's counter spans redeliveries."""
    from bge_m3.records import job_key

    queue, worker = served
    job = queue.store.create({"texts": ["kills workers"], "modes": ["dense"], "max_length": 64,
                              "truncate": True})
    limit = queue.settings.max_retries + 1
    queue.redis.hset(job_key(job.id), mapping={"status": "running", "attempts": limit})
    queue.celery.send_task("bge_m3.embed", kwargs={"job_id": job.id}, task_id=job.id)
    done = queue.wait(job.id)
    assert done.status == "failed" and done.error["code"] == "worker_lost"
    assert done.attempts == limit + 1
