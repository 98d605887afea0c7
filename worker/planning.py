"""How a window of texts is cut into forward passes, and what a pass costs (pure functions).

``plan_batches`` is the batcher's cut: longest first, within the token budget, and with at most
as much padding as one more pass costs; ``pass_cost`` fits that cost at start-up from two timed
passes. Both are tested on their own (``tests/test_worker_units.py``) and used by the bench to
run a bare forward over exactly the worker's batches.
"""
from __future__ import annotations

import time
from typing import Any, Callable

CALIBRATION = ((1, 8), (4, 32))
"""(rows, tokens each) of the two passes timed at start-up to fit a pass's cost (``pass_cost``)."""


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


def pass_cost(run: Callable[[int, int], None], max_batch_tokens: int) -> tuple[int, float, float]:
    """Fit cost = fixed + per_token x padded tokens to the best of two timings each of a small
    and a larger pass (``run(rows, tokens_each)``); returns (pass_tokens = fixed / per_token,
    clamped to [1, budget], fixed ms, per-token ms). Where both passes take about the same
    time (launch-bound, as on a GPU) padding is nearly free and the bound nears the budget."""
    timings = []
    for rows, width in CALIBRATION:
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            run(rows, width)
            best = min(best, time.perf_counter() - t0)
        timings.append((rows * width, best * 1000))
    (small, t_small), (large, t_large) = timings
    per_token = max(0.0, (t_large - t_small) / (large - small))
    fixed = max(0.0, t_small - small * per_token)
    tokens = max_batch_tokens if per_token <= 0 else round(fixed / per_token)
    return max(1, min(max_batch_tokens, tokens)), fixed, per_token
