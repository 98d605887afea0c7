"""One delivery runs a job at a time: the job's lease, and how a delivery claims it.

When the broker connection drops, kombu puts the unacked message back at once while its first
run goes on, so a job can be delivered twice at the same time. A delivery first takes the lease
(``bge-m3:lease:{id}``, ``SET NX`` in the same script that marks the job running); a second
delivery waits until the first ends the job (its claim then finds it terminal and skips it),
until the lease lapses (a minute after ``BGE_M3_TIME_LIMIT``, below the visibility timeout, so
a dead worker's lease is gone before its job is redelivered), or until the holder is seen to be
gone.

The lease's value names the delivery: ``{hostname}|{instance}|{token}``. ``instance`` is random
per worker process and is in its readiness record, so a worker restarted under the same hostname
(the default name, a compose container) is not taken for the process that left the lease; the
token makes each delivery's lease its own, so a delivery only ever releases the lease it took.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import redis

from bge_m3 import workers
from bge_m3.queue import restore_interval
from bge_m3.records import Claim, lease_key
from bge_m3.settings import Settings
from worker.logs import get_logger
from worker.runtime import Runtime

log = get_logger()

LEASE_PREFIX = lease_key("")
"""Key (with the job id) held while one delivery of a job runs; expires after ``lease_ttl``, and
goes when the job ends (``bge_m3.scripts.FINISH``)."""

RECORD_MARGIN_SECONDS = 120
"""Margin on how long a claimed job's record lives at least (``record_keep``)."""

LEASE_GRACE_SECONDS = 60
"""How long a lease outlives the job's time limit: the owner still finishes after its deadline
(an inline pass that cannot be cut, the last sends, the finish), and a lease lapsing meanwhile
would let a waiting duplicate delivery start a second run. Kept below the visibility timeout."""


def lease_ttl(settings: Settings) -> int:
    """Seconds a delivery's lease lasts: past the time limit by LEASE_GRACE_SECONDS, below the
    visibility timeout (so a dead worker's lease is gone before kombu gives its message back)."""
    return max(1, min(settings.time_limit + LEASE_GRACE_SECONDS, settings.visibility_timeout - 1))


def record_keep(settings: Settings) -> int:
    """Seconds a claimed job's record lives at least. If this worker dies at once, kombu gives the
    message back after the visibility timeout (plus up to one sweep), and the next delivery may
    run the whole time limit: a record that expired before (a job claimed late in its result
    TTL, a short TTL) would make that delivery find nothing and drop the job."""
    visibility = settings.visibility_timeout
    return visibility + restore_interval(visibility) + settings.time_limit + RECORD_MARGIN_SECONDS


class Unclaimed(Exception):
    """Redis kept failing before this delivery owned the job; the job is left to its owner."""


@dataclass(frozen=True)
class Lease:
    key: str
    holder: str

    @property
    def token(self) -> str:
        """This delivery's own part of the holder (``Runtime.delivery_live`` tells a live one)."""
        return self.holder.rsplit("|", 1)[-1]

    @property
    def job_id(self) -> str:
        return self.key[len(LEASE_PREFIX):]

    @classmethod
    def new(cls, rt: Runtime, job_id: str) -> "Lease":
        return cls(f"{LEASE_PREFIX}{job_id}", f"{rt.hostname}|{rt.instance}|{secrets.token_hex(8)}")

    def drop(self, rt: Runtime) -> None:
        """Hand the job back: drop the lease if this delivery still holds it, and have a job it
        left running read queued again (its message is back on the queue). Now, or, when Redis
        fails, from the heartbeat once it answers: another worker's delivery of the job sees a
        live holder and would wait the lease out, and a client would read running meanwhile."""
        try:
            rt.store.release_lease(self.key, self.holder, requeue=self.job_id)
        except Exception:  # noqa: BLE001 - Redis down (or worse): the heartbeat tries again
            rt.releases.defer(self.key, self.holder, self.job_id)


def holder_gone(rt: Runtime, holder: str, taken_at: float) -> bool:
    """Whether the process that took a lease (at ``taken_at``, Unix time) no longer announces
    itself: no readiness record under its hostname, or one of a process that started after the
    lease was taken (a restart under the same name). A record of another instance that started
    before is taken for the holder's: two live workers may share a hostname (neither given
    ``--hostname``), and stealing a live lease would run the job twice. A holder in this very
    process is gone once its delivery has ended: one that handed its job back during a Redis
    outage could not drop its lease then, and its redelivery, often to this same process, would
    otherwise wait out the lease."""
    hostname, instance, token = holder, "", ""
    if holder.count("|") >= 2:
        hostname, instance, token = holder.rsplit("|", 2)
    if instance == rt.instance:
        return not rt.delivery_live(token)
    record = workers.record(rt.redis, hostname)
    if record is None:
        return True
    if instance and record.get("instance") == instance:
        return False
    started_at = record.get("started_at")
    return isinstance(started_at, (int, float)) and started_at > taken_at


def claim(rt: Runtime, job_id: str, lease: Lease) -> Claim:
    """Mark the job running and take its lease, in one round trip, or wait for the delivery that
    holds it (woken by the job's end; else the holder is looked at again every heartbeat).

    A Redis error here (a failover, a dropped subscription) must not end the job: another
    delivery may be running it. The claim is tried again for up to the lease's life (a claim
    whose reply was lost is recognised by its lease value and answered again); then, with this
    delivery's lease dropped if it holds one, ``Unclaimed``. So too at once once the worker is
    shutting down: a delivery that does not own its job yet would hold the shutdown for as
    long as it waits or retries."""
    ttl = lease_ttl(rt.settings)
    waiting, failing_since = False, None
    while True:
        try:
            claimed = rt.store.claim(job_id, max_attempts=rt.settings.max_retries + 1, worker=rt.hostname,
                                     lease=lease.key, lease_ttl=ttl, holder=lease.holder,
                                     keep_for=record_keep(rt.settings))
            if claimed.state != "leased":
                return claimed
            holder, left_ms = rt.redis.get(lease.key), rt.redis.pttl(lease.key)
            if holder and holder_gone(rt, holder, time.time() - ttl + max(0, left_ms) / 1000):
                log.warning("Job %s: its lease holder %s is gone; taking the job over", job_id,
                            holder.split("|")[0])
                rt.store.release_lease(lease.key, holder)
                continue
            if rt.draining:
                raise Unclaimed(f"job {job_id} is held by another delivery and this worker is "
                                "shutting down")
            if not waiting:
                log.warning("Job %s is being run by another delivery (%s); waiting for it", job_id,
                            (holder or "?").split("|")[0])
                waiting = True
            rt.store.wait(job_id, min(workers.HEARTBEAT_INTERVAL, max(0.1, left_ms / 1000)))
            failing_since = None
        except redis.RedisError as exc:
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > ttl or rt.draining:
                lease.drop(rt)  # if a lost reply left it ours
                raise Unclaimed(f"job {job_id} could not be claimed: {type(exc).__name__}") from exc
            log.warning("Job %s: Redis failed while claiming (%s); trying again", job_id, type(exc).__name__)
            time.sleep(1.0)
