"""The Celery task: a thin shell around ``execution.execute`` (one thread per job)."""
from __future__ import annotations

import contextlib
from typing import Any

from worker.logs import get_logger

log = get_logger()


def embed(self: Any, job_id: str, **_ignored: Any) -> str:
    """``bge_m3.embed``: the job's params live in its record, the message carries only its id."""
    from celery.exceptions import Reject

    from worker import execution, runtime

    rt = runtime.current()
    try:
        return execution.execute(rt, job_id)
    except Exception as exc:  # noqa: BLE001 - every outcome must end in the job record
        log.exception("Job %s: internal error", job_id)
        try:
            # The client sees the kind of error; its text (hosts, paths) stays in the worker's log.
            rt.store.fail(job_id, "internal_error", f"internal error ({type(exc).__name__}); the "
                          "worker's log has the details under this job's id")
        except Exception:  # noqa: BLE001 - Redis itself is gone: let another delivery finish it
            with contextlib.suppress(Exception):  # else the next delivery waits out the lease
                execution.release(rt, job_id, rt.hostname)
            raise Reject(f"job {job_id} could not be recorded", requeue=True) from exc
        return "failed"
