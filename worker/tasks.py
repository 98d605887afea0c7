"""The Celery task: a thin shell around ``execution.execute`` (one thread per job)."""
from __future__ import annotations

from typing import Any

from worker.logs import get_logger

log = get_logger()


def embed(self: Any, job_id: str, **_ignored: Any) -> str:
    """``bge_m3.embed``: the job's params live in its record, the message carries only its id."""
    from celery.exceptions import Reject

    from worker import execution, lease, runtime

    rt = runtime.current()
    try:
        return execution.execute(rt, job_id)
    except (lease.Unclaimed, execution.Unrecorded) as exc:
        # Redis failed where the job record could not say so: back on the queue, for a delivery
        # that claims it (or finds it ended by the one that owns it).
        log.error("Job %s handed back to the queue: %s", job_id, exc)
        raise Reject(str(exc), requeue=True) from exc
    except Exception as exc:  # noqa: BLE001 - a bug before the claim; the job must still end
        log.exception("Job %s: internal error before it was claimed", job_id)
        try:
            rt.store.fail(job_id, "internal_error", f"internal error ({type(exc).__name__}); the "
                          "worker's log has the details under this job's id")
        except Exception as again:  # noqa: BLE001 - Redis is gone too: another delivery ends it
            raise Reject(f"job {job_id} could not be recorded", requeue=True) from again
        return "failed"
