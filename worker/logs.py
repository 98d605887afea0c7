"""Worker log lines: ``LEVEL message`` by default, one JSON object per line with ``BGE_M3_LOG_JSON``.

Celery is told not to hijack the root logger (``worker_hijack_root_logger=False``),
so the worker configures it here, once, before the start-up gate runs.
"""
from __future__ import annotations

import json
import logging
import sys
import time

from bge_m3.settings import Settings

LOGGER_NAME = "bge_m3.worker"
"""The worker's logger; every module logs through ``logging.getLogger(LOGGER_NAME)``."""

QUIET_LOGGERS = ("transformers", "urllib3", "filelock", "huggingface_hub")
"""Libraries whose INFO chatter would bury the gate and batch lines."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {"ts": round(record.created, 3), "level": record.levelname,
                "logger": record.name, "message": record.getMessage()}
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            data.update(extra)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))


def setup_logging(settings: Settings, level: str | None = None) -> logging.Logger:
    """Configure the root logger once (idempotent: a second call only adjusts the level)."""
    root = logging.getLogger()
    level_name = (level or settings.log_level or "INFO").upper()
    if not any(getattr(h, "_bge_m3", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
        handler._bge_m3 = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level_name)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return logging.getLogger(LOGGER_NAME)


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)
