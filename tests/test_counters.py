"""The worker's statistics counters (``worker.counters``) against a real Redis."""
from __future__ import annotations

import threading

import pytest
import redis

from worker.counters import STATS_TTL, Counters
from worker.pending import BatchStats


def _batch(texts: int, tokens: int, padded: int) -> BatchStats:
    return BatchStats(number=1, texts=texts, tokens=tokens, padded_tokens=padded, encode_ms=1.0, jobs=1)


def test_passes_are_written_with_the_next_terminal_write_only(redis_db):
    counters = Counters(redis_db, "stats:w1")
    counters.add_batch(_batch(3, 30, 36))
    counters.add_batch(_batch(1, 5, 5))
    assert redis_db.hgetall("stats:w1") == {}  # in memory until a job's end writes them
    pipe = counters.pipeline(jobs=1, texts=4)
    pipe.set("terminal-write", "1")  # what JobStore queues behind them
    pipe.execute()
    assert redis_db.hgetall("stats:w1") == {"forward_passes": "2", "batches": "2", "batch_texts": "4",
                                             "tokens": "35", "padded_tokens": "41", "jobs": "1",
                                             "texts": "4"}
    assert 0 < redis_db.ttl("stats:w1") <= STATS_TTL
    counters.pipeline(failed_jobs=1).execute()  # taken once: nothing is added twice
    assert redis_db.hget("stats:w1", "tokens") == "35" and redis_db.hget("stats:w1", "failed_jobs") == "1"
    counters.add_batch(_batch(2, 8, 8))
    counters.flush()  # the heartbeat's
    assert redis_db.hget("stats:w1", "forward_passes") == "3"


def test_a_failed_flush_loses_its_counts_rather_than_risk_counting_twice(redis_db, redis_server):
    gone = redis.Redis(unix_socket_path=str(redis_server.folder / "no-such.sock"), decode_responses=True)
    counters = Counters(gone, "stats:w2")
    counters.add_batch(_batch(1, 7, 7))
    with pytest.raises(redis.ConnectionError):
        counters.flush()
    counters.redis = redis_db
    counters.add_batch(_batch(1, 9, 9))
    counters.flush()
    assert redis_db.hgetall("stats:w2") == {"forward_passes": "1", "batches": "1", "batch_texts": "1",
                                             "tokens": "9", "padded_tokens": "9"}


def test_a_job_end_waits_for_a_heartbeat_flush_in_flight(redis_db):
    """Counters a flush took are in Redis before a job's own pipeline is built (readers rely on
    a finished job's passes being counted when they see it finished)."""
    counters = Counters(redis_db, "stats:w3")
    counters.add_batch(_batch(1, 4, 4))
    entered, release = threading.Event(), threading.Event()
    real_pipeline = redis_db.pipeline

    class SlowPipe:
        def __init__(self, pipe):
            self.pipe = pipe

        def __getattr__(self, name):
            return getattr(self.pipe, name)

        def execute(self):
            entered.set()
            release.wait(5)
            return self.pipe.execute()

    redis_db.pipeline = lambda **kw: SlowPipe(real_pipeline(**kw))
    flusher = threading.Thread(target=counters.flush)
    built: list = []
    ender = threading.Thread(target=lambda: built.append(counters.pipeline(jobs=1)))
    try:
        flusher.start()
        assert entered.wait(5)
        redis_db.pipeline = real_pipeline
        ender.start()
        ender.join(0.3)
        assert ender.is_alive() and not built  # held until the flush lands
    finally:
        redis_db.pipeline = real_pipeline
        release.set()
        flusher.join(5)
        if ender.ident is not None:  # started
            ender.join(5)
    assert redis_db.hget("stats:w3", "tokens") == "4" and built
    built[0].execute()
    assert redis_db.hget("stats:w3", "jobs") == "1" and redis_db.hget("stats:w3", "tokens") == "4"
