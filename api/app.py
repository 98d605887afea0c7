"""Flask application factory: validate, record, enqueue, read. No torch here."""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

from flask import Flask, Response, request

from api import auth, errors, tracing
from api.metrics import Metrics
from api.service import Backend
from api.waits import WaitSlots
from bge_m3.settings import Settings

log = logging.getLogger("bge_m3.api")

CORS_MAX_AGE = "600"
"""Seconds a browser may cache a CORS preflight answer."""


@dataclass
class State:
    """What the routes share, kept in ``app.extensions["bge_m3"]``."""

    settings: Settings
    backend: Backend
    metrics: Metrics
    waits: WaitSlots


def create_app(settings: Settings | None = None, wait_slots: int | None = None,
               metrics_dir: str | None = None) -> Flask:
    """``wait_slots``: request threads that may wait on jobs at once (``api.waits``); None, no
    bound (``bge-m3 api`` sets it from its thread count). ``metrics_dir``: the folder where the
    processes of one ``bge-m3 api --workers N`` share their metrics (``api.metrics``)."""
    settings = settings or Settings.from_env()
    # No /static route: the console blueprint serves the page's files under /console/ with its
    # security headers (CSP, frame-ancestors), which Flask's own static route would not send.
    app = Flask(__name__, static_folder=None)
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # keep the seed's field order in /embed
    app.url_map.strict_slashes = False
    backend = Backend(settings)
    metrics = Metrics(backend.redis, metrics_dir)
    app.extensions["bge_m3"] = State(settings, backend, metrics, WaitSlots(wait_slots))

    tracing.install(app)  # first: a request refused by a later hook still gets its id
    metrics.install(app)
    auth.install(app, settings.api_keys)
    errors.register(app)
    _install_cors(app, settings.cors_origins)
    _install_headers(app)

    from api import routes_jobs, routes_ops, routes_sync

    for module in (routes_jobs, routes_sync, routes_ops):
        app.register_blueprint(module.bp)
    if importlib.util.find_spec("api.console") is not None:
        from api.console import bp as console

        app.register_blueprint(console)
    return app


def _install_cors(app: Flask, origins: tuple[str, ...]) -> None:
    """Off unless BGE_M3_CORS_ORIGINS lists origins (``*`` allows any)."""
    if not origins:
        return

    @app.after_request
    def _cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        response.vary.add("Origin")  # on every answer: a cache must not give one origin's to another
        if origin and ("*" in origins or origin in origins):
            response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
            response.headers["Access-Control-Expose-Headers"] = ("Location, Retry-After, "
                                                                 "X-Request-ID, X-Job-Id")
            response.headers["Access-Control-Max-Age"] = CORS_MAX_AGE
        return response


def _install_headers(app: Flask) -> None:
    """Every answer: its type is not to be sniffed, and one carrying a job's texts or vectors is
    kept by no cache (the page's own files set their own, ``api.console``)."""

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        if request.method == "OPTIONS" and response.mimetype == "text/html" and not response.get_data():
            del response.headers["Content-Type"]  # Flask's own answer has no body, so no type
        return response
