"""What a job is in Redis: its keys, its id, its record, and what a claim found.

Shared by the API and the workers; ``bge_m3.jobs`` holds the store that reads and writes
these. Nothing here talks to Redis or imports torch.

Keys (``{id}`` is 32 hex chars, 128 random bits):
- ``bge-m3:job:{id}``     hash: status, timestamps, owner, params, attempts, error
- ``bge-m3:result:{id}``  the JSON result, written only on success: a list of chunks, one per
                          item, whose unpacked concatenation is the JSON text (``bge_m3.payload``)
- ``bge-m3:events:{id}``  pub/sub channel; the new status is published on every terminal change
- ``bge-m3:done:{id}``    list, only for a job created with ``notify`` (a synchronous route's):
                          its terminal status is pushed here, and its caller blocks on it
- ``bge-m3:lease:{id}``   the delivery running the job (``worker.lease``), deleted when it ends
- ``bge-m3:waiting``      sorted set: the ids of jobs sent but not yet claimed, by send time;
  ``bge-m3:missing``      and those whose message a sweep found nowhere (``worker.sweep``)
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

PREFIX = "bge-m3"
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}", re.ASCII)
"""A request id the API echoes and stores in a job's params, and the worker logs: short, one
token, nothing a log reader or a header could mistake for structure (``api.tracing``)."""


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


def done_key(job_id: str) -> str:
    return f"{PREFIX}:done:{job_id}"


def lease_key(job_id: str) -> str:
    return f"{PREFIX}:lease:{job_id}"


WAITING_KEY = f"{PREFIX}:waiting"
MISSING_KEY = f"{PREFIX}:missing"


RESULT_ADVICE = "split the job, or leave colbert out of its modes"
"""What a ``result_too_large`` failure advises (the worker writes it in the job's record)."""

SCORE_ADVICE = "score fewer or shorter documents per request"
"""The same for a ``/v1/score`` job (params ``"route": "score"``), whose caller cannot choose the
modes: the sync answer and the record read through ``/v1/jobs/<id>`` say the same."""


class QueueFull(Exception):
    """The queue already holds the most jobs it may."""

    def __init__(self, depth: int):
        super().__init__(f"{depth} jobs are queued")
        self.depth = depth


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


