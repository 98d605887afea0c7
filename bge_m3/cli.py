"""The ``bge-m3`` console script: a thin dispatcher.

Each subcommand lives in the package that owns it and takes its own argv, so
``bge-m3 api`` never imports torch and ``bge-m3 verify`` never imports Celery.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "tiny-model": ("bge_m3.commands", "tiny_model_main"),
    "manifest": ("verify.commands", "manifest_main"),
    "verify": ("verify.commands", "verify_main"),
    "download": ("verify.commands", "download_main"),
    "worker": ("worker.main", "main"),
    "api": ("api.serve", "main"),
    "up": ("bge_m3.up", "main"),
}
"""Subcommand -> (module, function). The names are a public contract."""

HELP = {
    "tiny-model": "write a deterministic, randomly initialised BGE-M3-shaped model folder",
    "manifest": "write a SHA-256 manifest for a model folder (or from the hub)",
    "verify": "check a model folder against its manifest",
    "download": "fetch missing or bad model files from the hub, then verify",
    "worker": "run a verified GPU/CPU Celery worker",
    "api": "run the HTTP API under gunicorn",
    "up": "check, verify, and start Redis, worker(s) and API on this machine",
}


def usage() -> str:
    lines = ["usage: bge-m3 COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {HELP[name]}" for name in COMMANDS]
    lines += ["", "Run 'bge-m3 COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bge-m3: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func = COMMANDS[name]
    from bge_m3.settings import SettingsError

    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except SettingsError as exc:  # a malformed variable: its name and value, not a traceback
        print(f"bge-m3 {name}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:  # not about a path (a network or library error): keep the traceback
            raise
        # A path that cannot be read or written (-o into /proc, a folder that is a file): the
        # path and why, which the operator can act on, not a traceback.
        print(f"bge-m3 {name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: a download's partial files stay for the next run
        print(f"bge-m3 {name}: interrupted", file=sys.stderr)
        # End by SIGINT, as Python does for an uncaught Ctrl-C, so a shell loop stops too.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130


if __name__ == "__main__":
    sys.exit(main())
