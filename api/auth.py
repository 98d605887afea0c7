"""Optional API keys (``BGE_M3_API_KEYS``), sent as ``Authorization: Bearer <key>``.

A job is tagged with a hash of the key that created it (``owner_of``), so another
key gets 404 for it. Keys are compared in constant time and never logged.
"""
from __future__ import annotations

import hmac

from flask import Flask, g, request

from api.errors import ApiError
from bge_m3.records import owner_of

OPEN_ENDPOINTS = frozenset({"ops.healthz", "ops.readyz", "ops.metrics"})
"""Endpoints that answer without a key: probes, the scrape target."""

OPEN_BLUEPRINTS = frozenset({"console"})
"""The web page itself holds no data and must load so a user can type a key into it."""


def bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def known(token: str | None, keys: tuple[str, ...]) -> bool:
    if token is None:
        return False
    found = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found


def install(app: Flask, keys: tuple[str, ...]) -> None:
    @app.before_request
    def _authenticate() -> None:
        g.owner = ""
        # A CORS preflight carries no Authorization (browsers never send it there); any other
        # OPTIONS needs a key, as a GET does: its Allow header would list the routes.
        preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        if not keys or preflight:
            return
        endpoint = request.endpoint or ""
        if endpoint in OPEN_ENDPOINTS or request.blueprint in OPEN_BLUEPRINTS:
            return
        token = bearer()
        if not known(token, keys):
            raise ApiError(401, "unauthorized", "missing or invalid API key (Authorization: Bearer)",
                           headers={"WWW-Authenticate": 'Bearer realm="bge-m3"'})
        g.owner = owner_of(token)


def owner() -> str:
    return str(g.get("owner", ""))
