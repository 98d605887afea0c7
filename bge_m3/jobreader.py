"""Reading job state: a job's record and result, and waiting for its end, in few round trips.

The read half of the job store (``bge_m3.jobs``, whose ``JobStore`` adds the writes). A finished
job and its result come back in one round trip, and a synchronous route's create, wait and read
are one pipeline (``JobStore.create_and_await``).
"""
from __future__ import annotations

import time
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from bge_m3 import payload, scripts
from bge_m3.records import TERMINAL, Job, QueueFull, done_key, events_key, job_key, result_key

OBSERVED_FIELD = "observed"
"""Job-hash field set once by the first reader that records a finished job's latency."""

BLOCK_SLICE_SECONDS = 5.0
"""Longest single BLPOP of ``await_end``: below the client's socket timeout, so a long wait is
several blocking reads and a silent connection is noticed."""

CREATE_SLICE_SECONDS = 0.5
"""Longest BLPOP sent behind a create (``JobStore.create_and_await``). A refused create pushes
its own done entry so the BLPOP returns at once, but Redis out of memory or read-only refuses
that push too, and the BLPOP would wait for nothing; a job still running after it costs one more
round trip."""

MAX_WAIT_SECONDS = 30.0
"""Upper bound on one long-poll (``GET /v1/jobs/<id>?wait=``), so a client cannot pin a connection."""


class JobReader:
    """Reads of job state. ``redis`` is a ``redis.Redis`` with ``decode_responses=True``."""

    def __init__(self, redis: Any, events: Any = None):
        self.redis = redis
        self.events = events  # a bge_m3.events.JobEvents shared by the process, or None
        self._observe = redis.register_script(scripts.OBSERVE)

    def get(self, job_id: str) -> Job | None:
        data = self.redis.hgetall(job_key(job_id))
        return Job.from_hash(data) if data else None

    def result(self, job_id: str) -> Any:
        chunks = result_chunks(self.redis, job_id)
        return payload.decode(chunks) if chunks else None

    def result_bytes(self, job_id: str) -> int:
        """What the stored result costs in Redis (its chunks' bytes)."""
        return sum(len(c) for c in result_chunks(self.redis, job_id) or ())

    def wait(self, job_id: str, timeout: float) -> Job | None:
        """Block until the job is terminal or ``timeout`` passes; event-driven via pub/sub, on
        the process's shared subscription when one is attached (``events``, the API), else on a
        subscription of its own. Callers bound ``timeout`` (a long-poll is capped at
        MAX_WAIT_SECONDS)."""
        timeout = max(0.0, timeout)
        deadline = time.monotonic() + timeout
        if self.events is not None:
            with self.events.watch(job_id) as woke:
                while True:
                    woke.clear()  # before the read: a finish after it sets the event again
                    job = self.get(job_id)
                    left = deadline - time.monotonic()
                    if job is None or job.status in TERMINAL or left <= 0:
                        return job
                    woke.wait(left)
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(events_key(job_id))  # subscribe first, then read: no lost wake-up
            while True:
                job = self.get(job_id)
                left = deadline - time.monotonic()
                if job is None or job.status in TERMINAL or left <= 0:
                    return job
                pubsub.get_message(timeout=left)
        finally:
            pubsub.close()

    def read(self, job_id: str, observe: bool = False) -> tuple[Job | None, Any, bool]:
        """The job, its result if it succeeded, and (with ``observe``) whether this is the first
        read to see it finished (``observe``'s flag): all in one round trip."""
        return self._read(job_id, observe, 0.0)

    def await_end(self, job_id: str, timeout: float) -> tuple[Job | None, Any, bool]:
        """For a job created with ``notify``: block until it ends or ``timeout`` (at most
        BLOCK_SLICE_SECONDS) passes, then return what ``read(observe=True)`` does. One round
        trip: Redis runs the reads queued behind the BLPOP when it returns, so the waiting
        thread is woken by Redis itself with the finished job in hand. The done list keeps the
        end until it is popped, so an end before the BLPOP is never missed."""
        return self._read(job_id, True, wait_slice(timeout))

    def _read(self, job_id: str, observe: bool, block: float,
              create: tuple[list[str], list[Any]] | None = None) -> tuple[Job | None, Any, bool]:
        while True:
            pipe = self.redis.pipeline(transaction=False)
            if create is not None:  # EVAL, not EVALSHA: a NOSCRIPT here would leave the BLPOP to block
                pipe.eval(scripts.CREATE, len(create[0]), *create[0], *create[1])
            if block > 0:  # BLPOP's 0 means forever: a spent budget only reads
                pipe.blpop([done_key(job_id)], block)
            pipe.hgetall(job_key(job_id))
            result_chunks(pipe, job_id)
            if observe:  # EVALSHA by hand, as in JobStore._end
                pipe.evalsha(self._observe.sha, 1, job_key(job_id), OBSERVED_FIELD)
            replies = pipe.execute(raise_on_error=False)
            if create is not None:
                check_created(replies[0])
                create = None
            if observe and isinstance(replies[-1], NoScriptError):  # after a Redis restart
                self.redis.script_load(scripts.OBSERVE)
                block = 0.0  # the BLPOP has run: now only read
                continue
            if observe and isinstance(replies[-1], ResponseError):
                replies[-1] = 0  # a refused write (full, read-only): see observe()
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            data, chunks, first = replies[-3:] if observe else (*replies[-2:], 0)
            break
        job = Job.from_hash(data) if data else None
        result = payload.decode(chunks) if job and job.status == "succeeded" and chunks else None
        return job, result, bool(first)

    def observe(self, job_id: str) -> bool:
        """True exactly once per finished job (for latency histograms read by any API process).
        False when Redis refuses the flag's write (at ``maxmemory``, or a read-only replica after
        a failover): a metric is skipped, but the finished job and its result are still read."""
        try:
            return bool(self._observe(keys=[job_key(job_id)], args=[OBSERVED_FIELD]))
        except ResponseError:
            return False


def wait_slice(timeout: float) -> float:
    """One BLPOP's timeout out of what is left of a wait: never negative, never a whole long wait."""
    return min(max(0.0, timeout), BLOCK_SLICE_SECONDS)


def check_created(reply: Any) -> None:
    """Raise what the create script's reply means: its error, or ``QueueFull``."""
    if isinstance(reply, Exception):
        raise reply
    if int(reply) >= 0:
        raise QueueFull(int(reply))


def result_chunks(client: Any, job_id: str) -> Any:
    """LRANGE of the stored chunks (on a client or queued on a pipeline). NEVER_DECODE: they are
    binary (``bge_m3.payload``) even on a decode_responses client."""
    return client.execute_command("LRANGE", result_key(job_id), 0, -1, NEVER_DECODE=True)
