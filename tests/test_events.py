"""The API's shared job-event subscription (bge_m3/events.py) against a real redis-server."""
from __future__ import annotations

import threading
import time

from bge_m3.events import JobEvents
from bge_m3.jobs import JobStore, events_key
from tests.support import RedisServer


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
        time.sleep(1.2)  # appendfsync everysec: the record is on disk before the kill
        outcome: dict = {}
        waiter = threading.Thread(target=lambda: outcome.update(job=store.wait(job.id, 30)))
        waiter.start()
        time.sleep(0.3)
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
