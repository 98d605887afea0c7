"""Job records in Redis: the contract between the API and the workers.

Celery answers PENDING for any id it has never heard of, so the job's truth lives
here, not in Celery's result backend. Every state change is one atomic Lua
script, so a redelivered message can never finish a job twice and a cancel can
never race a start. Only JSON goes in; nothing here imports torch.

Keys (``{id}`` is 32 hex chars, 128 random bits):
- ``bge-m3:job:{id}``     hash: status, timestamps, owner, params, attempts, error
- ``bge-m3:result:{id}``  the JSON result, written only on success: a list of compressed
                          chunks whose concatenation is the JSON text (``bge_m3.payload``)
- ``bge-m3:events:{id}``  pub/sub channel; the new status is published on every terminal change
"""
from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Sequence

from redis.exceptions import NoScriptError

from bge_m3 import payload

PREFIX = "bge-m3"
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

INLINE_RESULT_BYTES = 1024 * 1024
INLINE_RESULT_CHUNKS = 64
"""A stored result at most this big (bytes, chunks) travels inside the finish script: one round
trip. A bigger one is staged first, so no script call carries hundreds of megabytes."""

PUSH_BATCH_BYTES = 64 * 1024 * 1024
"""Compressed result bytes sent to Redis per pipeline round trip, bounding its query buffer."""

MAX_WAIT_SECONDS = 30.0
"""Upper bound on one long-poll (``GET /v1/jobs/<id>?wait=``), so a client cannot pin a connection."""


def new_job_id() -> str:
    return secrets.token_hex(16)


def owner_of(api_key: str | None) -> str:
    """A non-reversible tag for the key that created a job; the key itself is never stored."""
    if not api_key:
        return ""
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


def job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def result_key(job_id: str) -> str:
    return f"{PREFIX}:result:{job_id}"


def events_key(job_id: str) -> str:
    return f"{PREFIX}:events:{job_id}"


_START = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return {'missing', 0} end
if s ~= 'queued' and s ~= 'running' then return {s, 0} end
if ARGV[4] ~= '' and not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'EX', ARGV[4]) then
  return {'leased', 0}
end
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if tonumber(n) > tonumber(ARGV[2]) then return {'exhausted', n} end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'worker', ARGV[3])
return {'running', n, redis.call('HGET', KEYS[1], 'params') or '', redis.call('HGET', KEYS[1], 'created_at')}
"""

_FINISH = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s or s == 'succeeded' or s == 'failed' or s == 'cancelled' then
  if ARGV[4] == 'staged' then redis.call('DEL', KEYS[4]) end
  return s or 'missing'
end
local ttl = tonumber(ARGV[3])
local inline = tonumber(ARGV[5])
if ARGV[4] == 'staged' then
  redis.call('RENAME', KEYS[4], KEYS[2])
  redis.call('EXPIRE', KEYS[2], ttl)
elseif inline > 0 then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 6, 5 + inline))
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2])
for i = 6 + inline, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('PUBLISH', KEYS[3], ARGV[1])
return 'ok'
"""

_CANCEL = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s ~= 'queued' then return s end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
redis.call('PUBLISH', KEYS[2], 'cancelled')
return 'ok'
"""


@dataclass(frozen=True)
class Claim:
    """What ``JobStore.claim`` found: the state, the attempt, and for 'running' the job's input."""
    state: str
    attempt: int
    params: dict[str, Any] | None = None
    created_at: float | None = None


@dataclass
class Job:
    id: str
    status: str
    created_at: float
    owner: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    params: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    stats: dict[str, Any] | None = None

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> "Job":
        def num(key: str) -> float | None:
            return float(data[key]) if data.get(key) else None

        return cls(
            id=data["id"], status=data["status"], created_at=float(data["created_at"]),
            owner=data.get("owner", ""), started_at=num("started_at"), finished_at=num("finished_at"),
            attempts=int(data.get("attempts") or 0),
            params=json.loads(data["params"]) if data.get("params") else None,
            error=json.loads(data["error"]) if data.get("error") else None,
            stats=json.loads(data["stats"]) if data.get("stats") else None,
        )


class JobStore:
    """All reads and writes of job state. ``redis`` is a ``redis.Redis`` with ``decode_responses=True``."""

    def __init__(self, redis: Any, ttl: int):
        self.redis = redis
        self.ttl = ttl
        self._start = redis.register_script(_START)
        self._finish = redis.register_script(_FINISH)
        self._cancel = redis.register_script(_CANCEL)

    def create(self, params: dict[str, Any], owner: str = "", job_id: str | None = None) -> Job:
        job = Job(id=job_id or new_job_id(), status="queued", created_at=time.time(), owner=owner,
                  params=params)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(job_key(job.id), mapping={
            "id": job.id, "status": job.status, "created_at": repr(job.created_at),
            "owner": owner, "params": json.dumps(params), "attempts": 0})
        pipe.expire(job_key(job.id), self.ttl)
        pipe.execute()
        return job

    def delete(self, job_id: str) -> None:
        """Remove a record whose message could not be published (no orphans)."""
        self.redis.delete(job_key(job_id), result_key(job_id))

    def get(self, job_id: str) -> Job | None:
        data = self.redis.hgetall(job_key(job_id))
        return Job.from_hash(data) if data else None

    def result(self, job_id: str) -> Any:
        # NEVER_DECODE: the chunks are zlib bytes even on a decode_responses client.
        chunks = self.redis.execute_command("LRANGE", result_key(job_id), 0, -1, NEVER_DECODE=True)
        return payload.decode(chunks) if chunks else None

    def result_bytes(self, job_id: str) -> int:
        """What the stored result costs in Redis (compressed chunk bytes)."""
        chunks = self.redis.execute_command("LRANGE", result_key(job_id), 0, -1, NEVER_DECODE=True)
        return sum(len(c) for c in chunks or ())

    def start(self, job_id: str, max_attempts: int, worker: str = "") -> tuple[str, int]:
        """Mark running. Returns (state, attempt): 'running' to go ahead; 'exhausted' when this
        delivery is one too many (a poison job); otherwise the terminal or missing state to skip."""
        claim = self.claim(job_id, max_attempts, worker)
        return claim.state, claim.attempt

    def claim(self, job_id: str, max_attempts: int, worker: str = "", lease: str = "",
              lease_ttl: int = 0) -> "Claim":
        """``start`` plus, in the same round trip, the ``lease`` key (set only if free, for
        ``lease_ttl`` seconds; state 'leased' when another delivery holds it) and the job's
        params and creation time."""
        out = self._start(keys=[job_key(job_id), lease or f"{PREFIX}:lease:none"],
                          args=[repr(time.time()), max_attempts, worker, lease_ttl if lease else ""])
        if out[0] != "running":
            return Claim(out[0], int(out[1]))
        return Claim("running", int(out[1]), json.loads(out[2]) if out[2] else None, float(out[3]))

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
        pipe = pipe if pipe is not None else self.redis.pipeline(transaction=False)
        if sum(len(c) for c in chunks) <= INLINE_RESULT_BYTES and len(chunks) <= INLINE_RESULT_CHUNKS:
            return self._end(pipe, job_id, "succeeded", inline=chunks, stats=stats)
        staging = f"{PREFIX}:staging:{job_id}:{secrets.token_hex(8)}"
        sent = 0
        for chunk in chunks:
            pipe.rpush(staging, chunk)
            sent += len(chunk)
            if sent >= PUSH_BATCH_BYTES:
                pipe.expire(staging, self.ttl)
                pipe.execute()
                sent = 0
        pipe.expire(staging, self.ttl)
        return self._end(pipe, job_id, "succeeded", staging=staging, stats=stats)

    def fail(self, job_id: str, code: str, message: str, stats: dict[str, Any] | None = None,
             pipe: Any = None) -> str:
        pipe = pipe if pipe is not None else self.redis.pipeline(transaction=False)
        return self._end(pipe, job_id, "failed", error={"code": code, "message": message}, stats=stats)

    def _end(self, pipe: Any, job_id: str, status: str, *, staging: str | None = None,
             inline: Sequence[bytes] = (), error: dict | None = None, stats: dict | None = None) -> str:
        extra: list[str] = []
        if error is not None:
            extra += ["error", json.dumps(error)]
        if stats is not None:
            extra += ["stats", json.dumps(stats)]
        keys = [job_key(job_id), result_key(job_id), events_key(job_id),
                staging or f"{PREFIX}:staging:none"]
        args = [status, repr(time.time()), self.ttl, "staged" if staging else "inline",
                len(inline), *inline, *extra]
        # EVALSHA queued by hand: a Script handed to a pipeline adds a SCRIPT EXISTS round trip
        # to every execute. Only after a Redis restart (NOSCRIPT) is the script loaded again.
        pipe.evalsha(self._finish.sha, len(keys), *keys, *args)
        try:
            return pipe.execute()[-1]
        except NoScriptError:
            return self._finish(keys=keys, args=args)

    def cancel(self, job_id: str) -> str:
        """'ok' when a queued job was cancelled, else the status that prevented it (or 'missing')."""
        return self._cancel(keys=[job_key(job_id), events_key(job_id)], args=[repr(time.time())])

    def wait(self, job_id: str, timeout: float) -> Job | None:
        """Block until the job is terminal or ``timeout`` passes; event-driven via pub/sub.
        Callers bound ``timeout`` (the API caps a long-poll at MAX_WAIT_SECONDS)."""
        timeout = max(0.0, timeout)
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(events_key(job_id))  # subscribe first, then read: no lost wake-up
            deadline = time.monotonic() + timeout
            while True:
                job = self.get(job_id)
                left = deadline - time.monotonic()
                if job is None or job.status in TERMINAL or left <= 0:
                    return job
                pubsub.get_message(timeout=left)
        finally:
            pubsub.close()
