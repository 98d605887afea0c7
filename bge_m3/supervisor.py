"""The children of ``bge-m3 up``: each in its own process group, stopped in reverse start order.

A process group per child means SIGTERM reaches gunicorn's workers as well as its
master, and a Ctrl-C in the terminal reaches only ``bge-m3 up``, which then stops
the API first (no new jobs), the workers next (Celery finishes what it holds), and
Redis last (it flushes its AOF on SIGTERM). On Linux each child also gets SIGTERM
if ``bge-m3 up`` itself is killed, so not even SIGKILL leaves orphans behind.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

API_GRACE_MARGIN = 5.0
"""Seconds the API may take to exit after SIGTERM beyond gunicorn's own graceful timeout
(``Settings.request_grace``)."""

REDIS_GRACE = 30.0
"""Seconds the private Redis may take to fsync its AOF and exit after SIGTERM."""

WAIT_STEP = 0.1
"""Seconds between checks while waiting for children to exit (and for a second Ctrl-C)."""

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the process group still gets our SIGTERM
        pass


@dataclass
class Child:
    name: str
    kind: str
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


class Supervisor:
    def __init__(self, env: dict[str, str]):
        self.env = env
        self.children: list[Child] = []

    def spawn(self, name: str, argv: list[str], log: Path, *, kind: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
                                    start_new_session=True,
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.children.append(Child(name, kind or name, proc, log))
        return proc

    def exited(self) -> Child | None:
        """The first child that has exited, if any."""
        for child in self.children:
            if child.proc.poll() is not None:
                return child
        return None

    def pids(self) -> str:
        return " ".join(f"{c.name}={c.pid}" for c in self.children)

    def stop_all(self, grace: dict[str, float], hurry: Callable[[], bool] = lambda: False,
                 report: Callable[[str], None] = print) -> None:
        """Stop children newest first, kind by kind (all workers at once), then reap them.

        ``grace[kind]`` bounds the wait after SIGTERM before the group is SIGKILLed;
        ``hurry()`` turning true (a second Ctrl-C) SIGKILLs at once.
        """
        pending = list(reversed(self.children))
        while pending:
            kind = pending[0].kind
            batch = [c for c in pending if c.kind == kind]
            pending = [c for c in pending if c.kind != kind]
            for child in batch:
                _signal_group(child, signal.SIGTERM)
            deadline = time.monotonic() + grace.get(kind, 30.0)
            while any(c.proc.poll() is None for c in batch):
                if hurry() or time.monotonic() > deadline:
                    for child in batch:
                        if child.proc.poll() is None:
                            report(f"  killing {child.name} (pid {child.pid})")
                            _signal_group(child, signal.SIGKILL)
                    break
                time.sleep(WAIT_STEP)
            for child in batch:
                child.proc.wait()
                # Stragglers in the group (a gunicorn worker whose master died first).
                _signal_group(child, signal.SIGKILL)
        self.children.clear()


def _signal_group(child: Child, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
