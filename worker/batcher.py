"""Token-budget batching across jobs: one thread owns the model, task threads submit texts.

In the style of TEI's queue, with fairness across jobs: each job's texts wait in a FIFO of
their own, the jobs in arrival order; the batcher lingers up to ``batch_wait_ms`` for company,
takes a window from the jobs in turn, one text each (at most ``WINDOW_BATCHES`` budgets of
tokens, so a 10,000-text job cannot keep a 1-text job behind it waiting for more than one
window), sorts the window by length and cuts it into batches whose *padded* size (rows x
longest row) stays within ``max_batch_tokens``. Each batch is one forward pass, run by
``worker.passes``, which also isolates a failing text from the rest of its batch.

When the model is idle and nothing waits, a job that fits one batch runs in the
submitting thread itself: two thread hand-offs (about a third of a millisecond)
are most of what a lone small request would wait. One thread at a time holds the
model either way (``_busy``); texts that arrive meanwhile queue for the next pass.

A job already taken by this worker but still tokenizing is *arriving*
(``arriving()``): neither the inline path nor a window leaves without it (for at most
ARRIVAL_WAIT_MS), so a burst of small jobs is not cut into a lone first pass and
the rest.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from worker.passes import Passes
from worker.pending import (Arrival, BatchStats, JobTrace, Pending, RunBatch, StartBatch,
                            job_names)
from worker.planning import plan_batches

WINDOW_BATCHES = 4
"""How many token budgets one collection window holds; bounds how long a queued text waits."""

ARRIVAL_WAIT_MS = 20.0
"""Longest a window waits for arriving jobs (claimed, still tokenizing). They reach the queue
within a millisecond or so each; one that misses the window costs a whole pass more."""

log = logging.getLogger("bge_m3.worker")


class Batcher:
    def __init__(self, run_batch: RunBatch, max_batch_tokens: int, wait_ms: float,
                 on_batch: Callable[[BatchStats], None] | None = None, pass_tokens: int | None = None,
                 start_batch: StartBatch | None = None,
                 on_device_failed: Callable[[BaseException], None] | None = None):
        # start_batch: an asynchronous device's (CUDA) passes are pipelined (worker.passes).
        self._passes = Passes(run_batch, start_batch, on_batch, on_device_failed)
        self.max_batch_tokens = max(1, int(max_batch_tokens))
        self.pass_tokens = pass_tokens  # padding bound per batch (plan_batches); None: budget only
        self.wait_s = max(0.0, wait_ms / 1000.0)
        # One FIFO per submission (a job's texts), in arrival order: a window takes from them in
        # turn, so a small job behind a 10,000-text one waits one window, not the whole job.
        self._queue: collections.deque[collections.deque[Pending]] = collections.deque()
        self._queued_tokens = 0
        self._busy = False  # a thread is running a batch on the model
        self._arriving = 0  # jobs announced (``arriving``) that have not submitted yet
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="bge-m3-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Announce a job whose texts will be submitted (pass the yielded ``Arrival`` to
        ``submit``); leaving the block without submitting withdraws the announcement."""
        arrival = Arrival()
        with self._cond:
            self._arriving += 1
        try:
            yield arrival
        finally:
            with self._cond:
                self._arrived(arrival)

    def _arrived(self, arrival: Arrival | None) -> None:  # holding _cond
        if arrival is not None and arrival.open:
            arrival.open = False
            self._arriving -= 1
            if not self._arriving and self._queue:  # only a waiting window cares; no idle wake-ups
                self._cond.notify_all()

    def submit(self, rows: Sequence[Sequence[int]], want: frozenset[str],
               trace: JobTrace | None = None, arrival: Arrival | None = None) -> list[Future]:
        """Queue one job's texts; one future per text, resolved with ``run_batch``'s row."""
        trace = trace or JobTrace()
        items = [Pending(ids, want, Future(), trace) for ids in rows]
        tokens = sum(len(p.ids) for p in items)
        with self._cond:
            self._arrived(arrival)
            if not self._running:
                raise RuntimeError("batcher is not running")
            inline = (not self._busy and not self._queue and not self._arriving
                      and len(items) * max((len(p.ids) for p in items), default=0) <= self.max_batch_tokens)
            if inline:
                self._busy = True
            else:
                if items:
                    self._queue.append(collections.deque(items))
                self._queued_tokens += tokens
                self._cond.notify_all()
        if inline:
            try:
                for item in items:
                    item.future.set_running_or_notify_cancel()
                self._passes.run_all(plan_batches(items, self.max_batch_tokens, self.pass_tokens))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        return [p.future for p in items]

    def run_direct(self, rows: list[Sequence[int]], want: frozenset[str]) -> list[Any]:
        """One forward pass outside the queue (the warm-up, before the thread starts)."""
        return self._passes.run_batch(rows, [want] * len(rows))

    def _take_window(self) -> list[Pending] | None:
        window_tokens = WINDOW_BATCHES * self.max_batch_tokens
        with self._cond:
            while self._running and (not self._queue or self._busy):
                self._cond.wait()
            if not self._running:
                return None
            now = time.monotonic()
            deadline, arrivals = now + self.wait_s, now + ARRIVAL_WAIT_MS / 1000
            while self._queued_tokens < window_tokens:
                left = (max(deadline, arrivals) if self._arriving else deadline) - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken: list[Pending] = []
            tokens = 0
            while self._queue and (not taken or tokens + len(self._queue[0][0].ids) <= window_tokens):
                job = self._queue.popleft()
                item = job.popleft()
                tokens += len(item.ids)
                taken.append(item)
                if job:  # round robin: this job's next text waits behind the other jobs' next
                    self._queue.append(job)
            self._queued_tokens -= tokens
            self._busy = True
            return taken

    def _loop(self) -> None:
        while True:
            window = self._take_window()
            if window is None:
                return
            try:
                live = [p for p in window if p.future.set_running_or_notify_cancel()]
                self._passes.run_all(plan_batches(live, self.max_batch_tokens, self.pass_tokens))
            except Exception as exc:  # noqa: BLE001 - the model's only thread must outlive a bug
                log.exception("Window of %d texts (jobs %s) failed outside a forward pass",
                              len(window), job_names(window))
                for item in window:
                    if not item.future.done():
                        item.future.set_exception(exc)
            finally:
                with self._cond:
                    self._busy = False
