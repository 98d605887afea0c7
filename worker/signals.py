"""Celery signal handlers: logs in ``celeryd_init``, gate and load in ``worker_init``, announce in
``worker_ready``.

Celery logs and swallows an ``Exception`` raised by a signal handler, then keeps
consuming. ``SystemExit`` is not an ``Exception``: it propagates out of the
WorkController's constructor, before any consumer exists, so a refused worker
exits non-zero having taken nothing off the queue (tests/test_worker_gate.py).
"""
from __future__ import annotations

import sys
from typing import Any

from worker.device import DeviceUnavailable
from worker.gate import EXIT_REFUSED, GateRefused
from worker.logs import get_logger, setup_logging

EXIT_LOAD_FAILED = 4
"""Exit status when the verified model could not be loaded or warmed up."""

EXIT_BAD_POOL = 5
"""Exit status when asked for a forking pool: the batcher thread and the model cannot be forked."""

EXIT_NO_DEVICE = 7
"""Exit status when the device ``BGE_M3_DEVICE`` names is not visible (checked before the gate)."""

ALLOWED_POOLS = ("thread", "solo")
"""Pools that run tasks in the process that owns the model."""

log = get_logger()


def _pool_name(pool_cls: Any) -> str:
    text = pool_cls if isinstance(pool_cls, str) else f"{pool_cls.__module__}.{pool_cls.__name__}"
    return text.lower()


def connect(app: Any) -> None:
    from celery import signals

    def on_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        settings = app.bge_m3_settings
        setup_logging(settings, getattr(app, "bge_m3_loglevel", None))
        pool = _pool_name(sender.pool_cls)
        if not any(name in pool for name in ALLOWED_POOLS):
            log.error("pool %s would fork the model; use --pool threads (the default)", pool)
            sys.exit(EXIT_BAD_POOL)
        from worker import runtime

        try:
            runtime.Runtime(settings, sender.hostname).boot()
        except GateRefused as exc:
            log.error("Refusing to start: %s", exc)
            sys.exit(EXIT_REFUSED)
        except DeviceUnavailable as exc:
            log.error("Refusing to start: %s", exc)
            sys.exit(EXIT_NO_DEVICE)
        except Exception as exc:  # noqa: BLE001 - anything else at load time is fatal too
            log.exception("Model load failed: %s", exc)
            sys.exit(EXIT_LOAD_FAILED)

    def on_celeryd_init(sender: Any = None, instance: Any = None, **_: Any) -> None:
        # Sent before Celery checks privileges (a warning when root) and long before worker_init:
        # log lines take their format from here on.
        if getattr(instance, "app", None) is not app:
            return
        settings = app.bge_m3_settings
        setup_logging(settings, getattr(app, "bge_m3_loglevel", None))
        if settings.log_json:
            instance.quiet = True  # no start-up banner: plain text amid JSON lines

    def on_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        from worker import runtime

        runtime.current().ready()

    def on_shutdown(sender: Any = None, **_: Any) -> None:
        from worker import runtime

        if runtime._current is not None:
            runtime._current.shutdown()
            log.info("Worker %s stopped", runtime._current.hostname)

    def on_shutting_down(sender: Any = None, **_: Any) -> None:
        from worker import runtime

        if runtime._current is not None and sender == runtime._current.hostname:
            runtime._current.drain()

    signals.celeryd_init.connect(on_celeryd_init, weak=False)
    signals.worker_init.connect(on_init, weak=False)
    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_shutting_down.connect(on_shutting_down, weak=False)
    signals.worker_shutdown.connect(on_shutdown, weak=False)
