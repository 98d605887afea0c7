"""One job, start to finish: claim the record, validate, tokenize, batch, store the result.

Every outcome ends in the job record (``bge_m3.jobs``): a bad job fails with a
code and a message, never with an exception that Celery would retry.
"""
from __future__ import annotations

import contextlib
import time
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures import as_completed
from typing import Any

import redis

from bge_m3.records import REQUEST_ID, RESULT_ADVICE, SCORE_ADVICE, Claim
from bge_m3.payload import ItemsResult
from bge_m3.staging import Staging
from worker import faults, lease
from worker.params import InvalidJob, ResultTooLarge, check_result_size, parse_params
from worker.pending import Arrival, JobTrace
from worker.encoder import TooLong
from worker.logs import get_logger
from worker.runtime import Runtime

log = get_logger()

STAGING_GRACE_SECONDS = 60
"""How long a streamed result outlives the job's time limit if its worker dies before the finish
renames it into place (``bge_m3.staging``); the finish then gives it the result TTL."""


class Unrecorded(Exception):
    """Redis failed while this delivery owned the job (mid-run, or its terminal write); the job
    is handed back for another delivery."""


TRANSIENT_REDIS = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)
"""Redis errors that say nothing about the job: a lost or refused connection (an
authentication failure included), a timeout, a replica promoted mid-write."""


def execute(rt: Runtime, job_id: str) -> str:
    """Run one delivery of a job; returns what happened (for logs and tests). Raises
    ``lease.Unclaimed`` before this delivery owns the job and ``Unrecorded`` after; every other
    outcome of an owned job ends in its record."""
    held = lease.Lease.new(rt, job_id)
    with rt.delivery(held.token):  # live until this delivery ends, whatever the end
        return _deliver(rt, job_id, held)


def _deliver(rt: Runtime, job_id: str, held: lease.Lease) -> str:
    claimed = lease.claim(rt, job_id, held)
    if claimed.state not in ("running", "exhausted"):
        log.info("Job %s skipped: %s", job_id, claimed.state)
        return claimed.state
    try:
        if claimed.state == "exhausted":
            rt.store.fail(job_id, "worker_lost", f"the job was delivered {claimed.attempt} times without "
                          "finishing (its worker died, or Redis failed, each time); giving up",
                          pipe=rt.count(failed_jobs=1))
            log.error("Job %s failed: delivered %d times (poison job)", job_id, claimed.attempt)
            return "exhausted"
        with rt.batcher.arriving() as arrival:  # the batcher holds its next pass for these texts
            return _run(rt, job_id, claimed, arrival)
    except TRANSIENT_REDIS as exc:
        # Redis, not the job, failed (a failover, a lost connection, a password rotated): the
        # job goes back to the queue rather than ending failed; a write that did land is found
        # by the next delivery's claim. Deliveries are counted, so this cannot loop for ever.
        log.error("Job %s: Redis failed while it ran (%s); handing it back", job_id,
                  type(exc).__name__)
        held.drop(rt)  # else the next delivery waits out the lease
        raise Unrecorded(f"job {job_id}: Redis failed ({type(exc).__name__})") from exc
    except Exception as exc:  # noqa: BLE001 - every outcome of an owned job ends in its record
        log.exception("Job %s: internal error", job_id)
        try:
            # The client sees the kind of error; its text (hosts, paths) stays in the worker's log.
            rt.store.fail(job_id, "internal_error", f"internal error ({type(exc).__name__}); the "
                          "worker's log has the details under this job's id",
                          pipe=rt.count(failed_jobs=1))
        except Exception:  # noqa: BLE001 - Redis itself is gone: let another delivery finish it
            held.drop(rt)  # else the next delivery waits out the lease
            raise Unrecorded(f"job {job_id} could not be recorded") from exc
        return "failed"


def _run(rt: Runtime, job_id: str, claimed: Claim, arrival: Arrival) -> str:
    settings = rt.settings
    started = time.time()
    created = claimed.created_at or started
    who = job_label(job_id, claimed.params)
    try:
        texts, modes, max_length, truncate = parse_params(claimed.params, settings.max_texts,
                                                          settings.max_length)
        tokenizing = time.perf_counter()
        rows = rt.encoder.tokenize(texts, max_length, truncate)
        check_result_size(rows, modes, settings.max_colbert_tokens, rt.encoder.dimension,
                          rt.encoder.colbert_itemsize, SCORE_ADVICE
                          if claimed.params.get("route") == "score" else RESULT_ADVICE)
    except (InvalidJob, TooLong, ResultTooLarge) as exc:
        code = {TooLong: "too_long", ResultTooLarge: "result_too_large"}.get(type(exc), "invalid_request")
        rt.store.fail(job_id, code, str(exc), stats=_stats(created, started, started, 0, JobTrace()),
                      pipe=rt.count(failed_jobs=1))
        log.info("Job %s failed: %s", who, exc)
        return "failed"
    faults.inject(texts, claimed.attempt, settings.test_faults)  # test-only; a no-op by default
    trace = JobTrace(job=job_id)
    phases = {"tokenize_ms": (time.perf_counter() - tokenizing) * 1000}
    tokens = sum(len(r) for r in rows)
    manifest = rt.verified.manifest
    result = ItemsResult({"model": manifest.repo_id, "revision": manifest.revision,
                          "dimension": rt.encoder.dimension}, len(rows))
    deadline = time.monotonic() + settings.time_limit - (time.time() - started)
    staging = Staging(rt.redis, job_id, settings.time_limit + STAGING_GRACE_SECONDS, background=True)
    futures: list = []
    try:
        if deadline > time.monotonic():
            futures = rt.batcher.submit(rows, modes, trace, arrival)  # may run at once, in this thread
            error = _collect(rt, rows, futures, result, staging, deadline, phases)
        else:  # already over the limit before any forward pass
            futures, error = [], _timeout(settings.time_limit)
        if error is None:  # the sends still in flight are the job's time (stream_ms) too
            waited = time.perf_counter()
            staging.drain()
            phases["stream_ms"] = phases.get("stream_ms", 0.0) + (time.perf_counter() - waited) * 1000
    except BaseException:
        for future in futures:  # texts still queued would keep the model busy for a dead job
            future.cancel()
        with contextlib.suppress(Exception):  # its sender thread must not outlive the job
            staging.discard()
        raise
    computed = time.time()
    if error is not None:
        for future in futures:
            future.cancel()
        staging.discard()
        rt.store.fail(job_id, *error, stats=_stats(created, started, computed, tokens, trace, phases),
                      pipe=rt.count(failed_jobs=1))
        log.warning("Job %s failed: %s", who, error[1])
        return "failed"
    stats = _stats(created, started, computed, tokens, trace, phases)
    stats["streamed_bytes"] = staging.sent_bytes  # sent while the passes ran; the rest at the finish
    # The passes' counts go in the same round trip, before the terminal write, and the job's own
    # in the finish script, only if it lands: readers see both, and no count is taken back (a
    # scrape between a count and its undoing read a drop, which Prometheus takes for a reset).
    try:
        outcome = rt.store.succeed_staged(job_id, staging, stats, pipe=rt.count(),
                                          counts=(rt.counters.key, {"jobs": 1, "texts": len(texts)}))
    except BaseException:  # a handed-back job's next run stages anew: drop this run's stretches
        with contextlib.suppress(Exception):
            staging.discard()
        raise
    if outcome == "incomplete":  # a push of the result was lost; the finish refused to publish it
        rt.store.fail(job_id, "internal_error", "the result did not reach Redis whole; submit the job "
                      "again", stats=stats, pipe=rt.count(failed_jobs=1))
        log.error("Job %s failed: its staged result lacks chunks", who)
        return "failed"
    if outcome != "ok":  # ended meanwhile (cancelled, another delivery) or its record expired
        log.warning("Job %s: result dropped, the job is %s", who, outcome)
        return outcome
    log.info("Job %s: %d texts, %s tokens, %d forward passes, total %.0f ms (queue %.0f, compute %.0f)",
             who, len(texts), f"{tokens:,}", len(trace.passes), stats["total_ms"], stats["queue_ms"],
             stats["compute_ms"])
    return "succeeded"


def job_label(job_id: str, params: Any) -> str:
    """How the worker's lines name a job: its id, and the API request that made it when the
    params carry a well-formed one (``api.tracing``; the worker trusts nothing it reads)."""
    request_id = params.get("request_id") if isinstance(params, dict) else None
    if isinstance(request_id, str) and REQUEST_ID.fullmatch(request_id):
        return f"{job_id} (request {request_id})"
    return job_id


def _collect(rt: Runtime, rows: list[list[int]], futures: list, result: ItemsResult,
             staging: Staging, deadline: float, phases: dict[str, float]) -> tuple[str, str] | None:
    """Serialise each text's item as soon as its batch is done, and hand it to ``staging`` at
    once (out of job order: the result's index restores it), so both overlap the forward passes
    still running. Stops at the first failed text or at ``deadline`` (``time.monotonic``),
    returning (code, message). Adds the time spent serialising and streaming to ``phases``."""
    index = {future: i for i, future in enumerate(futures)}
    serialize = stream = 0.0
    try:
        for future in as_completed(futures, timeout=max(0.0, deadline - time.monotonic())):
            i = index[future]
            exc = future.exception()
            if exc is not None:  # the batcher logged the error's text; the client gets its kind
                return "encode_failed", f"texts[{i}] could not be encoded: {describe(exc)}"
            t0 = time.perf_counter()
            row = future.result()
            result.add(i, rt.encoder.item_json(rows[i], row))
            row.clear()
            ready = result.take_ready()
            t1 = time.perf_counter()
            staging.add(ready)
            serialize += t1 - t0
            stream += time.perf_counter() - t1
    except FuturesTimeout:
        return _timeout(rt.settings.time_limit)
    finally:
        phases["serialize_ms"], phases["stream_ms"] = serialize * 1000, stream * 1000
    if time.monotonic() > deadline:  # a pass run in this thread cannot be interrupted: judge it after
        return _timeout(rt.settings.time_limit)
    return None


def describe(exc: BaseException) -> str:
    """What a client may read of a forward pass's error: out of memory, or the error's type
    (its text can carry device ids, addresses and paths)."""
    if "out of memory" in str(exc).lower():
        return "out of memory on the device"
    return f"{type(exc).__name__}; the worker's log has the details"


def _timeout(limit: float) -> tuple[str, str]:
    return "timeout", f"the job did not finish within {limit} s"


def _stats(created: float, started: float, computed: float, tokens: int, trace: JobTrace,
           phases: dict[str, float] | None = None) -> dict:
    """The job's statistics; ``phases`` (tokenize/serialize/stream ms) and the passes' own time
    split ``compute_ms`` so a slow job says where its time went."""
    now = time.time()
    stats = {"tokens": tokens, "queue_ms": round((started - created) * 1000, 1),
             "compute_ms": round((computed - started) * 1000, 1),
             "total_ms": round((now - created) * 1000, 1),
             "forward_passes": len(trace.passes), "batch_count": len(trace.passes)}
    if phases is not None:
        stats["forward_ms"] = round(trace.forward_ms, 1)
        stats.update((name, round(ms, 1)) for name, ms in phases.items())
    return stats
