"""The job store: every read and write of job state in Redis, the API's and the workers'.

Celery answers PENDING for any id it has never heard of, so the job's truth lives
here, not in Celery's result backend. Every state change is one atomic Lua
script (``bge_m3.scripts``), so a redelivered message can never finish a job twice
and a cancel can never race a start. Only JSON goes in; nothing here imports torch.
The keys and the record are described in ``bge_m3.records``; the reads are ``bge_m3.jobreader``'s.
"""
from __future__ import annotations

import json
import secrets
import time
from typing import Any, Sequence

from redis.exceptions import NoScriptError

from bge_m3 import payload, scripts
from bge_m3.jobreader import CREATE_SLICE_SECONDS, JobReader, check_created, wait_slice
from bge_m3.records import (MISSING_KEY, PREFIX, WAITING_KEY, Claim, Job, done_key, events_key, job_key,
                            lease_key, new_job_id, result_key)
from bge_m3.staging import Staging

INLINE_RESULT_BYTES = 1024 * 1024
INLINE_RESULT_CHUNKS = 64
"""A stored result at most this big (bytes, chunks) travels inside the finish script: one round
trip. A bigger one is staged first, so no script call carries hundreds of megabytes."""

PUSH_BATCH_BYTES = 64 * 1024 * 1024
"""Stored result bytes sent to Redis per round trip when a finished result is stored at once
(``succeed_chunks``), bounding Redis' query buffer. A worker streams in smaller stretches
(``bge_m3.staging.FLUSH_BYTES``)."""


class JobStore(JobReader):
    """All reads (``JobReader``) and writes of job state."""

    def __init__(self, redis: Any, ttl: int, events: Any = None):
        super().__init__(redis, events)
        self.ttl = ttl
        self._create = redis.register_script(scripts.CREATE)
        self._start = redis.register_script(scripts.START)
        self._finish = redis.register_script(scripts.FINISH)
        self._cancel = redis.register_script(scripts.CANCEL)
        self._release = redis.register_script(scripts.RELEASE)
        self._sweep = redis.register_script(scripts.SWEEP)

    def create(self, params: dict[str, Any], owner: str = "", job_id: str | None = None, *,
               message: str = "", queue: str = "", max_queued: int = 0, notify: bool = False) -> Job:
        """Write the job record (with its TTL) and, when ``message`` is given, push it onto
        ``queue`` in the same atomic script: a job is never seen without its message, nor a
        message without its job. Raises ``QueueFull`` when ``queue`` holds ``max_queued``.
        With ``notify`` its end is also pushed onto its done list, for ``await_end``."""
        job, keys, args = self._new(params, owner, job_id, message, queue, max_queued, notify)
        check_created(self._create(keys=keys, args=args))
        return job

    def create_and_await(self, params: dict[str, Any], owner: str, timeout: float, *, job_id: str,
                         message: str, queue: str, max_queued: int = 0) -> tuple[Job | None, Any, bool]:
        """``create`` with notify, then ``await_end``, in one round trip: what a synchronous
        route needs from Redis when its job finishes within the first wait (at most
        ``CREATE_SLICE_SECONDS``). A refused job pushes its own done entry, so the BLPOP behind
        it returns at once."""
        job, keys, args = self._new(params, owner, job_id, message, queue, max_queued, True)
        return self._read(job.id, True, min(wait_slice(timeout), CREATE_SLICE_SECONDS),
                          create=(keys, args))

    def _new(self, params: dict[str, Any], owner: str, job_id: str | None, message: str, queue: str,
             max_queued: int, notify: bool) -> tuple[Job, list[str], list[Any]]:
        job = Job(id=job_id or new_job_id(), status="queued", created_at=time.time(), owner=owner,
                  params=params)
        keys = [job_key(job.id), queue or f"{PREFIX}:queue:none", done_key(job.id), WAITING_KEY]
        args = [job.id, repr(job.created_at), owner, message, max_queued if message else 0,
                json.dumps(params), self.ttl, "1" if notify else ""]
        return job, keys, args

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
        out = self._start(keys=[job_key(job_id), lease or f"{PREFIX}:lease:none", WAITING_KEY],
                          args=[repr(time.time()), max_attempts, worker, lease_ttl if lease else "",
                                int(keep_for), holder or worker, job_id])
        if out[0] != "running":
            return Claim(out[0], int(out[1]))
        return Claim("running", int(out[1]), json.loads(out[2]) if out[2] else None, float(out[3]))

    def sweep_lost(self, queue: str, unacked: str, lost_after: float, confirm_after: float,
                   limit: int, now: float | None = None) -> list[str]:
        """Send again the messages of queued jobs found neither on ``queue`` nor in kombu's
        ``unacked`` hash in two looks ``confirm_after`` apart; returns their ids (``SWEEP``)."""
        return list(self._sweep(keys=[WAITING_KEY, MISSING_KEY, queue, unacked],
                                args=[repr(time.time() if now is None else now), lost_after,
                                      confirm_after, limit, job_key(""), f"resent-{secrets.token_hex(4)}-"]))

    def release_lease(self, lease: str, holder: str, requeue: str = "") -> bool:
        """Delete ``lease`` (a ``claim``'s) if ``holder`` still holds it; True when deleted. With
        ``requeue`` (the job's id), that job, if still running, reads queued again (handed back)."""
        keys = [lease, job_key(requeue)] if requeue else [lease]
        return bool(self._release(keys=keys, args=[holder]))

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
                       pipe: Any = None, counts: tuple[str, dict[str, int]] | None = None) -> str:
        """``succeed_chunks`` for a result streamed to ``staging`` (``bge_m3.staging``) while the
        job ran: what is still pending goes in the finish's round trip, inside the finish script
        itself when nothing was sent yet and it is small. ``counts``: (a statistics hash, what to
        add to it) if, and only if, the finish lands."""
        pipe = pipe if pipe is not None else self.redis.pipeline(transaction=False)
        if (not staging.sent_chunks and staging.pending_bytes <= INLINE_RESULT_BYTES
                and len(staging.pending) <= INLINE_RESULT_CHUNKS):
            return self._end(pipe, job_id, "succeeded", inline=staging.pending, stats=stats, counts=counts)
        staging.flush(pipe)
        return self._end(pipe, job_id, "succeeded", staging=staging.key, staged=staging.sent_chunks,
                         stats=stats, counts=counts)

    def fail(self, job_id: str, code: str, message: str, stats: dict[str, Any] | None = None,
             pipe: Any = None) -> str:
        pipe = pipe if pipe is not None else self.redis.pipeline(transaction=False)
        return self._end(pipe, job_id, "failed", error={"code": code, "message": message}, stats=stats)

    def _end(self, pipe: Any, job_id: str, status: str, *, staging: str | None = None, staged: int = 0,
             inline: Sequence[bytes] = (), error: dict | None = None, stats: dict | None = None,
             counts: tuple[str, dict[str, int]] | None = None) -> str:
        extra: list[str] = []
        if error is not None:
            extra += ["error", json.dumps(error)]
        if stats is not None:
            extra += ["stats", json.dumps(stats)]
        counter_key, added = counts or (f"{PREFIX}:stats:none", {})
        for name, value in added.items():
            extra += [f"+{name}", str(int(value))]
        keys = [job_key(job_id), result_key(job_id), events_key(job_id),
                staging or f"{PREFIX}:staging:none", done_key(job_id), lease_key(job_id), counter_key]
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
        A cancelled job's message still on ``queue`` is taken off it; its record then lives
        ``ttl`` from now, as a finished job's does."""
        keys = [job_key(job_id), events_key(job_id), done_key(job_id)] + ([queue] if queue else [])
        return self._cancel(keys=keys, args=[repr(time.time()), self.ttl])
