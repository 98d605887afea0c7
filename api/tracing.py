"""Request ids: every answer carries ``X-Request-ID``, the client's own when it sent a usable one,
else a fresh one; answers that ran a job carry ``X-Job-Id`` too. ``bge-m3 api --access-log``
writes both on each request's line, so an operator can follow a request from the client's log
through the access log to the worker's lines, which name jobs by id."""
from __future__ import annotations

import re
import secrets

from flask import Flask, Response, g, request

REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}", re.ASCII)
"""A client-sent id that is echoed and logged as it is: short, one token, nothing a log reader
or a header could mistake for structure (no spaces, quotes or control characters)."""

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


def name_job(job_id: str) -> None:
    """This request created, waited on or read job ``job_id``: its answer says so."""
    g.job_id = job_id
