"""Request bodies -> job params, or an ``ApiError`` (400/413) that says what is wrong.

Unknown fields are rejected (400) on the native routes, so a typo such as
``"mode"`` for ``"modes"`` on ``/v1/jobs`` fails loudly instead of silently
falling back to a default. ``/v1/embeddings`` ignores fields it does not know,
as OpenAI clients add optional ones (``user``) over time.
"""
from __future__ import annotations

import collections
import json
import math
import sys
from typing import Any

from flask import request
from werkzeug.exceptions import HTTPException

from api.errors import ApiError
from bge_m3.settings import Settings

MODES = ("dense", "sparse", "colbert")
"""Outputs a job can ask for; all come from one forward pass."""

EMBED_MODES = MODES + ("all",)
"""``/embed``'s ``mode`` values (the seed's)."""

ENCODINGS = ("float", "base64")

DEFAULT_WEIGHTS = (0.4, 0.2, 0.4)
"""``/v1/score`` weights of dense, sparse and ColBERT when the request gives none."""

JOB_FIELDS = frozenset({"texts", "modes", "max_length", "truncate", "encoding"})
EMBED_FIELDS = frozenset({"texts", "mode", "max_length", "truncate", "encoding"})
SCORE_FIELDS = frozenset({"query", "documents", "weights", "max_length", "truncate"})


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python keeps the last of duplicate keys, other parsers the first: refuse to guess.
    body = dict(pairs)
    if len(body) != len(pairs):
        counts = collections.Counter(k for k, _ in pairs)
        raise ValueError(f"duplicate key {next(k for k, n in counts.items() if n > 1)!r}")
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


def bad(message: str, param: str | None = None) -> ApiError:
    """A 400; ``param`` names the field at fault (shown in OpenAI's error shape)."""
    return ApiError(400, "invalid_request", message, extra={"param": param} if param else None)


def reject_unknown(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad(f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _field(where: str) -> str:
    return where.split("[")[0]  # "input[3]" -> "input"; only on the error path (once per text)


def check_text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise bad(f"{where} must be a string", _field(where))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad(f"{where} contains a lone surrogate (not valid Unicode)", _field(where)) from None
    return value


def texts_field(body: dict[str, Any], name: str, settings: Settings) -> list[str]:
    texts = body.get(name)
    if not isinstance(texts, list):
        raise bad(f"{name} must be a list of strings", name)
    if not texts:
        raise bad(f"{name} must not be empty", name)
    if len(texts) > settings.max_texts:
        raise ApiError(413, "too_many_texts",
                       f"{len(texts)} texts; at most {settings.max_texts} (BGE_M3_MAX_TEXTS)",
                       extra={"param": name})
    return [check_text(t, f"{name}[{i}]") for i, t in enumerate(texts)]


def limits(body: dict[str, Any], settings: Settings) -> tuple[int, bool]:
    max_length = body.get("max_length", settings.max_length)
    if isinstance(max_length, float) and max_length.is_integer():
        max_length = int(max_length)  # 140.0 is an integer to JSON Schema, as to most JSON encoders
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise bad("max_length must be an integer")
    if not 1 <= max_length <= settings.max_length:
        raise bad(f"max_length must be between 1 and {settings.max_length}")
    truncate = body.get("truncate", True)
    if not isinstance(truncate, bool):
        raise bad("truncate must be a boolean")
    return max_length, truncate


def encoding_field(body: dict[str, Any], name: str = "encoding") -> str | None:
    """None when absent; an explicit null is as wrong as any other non-member."""
    if name not in body:
        return None
    if body[name] not in ENCODINGS:
        raise bad(f"{name} must be one of {', '.join(ENCODINGS)}")
    return body[name]


def params(texts: list[str], modes: list[str], max_length: int, truncate: bool,
           encoding: str | None) -> dict[str, Any]:
    """The job params stored in the record; ``encoding`` only shapes how the API reads results."""
    out: dict[str, Any] = {"texts": texts, "modes": modes, "max_length": max_length,
                           "truncate": truncate, "encoding": encoding or "float"}
    if encoding is None:
        out["colbert_packed"] = True  # the default: ColBERT stays base64 even though dense is floats
    return out


def job_request(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    reject_unknown(body, JOB_FIELDS)
    texts = texts_field(body, "texts", settings)
    modes = body.get("modes", ["dense"])
    if not isinstance(modes, list) or not modes or not all(isinstance(m, str) for m in modes):
        raise bad("modes must be a non-empty list of strings")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise bad(f"unknown mode(s) {', '.join(unknown)}; use {', '.join(MODES)}")
    modes = [m for m in MODES if m in modes]
    max_length, truncate = limits(body, settings)
    return params(texts, modes, max_length, truncate, encoding_field(body))


def embed_request(body: dict[str, Any], settings: Settings) -> tuple[str, dict[str, Any]]:
    reject_unknown(body, EMBED_FIELDS)
    texts = texts_field(body, "texts", settings)
    mode = body.get("mode", "dense")
    if mode not in EMBED_MODES:
        raise bad(f"mode must be one of {', '.join(EMBED_MODES)}")
    modes = list(MODES) if mode == "all" else [mode]
    max_length, truncate = limits(body, settings)
    return mode, params(texts, modes, max_length, truncate, encoding_field(body))


def embeddings_request(body: dict[str, Any],
                       settings: Settings) -> tuple[str, str, int | None, dict[str, Any]]:
    """OpenAI's body -> (model, encoding_format, dimensions, params)."""
    raw = body.get("input")
    if isinstance(raw, str):
        texts = [check_text(raw, "input")]
    elif isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
        texts = texts_field(body, "input", settings)
    elif isinstance(raw, list) and raw:
        raise bad("input must be a string or a list of strings (token arrays are not supported)", "input")
    else:  # "" is one empty text, which is valid; [] is no text at all
        raise bad("input must be a string or a non-empty list of strings", "input")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model must be a string, e.g. \"bge-m3\"", "model")
    check_text(model, "model")
    encoding = body.get("encoding_format")
    if encoding is None:  # OpenAI clients may send null: the default
        encoding = "float"
    if encoding not in ENCODINGS:
        raise bad("encoding_format must be float or base64", "encoding_format")
    dimensions = body.get("dimensions")
    if isinstance(dimensions, float) and dimensions.is_integer():
        dimensions = int(dimensions)
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or dimensions < 1):
        raise bad("dimensions must be a positive integer", "dimensions")
    return model, encoding, dimensions, params(texts, ["dense"], settings.max_length, True, "float")


def score_request(body: dict[str, Any], settings: Settings) -> tuple[list[float], dict[str, Any]]:
    reject_unknown(body, SCORE_FIELDS)
    query = check_text(body.get("query"), "query")
    documents = texts_field(body, "documents", settings)
    if len(documents) + 1 > settings.max_texts:
        raise ApiError(413, "too_many_texts", f"query plus documents exceed {settings.max_texts} texts",
                       extra={"param": "documents"})
    weights = body.get("weights", list(DEFAULT_WEIGHTS))
    if (not isinstance(weights, list) or len(weights) != 3
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)):
        raise bad("weights must be a list of three numbers: [dense, sparse, colbert]")
    try:
        weights = [float(w) for w in weights]
    except OverflowError:  # an integer of hundreds of digits
        raise bad("weights must be finite numbers") from None
    total = sum(weights)
    if any(w < 0 for w in weights) or not math.isfinite(total) or total <= 0:
        raise bad("weights must be non-negative with a positive, finite sum")
    max_length, truncate = limits(body, settings)
    return weights, params([query, *documents], list(MODES), max_length, truncate, "float")
