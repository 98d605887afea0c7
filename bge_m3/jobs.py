"""The job store: every read and write of job state in Redis, the API's and the workers'.

Celery answers PENDING for any id it has never heard of, so the job's truth lives
here, not in Celery's result backend. Every state change is one atomic Lua
script (``bge_m3.scripts``), so a redelivered message can never finish a job twice
and a cancel can never race a start. Only JSON goes in; nothing here imports torch.
The keys and the record are described in ``bge_m3.records``.
"""
from __future__ import annotations

import json
import time
from typing import Any, Sequence

from redis.exceptions import NoScriptError, ResponseError

from bge_m3 import payload, scripts
from bge_m3.records import (PREFIX, TERMINAL, Claim, Job, QueueFull, done_key, events_key, job_key,
                            new_job_id, result_key)
from bge_m3.staging import Staging

INLINE_RESULT_BYTES = 1024 * 1024
INLINE_RESULT_CHUNKS = 64
"""A stored result at most this big (bytes, chunks) travels inside the finish script: one round
trip. A bigger one is staged first, so no script call carries hundreds of megabytes."""

PUSH_BATCH_BYTES = 64 * 1024 * 1024
"""Stored result bytes sent to Redis per round trip when a finished result is stored at once
(``succeed_chunks``), bounding Redis' query buffer. A worker streams in smaller stretches
(``bge_m3.staging.FLUSH_BYTES``)."""

OBSERVED_FIELD = "observed"
"""Job-hash field set once by the first reader that records a finished job's latency."""

BLOCK_SLICE_SECONDS = 5.0
"""Longest single BLPOP of ``await_end``: below the client's socket timeout, so a long wait is
several blocking reads and a silent connection is noticed."""

MAX_WAIT_SECONDS = 30.0
"""Upper bound on one long-poll (``GET /v1/jobs/<id>?wait=``), so a client cannot pin a connection."""



class JobStore:
    """All reads and writes of job state. ``redis`` is a ``redis.Redis`` with ``decode_responses=True``."""

    def __init__(self, redis: Any, ttl: int, events: Any = None):
        self.redis = redis
        self.ttl = ttl
        self.events = events  # a bge_m3.events.JobEvents shared by the process, or None
        self._create = redis.register_script(scripts.CREATE)
        self._start = redis.register_script(scripts.START)
        self._finish = redis.register_script(scripts.FINISH)
        self._cancel = redis.register_script(scripts.CANCEL)
        self._observe = redis.register_script(scripts.OBSERVE)
        self._release = redis.register_script(scripts.RELEASE)

    def create(self, params: dict[str, Any], owner: str = "", job_id: str | None = None, *,
               message: str = "", queue: str = "", max_queued: int = 0, notify: bool = False) -> Job:
        """Write the job record (with its TTL) and, when ``message`` is given, push it onto
        ``queue`` in the same atomic script: a job is never seen without its message, nor a
        message without its job. Raises ``QueueFull`` when ``queue`` holds ``max_queued``.
        With ``notify`` its end is also pushed onto its done list, for ``await_end``."""
        job, keys, args = self._new(params, owner, job_id, message, queue, max_queued, notify)
        _created(self._create(keys=keys, args=args))
        return job

    def create_and_await(self, params: dict[str, Any], owner: str, timeout: float, *, job_id: str,
                         message: str, queue: str, max_queued: int = 0) -> tuple[Job | None, Any, bool]:
        """``create`` with notify, then ``await_end``, in one round trip: what a synchronous
        route needs from Redis when its job finishes within the first wait. A refused job
        pushes its own done entry, so the BLPOP behind it returns at once."""
        job, keys, args = self._new(params, owner, job_id, message, queue, max_queued, True)
        return self._read(job.id, True, _block(timeout), create=(keys, args))

    def _new(self, params: dict[str, Any], owner: str, job_id: str | None, message: str, queue: str,
             max_queued: int, notify: bool) -> tuple[Job, list[str], list[Any]]:
        job = Job(id=job_id or new_job_id(), status="queued", created_at=time.time(), owner=owner,
                  params=params)
        keys = [job_key(job.id), queue or f"{PREFIX}:queue:none", done_key(job.id)]
        args = [job.id, repr(job.created_at), owner, message, max_queued if message else 0,
                json.dumps(params), self.ttl, "1" if notify else ""]
        return job, keys, args

    def get(self, job_id: str) -> Job | None:
        data = self.redis.hgetall(job_key(job_id))
        return Job.from_hash(data) if data else None

    def result(self, job_id: str) -> Any:
        chunks = _result_chunks(self.redis, job_id)
        return payload.decode(chunks) if chunks else None

    def result_bytes(self, job_id: str) -> int:
        """What the stored result costs in Redis (its chunks' bytes)."""
        return sum(len(c) for c in _result_chunks(self.redis, job_id) or ())

    def start(self, job_id: str, max_attempts: int, worker: str = "") -> tuple[str, int]:
        """Mark running. Returns (state, attempt): 'running' to go ahead; 'exhausted' when this
        delivery is one too many (a poison job); otherwise the terminal or missing state to skip."""
        claim = self.claim(job_id, max_attempts, worker)
        return claim.state, claim.attempt

    def claim(self, job_id: str, max_attempts: int, worker: str = "", lease: str = "",
              lease_ttl: int = 0, keep_for: int = 0, holder: str = "") -> "Claim":
        """``start`` plus, in the same round trip, the ``lease`` key (set only if free, for
        ``lease_ttl`` seconds, to ``holder`` or else ``worker``; state 'leased' when another
        delivery holds it) and the job's params and creation time. A job it starts keeps its
        record for at least ``keep_for`` seconds more."""
        out = self._start(keys=[job_key(job_id), lease or f"{PREFIX}:lease:none"],
                          args=[repr(time.time()), max_attempts, worker, lease_ttl if lease else "",
                                int(keep_for), holder or worker])
        if out[0] != "running":
            return Claim(out[0], int(out[1]))
        return Claim("running", int(out[1]), json.loads(out[2]) if out[2] else None, float(out[3]))

    def release_lease(self, lease: str, holder: str) -> bool:
        """Delete ``lease`` (a ``claim``'s) if ``holder`` still holds it; True when deleted."""
        return bool(self._release(keys=[lease], args=[holder]))

    def succeed(self, job_id: str, result: Any, stats: dict[str, Any] | None = None) -> str:
        """Store the JSON-able ``result`` and mark the job succeeded."""
        return self.succeed_chunks(job_id, payload.encode(result), stats)

    def succeed_chunks(self, job_id: str, chunks: Sequence[bytes], stats: dict[str, Any] | None = None,
                       pipe: Any = None) -> str:
        """Store a result already in its stored form (``bge_m3.payload``) and mark the job
        succeeded; commands already queued on ``pipe`` (a non-transactional pipeline) run first,
        in the same round trip. A small result rides inside the finish script; a big one goes to
        a private key first, which the script renames into place. Either way it lands only if the
        job is not already terminal, so a redelivered duplicate never overwrites a result."""
        staging = Staging(self.redis, job_id, self.ttl, flush_bytes=PUSH_BATCH_BYTES)
        for chunk in chunks:
            staging.add((chunk,))
        return self.succeed_staged(job_id, staging, stats, pipe)

    def succeed_staged(self, job_id: str, staging: Staging, stats: dict[str, Any] | None = None,
                       pipe: Any = None) -> str:
        """``succeed_chunks`` for a result streamed to ``staging`` (``bge_m3.staging``) while the
        job ran: what is still pending goes in the finish's round trip, inside the finish script
        itself when nothing was sent yet and it is small."""
        pipe = pipe if pipe is not None else self.redis.pipeline(transaction=False)
        if (not staging.sent_chunks and staging.pending_bytes <= INLINE_RESULT_BYTES
                and len(staging.pending) <= INLINE_RESULT_CHUNKS):
            return self._end(pipe, job_id, "succeeded", inline=staging.pending, stats=stats)
        staging.flush(pipe)
        return self._end(pipe, job_id, "succeeded", staging=staging.key, staged=staging.sent_chunks,
                         stats=stats)

    def fail(self, job_id: str, code: str, message: str, stats: dict[str, Any] | None = None,
             pipe: Any = None) -> str:
        pipe = pipe if pipe is not None else self.redis.pipeline(transaction=False)
        return self._end(pipe, job_id, "failed", error={"code": code, "message": message}, stats=stats)

    def _end(self, pipe: Any, job_id: str, status: str, *, staging: str | None = None, staged: int = 0,
             inline: Sequence[bytes] = (), error: dict | None = None, stats: dict | None = None) -> str:
        extra: list[str] = []
        if error is not None:
            extra += ["error", json.dumps(error)]
        if stats is not None:
            extra += ["stats", json.dumps(stats)]
        keys = [job_key(job_id), result_key(job_id), events_key(job_id),
                staging or f"{PREFIX}:staging:none", done_key(job_id)]
        args = [status, repr(time.time()), self.ttl, "staged" if staging else "inline",
                staged if staging else len(inline), *inline, *extra]
        # EVALSHA queued by hand: a Script handed to a pipeline adds a SCRIPT EXISTS round trip
        # to every execute. Only after a Redis restart (NOSCRIPT) is the script loaded again.
        pipe.evalsha(self._finish.sha, len(keys), *keys, *args)
        try:
            return pipe.execute()[-1]
        except NoScriptError:
            return self._finish(keys=keys, args=args)

    def cancel(self, job_id: str, queue: str = "") -> str:
        """'ok' when a queued job was cancelled, else the status that prevented it (or 'missing').
        A cancelled job's message still on ``queue`` is taken off it."""
        keys = [job_key(job_id), events_key(job_id), done_key(job_id)] + ([queue] if queue else [])
        return self._cancel(keys=keys, args=[repr(time.time())])

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
        return self._read(job_id, True, _block(timeout))

    def _read(self, job_id: str, observe: bool, block: float,
              create: tuple[list[str], list[Any]] | None = None) -> tuple[Job | None, Any, bool]:
        while True:
            pipe = self.redis.pipeline(transaction=False)
            if create is not None:  # EVAL, not EVALSHA: a NOSCRIPT here would leave the BLPOP to block
                pipe.eval(scripts.CREATE, len(create[0]), *create[0], *create[1])
            if block > 0:  # BLPOP's 0 means forever: a spent budget only reads
                pipe.blpop([done_key(job_id)], block)
            pipe.hgetall(job_key(job_id))
            _result_chunks(pipe, job_id)
            if observe:  # EVALSHA by hand, as in _end
                pipe.evalsha(self._observe.sha, 1, job_key(job_id), OBSERVED_FIELD)
            replies = pipe.execute(raise_on_error=False)
            if create is not None:
                _created(replies[0])
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


def _block(timeout: float) -> float:
    return min(max(0.0, timeout), BLOCK_SLICE_SECONDS)


def _created(reply: Any) -> None:
    """Raise what the create script's reply means: its error, or ``QueueFull``."""
    if isinstance(reply, Exception):
        raise reply
    if int(reply) >= 0:
        raise QueueFull(int(reply))


def _result_chunks(client: Any, job_id: str) -> Any:
    """LRANGE of the stored chunks (on a client or queued on a pipeline). NEVER_DECODE: they are
    binary (``bge_m3.payload``) even on a decode_responses client."""
    return client.execute_command("LRANGE", result_key(job_id), 0, -1, NEVER_DECODE=True)
