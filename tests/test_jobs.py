"""JobStore: the Redis contract between API and workers, against a real redis-server (db 1)."""
from __future__ import annotations

import os
import threading
import time

import pytest

from bge_m3 import codec
from bge_m3.jobreader import CREATE_SLICE_SECONDS
from bge_m3.jobs import JobStore
from bge_m3.records import done_key, job_key, new_job_id, result_key


def store(redis_db) -> JobStore:
    return JobStore(redis_db, ttl=60)


def test_ids_are_128_bit_random():
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_lifecycle_and_single_finish(redis_db):
    jobs = store(redis_db)
    job = jobs.create({"texts": ["a"], "modes": ["dense"]}, owner="o")
    assert jobs.get(job.id).status == "queued" and 0 < redis_db.ttl(job_key(job.id)) <= 60
    assert jobs.start(job.id, max_attempts=2, worker="w") == ("running", 1)
    assert jobs.succeed(job.id, {"items": [1]}, stats={"tokens": 3}) == "ok"
    # A redelivered duplicate can neither restart nor overwrite a finished job.
    assert jobs.start(job.id, max_attempts=2)[0] == "succeeded"
    assert jobs.fail(job.id, "x", "y") == "succeeded"
    done = jobs.get(job.id)
    assert (done.status, done.stats, done.error, done.owner) == ("succeeded", {"tokens": 3}, None, "o")
    assert jobs.result(job.id) == {"items": [1]}


def test_cancel_only_while_queued(redis_db):
    jobs = store(redis_db)
    queued, running = jobs.create({}), jobs.create({})
    jobs.start(running.id, max_attempts=1)
    assert jobs.cancel(queued.id) == "ok" and jobs.get(queued.id).status == "cancelled"
    assert jobs.start(queued.id, max_attempts=1)[0] == "cancelled"
    assert jobs.cancel(running.id) == "running"
    assert jobs.cancel("0" * 32) == "missing"


def test_a_cancel_gives_the_record_and_its_done_list_the_result_ttl_from_now(redis_db):
    # A job queued for most of its TTL must not vanish seconds after it was cancelled.
    jobs = JobStore(redis_db, ttl=3600)
    job = jobs.create({}, notify=True)
    redis_db.expire(job_key(job.id), 30)
    assert jobs.cancel(job.id) == "ok"
    assert redis_db.ttl(job_key(job.id)) > 3500
    assert redis_db.ttl(done_key(job.id)) > 3500


def test_poison_job_exhausts_its_attempts(redis_db):
    jobs = store(redis_db)
    job = jobs.create({})
    assert [jobs.start(job.id, max_attempts=2)[0] for _ in range(3)] == ["running", "running", "exhausted"]


def test_create_pushes_the_message_with_the_record_or_nothing(redis_db):
    from bge_m3.records import QueueFull

    jobs = store(redis_db)
    job = jobs.create({"texts": ["a"]}, message="m1", queue="q", max_queued=2)
    assert redis_db.lrange("q", 0, -1) == ["m1"] and jobs.get(job.id).params == {"texts": ["a"]}
    jobs.create({}, message="m2", queue="q", max_queued=2)
    with pytest.raises(QueueFull) as full:  # at the bound: neither a record nor a message
        jobs.create({}, job_id="f" * 32, message="m3", queue="q", max_queued=2)
    assert full.value.depth == 2 and jobs.get("f" * 32) is None and redis_db.llen("q") == 2
    redis_db.set("bad", "not a list")
    with pytest.raises(Exception, match="WRONGTYPE"):  # the push fails first: nothing written
        jobs.create({}, job_id="e" * 32, message="m4", queue="bad")
    assert jobs.get("e" * 32) is None


def test_wait_wakes_on_finish(redis_db):
    jobs = store(redis_db)
    job = jobs.create({})
    threading.Timer(0.3, lambda: jobs.fail(job.id, "boom", "it failed")).start()
    started = time.monotonic()
    done = jobs.wait(job.id, timeout=20)
    assert done.status == "failed" and done.error == {"code": "boom", "message": "it failed"}
    assert time.monotonic() - started < 10, "wait did not wake on the event"
    assert jobs.wait(job.id, timeout=5).status == "failed"
    assert jobs.wait("f" * 32, timeout=1) is None


def test_await_end_blocks_in_redis_and_returns_the_finished_job_with_its_result(redis_db):
    jobs = store(redis_db)
    plain = jobs.create({})
    jobs.succeed(plain.id, {"items": []})
    assert not redis_db.exists(done_key(plain.id))  # only a notify job gets a done list

    job = jobs.create({"texts": ["a"]}, notify=True)
    threading.Timer(0.3, lambda: jobs.succeed(job.id, {"items": [7]}, stats={"tokens": 1})).start()
    started = time.monotonic()
    done, result, first = jobs.await_end(job.id, 4.5)
    assert time.monotonic() - started < 4, "the BLPOP did not wake on the finish"
    assert (done.status, result, first) == ("succeeded", {"items": [7]}, True)
    assert not redis_db.exists(done_key(job.id))  # popped
    assert jobs.read(job.id, observe=True)[2] is False  # observed once

    ended = jobs.create({}, notify=True)  # an end before the wait is kept for it, with a TTL
    jobs.fail(ended.id, "boom", "failed early")
    assert 0 < redis_db.ttl(done_key(ended.id)) <= 60
    assert jobs.await_end(ended.id, 4.5)[0].error == {"code": "boom", "message": "failed early"}

    cancelled = jobs.create({}, notify=True)
    assert jobs.cancel(cancelled.id) == "ok" and redis_db.lrange(done_key(cancelled.id), 0, -1) == ["cancelled"]
    assert 0 < redis_db.ttl(done_key(cancelled.id)) <= 60

    pending = jobs.create({}, notify=True)
    started = time.monotonic()
    assert jobs.await_end(pending.id, 0.2)[:2] == (jobs.get(pending.id), None)
    assert 0.15 < time.monotonic() - started < 3
    assert jobs.await_end(pending.id, 0)[0].status == "queued"  # no time left: a plain read
    redis_db.script_flush()  # NOSCRIPT after the BLPOP popped: re-read, not block again
    jobs.succeed(pending.id, {"items": []})
    started = time.monotonic()
    assert jobs.await_end(pending.id, 4.5)[0].status == "succeeded"
    assert time.monotonic() - started < 3


def test_create_and_await_is_one_round_trip_that_never_blocks_on_a_refusal(redis_db):
    """A synchronous route creates its job and blocks on its end in one pipeline; a refused
    create (queue full, unusable queue) must not leave the BLPOP behind it to run its time."""
    from bge_m3.records import QueueFull, done_key

    jobs = store(redis_db)
    kw = {"owner": "o", "timeout": 1.0, "message": "m", "queue": "q", "max_queued": 1}
    started = time.monotonic()
    job, result, first = jobs.create_and_await({"texts": ["a"]}, job_id="a" * 32, **kw)
    # Nothing finished it: the first wait ran its time, one short slice (a caller waits on).
    assert CREATE_SLICE_SECONDS - 0.1 < time.monotonic() - started < 3
    assert (job.status, job.owner, result, first) == ("queued", "o", None, False)
    assert redis_db.lrange("q", 0, -1) == ["m"] and jobs.get("a" * 32).params == {"texts": ["a"]}
    started = time.monotonic()
    with pytest.raises(QueueFull):
        jobs.create_and_await({}, job_id="b" * 32, **kw)
    redis_db.set("bad", "not a list")
    with pytest.raises(Exception, match="WRONGTYPE"):
        jobs.create_and_await({}, job_id="c" * 32, **{**kw, "queue": "bad", "max_queued": 0})
    with pytest.raises(Exception, match="WRONGTYPE"):
        jobs.create_and_await({}, job_id="d" * 32, **{**kw, "queue": "bad"})
    assert time.monotonic() - started < 0.9, "a refused create left its BLPOP blocking"
    assert all(jobs.get(i * 32) is None and not redis_db.exists(done_key(i * 32)) for i in "bcd")
    assert redis_db.llen("q") == 1

    redis_db.delete("q")
    threading.Timer(0.3, lambda: jobs.succeed("e" * 32, {"items": [1]})).start()
    done, result, first = jobs.create_and_await({}, job_id="e" * 32, **kw)
    assert (done.status, result, first) == ("succeeded", {"items": [1]}, True)


def test_colbert_at_rest_is_compact(redis_db):
    """float16 ColBERT vectors cost at most 2.1 bytes a value in Redis (issue target), stored
    the way a worker stores them (one chunk per item, the vectors' bytes raw)."""
    from bge_m3.payload import ItemsResult

    jobs = store(redis_db)
    rows, dim = 300, 1024
    items, built = [], ItemsResult({"model": "m"}, 2)
    for i in range(2):
        data = os.urandom(rows * dim * 2)
        # random bytes can spell NaN/inf in float16; the size bound does not care
        items.append({"tokens": rows + 1, "colbert": codec.pack(data, [rows, dim], "float16")})
        built.add(i, [b'{"tokens":%d,"colbert":' % (rows + 1),
                      *codec.pack_json_parts(data, [rows, dim], "float16"), b"}"])
    job = jobs.create({})
    jobs.start(job.id, max_attempts=1)
    jobs.succeed_chunks(job.id, built.chunks())
    stored = jobs.result_bytes(job.id)
    assert 0 < stored / (2 * rows * dim * len(items)) <= 2.1
    assert jobs.result(job.id)["items"] == items


def test_items_result_out_of_order_and_a_duplicate_finish_leaves_nothing_behind(redis_db):
    import json

    from bge_m3.payload import ItemsResult

    jobs = store(redis_db)
    items = [{"tokens": i, "colbert": codec.pack(os.urandom(600), [300], "float16")} for i in range(20)]
    built = ItemsResult({"model": "m", "dimension": 2}, len(items))
    with pytest.raises(ValueError):
        built.chunks()
    for i in reversed(range(len(items))):  # batches finish in length order, not job order
        built.add(i, [json.dumps(items[i]).encode()])
    job = jobs.create({})
    jobs.start(job.id, max_attempts=1)
    assert jobs.succeed_chunks(job.id, built.chunks()) == "ok"
    assert redis_db.llen(result_key(job.id)) == len(items) + 2
    assert jobs.result(job.id) == {"model": "m", "dimension": 2, "items": items}
    # A redelivered duplicate's result is dropped with its staging key; the first one stays.
    assert jobs.succeed(job.id, {"items": []}) == "succeeded"
    assert jobs.result(job.id)["items"] == items
    assert redis_db.keys("bge-m3:staging:*") == []
    assert 0 < redis_db.ttl(result_key(job.id)) <= 60


def test_empty_items_result_is_valid_json(redis_db):
    from bge_m3.payload import ItemsResult, decode

    assert decode(ItemsResult({"model": "m"}, 0).chunks()) == {"model": "m", "items": []}


def test_finish_survives_a_script_flush_and_big_results_are_staged(redis_db, monkeypatch):
    """After a Redis restart the finish script is gone (NOSCRIPT): it is loaded again. A result
    over the inline bound goes through a staging key and lands the same."""
    import json

    from bge_m3 import jobs as jobs_module
    from bge_m3.payload import ItemsResult

    jobs = store(redis_db)
    job = jobs.create({})
    jobs.start(job.id, max_attempts=1)
    redis_db.script_flush()
    pipe = redis_db.pipeline(transaction=False)
    pipe.hincrby("counter", "jobs", 1)
    assert jobs.succeed_chunks(job.id, ItemsResult({}, 0).chunks(), pipe=pipe) == "ok"
    assert jobs.result(job.id) == {"items": []} and redis_db.hget("counter", "jobs") == "1"

    monkeypatch.setattr(jobs_module, "INLINE_RESULT_BYTES", 10)
    big = jobs.create({})
    jobs.start(big.id, max_attempts=1)
    items = [{"tokens": i} for i in range(5)]
    built = ItemsResult({"model": "m"}, len(items))
    for i, item in enumerate(items):
        built.add(i, [json.dumps(item).encode()])
    assert jobs.succeed_chunks(big.id, built.chunks()) == "ok"
    assert jobs.result(big.id) == {"model": "m", "items": items}
    assert redis_db.keys("bge-m3:staging:*") == []


def test_claim_takes_the_lease_and_returns_the_input(redis_db):
    jobs = store(redis_db)
    job = jobs.create({"texts": ["a"]})
    first = jobs.claim(job.id, max_attempts=3, worker="w1", lease="lease:x", lease_ttl=30)
    assert (first.state, first.attempt, first.params) == ("running", 1, {"texts": ["a"]})
    assert first.created_at == job.created_at and 0 < redis_db.ttl("lease:x") <= 30
    # A second delivery while the lease is held neither starts nor counts an attempt.
    assert jobs.claim(job.id, max_attempts=3, worker="w2", lease="lease:x", lease_ttl=30).state == "leased"
    assert jobs.get(job.id).attempts == 1
    jobs.fail(job.id, "x", "y")
    assert jobs.claim(job.id, max_attempts=3, lease="lease:x", lease_ttl=30).state == "failed"


def test_claim_sets_the_holder_and_keeps_a_started_record_alive(redis_db):
    """A job that starts late in its result TTL (a backlog, a redelivery) keeps its record for
    its time limit at least, so the finish does not find it expired; a longer TTL is kept."""
    jobs = JobStore(redis_db, ttl=5)
    job = jobs.create({"texts": ["a"]})
    claimed = jobs.claim(job.id, max_attempts=3, worker="w1", lease="lease:h", lease_ttl=30,
                         holder="w1|i1|t1", keep_for=600)
    assert claimed.state == "running" and 590 < redis_db.ttl(job_key(job.id)) <= 600
    assert redis_db.get("lease:h") == "w1|i1|t1" and redis_db.hget(job_key(job.id), "worker") == "w1"
    long_lived = JobStore(redis_db, ttl=3600).create({"texts": ["b"]})
    jobs.claim(long_lived.id, max_attempts=3, worker="w1", keep_for=600)
    assert redis_db.ttl(job_key(long_lived.id)) > 3000


def test_a_claim_retried_after_a_lost_reply_is_answered_again(redis_db):
    """START ran but its reply was lost: the same delivery asking again (same lease value) gets
    the same claim, with no second attempt counted; any other delivery is told it is leased."""
    jobs = store(redis_db)
    job = jobs.create({"texts": ["a"]})
    kw = {"max_attempts": 3, "worker": "w1", "lease": "lease:r", "lease_ttl": 30}
    first = jobs.claim(job.id, holder="w1|i1|t1", **kw)
    again = jobs.claim(job.id, holder="w1|i1|t1", **kw)
    assert (again.state, again.attempt, again.params) == ("running", 1, {"texts": ["a"]}) == \
        (first.state, first.attempt, first.params)
    assert jobs.claim(job.id, holder="w1|i1|t2", **kw).state == "leased"
    assert jobs.get(job.id).attempts == 1


def test_a_cancel_takes_the_message_off_the_queue(redis_db):
    jobs = store(redis_db)
    job = jobs.create({"texts": ["a"]}, message='{"m": 1}', queue="q")
    other = jobs.create({"texts": ["b"]}, message='{"m": 2}', queue="q")
    assert jobs.cancel(job.id, "q") == "ok" and redis_db.lrange("q", 0, -1) == ['{"m": 2}']
    redis_db.delete("q")
    redis_db.set("q", "not a list")  # an unusable queue does not stop the cancel
    assert jobs.cancel(other.id, "q") == "ok" and jobs.get(other.id).status == "cancelled"


def test_a_lease_is_released_only_by_its_holder(redis_db):
    jobs = store(redis_db)
    redis_db.set("lease:y", "w1", ex=30)
    assert not jobs.release_lease("lease:y", "w2") and redis_db.get("lease:y") == "w1"
    assert jobs.release_lease("lease:y", "w1") and not redis_db.exists("lease:y")


def test_a_handed_back_job_reads_queued_only_while_its_holder_holds_the_lease(redis_db):
    """A delivery that hands its job back releases its lease with the job's id: the job reads
    queued again (not running, which nothing does), unless another delivery took the lease or
    the job ended meanwhile."""
    jobs = store(redis_db)
    job, ended = (jobs.create({"texts": ["a"]}) for _ in range(2))
    for one, holder in ((job, "w1"), (ended, "w2")):
        assert jobs.claim(one.id, 3, worker="w", lease=f"lease:{one.id}", lease_ttl=30,
                          holder=holder).state == "running"
    assert not jobs.release_lease(f"lease:{job.id}", "w9", requeue=job.id)  # not its holder
    assert jobs.get(job.id).status == "running"
    assert jobs.release_lease(f"lease:{job.id}", "w1", requeue=job.id)
    back = jobs.get(job.id)
    assert (back.status, back.started_at, back.attempts) == ("queued", None, 1)
    assert jobs.claim(job.id, 3, worker="w", lease=f"lease:{job.id}", lease_ttl=30,
                      holder="w3").attempt == 2  # the next delivery claims it as usual
    jobs.fail(ended.id, "x", "y")
    assert jobs.release_lease(f"lease:{ended.id}", "w2", requeue=ended.id)
    assert jobs.get(ended.id).status == "failed"  # an ended job stays ended


def test_a_staged_result_missing_a_chunk_is_never_published(redis_db):
    """A push of the streamed result can fail (Redis out of memory) while the finish that
    follows in the same pipeline still runs: it must not rename the partial list into place."""
    import json

    from bge_m3.payload import ItemsResult
    from bge_m3.staging import Staging

    jobs = store(redis_db)
    job = jobs.create({})
    jobs.start(job.id, max_attempts=1)
    built = ItemsResult({"model": "m"}, 3)
    for i in range(3):
        built.add(i, [json.dumps({"tokens": i}).encode()])
    staging = Staging(redis_db, job.id, 60, flush_bytes=1)  # every chunk is sent at once
    staging.add(built.chunks())
    redis_db.rpop(staging.key)  # the lost push
    counts = ("stats:w", {"jobs": 1, "texts": 3})  # a worker's, added only by a finish that lands
    assert jobs.succeed_staged(job.id, staging, counts=counts) == "incomplete"
    assert jobs.get(job.id).status == "running" and not redis_db.exists(result_key(job.id))
    assert redis_db.keys("bge-m3:staging:*") == [] and not redis_db.exists("stats:w")
    # The whole result, sent again, lands.
    again = Staging(redis_db, job.id, 60, flush_bytes=1)
    again.add(built.chunks())
    assert jobs.succeed_staged(job.id, again, counts=counts) == "ok" and jobs.result(job.id)["items"] == [
        {"tokens": i} for i in range(3)]
    assert redis_db.hgetall("stats:w") == {"jobs": "1", "texts": "3"}
    late = Staging(redis_db, job.id, 60, flush_bytes=1)  # a duplicate delivery's finish: a no-op
    late.add(built.chunks())
    assert jobs.succeed_staged(job.id, late, counts=counts) == "succeeded"
    assert redis_db.hgetall("stats:w") == {"jobs": "1", "texts": "3"}
    assert "+jobs" not in redis_db.hgetall(job_key(job.id))


def test_take_ready_hands_out_each_item_once_as_added_and_the_reader_restores_the_order():
    import json

    from bge_m3.payload import INDEX, ItemsResult, decode

    items = [{"tokens": i} for i in range(6)]
    built = ItemsResult({"model": "m"}, len(items))
    taken = built.take_ready()
    assert len(taken) == 1  # the head only
    for i in (2, 1, 0, 5, 3):  # out of order
        built.add(i, [json.dumps(items[i]).encode()])
        ready = built.take_ready()
        assert [json.loads(payload_text(c).lstrip(b",")) for c in ready] == [items[i]], i
        taken += ready
    built.add(4, [json.dumps(items[4]).encode()])
    last = built.take_ready()
    assert len(last) == 3 and last[-1][:1] == INDEX  # the item, the tail, the index
    taken += last
    assert built.take_ready() == []
    assert decode(taken) == {"model": "m", "items": items}
    with pytest.raises(ValueError):
        built.chunks()  # handed out already: never twice
    with pytest.raises(ValueError):
        built.add(4, [b"{}"])
    with pytest.raises(ValueError, match="index"):
        decode(taken[:3] + taken[4:])  # an item lost: refused, not misread
    in_order = ItemsResult({}, 2)
    for i in range(2):
        in_order.add(i, [json.dumps(items[i]).encode()])
    stored = in_order.take_ready()
    assert stored[-1][:1] != INDEX and decode(stored) == {"items": items[:2]}  # no index needed


def payload_text(chunk: bytes) -> bytes:
    from bge_m3.payload import unpack

    return unpack(chunk)


def test_streamed_result_is_staged_while_running_and_lands_only_at_the_finish(redis_db):
    """A worker streams its result's completed stretch to a staging key while the job runs:
    readers see nothing until the finish renames it into place with the result's TTL. A failed
    job's stream is discarded; a duplicate finish drops its stream."""
    import json

    from bge_m3.payload import ItemsResult
    from bge_m3.staging import Staging

    jobs = store(redis_db)
    job = jobs.create({})
    jobs.start(job.id, max_attempts=1)
    items = [{"tokens": i, "pad": "x" * 400} for i in range(10)]
    built = ItemsResult({"model": "m"}, len(items))
    staging = Staging(redis_db, job.id, ttl=30, flush_bytes=1000)
    for i, item in enumerate(items[:5]):
        built.add(i, [json.dumps(item).encode()])
        staging.add(built.take_ready())
    assert redis_db.llen(staging.key) >= 2 and 0 < redis_db.ttl(staging.key) <= 30
    assert jobs.get(job.id).status == "running" and jobs.result(job.id) is None
    for i, item in enumerate(items[5:], start=5):
        built.add(i, [json.dumps(item).encode()])
        staging.add(built.take_ready())
    assert jobs.succeed_staged(job.id, staging, stats={"tokens": 1}) == "ok"
    assert jobs.result(job.id) == {"model": "m", "items": items}
    assert redis_db.keys("bge-m3:staging:*") == [] and 30 < redis_db.ttl(result_key(job.id)) <= 60

    late = Staging(redis_db, job.id, ttl=30, flush_bytes=1)
    late.add([b"\x00dup"])
    assert redis_db.llen(late.key) == 1
    assert jobs.succeed_staged(job.id, late) == "succeeded"  # already terminal: dropped
    assert redis_db.keys("bge-m3:staging:*") == [] and jobs.result(job.id)["items"] == items

    failed = jobs.create({})
    jobs.start(failed.id, max_attempts=1)
    stream = Staging(redis_db, failed.id, ttl=30, flush_bytes=1)
    stream.add([b"\x00partial"])
    stream.discard()
    assert redis_db.keys("bge-m3:staging:*") == []


def test_a_background_sender_streams_in_order_and_reports_its_failure(redis_db):
    """``Staging(background=True)``: flushes leave the task thread and are sent in order by a
    thread of their own, which ``drain`` waits for; a send that fails is raised in the task
    thread (at the next flush or at the drain), and no sender thread outlives its stream."""
    import json

    from bge_m3.payload import ItemsResult
    from bge_m3.staging import Staging

    def senders() -> int:
        return sum(t.name == "bge-m3-staging" and t.is_alive() for t in threading.enumerate())

    jobs = store(redis_db)
    job = jobs.create({})
    jobs.start(job.id, max_attempts=1)
    items = [{"tokens": i, "pad": "y" * 300} for i in range(40)]
    built = ItemsResult({"model": "m"}, len(items))
    staging = Staging(redis_db, job.id, ttl=30, flush_bytes=700, background=True)
    for i in reversed(range(len(items))):  # out of order, as passes finish
        built.add(i, [json.dumps(items[i]).encode()])
        staging.add(built.take_ready())
    assert staging.sent_chunks > 10 and senders() == 1
    assert jobs.succeed_staged(job.id, staging) == "ok"  # drains first
    assert senders() == 0 and jobs.result(job.id) == {"model": "m", "items": items}

    broken = jobs.create({})
    jobs.start(broken.id, max_attempts=1)
    stream = Staging(redis_db, broken.id, ttl=30, flush_bytes=1, background=True)
    redis_db.set(stream.key, "not a list")  # every RPUSH now fails (WRONGTYPE)
    stream.add([b"\x00one"])
    with pytest.raises(Exception, match="WRONGTYPE"):
        for _ in range(50):  # the first failure surfaces at a later flush or at the drain
            stream.add([b"\x00more"])
            time.sleep(0.01)
        stream.drain()
    stream.discard()
    assert senders() == 0 and not redis_db.exists(stream.key)


def test_a_background_sender_holds_at_most_sends_ahead_flushes(redis_db):
    """When Redis takes the bytes slower than they come, the task thread waits once
    SENDS_AHEAD flushes are queued behind the one being sent: the worker's memory stays bounded."""
    from bge_m3.staging import SENDS_AHEAD, Staging

    stream = Staging(redis_db, "paused", ttl=30, flush_bytes=1, background=True)
    redis_db.execute_command("CLIENT", "PAUSE", 1500, "WRITE")  # every RPUSH waits
    try:
        started = time.monotonic()
        for i in range(SENDS_AHEAD + 1):  # one in the sender's hands, SENDS_AHEAD queued
            stream.add([b"\x00%d" % i])
        assert time.monotonic() - started < 0.5
        stream.add([b"\x00one too many"])
        assert time.monotonic() - started > 0.7  # waited for Redis
    finally:
        redis_db.execute_command("CLIENT", "UNPAUSE")
    stream.drain()
    assert redis_db.llen(stream.key) == SENDS_AHEAD + 2
    stream.discard()


def test_a_small_result_nothing_was_streamed_of_travels_inline(redis_db):
    from bge_m3.payload import ItemsResult
    from bge_m3.staging import Staging

    jobs = store(redis_db)
    job = jobs.create({})
    jobs.start(job.id, max_attempts=1)
    built = ItemsResult({"model": "m"}, 1)
    built.add(0, [b'{"tokens":3}'])
    staging = Staging(redis_db, job.id, ttl=30)
    staging.add(built.take_ready())
    assert staging.sent_chunks == 0 and not redis_db.exists(staging.key)
    assert jobs.succeed_staged(job.id, staging) == "ok"
    assert jobs.result(job.id) == {"model": "m", "items": [{"tokens": 3}]}


def test_a_queued_job_whose_message_is_nowhere_is_sent_again_after_two_looks(redis_db):
    """kombu pops a message and only then writes it to its unacked hash: a worker killed between
    the two loses it. The sweep sends a job's message again once it has been neither on the queue
    nor in the unacked hash in two looks ``confirm_after`` apart; a message waiting its turn
    (rewritten, as kombu puts one back), one a worker holds, and a job a delivery claimed are
    left alone."""
    import json

    from bge_m3.queue import QUEUE_NAME, UNACKED_KEY, task_message
    from bge_m3.records import MISSING_KEY, WAITING_KEY

    jobs = store(redis_db)
    made = {}
    for name in ("queued", "held", "lost", "claimed", "cancelled"):
        job_id = new_job_id()
        jobs.create({"texts": [name]}, job_id=job_id, message=task_message(job_id), queue=QUEUE_NAME)
        made[name] = job_id
    assert redis_db.zcard(WAITING_KEY) == 5
    queued = redis_db.lrange(QUEUE_NAME, 0, -1)
    by_id = {json.loads(m)["properties"]["correlation_id"]: m for m in queued}
    redis_db.delete(QUEUE_NAME)
    rewritten = json.loads(by_id[made["queued"]])
    rewritten["headers"]["redelivered"] = True  # kombu's restore: the same message, other bytes
    redis_db.lpush(QUEUE_NAME, json.dumps(rewritten, separators=(",", ":")))
    redis_db.hset(UNACKED_KEY, "tag-1", json.dumps([json.loads(by_id[made["held"]]), "", QUEUE_NAME]))
    assert jobs.start(made["claimed"], max_attempts=2, worker="w")[0] == "running"  # leaves the set
    assert jobs.cancel(made["cancelled"]) == "ok"  # its message is gone too: nothing to send

    later = time.time() + 40
    assert jobs.sweep_lost(QUEUE_NAME, UNACKED_KEY, 30, 10, 100, now=time.time()) == []  # too young
    assert jobs.sweep_lost(QUEUE_NAME, UNACKED_KEY, 30, 10, 100, now=later) == []  # first look
    assert redis_db.zrange(MISSING_KEY, 0, -1) == [made["lost"]]
    assert jobs.sweep_lost(QUEUE_NAME, UNACKED_KEY, 30, 10, 100, now=later + 5) == []  # too soon
    assert jobs.sweep_lost(QUEUE_NAME, UNACKED_KEY, 30, 10, 100, now=later + 10) == [made["lost"]]
    sent = json.loads(redis_db.rpop(QUEUE_NAME))  # next to be consumed
    first = json.loads(by_id[made["lost"]])
    assert sent["properties"].pop("delivery_tag") != first["properties"].pop("delivery_tag")
    assert sent == first  # the message as the API sent it, with a delivery tag of its own
    assert json.loads(redis_db.hget(job_key(made["lost"]), "message"))["properties"]["delivery_tag"] \
        .endswith(made["lost"])  # the record keeps the copy sent, for a cancel to find
    assert redis_db.hget(job_key(made["lost"]), "resent") == "1"
    assert sorted(redis_db.zrange(WAITING_KEY, 0, -1)) == sorted([made["queued"], made["held"], made["lost"]])
    assert redis_db.zcard(MISSING_KEY) == 0
    # A worker takes it this time: the claim ends its wait, and no later sweep sends it again.
    assert jobs.start(made["lost"], max_attempts=2, worker="w")[0] == "running"
    for step in (100, 200):
        assert jobs.sweep_lost(QUEUE_NAME, UNACKED_KEY, 30, 10, 100, now=later + step) == []
    assert redis_db.llen(QUEUE_NAME) == 1  # only the rewritten one, waiting its turn
    # Marked missing, then claimed before the second look: it leaves the missing set too.
    other = new_job_id()
    message = task_message(other)
    jobs.create({"texts": ["x"]}, job_id=other, message=message, queue=QUEUE_NAME)
    assert redis_db.lrem(QUEUE_NAME, 1, message) == 1
    assert jobs.sweep_lost(QUEUE_NAME, UNACKED_KEY, 30, 10, 100, now=later + 300) == []
    assert redis_db.zrange(MISSING_KEY, 0, -1) == [other]
    assert jobs.start(other, max_attempts=2, worker="w")[0] == "running"
    assert jobs.sweep_lost(QUEUE_NAME, UNACKED_KEY, 30, 10, 100, now=later + 305) == []
    assert redis_db.zcard(MISSING_KEY) == 0


def test_an_ended_jobs_lease_goes_with_its_end(redis_db):
    """Left to expire, a soak run's 15,779 leases outlived their jobs by 11 minutes each."""
    from bge_m3.records import lease_key

    jobs = store(redis_db)
    done, failed = (jobs.create({"texts": ["a"]}) for _ in range(2))
    for job in (done, failed):
        assert jobs.claim(job.id, 3, worker="w", lease=lease_key(job.id), lease_ttl=600,
                          holder="w|i|t").state == "running"
    assert jobs.succeed(done.id, {"items": []}) == "ok" and jobs.fail(failed.id, "x", "y") == "ok"
    assert not redis_db.exists(lease_key(done.id)) and not redis_db.exists(lease_key(failed.id))
    redis_db.set(lease_key(done.id), "w2|i|t", ex=600)  # a second delivery's, taken after the end
    assert jobs.succeed(done.id, {"items": []}) == "succeeded"  # its finish finds the job ended
    assert not redis_db.exists(lease_key(done.id))
