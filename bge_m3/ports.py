"""Is a TCP port free, and if not, which process listens on it (Linux ``/proc``, no psutil)."""
from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

_LISTEN = "0A"
"""TCP state code of a listening socket in ``/proc/net/tcp``."""

UNPRIVILEGED_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
"""Linux: the lowest port a user without CAP_NET_BIND_SERVICE may bind (1024 unless tuned)."""


class PrivilegedPort(PermissionError):
    """The port is below the unprivileged start and this user may not bind it (EACCES)."""


def is_free(host: str, port: int, setting: str = "BGE_M3_PORT") -> bool:
    """True when a server could bind ``host:port`` now (SO_REUSEADDR, as gunicorn binds).

    Raises ``PrivilegedPort`` (naming ``setting``) when no process of this user could bind it:
    freeing it would not help, so "taken" would send the user hunting for a holder.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            if exc.errno == errno.EACCES:
                raise PrivilegedPort(describe_privileged(host, port, setting)) from None
            raise
    return True


def describe_privileged(host: str, port: int, setting: str) -> str:
    try:
        start = int(UNPRIVILEGED_START.read_text())
    except (OSError, ValueError):
        start = 1024
    return (f"port {port} on {host} is a privileged port (below {start}) that this user may not "
            f"bind (it needs root or CAP_NET_BIND_SERVICE); choose another port with {setting}")


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
