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
