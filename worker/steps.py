"""A consumer bootstep that tells the runtime whether the worker can take messages now.

Celery restarts the consumer's blueprint when the broker connection drops: every step is
stopped, then started again once the connection is back. This step, started after the task
consumer, marks the worker consuming; stopped, it marks it not. The readiness record follows
(``accepting``), so /readyz does not say ready while the consumer is still reconnecting (its
retry delay grows to 10 s and more after a long Redis outage) and sync calls are not accepted
only to time out.
"""
from __future__ import annotations

from typing import Any

from celery import bootsteps


class Consuming(bootsteps.StartStopStep):
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, parent: Any) -> None:
        _set(True)

    def stop(self, parent: Any) -> None:
        _set(False)

    def shutdown(self, parent: Any) -> None:
        _set(False)


def _set(consuming: bool) -> None:
    from worker import runtime

    if runtime._current is not None:
        runtime._current.set_consuming(consuming)
