"""Container healthchecks with nothing but Python: ``python -m bge_m3.healthcheck``.

``python -m bge_m3.healthcheck URL`` exits 0 when GET URL answers 200 (the API's
``/healthz``); ``python -m bge_m3.healthcheck --worker [HOSTNAME]`` exits 0 when the
worker's readiness record exists in Redis, i.e. it verified, loaded and warmed up
the model and its heartbeat is fresh. Slim images have no curl, hence this module.
"""
from __future__ import annotations

import argparse
import http.client
import socket
import sys
import urllib.error
import urllib.request

TIMEOUT = 5.0
"""Seconds one check may take (compose's own healthcheck timeout should be above it)."""


def http_ok(url: str, timeout: float = TIMEOUT) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException):
        return False  # HTTPException: a reply that is not HTTP (BadStatusLine, cut short)


def worker_ready(hostname: str) -> bool:
    from bge_m3.queue import redis_client
    from bge_m3.settings import Settings
    from bge_m3.workers import WORKER_PREFIX

    client = redis_client(Settings.from_env().redis_dsn, socket_timeout=TIMEOUT,
                          socket_connect_timeout=TIMEOUT)
    try:
        return bool(client.exists(WORKER_PREFIX + hostname))
    except Exception:  # unreachable Redis means "not ready", never a traceback in docker ps
        return False
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bge_m3.healthcheck", description=__doc__)
    parser.add_argument("url", nargs="?", help="GET this URL; healthy when it answers 200")
    parser.add_argument("--worker", nargs="?", const=f"bge-m3@{socket.gethostname()}",
                        metavar="HOSTNAME", help="healthy when this worker announced readiness "
                        "(default: bge-m3@HOST, the default of `bge-m3 worker`)")
    args = parser.parse_args(argv)
    if bool(args.url) == bool(args.worker):
        parser.error("give either URL or --worker")
    healthy = worker_ready(args.worker) if args.worker else http_ok(args.url)
    print("healthy" if healthy else "unhealthy")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
