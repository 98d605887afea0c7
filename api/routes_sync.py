"""Synchronous routes: the seed's ``/embed``, OpenAI's ``/v1/embeddings``, ``/v1/score``.

Each submits an ordinary job and waits for it (event-driven, ``JobStore.wait``),
so sync and async requests share the worker's batches. On timeout the answer is
504 with the job id: the job keeps running and can be polled.

No tokenizer lives in the API, so "text longer than max_length with truncate
false" is decided by the worker, which fails the job with code ``too_long``;
these routes map that failure to 422.
"""
from __future__ import annotations

import re
import time
from typing import Any, Callable

from flask import Blueprint

from api.auth import owner
from api.body import json_body
from api.errors import ApiError, shown
from api.results import item_out, total_tokens
from api.routes_jobs import backend, job_url
from api.streaming import respond
from api.tracing import name_job, traced
from api.validation import embed_request, embeddings_request, score_request
from api.waits import BUSY_RETRY_AFTER
from bge_m3.records import Job

bp = Blueprint("sync", __name__)

FAILURE_STATUS = {"too_long": 422, "invalid_request": 400, "too_many_texts": 413,
                  "result_too_large": 413, "timeout": 504}
"""Job error code -> HTTP status (``timeout``: the worker's BGE_M3_TIME_LIMIT, a gateway timeout
like the API's own); any other failure is the service's fault (500)."""

NO_RETRY = {"x-should-retry": "false"}
"""On answers about a job that ended or still runs: OpenAI's SDKs retry 409, 5xx and 504 twice by
default, each retry a new job (a poison job would kill two more workers; a cancelled one would
run after all)."""

TEXT_INDEX = re.compile(r"\btexts\[(\d+)\]")
"""How a worker's error names a text; a route whose texts came in other fields renames it."""


def run(params: dict[str, Any], workers: list[dict[str, Any]] | None = None,
        field: Callable[[int], str] | None = None) -> tuple[Job, dict[str, Any]]:
    """Submit, wait, and return (job, stored result), or raise the mapped error (503 first
    when no verified worker is ready: a sync caller would only wait for the timeout).
    ``field``: the request's name for the job's text ``i`` ("query", "documents[0]"), used in a
    failed job's message instead of the worker's ``texts[i]``."""
    state = backend()
    if workers is None:
        state.backend.require_worker()
    with state.waits.slot() as free:
        if not free:  # before anything is created: a retry is safe
            raise ApiError(503, "busy", "every request thread that may wait on a job is waiting; "
                           "retry shortly, or submit to /v1/jobs and poll",
                           headers={"Retry-After": BUSY_RETRY_AFTER})
        done, result, first = state.backend.run(traced(params), owner(), state.settings.sync_timeout)
    if done is None:
        raise ApiError(500, "job_lost", "the job disappeared before it finished")
    name_job(done.id)
    if done.status in ("queued", "running"):
        raise ApiError(504, "timeout",
                       f"job {done.id} did not finish within {state.settings.sync_timeout:g} s; "
                       f"poll {job_url(done.id)}",
                       # OpenAI's SDKs retry a 504 twice by default, which would start the
                       # same work twice more while this job still runs; this header stops them.
                       headers={"Location": job_url(done.id), **NO_RETRY},
                       extra={"job_id": done.id})
    if first:
        state.metrics.observe_job(done)
    if done.status == "cancelled":
        raise ApiError(409, "job_cancelled", f"job {done.id} was cancelled", headers=NO_RETRY,
                       extra={"job_id": done.id})
    if done.status == "failed":
        error = done.error or {}
        code = str(error.get("code", "failed"))
        message = str(error.get("message", "job failed"))
        extra: dict[str, Any] = {"job_id": done.id}
        named = TEXT_INDEX.search(message) if field is not None else None
        if named:
            extra["param"] = field(int(named.group(1))).split("[")[0]
            message = TEXT_INDEX.sub(lambda m: field(int(m.group(1))), message)
        status = FAILURE_STATUS.get(code, 500)
        # A 504 points at its job either way, as /openapi.json declares: here it has ended.
        headers = {"Location": job_url(done.id), **NO_RETRY} if status == 504 else NO_RETRY
        raise ApiError(status, code, message, headers=headers, extra=extra)
    if result is None:
        raise ApiError(500, "job_lost", f"the result of job {done.id} has expired")
    return done, result


@bp.post("/embed")
def embed():
    started = time.perf_counter()
    state = backend()
    mode, params = embed_request(json_body(), state.settings)
    job, result = run(params)
    items = [item_out(item, params) for item in result.get("items", [])]
    primary = "dense" if mode == "all" else mode
    body: dict[str, Any] = {"embeddings": [item.get(primary) for item in items],
                            "dimension": result.get("dimension"), "mode": mode}
    if mode != "dense":
        for key in params["modes"]:
            body[key] = [item.get(key) for item in items]
    body["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
    body["usage"] = {"tokens": total_tokens(job, result)}
    return respond(body)


@bp.post("/v1/embeddings")
def embeddings():
    state = backend()
    body = json_body()
    model, encoding, dimensions, params = embeddings_request(body, state.settings)
    # Any model name is accepted and echoed: this server has one model, and OpenAI-style
    # clients often send the name they were configured with.
    workers = state.backend.require_worker()
    dims = {w.get("dimension") for w in workers}
    if dimensions is not None and dimensions not in dims:
        raise ApiError(400, "dimensions_unsupported",
                       f"dimensions={shown(dimensions)} is not supported; this model returns {sorted(dims)}",
                       extra={"param": "dimensions"})
    params["encoding"] = encoding
    single = isinstance(body.get("input"), str)
    job, result = run(params, workers, lambda i: "input" if single else f"input[{i}]")
    data = [{"object": "embedding", "index": i, "embedding": item_out(item, params)["dense"]}
            for i, item in enumerate(result.get("items", []))]
    tokens = total_tokens(job, result)
    return respond({"object": "list", "data": data, "model": model,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


@bp.post("/v1/score")
def score():
    from api.scoring import scores  # numpy, loaded by the first score request only

    state = backend()
    weights, params = score_request(json_body(), state.settings)
    job, result = run(params, field=lambda i: "query" if i == 0 else f"documents[{i - 1}]")
    return {"model": result.get("model"), "weights": weights,
            "scores": scores(result.get("items", []), weights),
            "usage": {"tokens": total_tokens(job, result)}}
