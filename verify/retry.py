"""How hard one endpoint is tried for one file before the next endpoint gets its turn."""
from __future__ import annotations

import random
from dataclasses import dataclass

TRANSIENT_ATTEMPTS = 5
"""Failed requests in a row on one endpoint before moving to the next; a request that takes the
file further than any before it breaks the row (``verify.download``)."""

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

LOW_SPEED_BYTES = 1024 * 1024
"""Fewest body bytes one request must bring in each ``LOW_SPEED_WINDOW`` (about 17 kB/s, at which
the model would take 37 hours). A body that trickles below it (a throttled mirror, a byte a
minute, each read inside the socket timeout) is dropped as an attempt that made no progress, so
the endpoint is given up after ``TRANSIENT_ATTEMPTS`` windows instead of holding the download,
and a starting worker, for ever. What it brought stays on disk for the resume."""

LOW_SPEED_WINDOW = 60.0
"""Seconds over which ``LOW_SPEED_BYTES`` is measured."""


@dataclass(frozen=True)
class RetryPolicy:
    transient_attempts: int = TRANSIENT_ATTEMPTS
    bad_content_attempts: int = BAD_CONTENT_ATTEMPTS
    max_requests: int = MAX_REQUESTS
    base_delay: float = BASE_DELAY
    max_delay: float = MAX_DELAY
    max_retry_after: float = MAX_RETRY_AFTER
    low_speed_bytes: int = LOW_SPEED_BYTES
    low_speed_window: float = LOW_SPEED_WINDOW

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure in a row; ``Retry-After`` wins when given."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.max_retry_after)
        backoff = min(self.max_delay, self.base_delay * 2 ** max(0, failures - 1))
        return backoff * (0.5 + random.random() / 2)
