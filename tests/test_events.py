"""Waiting for jobs against a real redis-server: the API's shared event subscription
(bge_m3/events.py, long-polls) and a synchronous route's blocking wait (Backend.run)."""
from __future__ import annotations

import threading
import time

import pytest
import redis

from bge_m3.events import JobEvents
from bge_m3.jobs import JobStore
from bge_m3.records import events_key
from tests.support import RedisServer, wait_for


def _store(server: RedisServer) -> tuple[JobStore, JobEvents]:
    client = server.client(0)
    events = JobEvents(client, events_key("*"), events_key(""))
    return JobStore(client, ttl=60, events=events), events


def test_a_watch_wakes_for_its_own_job_only(tmp_path):
    server = RedisServer(tmp_path / "redis")
    store, events = _store(server)
    try:
        mine, other = store.create({}), store.create({})
        with events.watch(mine.id) as woke:
            store.fail(other.id, "x", "y")
            assert not woke.wait(0.3)
            store.fail(mine.id, "x", "y")
            assert woke.wait(5)
        started = time.monotonic()
        assert store.wait(mine.id, 10).status == "failed" and time.monotonic() - started < 1
    finally:
        events.close()
        server.stop()


def test_a_finish_published_while_the_subscription_is_down_is_not_missed(tmp_path):
    """Redis restarts; the job finishes before the listener has subscribed again (its PUBLISH
    reaches nobody). Every waiter is woken once the subscription is back and re-reads its job."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    store, events = _store(server)
    try:
        job = store.create({})
        server.wait_written()
        outcome: dict = {}
        waiter = threading.Thread(target=lambda: outcome.update(job=store.wait(job.id, 30)))
        waiter.start()
        # The waiter must be watching before the kill, or the test would not exercise the gap.
        wait_for(lambda: job.id in events._watchers, 10, what="the waiter watching its job")
        server.kill()
        server.start()
        JobStore(server.client(0), ttl=60).fail(job.id, "x", "finished during the gap")
        started = time.monotonic()
        waiter.join(20)
        assert not waiter.is_alive() and time.monotonic() - started < 10
        assert outcome["job"].status == "failed"
    finally:
        events.close()
        server.stop()


def test_a_sync_wait_survives_a_redis_restart(base_settings, tmp_path):
    """A synchronous request's blocking read breaks when Redis restarts; it blocks again once
    Redis is back and returns the job that finished meanwhile, well before its deadline."""
    from api.service import Backend
    from bge_m3.records import PREFIX

    server = RedisServer(tmp_path / "redis", appendonly=True)
    backend = Backend(base_settings.replace(redis_url=server.url(0)))
    outcome: dict = {}
    waiter = threading.Thread(target=lambda: outcome.update(
        run=backend.run({"texts": ["a"]}, "", timeout=30)))
    try:
        waiter.start()
        client = server.client(0)
        job_id = _wait_for(lambda: [k.rsplit(":", 1)[1] for k in client.scan_iter(f"{PREFIX}:job:*")])[0]
        server.wait_written()
        server.kill()
        time.sleep(0.3)
        server.start()
        store = JobStore(server.client(0), ttl=60)
        store.start(job_id, max_attempts=1)
        started = time.monotonic()
        store.succeed(job_id, {"items": [{"tokens": 1}]})
        waiter.join(20)
        assert not waiter.is_alive() and time.monotonic() - started < 5
        job, result, first = outcome["run"]
        assert (job.id, job.status, result, first) == (job_id, "succeeded", {"items": [{"tokens": 1}]}, True)
        server.kill()  # down from the start: the create's fate is unknown, and it never shows up
        started = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError):
            backend.run({"texts": ["b"]}, "", timeout=1)
        assert time.monotonic() - started < 3
    finally:
        server.stop()
        waiter.join(30)


def _wait_for(found, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError("nothing found")
