"""Is a TCP port free, and if not, which process listens on it (Linux ``/proc``, no psutil)."""
from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

_LISTEN = "0A"
"""TCP state code of a listening socket in ``/proc/net/tcp``."""


def is_free(host: str, port: int) -> bool:
    """True when a server could bind ``host:port`` now (SO_REUSEADDR, as gunicorn binds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _listening_inodes(port: int, proc: Path) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == _LISTEN and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes


def _command(pid: str, proc: Path) -> str:
    try:
        argv = (proc / pid / "cmdline").read_bytes().split(b"\0")
        return " ".join(a.decode(errors="replace") for a in argv if a)[:120]
    except OSError:
        return "?"


def owner(port: int, proc: Path = Path("/proc")) -> str | None:
    """``"pid 123 (redis-server *:7860)"`` for the listener on ``port``, when /proc shows it.

    Sockets of other users' processes are not visible without privileges; then ``None``.
    """
    inodes = _listening_inodes(port, proc)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    return f"pid {entry.name} ({_command(entry.name, proc)})"
            except OSError:
                continue
    return None


def describe_taken(host: str, port: int) -> str:
    who = owner(port)
    by = f" by {who}" if who else " by another process (not visible to this user)"
    return (f"port {port} on {host} is already taken{by}; stop it or choose another port "
            f"with BGE_M3_PORT")
