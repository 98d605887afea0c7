"""The Celery task: a thin shell around ``execution.execute`` (one thread per job)."""
from __future__ import annotations

from typing import Any

from worker.logs import get_logger

log = get_logger()


def embed(self: Any, job_id: str, params: Any = None, **_ignored: Any) -> str:
    """``bge_m3.embed``: the job's params live in its record; a small job's ride in the message
    too (``bge_m3.queue.task_message``), so its claim need not be waited for before computing."""
    from celery.exceptions import Reject

    from worker import execution, runtime

    rt = runtime.current()
    try:
        # Only a first delivery computes before its claim is read. A redelivered message may be
        # a poison job's (its worker died running it): its claim must count and judge the
        # delivery before anything runs, or each delivery would kill its worker again.
        delivery = getattr(self.request, "delivery_info", None) or {}
        first = not delivery.get("redelivered") and not getattr(self.request, "retries", 0)
        return execution.execute(rt, job_id, params if first else None)
    except Exception as exc:  # noqa: BLE001 - every outcome must end in the job record
        log.exception("Job %s: internal error", job_id)
        try:
            rt.store.fail(job_id, "internal_error", f"{type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001 - Redis itself is gone: let another delivery finish it
            raise Reject(f"job {job_id} could not be recorded", requeue=True) from exc
        return "failed"
