"""The batcher and its passes on their own (no model, no worker process): planning, windows,
arrivals, failure isolation, sticky device errors, pipelining.

The batcher runs its real thread; the forward pass is a stand-in function because these tests
are about scheduling and isolation, which the real-model tests cannot steer (the same
behaviours are tested end to end in ``tests/test_worker_batching.py``).
"""
from __future__ import annotations

import threading

import pytest

from worker.batcher import Batcher
from worker.pending import JobTrace, Pending
from worker.planning import pass_cost, plan_batches


def _pending(length: int) -> Pending:
    from concurrent.futures import Future

    return Pending(list(range(length)), frozenset({"dense"}), Future(), JobTrace())


def test_plan_batches_respects_padded_budget_and_sorts_by_length():
    items = [_pending(n) for n in (5, 100, 7, 60, 3, 100, 40)]
    batches = plan_batches(items, max_batch_tokens=200)
    for batch in batches:
        lengths = [len(p.ids) for p in batch]
        assert lengths == sorted(lengths, reverse=True)
        assert len(batch) == 1 or len(batch) * lengths[0] <= 200
    assert sorted(len(p.ids) for b in batches for p in b) == sorted([5, 100, 7, 60, 3, 100, 40])
    assert [len(p.ids) for p in batches[0]] == [100, 100]


def test_a_text_longer_than_the_budget_gets_its_own_batch():
    batches = plan_batches([_pending(10), _pending(500), _pending(10)], max_batch_tokens=64)
    assert [[len(p.ids) for p in b] for b in batches] == [[500], [10, 10]]


def test_plan_batches_bounds_padding_by_the_cost_of_a_pass():
    lengths = [30, 29, 28, 28, 27, 24, 23, 23, 20, 20, 17, 16, 15, 13, 12, 10]
    unbounded = plan_batches([_pending(n) for n in lengths], max_batch_tokens=16384)
    assert len(unbounded) == 1
    batches = plan_batches([_pending(n) for n in lengths], max_batch_tokens=16384, pass_tokens=20)
    assert [len(p.ids) for b in batches for p in b] == lengths  # same order, cut into bands
    padding = [len(b) * len(b[0].ids) - sum(len(p.ids) for p in b) for b in batches]
    assert len(batches) > 1 and all(pad <= 20 for pad in padding)
    cost = lambda plan: sum(20 + len(b) * len(b[0].ids) for b in plan)  # noqa: E731
    assert cost(batches) < cost(unbounded)
    # Equal lengths never pad, so no bound cuts them; the budget still does.
    assert len(plan_batches([_pending(8) for _ in range(10)], 16384, pass_tokens=1)) == 1
    assert len(plan_batches([_pending(8) for _ in range(10)], 40, pass_tokens=1)) == 2


class _Clock:
    """A clock that a stand-in pass advances by its modelled cost: the fit is exact, with no
    dependence on this machine's timer."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


def test_pass_cost_fits_fixed_plus_per_token():
    clock = _Clock()

    def run(rows, width):  # 50 ms a pass plus 0.5 ms a padded token: 100 tokens of padding
        clock.spend(0.050 + rows * width * 0.0005)

    tokens, fixed, per_token = pass_cost(run, max_batch_tokens=16384, clock=clock)
    assert tokens == 100 and fixed == pytest.approx(50) and per_token == pytest.approx(0.5)
    # A pass whose time does not grow with its size (a GPU at these shapes): bounded by the budget.
    flat = _Clock()
    assert pass_cost(lambda rows, width: flat.spend(0.01), max_batch_tokens=4096, clock=flat)[0] == 4096


def test_pass_cost_grows_its_larger_pass_until_the_tokens_show():
    """A GPU-like pass: 5 ms to launch, 0.5 µs a padded token (10,000 tokens of padding cost one
    more pass). At 4 x 32 tokens the tokens add 0.06 ms, less than a sleep's jitter: the fit must
    time larger passes, up to the budget and no further."""
    sizes = []
    clock = _Clock()

    def run(rows, width):
        sizes.append(rows * width)
        # The one-row pass measures 0.1 ms slow every time (launch jitter that best-of-two keeps):
        # more than the 0.06 ms that 120 more tokens add, so two small passes alone fit nonsense.
        clock.spend(0.005 + rows * width * 0.0000005 + (0.0001 if rows * width <= 8 else 0.0))

    tokens, fixed, per_token = pass_cost(run, max_batch_tokens=16384, clock=clock)
    assert max(sizes) == 16384, sizes
    assert 9500 <= tokens <= 10500 and 4.9 <= fixed <= 5.2 and 0.00048 <= per_token <= 0.00052


def test_a_job_still_tokenizing_is_waited_for(monkeypatch):
    """Two jobs land together: the first must not run alone inline while the second, already
    claimed, is still tokenizing; both share one pass."""
    import time

    from worker import batcher as batcher_module

    monkeypatch.setattr(batcher_module, "ARRIVAL_WAIT_MS", 3000.0)  # no flake on a stalled machine
    forward = _Forward()
    batcher = Batcher(forward, max_batch_tokens=1000, wait_ms=0)
    batcher.start()
    try:
        with batcher.arriving() as second:
            with batcher.arriving() as first:
                done = []
                thread = threading.Thread(target=lambda: done.append(
                    batcher.submit([[1, 2]], frozenset({"dense"}), arrival=first)))
                thread.start()
                thread.join(0.05)
            time.sleep(0.2)  # the first job did not run inline, nor alone from the queue
            assert forward.batches == []
            futures = batcher.submit([[3, 4, 5]], frozenset({"dense"}), arrival=second)
        thread.join(5)
        assert [f.result(5) for f in done[0] + futures] == [2, 3] and forward.batches == [2]
        # An announcement withdrawn without a submit does not hold later passes.
        with batcher.arriving():
            pass
        started = time.monotonic()
        assert batcher.submit([[1]], frozenset({"dense"}))[0].result(5) == 1
        assert forward.batches == [2, 1] and time.monotonic() - started < 1.5
    finally:
        batcher.stop()


class _Forward:
    """Stand-in forward pass: fails every batch holding a poisoned row, records batch sizes."""

    def __init__(self):
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, rows, wants):
        self.gate.wait(10)
        self.batches.append(len(rows))
        if any(r and r[0] == -1 for r in rows):
            raise RuntimeError("poisoned row")
        return [len(r) for r in rows]


def test_failing_text_fails_alone_and_jobs_share_passes(monkeypatch):
    from worker import batcher as batcher_module

    # the window waits for the announced arrival (closed right after the second submit), not
    # 50 ms that a stalled machine could spend between the two submits
    monkeypatch.setattr(batcher_module, "ARRIVAL_WAIT_MS", 3000.0)
    forward = _Forward()
    batcher = Batcher(forward, max_batch_tokens=1000, wait_ms=50)
    batcher.start()
    try:
        good_trace, bad_trace = JobTrace(), JobTrace()
        # An announced arrival keeps both jobs off the inline path: they queue for one window.
        with batcher.arriving():
            good = batcher.submit([[1, 2, 3], [4, 5]], frozenset({"dense"}), good_trace)
            bad = batcher.submit([[-1, 9], [7, 7, 7, 7]], frozenset({"sparse"}), bad_trace)
        assert [f.result(10) for f in good] == [3, 2]
        assert bad[1].result(10) == 4
        with pytest.raises(RuntimeError, match="poisoned"):
            bad[0].result(10)
        # One pass of all four texts failed; its halves ran again; the half without the
        # poisoned row holds texts of both jobs, which is the sharing.
        assert forward.batches[0] == 4 and good_trace.passes & bad_trace.passes
    finally:
        batcher.stop()


def test_a_pass_with_missing_rows_fails_its_texts_and_the_batcher_lives_on():
    """A bug outside the model's call (here a pass returning fewer rows than texts) must fail
    the texts it touched, not leave their futures hanging or kill the model's only thread."""
    short = {"on": True}

    def forward(rows, wants):
        return [len(r) for r in rows][:-1] if short["on"] else [len(r) for r in rows]

    batcher = Batcher(forward, max_batch_tokens=1000, wait_ms=0)
    batcher.start()
    try:
        with batcher.arriving():  # an announced job keeps the submission off the inline path
            futures = batcher.submit([[1, 2], [3, 4]], frozenset({"dense"}))
            with pytest.raises(RuntimeError, match="1 rows for 2 texts"):
                futures[0].result(10)
        short["on"] = False
        assert [f.result(10) for f in batcher.submit([[1], [1, 2]], frozenset({"dense"}))] == [1, 2]
    finally:
        batcher.stop()


@pytest.mark.parametrize("message,sticky", [
    ("CUDA error: device-side assert triggered", True),
    ("CUDA error: an illegal memory access was encountered", True),
    ("CUDA out of memory. Tried to allocate 2.00 GiB", False),
    ("CUDA error: out of memory", False),
    ("index out of range in self", False),
])
def test_sticky_device_errors_are_told_from_recoverable_ones(message, sticky):
    from worker.device import is_sticky

    assert is_sticky(RuntimeError(message)) is sticky


def test_a_sticky_device_error_is_not_retried_in_halves(caplog):
    from worker.pending import JobTrace

    calls, failed = [], []

    def forward(rows, wants):
        calls.append(len(rows))
        raise RuntimeError("CUDA error: device-side assert triggered")

    batcher = Batcher(forward, max_batch_tokens=1000, wait_ms=0, on_device_failed=failed.append)
    batcher.start()
    try:
        with caplog.at_level("CRITICAL", logger="bge_m3.worker"):
            futures = batcher.submit([[1], [2, 3], [4, 5, 6], [7]], frozenset({"dense"}),
                                     JobTrace(job="job-7f3a"))
            for future in futures:
                with pytest.raises(RuntimeError, match="device-side assert"):
                    future.result(10)
        assert calls == [4] and len(failed) == 1  # one pass, one report, no halving retries
        lines = [r.getMessage() for r in caplog.records if r.levelname == "CRITICAL"]
        assert len(lines) == 1 and "(jobs job-7f3a)" in lines[0], lines  # which job to look at
    finally:
        batcher.stop()


def test_a_failed_pass_names_its_jobs_and_counts_the_rest():
    from concurrent.futures import Future

    from worker.pending import JOBS_NAMED, JobTrace, Pending, job_names

    traces = [JobTrace(job=f"j{i}") for i in range(JOBS_NAMED + 3)]
    batch = [Pending([1], frozenset({"dense"}), Future(), t) for t in (traces[0], *traces)]
    named = job_names(batch)
    assert named.startswith("j0, j1, ") and named.count("j0") == 1  # each job once, in order
    assert named.endswith(f"j{JOBS_NAMED - 1} (+3 more)") and f"j{JOBS_NAMED}," not in named
    assert job_names(batch[:2]) == "j0"
    assert job_names([Pending([1], frozenset(), Future(), JobTrace())]) == "?"


def test_a_small_job_behind_a_big_one_waits_one_window_at_most():
    """Jobs take turns in a window: a 1-text job submitted while a 100-text job's first window
    runs goes in the next window, not after every text of the big job (plain FIFO: 10 passes)."""
    import time

    from worker.batcher import WINDOW_BATCHES

    gate, order = threading.Event(), []

    def forward(rows, wants):
        gate.wait(10)
        order.append([r[0] for r in rows])
        return [len(r) for r in rows]

    batcher = Batcher(forward, max_batch_tokens=100, wait_ms=0)
    batcher.start()
    try:
        with batcher.arriving():  # queued, not inline
            big = batcher.submit([[1] * 10 for _ in range(100)], frozenset({"dense"}))
        time.sleep(0.2)  # the first window is taken and held at the gate meanwhile
        small = batcher.submit([[2] * 10], frozenset({"dense"}))
        gate.set()
        assert small[0].result(10) == 10 and all(f.result(10) == 10 for f in big)
        before = next(i for i, texts in enumerate(order) if 2 in texts)
        assert before <= WINDOW_BATCHES, order  # the window already taken, then the small job
        assert len(order) == 11
    finally:
        batcher.stop()


def test_large_submission_is_split_into_budgeted_batches():
    forward = _Forward()
    batcher = Batcher(forward, max_batch_tokens=64, wait_ms=0)
    batcher.start()
    try:
        futures = batcher.submit([[1] * 8 for _ in range(100)], frozenset({"dense"}))
        assert [f.result(10) for f in futures] == [8] * 100
        assert max(forward.batches) <= 8 and sum(forward.batches) == 100
    finally:
        batcher.stop()


class _AsyncForward(_Forward):
    """Stand-in for an asynchronous device (``Encoder.start_batch`` on CUDA): records when each
    pass is queued and when its rows are taken; a poisoned row fails at queueing or at taking."""

    def __init__(self, fail_at: str):
        super().__init__()
        self.fail_at = fail_at
        self.events: list[tuple[str, int]] = []

    def start(self, rows, wants):
        poisoned = any(r and r[0] == -1 for r in rows)
        if poisoned and self.fail_at == "start":
            raise RuntimeError("poisoned row")
        self.events.append(("start", len(rows[0])))

        def finish():
            self.events.append(("finish", len(rows[0])))
            if poisoned:
                raise RuntimeError("poisoned row")
            return [len(r) for r in rows]
        return finish


@pytest.mark.parametrize("fail_at", ["start", "finish"])
def test_passes_are_pipelined_on_an_asynchronous_device(fail_at):
    """The next pass is queued before the one before it is taken, so the device never waits for
    the host between them; a failing pass is run again through ``run_batch`` and only its
    failing text fails."""
    forward = _AsyncForward(fail_at)
    batcher = Batcher(forward, max_batch_tokens=8, wait_ms=0, start_batch=forward.start)
    batcher.start()
    try:
        traced = JobTrace()
        futures = batcher.submit([[1] * 4, [1] * 4, [1] * 3, [1] * 3, [1] * 2, [-1, 1]],
                                 frozenset({"dense"}), traced)
        assert [f.result(10) for f in futures[:5]] == [4, 4, 3, 3, 2]
        with pytest.raises(RuntimeError, match="poisoned"):
            futures[5].result(10)
        started = [n for kind, n in forward.events if kind == "start"]
        assert started[:2] == [4, 3]  # the batches, longest first
        assert forward.events[:3] == [("start", 4), ("start", 3), ("finish", 4)]
        assert len(traced.passes) >= 3 and traced.forward_ms > 0
    finally:
        batcher.stop()
