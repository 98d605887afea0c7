"""The BGE-M3 Celery worker. ``celery -A worker worker`` and ``bge-m3 worker`` run the same app.

Importing this package builds the Celery app from the environment and nothing
else: the model is verified and loaded by the ``worker_init`` handler, once, in
the process that serves (the threads pool never forks).
"""
from __future__ import annotations

from worker.celery_app import create_app

app = create_app()
celery = app

__all__ = ["app", "celery"]
