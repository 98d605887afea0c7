"""One JSON object per log line (``BGE_M3_LOG_JSON``), the same for the worker and the API."""
from __future__ import annotations

import json
import logging


class JsonFormatter(logging.Formatter):
    """``ts`` (Unix seconds), ``level``, ``logger``, ``message``, the record's ``fields`` (a dict
    given as ``extra={"fields": ...}``) and, with a traceback, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        data = {"ts": round(record.created, 3), "level": record.levelname,
                "logger": record.name, "message": record.getMessage()}
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            data.update(extra)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)
