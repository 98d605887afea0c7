"""What waits in the batcher's queue, and what a pass reports (``worker.batcher``).

Plain records, shared by the batcher and the job that submits texts (``worker.execution``);
nothing here runs a pass.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


class Arrival:
    """One job's announcement that its texts are on the way (``Batcher.arriving``)."""
    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = True


@dataclass
class JobTrace:
    """Which forward passes carried one job's texts, and their time (the passes' own time, which
    jobs sharing a pass share); written by the thread running the passes only."""
    passes: set[int] = field(default_factory=set)
    forward_ms: float = 0.0
    job: str = ""  # the job's id, for log lines that name the jobs a failed pass carried


JOBS_NAMED = 8
"""Job ids a log line about one pass names before it only counts the rest: a full pass of
one-text jobs carries hundreds of them."""


def job_names(batch: Sequence["Pending"]) -> str:
    """The distinct jobs of ``batch``, in order of appearance, for a log line: "a, b (+3 more)"."""
    jobs = list(dict.fromkeys(p.trace.job or "?" for p in batch))
    named = ", ".join(jobs[:JOBS_NAMED])
    return named + (f" (+{len(jobs) - JOBS_NAMED} more)" if len(jobs) > JOBS_NAMED else "")


@dataclass
class Pending:
    ids: Sequence[int]
    want: frozenset[str]
    future: Future
    trace: JobTrace


@dataclass(frozen=True)
class BatchStats:
    number: int
    texts: int
    tokens: int
    padded_tokens: int
    encode_ms: float
    jobs: int


RunBatch = Callable[[list[Sequence[int]], list[frozenset[str]]], list[Any]]
StartBatch = Callable[[list[Sequence[int]], list[frozenset[str]]], Callable[[], list[Any]]]
