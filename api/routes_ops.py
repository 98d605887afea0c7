"""Operations: liveness, readiness, the models being served, metrics, the OpenAPI document."""
from __future__ import annotations

from flask import Blueprint, current_app

from api.errors import error_response, shown
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
        return _not_ready("redis_unavailable", f"Redis is not answering ({type(exc).__name__})",
                          redis=False)
    if not workers:
        return _not_ready("no_ready_worker",
                          "Redis answers, but no verified worker has announced itself ready", redis=True)
    return {"status": "ready", "redis": True, "workers": len(workers)}


def _not_ready(code: str, message: str, *, redis: bool) -> tuple[dict, int]:
    """The 503 body the schema's ``NotReady`` declares: the error, and beside it (not inside it)
    the same ``redis`` and ``workers`` fields a 200 carries, so a probe reads one shape."""
    return {"error": {"code": code, "message": message}, "redis": redis, "workers": 0}, 503


@bp.get("/v1/models")
def models():
    workers = [{k: w.get(k) for k in WORKER_FIELDS} for w in ready_workers(backend().backend.redis)]
    return {"object": "list", "data": [_model(name) for name in _names(workers)], "workers": workers}


@bp.get("/v1/models/<path:model>")
def model(model: str):
    """OpenAI's ``models.retrieve``: a name ``/v1/models`` lists, else 404."""
    if model not in _names(ready_workers(backend().backend.redis)):
        return error_response(404, "model_not_found", f"no model {shown(repr(model))}; GET /v1/models "
                              "lists them", extra={"param": "model"})
    return _model(model)


def _names(workers: list[dict]) -> list[str]:
    return ["bge-m3", *sorted({str(w["model"]) for w in workers if w.get("model")} - {"bge-m3"})]


def _model(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "BAAI"}


@bp.get("/metrics")
def metrics():
    return backend().metrics.exposition()


@bp.get("/openapi.json")
def openapi():
    return document(current_app.extensions["bge_m3"].settings)
