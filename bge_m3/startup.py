"""Starting the stack's processes and knowing when they serve: commands, URLs, the ready wait."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Callable

from bge_m3.healthcheck import http_ok
from bge_m3.queue import redis_client
from bge_m3.workers import WORKER_PREFIX

POLL_INTERVAL = 0.25
"""Seconds between readiness polls (a readiness check is one EXISTS and one HTTP GET)."""

HTTP_TIMEOUT = 2.0
"""Seconds one GET /readyz may take while the API is starting."""


class StartProblem(RuntimeError):
    """A child exited or did not become ready in time."""


def child_command(*args: str) -> list[str]:
    """``bge-m3 ARGS`` with this interpreter's console script, else ``python -m bge_m3.cli``."""
    script = Path(sys.executable).parent / "bge-m3"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "bge_m3.cli", *args]


def probe_host(host: str) -> str:
    """Where a local client reaches a server bound to ``host`` (a wildcard means loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def exit_status(returncode: int | None) -> str:
    """How a child ended, as a person reads it: 'status 1' or 'killed by SIGKILL'."""
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            pass
    return f"status {returncode}"


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return "".join(f"\n      | {line}" for line in text)


def wait_until_ready(supervisor, redis_url: str, hostnames: list[str], readyz_url: str,
                     timeout: float, stopping: Callable[[], bool]) -> bool:
    """Wait until every worker in ``hostnames`` announced itself and ``/readyz`` says 200.

    Returns False when ``stopping()`` turns true first; raises StartProblem when a child
    exits or ``timeout`` passes.
    """
    client = redis_client(redis_url)
    deadline = time.monotonic() + timeout
    waiting_for = "workers"
    try:
        while not stopping():
            child = supervisor.exited()
            if child is not None:
                raise StartProblem(f"{child.name} exited with {exit_status(child.proc.returncode)} "
                                   f"before ready; log {child.log}:{_tail(child.log)}")
            try:
                missing = [h for h in hostnames if not client.exists(WORKER_PREFIX + h)]
            except Exception as exc:  # Redis is ours or was checked a moment ago: report it
                raise StartProblem(f"lost Redis while waiting: {exc}") from None
            if missing:
                waiting_for = f"{len(missing)} worker(s) to verify, load and warm up the model"
            else:
                waiting_for = "GET /readyz to answer 200"
                if http_ok(readyz_url, HTTP_TIMEOUT):
                    return True
            if time.monotonic() > deadline:
                raise StartProblem(f"not ready after {timeout:.0f}s, still waiting for "
                                   f"{waiting_for}; see the logs")
            time.sleep(POLL_INTERVAL)
    finally:
        client.close()
    return False
