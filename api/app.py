"""Flask application factory (placeholder until the API issue lands)."""
from __future__ import annotations

from flask import Flask

from bge_m3.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SETTINGS"] = settings or Settings.from_env()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app
