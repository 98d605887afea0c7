"""Request ids: every answer carries ``X-Request-ID``, the client's own when it sent a usable one,
else a fresh one; answers that ran a job carry ``X-Job-Id`` too. ``bge-m3 api --access-log``
writes both on each request's line, and the worker's lines about a job name its request too, so
an operator can follow a request from the client's log through the API to the worker."""
from __future__ import annotations

import secrets
from typing import Any

from flask import Flask, Response, g, request

from bge_m3.records import REQUEST_ID

HEADER = "X-Request-ID"
JOB_HEADER = "X-Job-Id"


def install(app: Flask) -> None:
    """Registered before any other hook, so a request refused early (401) has an id too."""
    @app.before_request
    def _request_id() -> None:
        given = request.headers.get(HEADER, "")
        g.request_id = given if REQUEST_ID.fullmatch(given) else secrets.token_hex(16)

    @app.after_request
    def _echo(response: Response) -> Response:
        response.headers[HEADER] = g.get("request_id") or secrets.token_hex(16)
        if g.get("job_id"):
            response.headers[JOB_HEADER] = g.job_id
        return response


def traced(params: dict[str, Any]) -> dict[str, Any]:
    """A job's params with this request's id, which the worker's lines about the job repeat."""
    return {**params, "request_id": g.get("request_id")}


def name_job(job_id: str) -> None:
    """This request created, waited on or read job ``job_id``: its answer says so."""
    g.job_id = job_id
