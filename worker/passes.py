"""Running planned batches on the model: one forward pass each, and the failure isolation.

The batcher (``worker.batcher``) decides which texts go together; ``Passes`` runs what it
decided, on the thread that holds the model. A failing batch is split in halves and retried,
so only the text that fails gets the exception and no other job in the batch is touched. A
sticky device error (``worker.device.is_sticky``) is not halved: every half would fail too.
With an asynchronous device (CUDA), passes are pipelined: pass k+1 is queued before pass k's
rows are taken, so the device never waits for the host's work between them.
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Callable

from worker.device import is_sticky
from worker.pending import BatchStats, Pending, RunBatch, StartBatch, job_names

log = logging.getLogger("bge_m3.worker")

Queued = tuple[list[Pending], int, Callable[[], list[Any]], float]
"""A pass queued on the device: (batch, number, finish, queued at)."""


class Passes:
    def __init__(self, run_batch: RunBatch, start_batch: StartBatch | None = None,
                 on_batch: Callable[[BatchStats], None] | None = None,
                 on_device_failed: Callable[[BaseException], None] | None = None):
        self.run_batch = run_batch
        self.start_batch = start_batch  # None: run each pass to its end before the next
        self.on_batch = on_batch
        self.on_device_failed = on_device_failed  # a sticky device error (the worker exits there)
        self._numbers = itertools.count(1)
        self._finished_at = 0.0  # perf_counter at the end of the last pass (a pipelined pass's start)

    def run_all(self, batches: list[list[Pending]]) -> None:
        """Run ``batches`` in order and resolve every text's future, with its row or its error."""
        if self.start_batch is None:
            for batch in batches:
                self._run(batch)
            return
        queued: Queued | None = None
        for batch in batches:
            started = self._start(batch)
            if queued is not None:
                self._finish(*queued)
            queued = started
        if queued is not None:
            self._finish(*queued)

    def _start(self, batch: list[Pending]) -> Queued | None:
        """Queue one pass (``start_batch``); a pass that fails to start is run and isolated
        at once by ``_run``, and None is returned."""
        number = next(self._numbers)
        t0 = time.perf_counter()
        try:
            finish = self.start_batch([p.ids for p in batch], [p.want for p in batch])
        except Exception as exc:  # noqa: BLE001 - isolate the failing text, spare the rest
            log.warning("Batch %d of %d texts (jobs %s) failed to start (%s); running it alone",
                        number, len(batch), job_names(batch), exc)
            self._run(batch)
            return None
        return batch, number, finish, t0

    def _finish(self, batch: list[Pending], number: int, finish: Callable[[], list[Any]],
                queued_at: float) -> None:
        """Take a queued pass's rows and resolve its futures. Its time is counted from when the
        device turned to it: its queueing, or the end of the pass before, whichever is later."""
        try:
            rows = finish()
        except Exception as exc:  # noqa: BLE001 - run it again alone, isolating the failing text
            log.warning("Batch %d of %d texts (jobs %s) failed (%s); running it again", number,
                        len(batch), job_names(batch), exc)
            self._run(batch)
            return
        t1 = time.perf_counter()
        began = max(queued_at, self._finished_at)
        self._finished_at = t1
        self._deliver(batch, number, rows, (t1 - began) * 1000)

    def _run(self, batch: list[Pending]) -> None:
        number = next(self._numbers)
        t0 = time.perf_counter()
        try:
            rows = self.run_batch([p.ids for p in batch], [p.want for p in batch])
        except Exception as exc:  # noqa: BLE001 - isolate the failing text, spare the rest
            if is_sticky(exc):
                self._device_failed(number, batch, exc)
                return
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                log.warning("Batch %d: a text of %d tokens (job %s) failed: %s", number,
                            len(batch[0].ids), job_names(batch), exc)
                return
            log.warning("Batch %d of %d texts (jobs %s) failed (%s); retrying in halves", number,
                        len(batch), job_names(batch), exc)
            half = len(batch) // 2
            self._run(batch[:half])
            self._run(batch[half:])
            return
        self._finished_at = time.perf_counter()
        self._deliver(batch, number, rows, (self._finished_at - t0) * 1000)

    def _device_failed(self, number: int, batch: list[Pending], exc: BaseException) -> None:
        """The device is gone for good: halving the batch would only fail every half. The handler
        runs first (the worker exits there, so its jobs are redelivered rather than failed for
        texts that did nothing wrong); without one, the batch's texts get the error."""
        log.critical("Batch %d (jobs %s): the device failed and cannot recover: %s", number,
                     job_names(batch), exc)
        if self.on_device_failed is not None:
            self.on_device_failed(exc)
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)

    def _deliver(self, batch: list[Pending], number: int, rows: list[Any], encode_ms: float) -> None:
        if len(rows) != len(batch):  # zip would leave the missing texts' futures unresolved
            raise RuntimeError(f"batch {number}: {len(rows)} rows for {len(batch)} texts")
        stats = BatchStats(number, len(batch), sum(len(p.ids) for p in batch),
                           len(batch) * len(batch[0].ids), encode_ms,
                           len({id(p.trace) for p in batch}))
        if self.on_batch is not None:  # before the futures resolve: a finished job is counted
            try:
                self.on_batch(stats)
            except Exception as exc:  # noqa: BLE001 - statistics must never stop serving
                log.warning("batch statistics not recorded: %s", exc)
        t2 = time.perf_counter()
        for trace in {id(p.trace): p.trace for p in batch}.values():
            trace.passes.add(number)
            trace.forward_ms += stats.encode_ms
        for item, row in zip(batch, rows):
            item.future.set_result(row)
        log.debug("Batch: %s texts, %s tokens, encode %.0f ms, postprocess %.0f ms",
                  f"{stats.texts:,}", f"{stats.tokens:,}", stats.encode_ms,
                  (time.perf_counter() - t2) * 1000)
