"""One ``bge-m3 up`` per log folder, and one embedded Redis per data folder.

Two stacks on different ports but the default folders would append to the same ``api.log`` and
``worker-1.log`` (each pointing its user at the other's errors), and two private redis-servers
would write one append-only file. An advisory ``flock`` on a file in the folder says the folder
is taken; the kernel drops it when the holder exits, even on SIGKILL, so no stale lock is left.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_NAME = ".bge-m3-up.lock"

_held: dict[str, IO[str]] = {}
"""This process's locks by real folder path: a flock conflicts with another open() of the same
file even in the same process, and the log and data folders may be one folder."""


class FolderTaken(Exception):
    """Another live process holds the folder's lock; the message names it and the way out."""


def claim(folder: Path, what: str, setting: str) -> IO[str]:
    """Lock ``folder`` for this process (created if absent) and return the open lock file, which
    must stay open (and referenced) for as long as the folder is in use. ``what`` and
    ``setting`` name the folder in the error: "log folder", "BGE_M3_LOG_DIR"."""
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder)
    if key in _held and not _held[key].closed:
        return _held[key]
    handle = open(folder / LOCK_NAME, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise FolderTaken(f"{what} {folder} is in use by another `bge-m3 up` (pid {holder}); "
                          f"stop it, or set {setting} to another folder") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[key] = handle
    return handle
