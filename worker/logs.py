"""Worker log lines: ``LEVEL message`` by default, one JSON object per line with ``BGE_M3_LOG_JSON``.

Celery is told not to hijack the root logger (``worker_hijack_root_logger=False``),
so the worker configures it here, once, before the start-up gate runs.

With JSON lines, what Celery writes past logging is made JSON too, or left out: a log shipper
that parses each line would choke on (or drop) the rest. Its start-up banner is left out (the
worker logs its model, device and queue itself); the warnings it raises (running as root) go
through logging; and its shutdown lines, written from a signal handler with a bare ``os.write``
(a logging lock taken there could deadlock), become JSON written the same way.
"""
from __future__ import annotations

import logging
import os
import sys
import time

from bge_m3.logformat import JsonFormatter
from bge_m3.settings import Settings

LOGGER_NAME = "bge_m3.worker"
"""The worker's logger; every module logs through ``logging.getLogger(LOGGER_NAME)``."""

QUIET_LOGGERS = ("transformers", "urllib3", "filelock", "huggingface_hub", "celery.worker.strategy",
                 "celery.app.trace")
"""Libraries whose INFO chatter would bury the gate and batch lines. Celery's two say "Task
received" and "Task succeeded in 0.01s: 'failed'" of every job (the task returns how the job
ended): two lines beside the worker's own ``Job …`` line, the second misleading. Their warnings
and errors still show."""


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))


def json_say(msg: str, f: object = None) -> None:
    """Celery's ``safe_say`` for JSON lines: one object on stderr, by a bare ``os.write`` (it is
    called from signal handlers). ``f`` (Celery's choice of stream) is ignored: every log line
    goes to stderr."""
    # A record made and formatted by hand: no handler, so no logging lock.
    record = logging.makeLogRecord({"name": "celery.worker", "levelname": "INFO", "msg": msg.strip()})
    line = JsonFormatter().format(record) + "\n"
    try:
        os.write(sys.__stderr__.fileno(), line.encode())
    except (OSError, AttributeError, ValueError):  # stderr closed: losing the line is fine
        pass


def _celery_as_json() -> None:
    from celery.apps import worker as celery_worker

    logging.captureWarnings(True)
    celery_worker.safe_say = json_say


def setup_logging(settings: Settings, level: str | None = None) -> logging.Logger:
    """Configure the root logger once (idempotent: a second call only adjusts the level)."""
    root = logging.getLogger()
    level_name = (level or settings.log_level or "INFO").upper()
    if not any(getattr(h, "_bge_m3", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
        handler._bge_m3 = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        if settings.log_json:
            _celery_as_json()
    root.setLevel(level_name)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return logging.getLogger(LOGGER_NAME)


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)
