"""``bge-m3 worker``: start the verified Celery worker (same app and gate as ``celery -A worker worker``)."""
from __future__ import annotations

import argparse
import socket
import sys

from bge_m3.queue import QUEUE_NAME
from bge_m3.settings import LOG_LEVELS


def _positive(text: str) -> int:
    """At least 1, as ``BGE_M3_WORKER_THREADS`` (Celery failed on 0 or less with a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bge-m3 worker", description=(
        "Verify the model folder against its manifest, load it once, warm up, announce "
        "readiness, then consume embedding jobs. Exits non-zero, consuming nothing, when "
        "verification fails."))
    parser.add_argument("--hostname", default=f"bge-m3@{socket.gethostname()}",
                        help="Celery node name, also the readiness key (default: bge-m3@HOST)")
    parser.add_argument("--concurrency", type=_positive, default=None,
                        help="task threads = jobs held at once (default: BGE_M3_WORKER_THREADS)")
    parser.add_argument("--loglevel", type=str.upper, choices=LOG_LEVELS, default=None,
                        help="log level, any case (default: BGE_M3_LOG_LEVEL)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    from worker import app

    settings = app.bge_m3_settings
    level = (args.loglevel or settings.log_level).upper()
    app.bge_m3_loglevel = level
    concurrency = args.concurrency or settings.worker_threads
    celery_argv = ["worker", "--hostname", args.hostname, "--pool", "threads",
                   "--concurrency", str(concurrency), "--loglevel", level, "-Q", QUEUE_NAME,
                   "--without-mingle", "--without-gossip"]
    try:
        app.worker_main(argv=celery_argv)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0
