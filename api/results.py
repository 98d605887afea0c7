"""Stored job results -> response JSON, shaped by the job's ``encoding``.

At rest (written by the worker) dense and ColBERT are packed little-endian
binary in base64; here they become float lists or stay base64, decoded with the
standard library only (``bge_m3.codec``), so the API never needs numpy. Float
lists are ``FloatArray``s, written out only as the response is sent
(``api.streaming``).
"""
from __future__ import annotations

from typing import Any

from api.streaming import FloatArray, Numbers
from bge_m3.codec import float32_base64, unpack_floats
from bge_m3.records import Job


def dense_out(packed: dict[str, Any], encoding: str) -> FloatArray | str:
    if encoding == "base64" and packed.get("dtype") == "float32":
        return packed["data"]  # already raw little-endian float32
    return float32_base64(unpack_floats(packed)) if encoding == "base64" else FloatArray(packed, False)


def colbert_out(packed: dict[str, Any], encoding: str, packed_default: bool) -> dict[str, Any]:
    if encoding == "float" and not packed_default:
        return {"shape": packed["shape"], "dtype": packed["dtype"], "data": FloatArray(packed, True)}
    return {"shape": packed["shape"], "dtype": packed["dtype"], "data": packed["data"]}


def sparse_out(sparse: dict[str, Any]) -> dict[str, Any]:
    return {"indices": Numbers(sparse.get("indices", [])), "values": Numbers(sparse.get("values", []))}


def item_out(item: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    encoding = params.get("encoding") or "float"
    packed_default = bool(params.get("colbert_packed"))
    out: dict[str, Any] = {"tokens": int(item.get("tokens", 0))}
    if "dense" in item:
        out["dense"] = dense_out(item["dense"], encoding)
    if "sparse" in item:
        out["sparse"] = sparse_out(item["sparse"])
    if "colbert" in item:
        out["colbert"] = colbert_out(item["colbert"], encoding, packed_default)
    return out


def result_out(result: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    return {"model": result.get("model"), "revision": result.get("revision"),
            "dimension": result.get("dimension"),
            "items": [item_out(item, params) for item in result.get("items", [])]}


TIMINGS = ("queue_ms", "compute_ms", "total_ms", "tokenize_ms", "forward_ms", "serialize_ms",
           "stream_ms")
"""The worker's job timings surfaced on ``GET /v1/jobs/<id>``: queue wait, the worker's time,
end to end, and where the worker's time went (tokenizing; the forward passes that carried the
job's texts, shared with the jobs in the same passes; serialising; streaming to Redis)."""


def total_tokens(job: Job, result: dict[str, Any] | None) -> int:
    if job.stats and isinstance(job.stats.get("tokens"), int):
        return job.stats["tokens"]
    return sum(int(item.get("tokens", 0)) for item in (result or {}).get("items", []))


def job_out(job: Job, result: dict[str, Any] | None) -> dict[str, Any]:
    """The ``GET /v1/jobs/<id>`` body."""
    body: dict[str, Any] = {"id": job.id, "status": job.status, "created_at": job.created_at}
    if job.started_at is not None:
        body["started_at"] = job.started_at
    if job.finished_at is not None:
        body["finished_at"] = job.finished_at
    if job.status == "succeeded" and result is not None:
        body["result"] = result_out(result, job.params or {})
        body["usage"] = {"tokens": total_tokens(job, result)}
    timings = {k: job.stats[k] for k in TIMINGS if isinstance((job.stats or {}).get(k), (int, float))}
    if timings:
        body["timings"] = timings
    if job.error:
        body["error"] = {"code": str(job.error.get("code", "failed")),
                         "message": str(job.error.get("message", ""))}
    return body
