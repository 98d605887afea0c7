"""Jobs whose message was lost on its way into a worker, sent again.

kombu's Redis transport takes a message off the queue (BRPOP) and only then, in another round
trip, writes it to its unacked hash, from which a dead worker's messages come back. A worker
killed between the two loses the message (a soak run lost one in one ``kill -9`` under load), as
does a warm shutdown that drops a BRPOP answer already on its socket (celery/celery#4354). The
job's record still said queued, with its message, and nothing would ever run it: its sync caller
got a 504 naming a job that never ran, and the record read queued for the result TTL.

The API's create script puts every sent job in a waiting set, and a claim takes it out. Every
``interval`` seconds one worker (a lock) looks at the jobs waiting longest: one whose message is
neither on the queue nor in the unacked hash in two looks an interval apart gets it pushed again
(``bge_m3.scripts.SWEEP``). A message is outside both only for the moment between a pop and its
unacked write, so a look in that moment never sends a second copy; if one ever were, the job's
lease and its terminal state make the copy a skip.
"""
from __future__ import annotations

import time
from typing import Any

from bge_m3.queue import QUEUE_NAME, UNACKED_KEY, queue_depth, restore_interval
from bge_m3.records import PREFIX
from bge_m3.settings import Settings
from worker.logs import get_logger

log = get_logger()

SWEEP_INTERVAL_MAX = 30
"""Seconds between sweeps at most. A sweep reads the whole queue list in one script (about 30 ms
of Redis to copy 10,000 queued messages and as much to match them, on the 2-core VM), so it runs
this seldom; a lost message is rare, and back within one to three minutes."""

LOST_AFTER_INTERVALS = 2
"""A job is looked at once it has waited this many sweep intervals (60 s by default) since sent."""

SWEEP_LIMIT = 500
"""Jobs looked at per sweep, longest waiting first; the rest wait for the next sweeps."""

SWEEP_QUEUE_MAX = 20_000
"""Queued messages above which no sweep runs: its script reads the whole list atomically, about
8 ms of Redis per 1,000 messages (1.6 s at 200,000, and past Redis' 5 s busy threshold near
650,000, every client answered BUSY). The default ``BGE_M3_MAX_QUEUED`` is 10,000."""

LOCK_KEY = f"{PREFIX}:sweep-lock"
"""Held by the worker sweeping this interval, so that N workers make one sweep, not N."""


def interval(settings: Settings) -> int:
    """Seconds between sweeps: a quarter of the visibility timeout, 1 to SWEEP_INTERVAL_MAX."""
    return restore_interval(settings.visibility_timeout, SWEEP_INTERVAL_MAX)


class Sweeper:
    def __init__(self, store: Any, redis: Any, settings: Settings, hostname: str) -> None:
        self.store, self.redis, self.hostname = store, redis, hostname
        self.interval = interval(settings)
        self._next = 0.0
        self._skipping = False  # said once per stretch of a queue too long to sweep

    def beat(self) -> list[str]:
        """Sweep, at most once an interval in this process and across workers; returns the ids
        of jobs whose message was sent again."""
        now = time.monotonic()
        if now < self._next:
            return []
        self._next = now + self.interval
        # Expires a little early: the next interval's sweep, by this worker or another, may run.
        if not self.redis.set(LOCK_KEY, self.hostname, nx=True, px=int(self.interval * 900)):
            return []
        depth = queue_depth(self.redis)
        if depth > SWEEP_QUEUE_MAX:
            if not self._skipping:
                log.warning("Lost-message sweep paused: %s messages queued, over %s (it would hold "
                            "Redis for ~%d ms)", f"{depth:,}", f"{SWEEP_QUEUE_MAX:,}", depth * 8 // 1000)
            self._skipping = True
            return []
        self._skipping = False
        resent = self.store.sweep_lost(QUEUE_NAME, UNACKED_KEY, LOST_AFTER_INTERVALS * self.interval,
                                       self.interval, SWEEP_LIMIT)
        for job_id in resent:
            log.warning("Job %s: its message was lost on its way into a worker (one stopped as it "
                        "took it); sent again", job_id)
        return resent
