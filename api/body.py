"""The request body: JSON only, uncompressed, within ``BGE_M3_MAX_BODY_BYTES``, UTF-8, no
duplicate keys, an object. Each refusal is an ``ApiError`` (400/413/415) that says why."""
from __future__ import annotations

import collections
import json
import sys
from typing import Any

from flask import request
from werkzeug.exceptions import HTTPException

from api.errors import ApiError, shown


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


class DuplicateKey(ValueError):
    """Valid JSON (RFC 8259: names SHOULD be unique), refused all the same."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python keeps the last of duplicate keys, other parsers the first: refuse to guess.
    body = dict(pairs)
    if len(body) != len(pairs):
        counts = collections.Counter(k for k, _ in pairs)
        raise DuplicateKey(next(k for k, n in counts.items() if n > 1))
    return body


def _body_bytes() -> bytes:
    """The raw body; 413 above MAX_CONTENT_LENGTH, with or without a Content-Length; 400 for a
    body the server cannot read (broken chunked framing)."""
    try:
        raw = request.get_data(cache=True)  # raises 413 when Content-Length says too much
    except HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - gunicorn's InvalidChunkSize, ChunkMissingTerminator…
        raise ApiError(400, "invalid_body", "the request body could not be read: "
                       f"{type(exc).__name__} (malformed chunked encoding?)") from None
    limit = request.max_content_length
    if limit is not None and request.content_length is None and len(raw) >= limit:
        # A chunked body is read up to the limit and then cut (werkzeug's LimitedStream, which
        # refuses any read past it): one more byte, from the server's own stream, tells a body
        # of exactly the limit from a longer one.
        try:
            more = request.environ["wsgi.input"].read(1)
        except Exception:  # noqa: BLE001 - a broken framing after the limit: too long anyway
            more = b"?"
        if more:
            raise ApiError(413, "payload_too_large", "request body is larger than BGE_M3_MAX_BODY_BYTES")
    return raw


def json_body() -> dict[str, Any]:
    """The request body as a JSON object; 415 for a body not declared JSON or compressed, 400 for
    bad UTF-8, bad JSON, a duplicate key or a non-object, 413 for a body over the limit."""
    _check_media()
    raw = _body_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_utf8", "request body is not valid UTF-8") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ApiError(400, "invalid_json", "request body is nested too deeply") from None
    except DuplicateKey as exc:
        raise ApiError(400, "invalid_json", f"request body has the key {shown(repr(exc.args[0]))} "
                       "twice in one object; each key may appear once") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's own limit, worded for Python users
            raise ApiError(400, "invalid_json", f"request body has a number of over "
                           f"{sys.get_int_max_str_digits()} digits") from None
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    return body


def _check_media() -> None:
    """Only ``application/json`` (or a ``+json`` type): a browser sends text/plain, forms and
    multipart cross-site without a CORS preflight, so accepting them would let any web page
    submit jobs to a server without keys. No compression: the body limit counts wire bytes."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(415, "unsupported_media_type", f"Content-Encoding {encoding!r} is not supported; "
                       "send the JSON body uncompressed")
    kind = request.mimetype
    if kind != "application/json" and not (kind.startswith("application/") and kind.endswith("+json")):
        raise ApiError(415, "unsupported_media_type", f"the body must be JSON with Content-Type: "
                       f"application/json, not {kind or 'none'!r}")
