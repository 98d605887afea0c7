"""SIGKILL of a worker mid-job loses nothing: the unacked message comes back and a restarted worker
finishes the job. Redis restores a dead worker's unacked messages once they are older than the
visibility timeout, on the next worker's periodic restore pass, so this test uses a short one."""
from __future__ import annotations

import json
import signal
import threading

import numpy as np
import pytest

from bge_m3.queue import redis_client
from bge_m3.settings import Settings
from bge_m3.workers import WORKER_PREFIX
from tests.support import settings_on_db, spawn_worker, wait_for
from tests.worker_support import Queue

VISIBILITY = 12
"""Seconds before the dead worker's message is restored (the worker sweeps every 3 s then). The
job's time limit is one less, and the restarted worker needs about 1.3 s of it for the whole job
on a quiet 2-core VM: a wide margin for a slow day."""


@pytest.fixture
def long_lease_stack(base_settings, redis_server, tmp_path):
    """A queue and a worker whose leases last 600 s: no wait here ends by a lease's expiry."""
    settings = settings_on_db(base_settings, redis_server, "kill", time_limit=600)
    queue = Queue(settings)
    worker = spawn_worker(settings, tmp_path)
    yield queue, worker
    worker.stop()
    queue.close()


def held_by_a_live_worker(queue: Queue, job_id: str) -> None:
    """The job's lease taken by ``other@alive``, a worker process that announces itself."""
    from bge_m3 import workers
    from worker.lease import LEASE_PREFIX

    queue.redis.set(LEASE_PREFIX + job_id, "other@alive|a1|t1", ex=600)
    workers.announce(queue.redis, "other@alive", {"hostname": "other@alive", "instance": "a1"})


def waiting_on_a_live_holder(queue: Queue, worker):
    """A job whose lease ``other@alive`` holds, sent to ``worker``: returns once its delivery waits."""
    job = queue.store.create({"texts": ["held elsewhere"], "modes": ["dense"]})
    held_by_a_live_worker(queue, job.id)
    queue.send(job.id)
    wait_for(lambda: "is being run by another delivery (other@alive)" in worker.output(), 30,
             what="the delivery waiting")
    return job


class RecordWrites:
    """The ``accepting`` field of every write of one worker's readiness record, in order, seen by
    Redis MONITOR on a connection of its own (so a state held for a moment is never missed)."""

    def __init__(self, settings: Settings, hostname: str):
        self.key = WORKER_PREFIX + hostname
        self.redis = redis_client(settings.redis_dsn, socket_timeout=None)
        self.db_id = self.redis.connection_pool.connection_kwargs.get("db", 0)
        self.writes: list[bool] = []
        self.done = threading.Event()
        self.monitor = self.redis.monitor()
        self.monitor.__enter__()  # MONITOR is on before the thread starts: nothing is missed
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.is_set():
            try:
                command = self.monitor.next_command()
            except Exception:  # noqa: BLE001 - the connection closed by close()
                return
            if command is None or command["db"] != self.db_id:
                continue
            head, _, rest = command["command"].partition(" ")
            if head.upper() != "SET" or not rest.startswith(self.key + " "):
                continue
            value = rest[len(self.key) + 1:].rsplit(" ", 2)[0]  # less the trailing EX <ttl>
            self.writes.append(json.loads(value)["accepting"])

    def accepting(self) -> list[bool]:
        return list(self.writes)

    def close(self) -> None:
        self.done.set()
        self.redis.ping()  # a command the monitor sees, so its read returns and the thread ends
        self.thread.join(10)
        self.monitor.__exit__(None, None, None)
        self.redis.close()


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


def test_a_message_lost_on_its_way_into_a_worker_is_sent_again(base_settings, redis_server, tmp_path):
    """kombu pops a message, then writes it to its unacked hash: a worker killed between the two
    lost it, and its job read queued for the result TTL (a soak run's ``kill -9``). Stood in for
    by popping the message the API's create pushed: the worker's sweep sends it again (the sweep
    interval is 3 s here: a quarter of the visibility timeout), and the job completes."""
    from bge_m3.queue import QUEUE_NAME, task_message
    from bge_m3.records import new_job_id

    settings = settings_on_db(base_settings, redis_server, "kill", visibility_timeout=VISIBILITY,
                              time_limit=VISIBILITY - 1)
    queue = Queue(settings)
    job_id = new_job_id()
    queue.store.create({"texts": ["lost on the way"], "modes": ["dense"]}, job_id=job_id,
                       message=task_message(job_id), queue=QUEUE_NAME)
    assert queue.redis.rpop(QUEUE_NAME)  # taken, as by a worker killed before its unacked write
    worker = spawn_worker(settings, tmp_path)
    try:
        job = queue.wait(job_id, 60)
        assert job.status == "succeeded", (job.status, worker.output()[-2000:])
        assert queue.redis.hget(f"bge-m3:job:{job_id}", "resent") == "1"
        assert f"Job {job_id}: its message was lost" in worker.output()
    finally:
        worker.stop()
        queue.close()


def test_a_lease_left_by_a_gone_worker_is_taken_over(long_lease_stack):
    """A cold shutdown hands the unacked message back at once while its lease (time_limit long)
    stays. The next delivery waits while the holder still announces itself, and takes the job
    over once it does not, instead of waiting out the lease. A lease left by an earlier process
    under this worker's own hostname (a restart keeps the name) is gone too; one taken by another
    live process under the same name is not."""
    from bge_m3 import workers
    from worker.lease import LEASE_PREFIX, lease_ttl

    queue, worker = long_lease_stack
    ttl = lease_ttl(worker.settings)  # what a delivery's lease starts with: its age is ttl - left
    alive = queue.store.create({"texts": ["held by a live worker"], "modes": ["dense"]})
    held_by_a_live_worker(queue, alive.id)
    gone = queue.store.create({"texts": ["held by a dead worker"], "modes": ["dense"]})
    queue.redis.set(LEASE_PREFIX + gone.id, "ghost@gone|g1|t2", ex=ttl)
    mine = queue.store.create({"texts": ["held by this hostname's last process"], "modes": ["dense"]})
    # Taken 5 minutes ago, before this process started.
    queue.redis.set(LEASE_PREFIX + mine.id, f"{worker.hostname}|before-restart|t3", ex=ttl - 300)
    twin = queue.store.create({"texts": ["held by a live twin under this hostname"], "modes": ["dense"]})
    queue.redis.set(LEASE_PREFIX + twin.id, f"{worker.hostname}|live-twin|t4", ex=ttl)
    for job in (alive, gone, mine, twin):
        queue.send(job.id)

    assert queue.wait(gone.id, 30).status == "succeeded"
    assert queue.wait(mine.id, 30).status == "succeeded"
    assert "lease holder ghost@gone is gone; taking the job over" in worker.output()
    assert f"lease holder {worker.hostname} is gone; taking the job over" in worker.output()
    assert queue.store.get(alive.id).status == "queued"  # waited for, not run twice
    # A lease taken after this process started is not a previous process's: two workers
    # may share a name. It is waited for, looked at every heartbeat, and not stolen.
    wait_for(lambda: f"Job {twin.id} is being run by another delivery" in worker.output(), 30,
             what="the twin's job waited for")
    workers.withdraw(queue.redis, "other@alive")  # the live holder stops announcing itself
    job = queue.wait(alive.id, 2 * workers.HEARTBEAT_INTERVAL + 20)
    assert job.status == "succeeded" and job.attempts == 1
    assert queue.store.get(twin.id).status == "queued"
    assert f"Job {twin.id}: its lease holder" not in worker.output()
    assert queue.store.cancel(twin.id) == "ok"  # wakes its waiting delivery, which skips it
    wait_for(lambda: f"Job {twin.id} skipped: cancelled" in worker.output(), 30, what="twin skipped")


def test_a_waiting_delivery_survives_a_dropped_connection(long_lease_stack):
    """A delivery waiting for the lease's holder loses its subscription (a failover, a proxy
    restart): the job it does not own must not fail; it waits again and runs the job once the
    holder is gone."""
    from bge_m3 import workers

    queue, worker = long_lease_stack
    job = waiting_on_a_live_holder(queue, worker)
    db = str(queue.redis.connection_pool.connection_kwargs.get("db", 0))

    def drop_its_subscription() -> bool:
        # Its own: the API apps of other tests hold PSUBSCRIBE connections on this server, and
        # killing one of those instead would leave this delivery waiting undisturbed.
        subs = [c for c in queue.redis.client_list() if c.get("cmd") == "subscribe" and c.get("db") == db]
        for client in subs:
            queue.redis.client_kill_filter(_id=client["id"])
        return bool(subs)

    wait_for(drop_its_subscription, 10, what="its subscription dropped")
    wait_for(lambda: "Redis failed while claiming" in worker.output(), 15, what="the error seen")
    assert queue.store.get(job.id).status == "queued", queue.store.get(job.id)
    workers.withdraw(queue.redis, "other@alive")
    done = queue.wait(job.id, 2 * workers.HEARTBEAT_INTERVAL + 20)
    assert done.status == "succeeded" and done.attempts == 1, (done.status, done.error)


def test_a_waiting_delivery_hands_its_job_back_when_the_worker_stops(long_lease_stack):
    """SIGTERM while a delivery waits for another worker's lease: the wait ends at once and the
    message goes back to the queue, instead of holding the warm shutdown until the holder ends
    (up to the lease's life, 600 s here)."""
    from bge_m3 import workers
    from bge_m3.queue import QUEUE_NAME

    queue, worker = long_lease_stack
    job = waiting_on_a_live_holder(queue, worker)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0, worker.output()[-2000:]
    assert f"Job {job.id} handed back to the queue" in worker.output()
    assert queue.store.get(job.id).status == "queued"
    assert queue.redis.llen(QUEUE_NAME) == 1  # requeued, for the next worker
    workers.withdraw(queue.redis, "other@alive")


def test_a_draining_worker_is_not_ready_but_finishes_its_job(base_settings, redis_server, tmp_path):
    """SIGTERM starts a warm shutdown: the running job finishes, and from the first moment the
    worker is no longer counted ready (sync calls would wait on a worker that takes nothing);
    its record stays, saying it is alive, for its job's lease, until it exits."""
    from bge_m3 import workers

    settings = settings_on_db(base_settings, redis_server, "kill", test_faults=True)
    queue = Queue(settings)
    worker = spawn_worker(settings, tmp_path)
    try:
        assert [w["hostname"] for w in workers.ready_workers(queue.redis)] == [worker.hostname]
        job_id = queue.submit(["BGE_M3_TEST_FAULT:sleep=4", "then encoded"])
        wait_for(lambda: queue.store.get(job_id).status == "running", 30, what="job running")
        worker.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not workers.ready_workers(queue.redis), 5, interval=0.05, what="not ready")
        assert worker.proc.poll() is None and workers.is_announced(queue.redis, worker.hostname)
        assert queue.wait(job_id, 30).status == "succeeded"
        assert worker.proc.wait(30) == 0
        assert not workers.is_announced(queue.redis, worker.hostname)
    finally:
        worker.stop()
        queue.close()


def test_a_worker_between_broker_connections_is_not_ready(base_settings, redis_server, tmp_path):
    """The consumer's connection drops (a failover): until it is back the worker takes nothing,
    and says so in its record; then it is ready again and serves."""
    settings = settings_on_db(base_settings, redis_server, "kill")
    queue = Queue(settings)
    worker = spawn_worker(settings, tmp_path)
    records = RecordWrites(settings, worker.hostname)
    try:
        def consumer_ids() -> list[str]:  # the connection blocked in BRPOP on the queue
            return [c["id"] for c in queue.redis.client_list() if c.get("cmd") in ("brpop", "blpop")]
        wait_for(consumer_ids, 15, what="the consumer waiting for messages")
        for client_id in consumer_ids():
            queue.redis.execute_command("CLIENT", "KILL", "ID", client_id)
        wait_for(lambda: "Consumer connected to the broker: accepting jobs" in worker.output(), 30,
                 what="the consumer back")
        output = worker.output()
        lost = output.index("Consumer lost the broker: not accepting jobs until it reconnects")
        assert lost < output.index("Consumer connected to the broker: accepting jobs")
        # The record itself said so: written not accepting once the consumer was cut off, then
        # accepting again once it was back (the heartbeat may write either state in between).
        def false_then_true() -> bool:
            seen = records.accepting()
            return False in seen and True in seen[seen.index(False):]
        wait_for(false_then_true, 15, what="the record written not accepting, then accepting")
        job_id = queue.submit(["served again"])
        assert queue.wait(job_id, 30).status == "succeeded"
    finally:
        records.close()
        worker.stop()
        queue.close()
