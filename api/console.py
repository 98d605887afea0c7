"""The web console at ``/``: static HTML/JS/CSS that talks to the public API like any client.

Nothing here reads Redis or job records; the page only calls the documented routes, so
what it shows is what a user of the API would get.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The console's files (HTML, CSS, ES modules); served as-is, no build step."""

ASSET_NAMES = frozenset({"index.html", "style.css", "app.js", "client.js", "dom.js", "embed.js",
                         "score.js", "status.js", "vectors.js"})
"""The only files the console serves, so the route cannot be used to read anything else."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
"""Same-origin only, no inline script: the page has nothing to load from elsewhere."""

bp = Blueprint("console", __name__)


def _secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    # The page is small and changes with deploys; always revalidate instead of serving a stale copy.
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/")
def index() -> Response:
    return _secure(send_from_directory(STATIC_DIR, "index.html", max_age=0))


@bp.get("/console/<name>")
def asset(name: str) -> Response:
    if name not in ASSET_NAMES:
        # Same JSON error shape as the rest of the API, never an HTML page.
        return Response('{"error": {"code": "not_found", "message": "no such console file"}}',
                        status=404, mimetype="application/json")
    return _secure(send_from_directory(STATIC_DIR, name, max_age=0))
