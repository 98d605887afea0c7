"""The thin HTTP API. Never imports torch, transformers or FlagEmbedding."""
from __future__ import annotations

from api.app import create_app

__all__ = ["create_app"]
