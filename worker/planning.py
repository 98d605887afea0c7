"""How a window of texts is cut into forward passes, and what a pass costs (pure functions).

``plan_batches`` is the batcher's cut: longest first, within the token budget, and with at most
as much padding as one more pass costs; ``pass_cost`` fits that cost at start-up from two timed
passes. Both are tested on their own (``tests/test_batcher.py``) and used by the bench to
run a bare forward over exactly the worker's batches.
"""
from __future__ import annotations

import time
from typing import Any, Callable

SMALL_PASS = (1, 8)
"""(rows, tokens each) of the small pass timed at start-up: what a pass costs however small."""

LARGE_PASS = (4, 32)
"""(rows, tokens each) of the first larger pass timed at start-up; ``pass_cost`` doubles its rows
until it stands out from the small one (SIZE_SIGNAL) or reaches the budget."""

SIZE_SIGNAL = 3.0
"""How many times the small pass's time the larger one must take before the fit trusts it: on a
GPU, passes of a few rows all take the launch time, and their difference is jitter, not tokens."""


def plan_batches(items: list[Any], max_batch_tokens: int,
                 pass_tokens: int | None = None) -> list[list[Any]]:
    """Cut ``items`` (anything with ``ids``: the batcher's ``Pending``) into batches. Longest first; a batch grows while rows x longest row stays within the budget and, with
    ``pass_tokens`` (what one more forward pass costs, in padded tokens), while its padding
    stays within that: past it, a pass of its own is cheaper for what is left. Greedy, within
    a few per cent of the optimal partition on the benchmark's texts."""
    ordered = sorted(items, key=lambda p: -len(p.ids))
    batches: list[list[Any]] = []
    current: list[Any] = []
    waste = 0
    for item in ordered:
        if current:
            longest = len(current[0].ids)
            pad = longest - len(item.ids)
            if ((len(current) + 1) * longest > max_batch_tokens
                    or (pass_tokens is not None and waste + pad > pass_tokens)):
                batches.append(current)
                current, waste = [], 0
            else:
                waste += pad
        current.append(item)
    if current:
        batches.append(current)
    return batches


def pass_cost(run: Callable[[int, int], None], max_batch_tokens: int,
              clock: Callable[[], float] = time.perf_counter) -> tuple[int, float, float]:
    """Fit cost = fixed + per_token x padded tokens to the best of two timings each of a small
    and a larger pass (``run(rows, tokens_each)``); returns (pass_tokens = fixed / per_token,
    clamped to [1, budget], fixed ms, per-token ms). The larger pass grows until it takes
    SIZE_SIGNAL times the small one, so that its tokens, not the timing's jitter, set the slope;
    where even a pass of the whole budget takes about the small one's time (launch-bound),
    padding is nearly free and the bound nears the budget. ``clock`` (seconds) is for tests."""
    rows, width = SMALL_PASS
    small, t_small = rows * width, _best_ms(run, rows, width, clock)
    rows, width = LARGE_PASS
    while True:
        t_large = _best_ms(run, rows, width, clock)
        if t_large >= SIZE_SIGNAL * t_small or 2 * rows * width > max_batch_tokens:
            break
        rows *= 2
    large = rows * width
    per_token = max(0.0, (t_large - t_small) / (large - small))
    fixed = max(0.0, t_small - small * per_token)
    tokens = max_batch_tokens if per_token <= 0 else round(fixed / per_token)
    return max(1, min(max_batch_tokens, tokens)), fixed, per_token


def _best_ms(run: Callable[[int, int], None], rows: int, width: int, clock: Callable[[], float],
             tries: int = 2) -> float:
    best = float("inf")
    for _ in range(tries):
        t0 = clock()
        run(rows, width)
        best = min(best, clock() - t0)
    return best * 1000
