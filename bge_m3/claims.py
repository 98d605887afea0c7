"""A job's claim (``JobStore.claim``: running, attempt counted, lease taken), sent and read apart.

A worker whose message carries the job's params (a small job: ``bge_m3.queue.task_message``)
need not wait for the claim's round trip before it tokenizes and runs the pass: it sends the
claim, computes, and reads the answer before it writes anything (``PendingClaim.result``). A
job the claim refuses (cancelled, finished, leased by another delivery, delivered too often)
costs that computation, which is thrown away. Redis runs the claim, and so counts the delivery
of a poison job, even if the worker dies right after sending it: the command is in the socket.
Only a first delivery may do this (``worker.tasks``): a redelivered message may be a poison job's,
which must be judged by its claim before it runs.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable

from redis.exceptions import NoScriptError

from bge_m3.records import PREFIX, Claim, job_key


def claim_call(job_id: str, max_attempts: int, worker: str, lease: str,
               lease_ttl: int) -> tuple[list[str], list[Any]]:
    """The START script's keys and args (``bge_m3.scripts``)."""
    return ([job_key(job_id), lease or f"{PREFIX}:lease:none"],
            [repr(time.time()), max_attempts, worker, lease_ttl if lease else ""])


def claimed(out: list[Any]) -> Claim:
    """The START script's answer as a Claim."""
    if out[0] != "running":
        return Claim(out[0], int(out[1]))
    return Claim("running", int(out[1]), json.loads(out[2]) if out[2] else None, float(out[3]))


class PendingClaim:
    """An EVALSHA of the START script written to a connection of its own, its answer not yet
    read. ``result()`` reads it once (and returns the same Claim after); the connection goes
    back to the pool then. After a Redis restart (NOSCRIPT) ``again`` claims the blocking way."""

    def __init__(self, redis: Any, sha: str, keys: list[str], args: list[Any],
                 again: Callable[[], Claim]):
        self._pool = redis.connection_pool
        self._again = again
        self._claim: Claim | None = None
        self._error: BaseException | None = None
        self._conn = self._pool.get_connection()
        try:
            self._conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
        except BaseException:
            self._drop()
            raise

    def result(self) -> Claim:
        if self._claim is not None:
            return self._claim
        if self._error is not None:
            raise self._error
        try:
            out = self._conn.read_response()
        except NoScriptError:
            self._release()
            self._claim = self._again()
            return self._claim
        except BaseException as exc:
            self._error = exc
            self._drop()
            raise
        self._release()
        self._claim = claimed(out)
        return self._claim

    def _release(self) -> None:
        self._pool.release(self._conn)

    def _drop(self) -> None:
        self._conn.disconnect()
        self._release()
