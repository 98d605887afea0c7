"""A guard on kombu's Redis transport for a broker connection lost while jobs run.

When the consumer loses Redis, Celery collects the connection (its channel's close fails to put
the unacked messages back: Redis is down) and then closes it again; by then the transport has no
client, and the channel's second try builds connection parameters from ``None``: an
``AttributeError``, which is no connection error, so Celery took it as unrecoverable and the
worker stopped, exit 0, with its jobs still running (kombu 5.7.0, whenever a job was unacked).
Here that case raises redis-py's ``ConnectionError`` instead, which the close already ignores:
the messages stay in Redis's unacked set (the visibility timeout gives them back if their jobs
never finish), the jobs go on, and the consumer reconnects.
"""
from __future__ import annotations

from typing import Any

import redis

_MARK = "_bge_m3_guarded"


def install() -> None:
    """Guard ``kombu.transport.redis.Channel._connparams`` once per process."""
    from kombu.transport import redis as transport

    original = transport.Channel._connparams
    if getattr(original, _MARK, False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> dict[str, Any]:
        if getattr(self.connection, "client", None) is None:  # the connection was collected
            raise redis.ConnectionError("the broker connection is closed")
        return original(self, asynchronous)

    setattr(_connparams, _MARK, True)
    transport.Channel._connparams = _connparams
