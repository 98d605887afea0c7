"""Worker readiness records: how the API and the web page know a verified worker is serving.

A worker writes ``bge-m3:worker:{hostname}`` (JSON, with a TTL) only after it has
verified the model, loaded it once and run a warm-up forward pass; its heartbeat
refreshes the TTL. When the worker dies the key expires, so ``/readyz`` follows.
Readers find the records through a registry of hostnames (``REGISTRY_KEY``), not by
scanning: a SCAN walks every key, and each job leaves some for a day, so ``/readyz``
would slow down with the number of jobs stored (1.35 s at a million keys).
"""
from __future__ import annotations

import json
import time
from typing import Any

WORKER_PREFIX = "bge-m3:worker:"
READY_TTL = 15
"""Seconds a readiness record lives without a heartbeat; a dead worker drops out within this."""

HEARTBEAT_INTERVAL = 5.0
"""Seconds between refreshes of the readiness record (well inside READY_TTL)."""

REGISTRY_KEY = "bge-m3:workers"
"""Sorted set: hostnames that announced themselves, scored by the time of their last announce.
Membership only says where to look: a record that expired is a worker that is gone."""

REGISTRY_KEEP = 3600
"""Seconds a hostname stays in the registry after its last announce (pruned by announces). Far
beyond READY_TTL, so workers whose clocks disagree by seconds never prune each other."""

STATS_PREFIX = "bge-m3:stats:"
"""Hash per worker: forward_passes, batches, jobs, texts, tokens (tests read it)."""


def announce(redis: Any, hostname: str, info: dict[str, Any], ttl: int = READY_TTL) -> None:
    now = time.time()
    pipe = redis.pipeline(transaction=True)
    pipe.set(WORKER_PREFIX + hostname, json.dumps(info), ex=ttl)
    pipe.zadd(REGISTRY_KEY, {hostname: now})
    pipe.zremrangebyscore(REGISTRY_KEY, "-inf", now - REGISTRY_KEEP)
    pipe.expire(REGISTRY_KEY, REGISTRY_KEEP)
    pipe.execute()


def is_announced(redis: Any, hostname: str) -> bool:
    """Whether ``hostname`` announced itself within READY_TTL (it is alive and serving)."""
    return bool(redis.exists(WORKER_PREFIX + hostname))


def record(redis: Any, hostname: str) -> dict[str, Any] | None:
    """``hostname``'s readiness record, or None when it has not announced itself within READY_TTL."""
    return _parse(redis.get(WORKER_PREFIX + hostname))


def _parse(raw: str | None) -> dict[str, Any] | None:
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def withdraw(redis: Any, hostname: str) -> None:
    pipe = redis.pipeline(transaction=True)
    pipe.delete(WORKER_PREFIX + hostname)
    pipe.zrem(REGISTRY_KEY, hostname)
    pipe.execute()


def ready_workers(redis: Any) -> list[dict[str, Any]]:
    """Records of the workers that take jobs now: announced, and ``accepting`` (not draining for
    a shutdown, not between broker connections). A record that is not accepting still says the
    process is alive, which its job leases go by (``worker.lease``)."""
    keys = sorted(WORKER_PREFIX + name for name in redis.zrange(REGISTRY_KEY, 0, -1))
    out = []
    for raw in redis.mget(keys) if keys else []:
        parsed = _parse(raw)
        if parsed is not None and parsed.get("accepting", True):
            out.append(parsed)
    return out
