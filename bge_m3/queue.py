"""The Celery app, configured once from Settings; used by the API (send) and workers (consume).

Tasks are sent by name so the API never imports worker code.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

from bge_m3.settings import Settings

TASK_NAME = "bge_m3.embed"
"""The one task; its kwargs are ``{"job_id": str}`` plus the job's params (see ``jobs``)."""

QUEUE_NAME = "bge-m3"
"""The Redis list jobs wait in; its length is the queue depth."""

UNACKED_KEY = "unacked"
"""kombu's Redis hash of messages workers hold unacknowledged (its ``unacked_key`` default)."""


RESTORE_INTERVAL_MAX = 10
"""Upper bound, in seconds, on how often a worker sweeps for unacked messages of dead workers."""


def restore_interval(visibility_timeout: int, most: int = RESTORE_INTERVAL_MAX) -> int:
    """Sweep period: a quarter of the visibility timeout, 1 to ``most`` seconds."""
    return max(1, min(most, visibility_timeout // 4))


def celery_config(settings: Settings) -> dict[str, Any]:
    transport: dict[str, Any] = {
        # Unacked messages come back after this long if a worker dies; must exceed time_limit.
        "visibility_timeout": settings.visibility_timeout,
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        # kombu sweeps for expired unacked messages every interval x throttle seconds (10 x 10
        # by default): without these, a dead worker's job waited up to 100 s past the timeout.
        "unacked_restore_interval": restore_interval(settings.visibility_timeout),
        "unacked_restore_throttle": 1,
    }
    return {
        "broker_url": broker_url(settings.redis_dsn),
        "result_backend": None,  # job state lives in bge_m3.jobs, not Celery's backend
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_default_queue": QUEUE_NAME,
        "task_routes": {TASK_NAME: {"queue": QUEUE_NAME}},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_time_limit": settings.time_limit,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "broker_connection_timeout": 5,
    }


def make_celery(settings: Settings, name: str = "bge_m3"):
    from celery import Celery

    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app


def task_message(job_id: str) -> str:
    """What ``send_task(TASK_NAME, kwargs={"job_id": job_id}, task_id=job_id)`` puts on the Redis
    list: Celery's task protocol 2 inside kombu's Redis envelope. Written here so the API can push
    it in the same atomic script as the job record (``JobStore.create``), instead of a second
    round trip through kombu; tests/test_queue.py holds it equal to Celery's own message for the
    installed versions, so an upgrade that changes the format fails there, not in production."""
    body = json.dumps([[], {"job_id": job_id},
                       {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    return json.dumps({
        "body": base64.b64encode(body.encode()).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": TASK_NAME, "id": job_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": job_id, "parent_id": None, "argsrepr": "()",
            "kwargsrepr": repr({"job_id": job_id}), "origin": f"gen{os.getpid()}@{socket.gethostname()}",
            "ignore_result": None, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
        },
        "properties": {
            "correlation_id": job_id, "reply_to": None, "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": QUEUE_NAME}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    })


def broker_url(url: str) -> str:
    """A Redis URL in kombu's spelling: redis-py's ``unix:///path?db=N`` becomes
    ``redis+socket:///path?virtual_host=N`` (kombu has no unix:// transport), and a socket URL's
    ``password=`` query value, which kombu ignores, moves into the URL's userinfo."""
    if not url.startswith(("unix://", "redis+socket://")):
        return url
    path, _, query = url.split("://", 1)[1].partition("?")
    parts, password = [], None
    for part in filter(None, query.split("&")):
        if part.lower().startswith("password="):
            password = part[len("password="):]
        else:
            parts.append("virtual_host=" + part[3:] if part.startswith("db=") else part)
    if password is not None and "@" not in path:
        path = f":{password}@{path}"
    return f"redis+socket://{path}" + (f"?{'&'.join(parts)}" if parts else "")


def redis_client(url: str, **kwargs: Any):
    """A redis-py client for a Celery broker URL (``redis+socket://`` becomes ``unix://``)."""
    import redis

    if url.startswith("redis+socket://"):
        # kombu names the database ``virtual_host``; redis-py's unix:// URLs call it ``db``.
        url = "unix://" + url[len("redis+socket://"):].replace("virtual_host=", "db=")
    kwargs.setdefault("decode_responses", True)
    kwargs.setdefault("socket_timeout", 10)
    kwargs.setdefault("socket_connect_timeout", 5)
    return redis.Redis.from_url(url, **kwargs)


def queue_depth(redis: Any) -> int:
    return int(redis.llen(QUEUE_NAME))
