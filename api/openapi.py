"""The OpenAPI 3.1 document served at ``/openapi.json``: every route, body and error status."""
from __future__ import annotations

from typing import Any

from api.schemas import ref, schemas
from bge_m3.settings import Settings

MESSAGES = {400: "Malformed JSON, wrong types, empty texts, unknown mode or field",
            401: "Missing or wrong API key (only when BGE_M3_API_KEYS is set)",
            404: "Unknown or expired job, another key's job, or (models) an unknown model", 409: "The job cannot be cancelled",
            413: "Body over BGE_M3_MAX_BODY_BYTES, or more texts than BGE_M3_MAX_TEXTS "
                 "(/v1/score: more query x document token pairs than its limit)",
            415: "The body is not declared application/json, or is compressed",
            422: "A text is longer than max_length and truncate is false",
            429: "More queued jobs than BGE_M3_MAX_QUEUED", 500: "The worker failed the job",
            503: "Redis down, queue unreachable, or (sync routes) no ready worker or no free wait slot",
            504: "The job did not finish within BGE_M3_SYNC_TIMEOUT; poll it by id",
            414: "Request line too long (refused by the HTTP server, as JSON)",
            431: "Headers too large (refused by the HTTP server, as JSON)"}
"""Documented meaning of each error status."""

SERVER_ERRORS = (414, 431)
"""Statuses gunicorn itself answers on any route, before the app runs (see api/server_errors.py)."""

RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
LOCATION = {"Location": {"schema": {"type": "string"}, "required": True}}
NO_RETRY = {"x-should-retry": {"schema": {"type": "string", "enum": ["false"]}, "required": True,
                               "description": "OpenAI's SDKs: do not retry (a retry is a new job)"}}

SYNC_CANCELLED = "The job was cancelled (DELETE /v1/jobs/{id}) while the call waited"
"""What a 409 means on a synchronous route (on DELETE /v1/jobs/{id}: it cannot be cancelled)."""


def _error(status: int, shape: str = "Error") -> dict[str, Any]:
    out: dict[str, Any] = {"description": MESSAGES[status],
                           "content": {"application/json": {"schema": ref(shape)}}}
    if status in (429, 503):
        out["headers"] = RETRY_AFTER
    return out


def _ok(schema: str, description: str, status: int = 200, headers: dict | None = None) -> dict:
    out: dict[str, Any] = {"description": description,
                           "content": {"application/json": {"schema": ref(schema)}}}
    if headers:
        out["headers"] = headers
    return out


def _op(summary: str, responses: dict[int, dict], errors: tuple[int, ...], *, body: str | None = None,
        shape: str = "Error", params: list | None = None, secured: bool = True,
        op_id: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {str(k): v for k, v in responses.items()}}
    if op_id:
        op["operationId"] = op_id
    for status in (*errors, *((401,) if secured else ()), *SERVER_ERRORS):
        op["responses"][str(status)] = _error(status, shape)
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(body)}}}
    if params:
        op["parameters"] = params
    if not secured:
        op["security"] = []
    return op


def document(settings: Settings) -> dict[str, Any]:
    job_id = {"name": "job_id", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
    wait = {"name": "wait", "in": "query", "required": False,
            "description": "Long-poll: seconds to wait for the job to finish (capped at 30)",
            "schema": {"type": "number", "minimum": 0}}
    sync_errors = (400, 409, 413, 415, 422, 429, 500, 503, 504)

    def sync(summary: str, ok: tuple[str, str], body: str, errors: tuple[int, ...] = sync_errors,
             shape: str = "Error") -> dict[str, Any]:
        op = _op(summary, {200: _ok(*ok)}, errors, body=body, shape=shape)
        responses = op["responses"]
        responses["409"].update(description=SYNC_CANCELLED, headers=NO_RETRY)
        responses["504"]["headers"] = {**LOCATION, **NO_RETRY}
        return op

    accepted = _ok("JobAccepted", "Queued", headers=LOCATION)
    accepted["links"] = {  # lets schemathesis (stateful) and clients follow the new job
        "GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/id"}},
        "CancelJob": {"operationId": "cancelJob", "parameters": {"job_id": "$response.body#/id"}}}
    paths = {
        "/v1/jobs": {"post": _op("Submit an embedding job", {202: accepted}, (400, 413, 415, 429, 503),
                                 body="JobRequest", op_id="createJob")},
        "/v1/jobs/{job_id}": {
            "get": _op("Read a job (optionally long-poll)", {200: _ok("Job", "The job")},
                       (400, 404, 503), params=[job_id, wait], op_id="getJob"),
            "delete": _op("Cancel a queued job", {200: _ok("Job", "Cancelled")}, (404, 409, 503),
                          params=[job_id], op_id="cancelJob")},
        "/embed": {"post": sync("Embed synchronously (the seed's route)", ("EmbedResponse", "Embeddings"),
                               "EmbedRequest")},
        # Always truncates (OpenAI's API has no such switch): never a 422.
        "/v1/embeddings": {"post": sync("OpenAI-compatible embeddings", ("EmbeddingsResponse", "Embeddings"),
                                        "EmbeddingsRequest", tuple(s for s in sync_errors if s != 422),
                                        shape="OpenAIError")},
        "/v1/score": {"post": sync("Dense, sparse, ColBERT and hybrid scores of documents for a query",
                                   ("ScoreResponse", "Scores"), "ScoreRequest")},
        "/healthz": {"get": _op("Liveness", {200: _ok("Health", "Up")}, (), secured=False)},
        "/readyz": {"get": _op("Readiness: Redis answers and a verified worker is ready",
                               {200: _ok("Ready", "Ready"),
                                503: {"description": "Not ready; the error says what is missing",
                                      "content": {"application/json": {"schema": ref("NotReady")}}}},
                               (), secured=False)},
        "/v1/models": {"get": _op("Models served by ready workers", {200: _ok("Models", "Models")}, (503,),
                                  shape="OpenAIError")},
        "/v1/models/{model}": {"get": _op(
            "One model of /v1/models (OpenAI's models.retrieve)", {200: _ok("Model", "The model")}, (404, 503),
            params=[{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            shape="OpenAIError")},
        "/metrics": {"get": _op("Prometheus metrics", {200: {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}}}}, (), secured=False)},
        "/openapi.json": {"get": _op("This document", {200: {
            "description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}},
            ())},
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "bge-m3-service", "version": "0.1.0",
                 "description": "BGE-M3 dense, sparse and ColBERT embeddings from one forward pass. "
                                "Every answer carries X-Request-ID (the client's own, when it sent "
                                "a usable one); an answer about a job carries X-Job-Id."},
        "paths": paths,
        "components": {"schemas": schemas(settings)},
    }
    if settings.api_keys:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    else:  # no keys: nothing answers 401, so don't declare it
        for ops in paths.values():
            for op in ops.values():
                op["responses"].pop("401", None)
                op.pop("security", None)
    return doc
