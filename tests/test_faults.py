"""Fault injection against the real stack: killed workers, poison jobs, time limits, rolling
deploys, Redis crashes and outages, a tampered model, a slow model load, a broker blip.

Everything is real: a private redis-server, `bge-m3 worker` subprocesses on the tiny model,
`bge-m3 api` under gunicorn. Faults come from signals, redis commands, and the worker's
TEST-ONLY hooks (``BGE_M3_TEST_FAULTS``, see worker/faults.py), never from mocks.

The worker runs Celery's threads pool: there is no pool child, so "a pool child killed by the
OOM killer" (scenario 1) is the whole worker process killed, with another worker alive.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest

from bge_m3.records import job_key
from bge_m3.queue import QUEUE_NAME, redis_client, restore_interval
from bge_m3.workers import WORKER_PREFIX
from tests.stack_support import Reference, same_item, start_api
from tests.support import RedisServer, settings_on_db, wait_for
from tests.worker_support import Queue

pytestmark = pytest.mark.slow

VISIBILITY = 6
"""Shortened BGE_M3_VISIBILITY_TIMEOUT (seconds) so redelivery after a death happens in-test."""

TIME_LIMIT = 3
"""Shortened BGE_M3_TIME_LIMIT (must stay below VISIBILITY)."""

SLEEP = "BGE_M3_TEST_FAULT:sleep={}"
SLEEP_FIRST = "BGE_M3_TEST_FAULT:sleep-first={}"
EXIT = "BGE_M3_TEST_FAULT:exit"
EXIT_FAULT = 70  # worker.faults.EXIT_FAULT
REFUSED = 3  # worker.gate.EXIT_REFUSED
TEXTS = ["hello world", "今天天气真好", "the quick brown fox jumps over the lazy dog"]


@pytest.fixture(scope="module")
def reference(tiny_model):
    return Reference(tiny_model.dir)


@pytest.fixture
def faulty(base_settings, redis_server):
    """Settings on the suite's own database, test faults on, short visibility and time limits."""
    settings = settings_on_db(base_settings, redis_server, "faults", visibility_timeout=VISIBILITY,
                            time_limit=TIME_LIMIT, test_faults=True, worker_threads=4, max_retries=1)
    queue = Queue(settings)
    yield settings, queue
    queue.close()


def running_on(queue: Queue, job_id: str, timeout: float = 60) -> str:
    """Block until the job is running; the hostname of the worker that holds it."""
    def holder():
        data = queue.redis.hmget(job_key(job_id), "status", "worker")
        return data[1] if data[0] == "running" else None
    return wait_for(holder, timeout, what=f"job {job_id} running")


def unacked(queue: Queue) -> int:
    """Messages delivered to some worker and not yet acknowledged (kombu's ack emulation)."""
    return int(queue.redis.hlen("unacked"))


def check_result(queue: Queue, reference: Reference, job_id: str, texts, modes=("dense",)) -> None:
    items = queue.store.result(job_id)["items"]
    want = reference.items(texts)
    assert len(items) == len(texts)
    assert all(same_item(g, w, modes) for g, w in zip(items, want))


def test_1_worker_killed_mid_job_is_redelivered_to_the_survivor(faulty, worker_factory, reference):
    settings, queue = faulty
    workers = {w.hostname: w for w in (worker_factory(settings), worker_factory(settings))}
    texts = [SLEEP_FIRST.format(60), *TEXTS]
    job_id = queue.submit(texts, ("dense", "sparse"))
    victim = workers.pop(running_on(queue, job_id))
    victim.proc.send_signal(signal.SIGKILL)
    assert victim.proc.wait(10) == -signal.SIGKILL
    job = queue.wait(job_id, VISIBILITY + 60)
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    (survivor,) = workers.values()
    assert queue.redis.hget(job_key(job_id), "worker") == survivor.hostname
    assert queue.stats(survivor.hostname)["jobs"] == 1
    check_result(queue, reference, job_id, texts, ("dense", "sparse"))
    wait_for(lambda: unacked(queue) == 0, 10, what="the redelivered message acked")


def test_3_whole_worker_killed_then_new_worker_redelivers_once(faulty, worker_factory, reference,
                                                                record_property):
    settings, queue = faulty
    first = worker_factory(settings)
    texts = [SLEEP_FIRST.format(60), *TEXTS]
    job_id = queue.submit(texts, ("dense", "colbert"))
    running_on(queue, job_id)
    first_start = queue.store.get(job_id).started_at
    killed_at = time.time()
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    # A SIGKILLed worker cannot withdraw: its readiness lapses with its TTL (15 s) instead. Read
    # now, not timed at the end: on a loaded machine the rest of the test takes longer than that.
    from bge_m3.workers import READY_TTL

    lapses_in = queue.redis.pttl(WORKER_PREFIX + first.hostname) / 1000
    assert 0 < lapses_in <= READY_TTL
    assert unacked(queue) == 1 and queue.redis.llen(QUEUE_NAME) == 0  # held by the dead worker
    second = worker_factory(settings)
    job = queue.wait(job_id, VISIBILITY + 60)
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    assert queue.stats(second.hostname)["jobs"] == 1
    assert queue.stats(first.hostname).get("jobs", 0) == 0
    check_result(queue, reference, job_id, texts, ("dense", "colbert"))
    wait_for(lambda: not first.ready(), max(0.5, lapses_in + 5 - (time.time() - killed_at)),
             what="the killed worker's readiness expiring")
    # Not before the visibility timeout (counted from the first delivery), and not long after it.
    delay = job.started_at - killed_at
    assert job.started_at - first_start >= VISIBILITY - 0.5, job.started_at - first_start
    assert delay <= VISIBILITY + restore_interval(VISIBILITY) + 30, delay
    record_property("redelivery_delay_s", round(delay, 2))
    print(f"\nredelivery delay after SIGKILL: {delay:.2f} s (visibility timeout {VISIBILITY} s)")


def test_4_job_over_the_time_limit_fails_and_is_never_run_twice(faulty, worker_factory):
    settings, queue = faulty
    worker = worker_factory(settings)
    job_id = queue.submit([SLEEP.format(TIME_LIMIT + 1), "hello"])
    other = queue.submit(["unaffected"])
    job = queue.wait(job_id, 60)
    assert job.status == "failed"
    assert job.error["code"] == "timeout" and f"{TIME_LIMIT} s" in job.error["message"]
    assert job.attempts == 1 and job.finished_at - job.started_at >= TIME_LIMIT
    assert queue.store.result(job_id) is None
    # The message is acknowledged: nothing left that could ever be delivered again.
    wait_for(lambda: unacked(queue) == 0 and queue.redis.llen(QUEUE_NAME) == 0, 10, what="ack")
    assert queue.wait(other, 30).status == "succeeded"
    assert queue.store.get(job_id).attempts == 1
    assert worker.proc.poll() is None
    # Waited for on a sync route (its own timeout longer than the worker's limit), the same
    # failure is a gateway timeout, and OpenAI's SDKs are told not to run it twice more.
    from api import create_app

    client = create_app(settings.replace(sync_timeout=30.0)).test_client()
    r = client.post("/v1/embeddings",
                    json={"model": "bge-m3", "input": SLEEP.format(TIME_LIMIT + 1)})
    error = r.get_json()["error"]
    assert r.status_code == 504 and error["code"] == "timeout" and f"{TIME_LIMIT} s" in error["message"]
    assert r.headers["x-should-retry"] == "false" and error["type"] == "server_error"
    assert r.headers["Location"] == f"/v1/jobs/{error['job_id']}"  # as /openapi.json declares


def test_a_sync_job_cancelled_while_waited_for_is_409_and_not_retried(faulty, worker_factory):
    """The waiting request learns of the cancel at once; OpenAI's SDKs would retry a 409 twice
    by default, each time a new job, so the answer tells them not to."""
    import threading

    from api import create_app

    settings, queue = faulty
    # The blocker holds the only thread long enough for the rest, on a loaded box too.
    settings = settings.replace(worker_threads=1, sync_timeout=30.0, time_limit=20,
                                visibility_timeout=40)
    worker_factory(settings)
    client = create_app(settings).test_client()
    blocker = queue.submit([SLEEP.format(12)])
    running_on(queue, blocker)
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(
        client.post("/v1/embeddings", json={"model": "bge-m3", "input": "cancel me while I wait"})))
    waiter.start()

    def sync_job():
        ids = [key.removeprefix("bge-m3:job:") for key in queue.redis.scan_iter("bge-m3:job:*")]
        return next((i for i in ids if i != blocker and len(i) == 32), None)

    job_id = wait_for(sync_job, 10, what="the sync route's job")
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
    waiter.join(20)
    r = answers[0]
    error = r.get_json()["error"]
    assert r.status_code == 409 and error["code"] == "job_cancelled" and error["job_id"] == job_id
    assert error["type"] == "invalid_request_error" and r.headers["x-should-retry"] == "false"
    assert queue.wait(blocker, 30).status == "succeeded"


def test_a_run_whose_job_ended_meanwhile_drops_its_result_and_is_not_counted(faulty,
                                                                            worker_factory):
    """Another delivery ended the job while this run went on (stood in for by the test writing
    the end itself): the run's result is dropped, and the worker's statistics do not count it as
    a job done, as they did."""
    settings, queue = faulty
    worker = worker_factory(settings)
    job_id = queue.submit([SLEEP.format(2), "ended elsewhere"])
    running_on(queue, job_id)
    assert queue.store.fail(job_id, "internal_error", "ended by another delivery") == "ok"
    wait_for(lambda: "result dropped, the job is failed" in worker.output(), 30, what="the drop")
    stats = queue.stats(worker.hostname)
    assert stats.get("jobs", 0) == 0 and stats.get("texts", 0) == 0, stats
    assert queue.store.get(job_id).error["message"] == "ended by another delivery"


def test_5_sigterm_mid_job_finishes_running_jobs_and_loses_none(faulty, worker_factory, reference):
    settings, queue = faulty
    # The slow jobs' 2 s sleep counts against the hard limit: 3 s would leave a loaded box 1 s
    # for the rest of the job. Nothing here waits for a redelivery, so the longer limits cost nothing.
    settings = settings.replace(worker_threads=2, time_limit=10, visibility_timeout=20)
    first = worker_factory(settings)
    slow = [queue.submit([SLEEP.format(2), f"slow {i}"]) for i in range(2)]
    for job_id in slow:
        running_on(queue, job_id)
    rest = [queue.submit([f"queued {i}", *TEXTS]) for i in range(6)]
    first.proc.send_signal(signal.SIGTERM)  # warm shutdown, as a rolling deploy sends
    assert first.proc.wait(60) == 0, first.output()[-3000:]
    for job_id in slow:  # the running jobs finished before the worker exited
        job = queue.store.get(job_id)
        assert job.status == "succeeded" and job.attempts == 1, (job.status, job.error)
    assert not queue.redis.exists(WORKER_PREFIX + first.hostname)
    second = worker_factory(settings)
    jobs = [queue.wait(job_id, 60) for job_id in rest]
    assert [j.status for j in jobs] == ["succeeded"] * len(rest), [j.error for j in jobs]
    assert all(j.attempts == 1 for j in jobs)  # none ran twice
    done = queue.stats(first.hostname).get("jobs", 0) + queue.stats(second.hostname).get("jobs", 0)
    assert done == len(slow) + len(rest)
    for job_id, i in zip(rest, range(6)):
        check_result(queue, reference, job_id, [f"queued {i}", *TEXTS])


def test_10_broker_blip_mid_job_no_parallel_duplicate(faulty, worker_factory, reference):
    settings, queue = faulty
    worker = worker_factory(settings)
    texts = [SLEEP_FIRST.format(TIME_LIMIT / 2), *TEXTS]
    job_id = queue.submit(texts)
    running_on(queue, job_id)
    killed = queue.redis.execute_command("CLIENT", "KILL", "TYPE", "normal")
    assert killed >= 2  # the worker's broker and store connections, and ours
    job = queue.wait(job_id, 60)
    assert job.status == "succeeded", job.error
    assert job.attempts == 1  # a second delivery while the first ran would have counted 2
    check_result(queue, reference, job_id, texts)
    # The worker reconnected and keeps serving; the blipped message is not run again.
    after = queue.wait(queue.submit(["after the blip"]), 60)
    assert after.status == "succeeded"
    wait_for(lambda: unacked(queue) == 0 and queue.redis.llen(QUEUE_NAME) == 0, VISIBILITY + 15,
             what="no message left to redeliver")
    assert queue.store.get(job_id).attempts == 1
    assert queue.stats(worker.hostname)["jobs"] == 2
    assert worker.proc.poll() is None


def test_2_poison_job_fails_after_its_retries_and_spares_the_others(faulty, worker_factory,
                                                                     reference):
    """max_retries=1: two deliveries kill their worker; the third ends the job as failed."""
    settings, queue = faulty
    poison = queue.submit([EXIT, "hello"])
    exits = []
    worker = worker_factory(settings, wait=False)  # it may die before it is seen ready
    while queue.store.get(poison).status not in ("failed", "succeeded"):
        try:  # a supervisor's loop: restart the worker when the poison kills it
            wait_for(lambda: worker.proc.poll() is not None or
                     queue.store.get(poison).status == "failed", VISIBILITY + 60, what="poison")
        except TimeoutError:
            break
        if worker.proc.poll() is not None:
            exits.append(worker.proc.returncode)
            assert len(exits) <= settings.max_retries + 1, "endless redelivery"
            worker = worker_factory(settings, wait=False)
    job = queue.store.get(poison)
    assert job.status == "failed" and job.error["code"] == "worker_lost"
    assert "delivered 3 times" in job.error["message"]
    assert exits == [EXIT_FAULT] * (settings.max_retries + 1)
    assert job.attempts == settings.max_retries + 2
    assert queue.stats(worker.hostname).get("failed_jobs") == 1  # counted by the worker that ended it
    wait_for(lambda: unacked(queue) == 0 and queue.redis.llen(QUEUE_NAME) == 0, 10,
             what="the poison message acknowledged")
    others = [queue.submit([f"other {i}", *TEXTS]) for i in range(3)]
    for i, job_id in enumerate(others):
        assert queue.wait(job_id, 60).status == "succeeded"
        check_result(queue, reference, job_id, [f"other {i}", *TEXTS])
    assert worker.proc.poll() is None


def test_11_device_failure_exits_the_worker_and_its_job_goes_elsewhere(faulty, worker_factory,
                                                                        reference):
    """A sticky device error (what a CUDA device-side assert leaves: every later pass fails) makes
    the worker withdraw its readiness and exit 6 instead of failing every job sent to it. The job
    in flight is not failed for it: it is redelivered, here to a worker whose device is fine. The
    CUDA error is stood in for by a test fault raising its message from the forward pass."""
    from bge_m3 import workers as readiness

    settings, queue = faulty
    broken = worker_factory(settings)
    texts = ["BGE_M3_TEST_FAULT:device", *TEXTS]
    job_id = queue.submit(texts, ("dense",))
    assert broken.proc.wait(60) == 6
    failure = [line for line in broken.output().splitlines() if "cannot recover" in line]
    assert failure and job_id in failure[0], broken.output()[-2000:]  # names the job it carried
    assert not readiness.is_announced(queue.redis, broken.hostname)
    job = queue.store.get(job_id)
    assert job.status == "running" and job.error is None  # not failed: the texts did nothing wrong
    healthy = worker_factory(settings.replace(test_faults=False))
    job = queue.wait(job_id, VISIBILITY + 60)
    assert job.status == "succeeded" and job.attempts == 2, (job.error, healthy.output()[-2000:])
    check_result(queue, reference, job_id, texts)


def test_12_redis_failing_mid_job_hands_the_job_back_instead_of_failing_it(faulty, worker_factory,
                                                                            reference):
    """A Redis error while a job runs (a failover, a lost connection, a rotated password) is the
    infrastructure's, not the job's: the job goes back to the queue and its next delivery
    completes it, where it once ended failed/internal_error. The lost connection is a test fault
    raising redis' ConnectionError mid-job on the first delivery."""
    settings, queue = faulty
    worker = worker_factory(settings)
    texts = ["BGE_M3_TEST_FAULT:redis-first", *TEXTS]
    job_id = queue.submit(texts, ("dense",))
    job = queue.wait(job_id, 60)
    assert job.status == "succeeded" and job.attempts == 2, (job.status, job.error)
    assert f"Job {job_id}: Redis failed while it ran (ConnectionError); handing it back" in worker.output()
    check_result(queue, reference, job_id, texts)


def test_6_redis_kill_9_with_aof_keeps_queued_and_finished_jobs(base_settings, worker_factory,
                                                                tmp_path, reference):
    redis = RedisServer(tmp_path / "aof-redis", appendonly=True)
    try:
        settings = base_settings.replace(redis_url=redis.url(0))
        queue = Queue(settings)
        worker = worker_factory(settings)
        finished = [queue.submit([f"finished {i}", *TEXTS]) for i in range(4)]
        assert all(queue.wait(job_id, 60).status == "succeeded" for job_id in finished)
        before = {job_id: queue.store.result(job_id) for job_id in finished}
        worker.stop()
        queued = [queue.submit([f"queued {i}", *TEXTS], ("dense", "sparse")) for i in range(4)]
        assert queue.redis.llen(QUEUE_NAME) == 4
        redis.wait_written()
        redis.kill(signal.SIGKILL)
        redis.start()  # same folder: the append-only file is replayed
        queue.close()
        queue = Queue(settings)
        for job_id in finished:
            job = queue.store.get(job_id)
            assert job.status == "succeeded" and job.attempts == 1
            assert queue.store.result(job_id) == before[job_id]
        assert [queue.store.get(j).status for j in queued] == ["queued"] * 4
        assert queue.redis.llen(QUEUE_NAME) == 4
        worker_factory(settings)
        for i, job_id in enumerate(queued):
            assert queue.wait(job_id, 60).status == "succeeded"
            check_result(queue, reference, job_id, [f"queued {i}", *TEXTS], ("dense", "sparse"))
        queue.close()
    finally:
        redis.stop()


def test_13_redis_restarted_under_a_running_job_keeps_the_worker_and_the_job(
        base_settings, worker_factory, tmp_path, reference):
    """Redis stopped (SIGTERM, as a restart does) while a job runs, then started again: the worker
    stays up and serving, and the job completes. With a job unacked, kombu's second close of the
    lost connection raised an AttributeError, which Celery took as unrecoverable: the worker
    stopped (exit 0) and the job sat "running" for the visibility timeout (``worker.brokerfix``)."""
    redis = RedisServer(tmp_path / "aof-redis", appendonly=True)
    try:
        settings = base_settings.replace(redis_url=redis.url(0), test_faults=True, worker_threads=2,
                                         time_limit=60, visibility_timeout=120)
        queue = Queue(settings)
        worker = worker_factory(settings)
        texts = [SLEEP.format(6), *TEXTS]
        job_id = queue.submit(texts)
        running_on(queue, job_id)
        redis.wait_written()
        queue.close()
        redis.kill(signal.SIGTERM)  # Redis saves its AOF and exits; the worker's connections drop
        wait_for(lambda: "Connection to broker lost" in worker.output(), 30, what="the lost broker")
        time.sleep(2)
        redis.start()
        queue = Queue(settings)
        job = queue.wait(job_id, 90)
        assert job is not None and job.status == "succeeded", (job, worker.output()[-3000:])
        assert worker.proc.poll() is None, worker.output()[-3000:]
        assert "Unrecoverable error" not in worker.output()
        check_result(queue, reference, job_id, texts)
        after = queue.submit(["after the restart", *TEXTS])  # and it goes on serving
        assert queue.wait(after, 60).status == "succeeded"
        queue.close()
    finally:
        redis.stop()


def test_7_redis_down_at_submit_is_503_and_leaves_no_orphan(base_settings, tmp_path):
    redis = RedisServer(tmp_path / "aof-redis", appendonly=True)
    api = start_api(base_settings.replace(redis_url=redis.url(0)), tmp_path)
    try:
        with api.client() as http:
            accepted = http.post("/v1/jobs", json={"texts": ["before the outage"]})
            assert accepted.status_code == 202
            redis.wait_written()
            redis.kill(signal.SIGKILL)
            for _ in range(3):
                r = http.post("/v1/jobs", json={"texts": ["during the outage"]})
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "redis_unavailable", r.text
                assert int(r.headers["Retry-After"]) > 0
            redis.start()
            client = redis.client(0)
            records = [k for k in client.scan_iter("bge-m3:job:*")]
            assert records == [job_key(accepted.json()["id"])]  # no orphan from the outage
            assert client.llen(QUEUE_NAME) == 1
            again = http.post("/v1/jobs", json={"texts": ["after the outage"]})
            assert again.status_code == 202  # the API reconnects by itself
            assert client.llen(QUEUE_NAME) == 2
        assert "during the outage" not in api.output()
    finally:
        api.stop()
        redis.stop()


def test_8_tampered_model_restarting_worker_refuses_running_one_serves(
        tiny_model, base_settings, redis_server, worker_factory, tmp_path, reference):
    model = tmp_path / "model-copy"
    shutil.copytree(tiny_model.dir, model)  # never the session fixture's folder
    settings = settings_on_db(base_settings, redis_server, "faults-api", model_dir=model)
    queue = Queue(settings)
    running = worker_factory(settings)
    api = start_api(settings, tmp_path)
    try:
        with api.client() as http:
            assert http.get("/readyz").json()["workers"] == 1
            path = model / "model.safetensors"
            data = bytearray(path.read_bytes())
            data[-100] ^= 0xFF  # same size, different SHA-256
            path.write_bytes(bytes(data))
            restarted = worker_factory(settings, wait=False)
            assert restarted.proc.wait(60) == REFUSED, restarted.output()[-2000:]
            assert "model.safetensors" in restarted.output() and "Refusing to start" in restarted.output()
            assert not restarted.ready()
            r = http.get("/readyz")
            assert r.status_code == 200 and r.json()["workers"] == 1
            workers = http.get("/v1/models").json()["workers"]
            assert [w["hostname"] for w in workers] == [running.hostname]
            # The running worker serves what it verified: vectors of the untampered model.
            job = http.post("/v1/jobs", json={"texts": TEXTS, "modes": ["dense", "sparse"]}).json()
            done = http.get(f"/v1/jobs/{job['id']}?wait=30").json()
            assert done["status"] == "succeeded"
            assert queue.redis.hget(job_key(job["id"]), "worker") == running.hostname
            check_result(queue, reference, job["id"], TEXTS, ("dense", "sparse"))
            healthy = worker_factory(settings.replace(model_dir=tiny_model.dir))
            assert http.get("/readyz").json()["workers"] == 2
            running.stop()
            healthy.stop()
            r = http.get("/readyz")
            assert r.status_code == 503 and r.json()["error"]["code"] == "no_ready_worker"
    finally:
        api.stop()
        queue.close()


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def test_9_slow_model_load_becomes_ready_once_without_respawning(faulty, worker_factory):
    """Celery's prefork pool kills a child that takes longer than worker_proc_alive_timeout (4 s by
    default) to come up and forks another, forever. The threads pool loads in the main process."""
    settings, queue = faulty
    delay = 8.0
    worker = worker_factory(settings.replace(test_load_delay=delay), wait=False)
    wait_for(lambda: "delaying the model load" in worker.output(), 60, what="load started")
    assert not worker.ready()
    wait_for(worker.ready, delay + 60, interval=0.2, what="ready after the slow load")
    output = worker.output()
    assert output.count("Model loaded") == 1 and output.count("Warm-up forward pass") == 1
    assert worker.proc.poll() is None and _children(worker.proc.pid) == []
    info = json.loads(redis_client(settings.redis_url).get(WORKER_PREFIX + worker.hostname))
    assert info["pid"] == worker.proc.pid  # the process that loaded is the one serving
    assert queue.wait(queue.submit(TEXTS), 60).status == "succeeded"
