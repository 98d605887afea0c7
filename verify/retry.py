"""How hard one endpoint is tried for one file before the next endpoint gets its turn."""
from __future__ import annotations

import random
from dataclasses import dataclass

TRANSIENT_ATTEMPTS = 5
"""Failed requests in a row (no bytes gained) on one endpoint before moving to the next."""

BAD_CONTENT_ATTEMPTS = 3
"""Complete downloads with the wrong SHA-256 from one endpoint before moving to the next."""

MAX_REQUESTS = 100
"""Requests for one file on one endpoint in all: bounds an endpoint that always cuts after a few bytes."""

BASE_DELAY = 1.0
"""Seconds before the first retry; doubled each time (with jitter)."""

MAX_DELAY = 30.0
"""Longest backoff between two attempts."""

MAX_RETRY_AFTER = 120.0
"""Longest ``Retry-After`` honoured; a server asking for more is treated as this."""


@dataclass(frozen=True)
class RetryPolicy:
    transient_attempts: int = TRANSIENT_ATTEMPTS
    bad_content_attempts: int = BAD_CONTENT_ATTEMPTS
    max_requests: int = MAX_REQUESTS
    base_delay: float = BASE_DELAY
    max_delay: float = MAX_DELAY
    max_retry_after: float = MAX_RETRY_AFTER

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure in a row; ``Retry-After`` wins when given."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.max_retry_after)
        backoff = min(self.max_delay, self.base_delay * 2 ** max(0, failures - 1))
        return backoff * (0.5 + random.random() / 2)
