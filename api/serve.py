"""``bge-m3 api``: the API under gunicorn (gthread workers, so long-polls don't block).

The Flask development server is for debugging only (``flask --app api.wsgi run``).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from typing import Any

from bge_m3 import heap
from bge_m3.settings import Settings

DEFAULT_WORKERS = 1
"""gunicorn processes; scale threads first (each process holds its own Redis connections and
subscription). With more than one, /metrics sums them (``shared_metrics_dir``)."""

DEFAULT_THREADS = 64
"""Threads per process = requests in flight at once (each long-poll or sync call holds one)."""

RESERVED_THREADS = 8
"""Threads per process kept out of waits on jobs (``api.waits``), for health checks, submits and
reads; a quarter of the threads when there are fewer than 32."""


def wait_slots(threads: int) -> int:
    """Threads of ``threads`` that may wait on jobs at once: all but the reserved ones."""
    return max(1, threads - max(1, min(RESERVED_THREADS, threads // 4)))

MAX_REQUEST_LINE = 8190
"""Bytes of the HTTP request line gunicorn accepts (its maximum; past it: 414 JSON)."""

ACCESS_LOG_FORMAT = ('%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" '
                     'request_id=%({x-request-id}o)s job_id=%({x-job-id}o)s')
"""gunicorn's default access line, then the answer's ids (``-`` where it has none)."""

GRACE_SECONDS = 30
"""Margin of gunicorn's worker timeout over the longest sync wait. How long requests in flight get
on SIGTERM is ``Settings.request_grace``."""


def json_logger_class() -> type:
    """gunicorn's logger, its error and access lines as JSON objects (``BGE_M3_LOG_JSON``)."""
    from gunicorn import glogging

    from bge_m3.logformat import JsonFormatter

    class JsonLogger(glogging.Logger):
        def setup(self, cfg: Any) -> None:
            super().setup(cfg)  # runs again on a config reload, with fresh handlers
            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    handler.setFormatter(JsonFormatter())

    return JsonLogger


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bge-m3 api", description="Run the HTTP API under gunicorn.")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"gunicorn processes (default: {DEFAULT_WORKERS})")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"threads per process (default: {DEFAULT_THREADS})")
    parser.add_argument("--host", help="bind address (default: BGE_M3_HOST)")
    parser.add_argument("--port", type=int, help="bind port (default: BGE_M3_PORT)")
    parser.add_argument("--access-log", action="store_true", help="write gunicorn's access log to stderr")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.threads < 1:
        parser.error("--workers and --threads must be at least 1")
    return args


def options(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    opts: dict[str, Any] = {
        "bind": [bind],
        "workers": max(1, args.workers),
        "threads": max(1, args.threads),
        "worker_class": "gthread",
        # gthread's timeout is a worker heartbeat, but keep it above the longest sync wait anyway.
        "timeout": int(settings.sync_timeout) + GRACE_SECONDS,
        "graceful_timeout": settings.request_grace,
        "keepalive": 5,
        # gunicorn's largest request line (its default is 4094): long ?wait= query strings and
        # ids stay the app's to judge (JSON 400/404); beyond this gunicorn answers 414, as JSON.
        "limit_request_line": MAX_REQUEST_LINE,
        "loglevel": settings.log_level.lower(),
        "errorlog": "-",
        # gunicorn >= 24 opens a control socket at one fixed path per user by default; several
        # APIs on one machine (tests, `bge-m3 up` beside a dev server) would fight over it.
        "control_socket_disable": True,
    }
    if settings.log_json:
        opts["logger_class"] = json_logger_class()
    if args.access_log:
        # gunicorn's default format (Referer and User-Agent are its only request headers) plus
        # the answer's request and job ids (api.tracing): the Authorization header never is.
        opts["accesslog"] = "-"
        opts["access_log_format"] = ACCESS_LOG_FORMAT
    return opts


METRICS_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's own variable: with several processes, where they share their metrics."""


def shared_metrics_dir(workers: int) -> str | None:
    """The folder the gunicorn processes share their metrics in: none for one process, else a
    fresh one, deleted on exit. Always fresh: files left by an earlier run would be summed in."""
    from prometheus_client import values

    folder = tempfile.mkdtemp(prefix="bge-m3-metrics-") if workers > 1 else None
    if folder:
        os.environ[METRICS_DIR_VAR] = folder
    else:  # an inherited one would send a lone process's metrics to files
        os.environ.pop(METRICS_DIR_VAR, None)
    # prometheus_client picks its value store when imported (``import api`` has done that), and
    # each metric takes the store at its creation, after the fork: pick it again now.
    values.ValueClass = values.get_value_class()
    return folder


def setup_logging(settings: Settings) -> None:
    """The API's own lines (``bge_m3.api``), as text or, with ``BGE_M3_LOG_JSON``, as JSON."""
    handler = logging.StreamHandler()
    if settings.log_json:
        from bge_m3.logformat import JsonFormatter

        handler.setFormatter(JsonFormatter())
        logging.captureWarnings(True)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    args = parse(list(argv or []))
    metrics_dir = shared_metrics_dir(args.workers)  # before any metric is created
    from gunicorn.app.base import BaseApplication

    from api import server_errors
    from api.app import create_app

    server_errors.install()
    # One core per /v1/score product (numpy's OpenBLAS would take them all for each), so that
    # concurrent scores share the cores and leave the request threads theirs; set before numpy.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    settings = Settings.from_env()
    setup_logging(settings)

    class Application(BaseApplication):
        def load_config(self) -> None:
            for key, value in options(settings, args).items():
                if key in self.cfg.settings:  # older gunicorns lack some settings
                    self.cfg.set(key, value)

        def load(self):
            app = create_app(settings, wait_slots=wait_slots(args.threads), metrics_dir=metrics_dir)
            heap.freeze()  # in the gunicorn worker, after the fork (the app is not preloaded)
            return app

    master = os.getpid()
    try:
        Application().run()
    finally:
        # A gunicorn worker is a fork of this process and leaves through this block too (its
        # SystemExit unwinds the copy of main()): only the master may delete the shared folder.
        if metrics_dir and os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
