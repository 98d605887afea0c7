"""How many request threads may wait on jobs at once, so that the rest stay free.

Under gunicorn's gthread worker every request holds a thread until it answers, and a sync call
or a long-poll holds one for as long as its job runs. With every thread waiting, a health check,
a submit or a read would queue behind them: an orchestrator would see the API as dead while it
is merely busy. ``bge-m3 api`` keeps a few threads out of the waiting pool
(``api.serve.wait_slots``); a sync call that finds no slot gets 503 ``busy`` with
``Retry-After`` before anything is created, and a long-poll answers at once with the job as it
is (the long-poll contract allows an early answer).

Slow or stalled clients (a body sent byte by byte) hold a thread too, before any route runs;
that is a reverse proxy's job (README, "HTTP API").
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

BUSY_RETRY_AFTER = "1"
"""Seconds a client refused for want of a wait slot is asked to wait before trying again."""


class WaitSlots:
    def __init__(self, slots: int | None = None):
        """``slots``: threads that may wait at once; None: no bound (the dev server, tests)."""
        self.size = slots
        self._free = threading.BoundedSemaphore(slots) if slots else None

    @contextlib.contextmanager
    def slot(self) -> Iterator[bool]:
        """Yields whether this thread may wait; never blocks to find out."""
        got = self._free is None or self._free.acquire(blocking=False)
        try:
            yield got
        finally:
            if got and self._free is not None:
                self._free.release()
