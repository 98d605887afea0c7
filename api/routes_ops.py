"""Operations: liveness, readiness, the models being served, metrics, the OpenAPI document."""
from __future__ import annotations

from flask import Blueprint, current_app

from api.errors import error_response
from api.openapi import document
from api.routes_jobs import backend
from bge_m3.workers import ready_workers

bp = Blueprint("ops", __name__)

WORKER_FIELDS = ("hostname", "model", "revision", "device", "dtype", "manifest_digest", "dimension",
                 "max_batch_tokens", "max_length")
"""Readiness-record fields shown by ``/v1/models`` (nothing secret is in a record)."""


@bp.get("/healthz")
def healthz():
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    state = backend()
    try:
        state.backend.redis.ping()
        workers = ready_workers(state.backend.redis)
    except Exception as exc:  # any Redis failure means "not ready", with the reason
        return error_response(503, "redis_unavailable", f"Redis is not answering ({type(exc).__name__})",
                              extra={"redis": False, "workers": 0})
    if not workers:
        return error_response(503, "no_ready_worker",
                              "Redis answers, but no verified worker has announced itself ready",
                              extra={"redis": True, "workers": 0})
    return {"status": "ready", "redis": True, "workers": len(workers)}


@bp.get("/v1/models")
def models():
    state = backend()
    workers = [{k: w.get(k) for k in WORKER_FIELDS} for w in ready_workers(state.backend.redis)]
    names = ["bge-m3", *sorted({str(w["model"]) for w in workers if w.get("model")} - {"bge-m3"})]
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "BAAI"} for name in names]
    return {"object": "list", "data": data, "workers": workers}


@bp.get("/metrics")
def metrics():
    return backend().metrics.exposition()


@bp.get("/openapi.json")
def openapi():
    return document(current_app.extensions["bge_m3"].settings)
