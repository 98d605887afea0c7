"""``/v1/jobs``: submit (202 + Location), read with an optional long-poll, cancel."""
from __future__ import annotations

import re

from flask import Blueprint, current_app, request

from api.auth import owner
from api.body import json_body
from api.errors import ApiError
from api.results import job_out
from api.streaming import respond
from api.tracing import name_job, traced
from api.validation import job_request
from api.waits import BUSY_RETRY_AFTER
from bge_m3.jobreader import MAX_WAIT_SECONDS
from bge_m3.queue import QUEUE_NAME
from bge_m3.records import TERMINAL, Job

WAIT_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?", re.ASCII)
"""What ``?wait=`` accepts: a JSON number (a negative one is then refused as such)."""

bp = Blueprint("jobs", __name__)


def backend():
    return current_app.extensions["bge_m3"]


def job_url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def observe(job: Job) -> None:
    """Record a finished job's latency once (whichever API process sees it first)."""
    state = backend()
    if job.status in TERMINAL and state.backend.first_observation(job):
        state.metrics.observe_job(job)


def read(job: Job, headers: dict[str, str] | None = None):
    state = backend()
    observe(job)
    result = state.backend.store.result(job.id) if job.status == "succeeded" else None
    return respond(job_out(job, result), 200, headers)


def wait_seconds() -> float:
    raw = request.args.get("wait")
    if raw is None:  # an empty ?wait= is not a number: 400, as the schema says
        return 0.0
    # JSON's number syntax in ASCII: float() alone also takes "1_0", "+1", " 1", "１" and "١"
    if not WAIT_NUMBER.fullmatch(raw):
        raise ApiError(400, "invalid_request", "wait must be a number of seconds")
    seconds = float(raw)  # a JSON number past a double's range ("1e400") is inf: capped, as 31 is
    if seconds < 0:
        raise ApiError(400, "invalid_request", "wait must not be negative")
    return min(seconds, MAX_WAIT_SECONDS)


@bp.post("/v1/jobs")
def create_job():
    state = backend()
    params = job_request(json_body(), state.settings)
    job = state.backend.submit(traced(params), owner())
    name_job(job.id)
    url = job_url(job.id)
    body = {"id": job.id, "status": job.status, "created_at": job.created_at, "links": {"self": url}}
    return body, 202, {"Location": url}


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str):
    state = backend()
    seconds = wait_seconds()
    job = state.backend.visible(job_id, owner())
    name_job(job.id)
    if seconds > 0 and job.status not in TERMINAL:
        with state.waits.slot() as free:
            if not free:  # answer now, as a long-poll may; the reserved threads stay free
                return read(job, {"Retry-After": BUSY_RETRY_AFTER})
            job = state.backend.store.wait(job_id, seconds)
        if job is None:
            raise ApiError(404, "job_not_found", f"job {job_id} expired while waiting")
    return read(job)


@bp.delete("/v1/jobs/<job_id>")
def cancel_job(job_id: str):
    state = backend()
    job = state.backend.visible(job_id, owner())
    name_job(job.id)
    outcome = state.backend.store.cancel(job_id, QUEUE_NAME)
    if outcome == "missing":
        raise ApiError(404, "job_not_found", f"no job {job_id} (unknown, expired or not yours)")
    if outcome == "running":
        raise ApiError(409, "job_running",
                       "the job is already running on a worker and can no longer be cancelled",
                       extra={"status": "running"})
    if outcome != "ok":
        raise ApiError(409, "job_finished", f"the job has already finished ({outcome})",
                       extra={"status": outcome})
    job = state.backend.store.get(job_id) or job
    return read(job)
