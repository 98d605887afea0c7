"""Request bodies -> job params, or an ``ApiError`` (400/413) that says what is wrong.

Unknown fields are rejected (400) on the native routes, so a typo such as
``"mode"`` for ``"modes"`` on ``/v1/jobs`` fails loudly instead of silently
falling back to a default. ``/v1/embeddings`` ignores fields it does not know,
as OpenAI clients add optional ones (``user``) over time.
"""
from __future__ import annotations

import math
from typing import Any

from api.errors import ApiError, shown
from bge_m3.settings import MIN_MAX_LENGTH, Settings

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


def bad(message: str, param: str | None = None) -> ApiError:
    """A 400; ``param`` names the field at fault (shown in OpenAI's error shape)."""
    return ApiError(400, "invalid_request", message, extra={"param": param} if param else None)


def reject_unknown(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad(f"unknown field(s): {shown(', '.join(unknown))}; allowed: {', '.join(sorted(allowed))}")


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
    if not MIN_MAX_LENGTH <= max_length <= settings.max_length:
        raise bad(f"max_length must be between {MIN_MAX_LENGTH} and {settings.max_length}")
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
        raise bad(f"unknown mode(s) {shown(', '.join(unknown))}; use {', '.join(MODES)}")
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
    return weights, {**params([query, *documents], list(MODES), max_length, truncate, "float"),
                     "route": "score"}
