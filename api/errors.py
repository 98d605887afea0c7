"""Every error is JSON: ``{"error": {"code", "message"}}`` (OpenAI's shape on the routes its SDKs call).

Never an HTML page, never a 500 for bad input: werkzeug's HTTP exceptions (404,
405, 413, ...), malformed bodies and Redis outages all pass through here.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger("bge_m3.api")

OPENAI_PATHS = frozenset({"/v1/embeddings", "/v1/models"})
"""Routes whose errors use OpenAI's shape (``type`` and ``param`` beside ``code`` and
``message``), and below them (``/v1/models/{model}``): those OpenAI's SDKs call."""

OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
                405: "invalid_request_error", 409: "invalid_request_error",
                413: "invalid_request_error", 415: "invalid_request_error",
                422: "invalid_request_error", 429: "rate_limit_error"}
"""HTTP status -> OpenAI error ``type``; anything else is a ``server_error``."""

HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
              413: "payload_too_large", 415: "unsupported_media_type", 429: "too_many_requests",
              503: "unavailable"}
"""werkzeug status -> our error code, for errors raised by Flask itself (routing, body size)."""


SHOWN_CHARS = 100
"""Most characters of a caller's own value an error message repeats: enough to recognise it, not
an 8 kB job id or a 400-digit number sent back whole."""


def shown(value: object) -> str:
    """``value`` as an error message quotes it, cut at ``SHOWN_CHARS``."""
    text = str(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}… ({len(text):,} characters)"


class ApiError(Exception):
    """An error with a status, a stable machine-readable code and a human message."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   extra: dict[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    extra = dict(extra or {})
    param = extra.pop("param", None)  # the request field at fault: OpenAI's shape names it
    if _openai_route(request.path):
        body["type"] = OPENAI_TYPES.get(status, "server_error")
        body["param"] = param
    body.update(extra)
    response = jsonify({"error": body})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _openai_route(path: str) -> bool:
    path = path.rstrip("/")  # strict_slashes=False serves both
    return path in OPENAI_PATHS or any(path.startswith(p + "/") for p in OPENAI_PATHS)


def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.headers, exc.extra)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = HTTP_CODES.get(status, "http_error")
    message = exc.description or exc.name
    if status == 404:
        message = f"no route {request.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.path}"
    elif status == 413:
        message = "request body is larger than BGE_M3_MAX_BODY_BYTES"
    headers = {}
    if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        headers["Allow"] = ", ".join(sorted(exc.valid_methods))  # type: ignore[attr-defined]
    return error_response(status, code, message, headers)


REDIS_WARN_EVERY = 10.0
"""Seconds between two warnings of one kind of Redis failure: during an outage every request
fails the same way (a soak run's API logged 326 such lines in 15 s); the next line says how
many it stood for."""


class _Throttled:
    """A warning said at most once every ``every`` seconds, with the count of those it stood for."""

    def __init__(self, text: str, every: float = REDIS_WARN_EVERY):
        self.text, self.every = text, every
        self._next, self._held = 0.0, 0
        self._lock = threading.Lock()

    def warn(self, exc: Exception) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._held += 1
                return
            held, self._held, self._next = self._held, 0, now + self.every
        more = f" (and {held} more like it since the last such line)" if held else ""
        log.warning("%s: %s%s", self.text, type(exc).__name__, more)


_REDIS_DOWN = _Throttled("redis unavailable")
_REDIS_REFUSES = _Throttled("redis refuses writes")


def _redis_down(exc: Exception) -> Response:
    _REDIS_DOWN.warn(exc)
    return error_response(503, "redis_unavailable", "Redis is not answering; try again later",
                          {"Retry-After": "5"})


def _redis_refuses_writes(exc: Exception) -> Response:
    # At maxmemory (noeviction), or a replica still read-only after a failover: nothing was
    # written by the refused command, and a later try may well pass.
    _REDIS_REFUSES.warn(exc)
    return error_response(503, "redis_unavailable", "Redis refuses writes (out of memory or "
                          "read-only); try again later", {"Retry-After": "5"})


def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal", "internal error")


def register(app: Flask) -> None:
    import redis.exceptions

    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(redis.exceptions.ConnectionError, _redis_down)
    app.register_error_handler(redis.exceptions.TimeoutError, _redis_down)
    app.register_error_handler(redis.exceptions.OutOfMemoryError, _redis_refuses_writes)
    app.register_error_handler(redis.exceptions.ReadOnlyError, _redis_refuses_writes)
    app.register_error_handler(Exception, _unexpected)
