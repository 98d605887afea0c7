"""TEST-ONLY fault injection for tests/test_faults.py. Off unless ``BGE_M3_TEST_FAULTS=1``.

With the setting off (the default) nothing here does anything: ``inject`` returns at
once and magic texts are embedded like any other text. With it on, a job whose
texts contain one of these makes the worker misbehave on purpose:

- ``BGE_M3_TEST_FAULT:exit``            the worker process dies (``os._exit``), every delivery
- ``BGE_M3_TEST_FAULT:sleep=S``         the job's thread sleeps S seconds, every delivery
- ``BGE_M3_TEST_FAULT:sleep-first=S``   the same, only on the job's first delivery
- ``BGE_M3_TEST_FAULT:device``          every later forward pass fails as a CUDA device-side
                                        assert does (a sticky error: the device is gone)
- ``BGE_M3_TEST_FAULT:redis-first``     the job's first delivery raises redis' ConnectionError
                                        mid-job, as a failover or a lost connection would

``BGE_M3_TEST_LOAD_DELAY=S`` (``load_delay``) makes the model load S seconds slower.
"""
from __future__ import annotations

import os
import time
from typing import Sequence

from worker.logs import get_logger

MAGIC_PREFIX = "BGE_M3_TEST_FAULT:"
"""Texts starting with this trigger a fault when (and only when) test faults are on."""

EXIT_FAULT = 70
"""Exit status of a worker killed by the ``exit`` fault (a job that kills its process)."""

log = get_logger()

_device_broken = False


def inject(texts: Sequence[str], attempt: int, enabled: bool) -> None:
    """Act on the first magic text of a job; a no-op when test faults are off."""
    if not enabled:
        return
    action = next((t[len(MAGIC_PREFIX):] for t in texts if t.startswith(MAGIC_PREFIX)), None)
    if action is None:
        return
    name, _, value = action.partition("=")
    if name == "exit":
        log.error("TEST FAULT: exiting the worker process (attempt %d)", attempt)
        os._exit(EXIT_FAULT)
    if name == "device":
        global _device_broken
        log.error("TEST FAULT: the device fails every pass from now on (attempt %d)", attempt)
        _device_broken = True
    if name == "redis-first" and attempt == 1:
        import redis

        log.error("TEST FAULT: Redis fails mid-job (attempt %d)", attempt)
        raise redis.ConnectionError("TEST FAULT: connection lost mid-job")
    if name == "sleep" or (name == "sleep-first" and attempt == 1):
        log.warning("TEST FAULT: sleeping %s s (attempt %d)", value, attempt)
        time.sleep(float(value))


def check_device() -> None:
    """Raise what a broken CUDA context raises, once the ``device`` fault has fired."""
    if _device_broken:
        raise RuntimeError("CUDA error: device-side assert triggered (BGE_M3_TEST_FAULT:device)")


def load_delay(seconds: float) -> None:
    """Simulate a slow model load (a cold disk, a big model)."""
    if seconds > 0:
        log.warning("TEST FAULT: delaying the model load by %.1f s", seconds)
        time.sleep(seconds)
