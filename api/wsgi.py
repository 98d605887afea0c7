"""WSGI entry point: ``gunicorn 'api.wsgi:app'`` builds the app from the environment."""
from __future__ import annotations

from api.app import create_app
from bge_m3.settings import Settings

app = create_app(Settings.from_env())
