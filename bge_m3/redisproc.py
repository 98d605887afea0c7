"""The Redis ``bge-m3 up`` uses: the configured one, a local one, or a private redis-server it starts.

The private server keeps its data under the data folder with AOF on (``appendfsync
everysec``: a crash loses about the last second of acknowledged writes, at most two when a slow
fsync makes Redis hold the write back) and ``noeviction`` (Celery messages and job records must
never be evicted).
It is stopped with SIGTERM, which Redis handles as SHUTDOWN: fsync the AOF, then exit.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from bge_m3.queue import redis_client
from bge_m3.redaction import redact_url

START_TIMEOUT = 15.0
"""Seconds the private redis-server may take to answer PING after it is started."""

STOP_TIMEOUT = 30.0
"""Seconds the private redis-server may take to flush its AOF and exit before it is killed."""

INSTALL_HINT = ("install one (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew "
                "install redis; conda: conda install -c conda-forge redis) or set REDIS_URL "
                "to a Redis you run")


class RedisProblem(RuntimeError):
    """No usable Redis."""


def ping(url: str) -> str | None:
    """``None`` when ``url`` answers PING, else the reason it does not (password redacted)."""
    try:
        client = redis_client(url, socket_timeout=3, socket_connect_timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure means "does not answer"; the message says which
        return f"{type(exc).__name__}: {exc}".replace(url, redact_url(url))
    return None


def server_pid(url: str) -> tuple[int | None, str | None]:
    """``(pid, None)`` with the pid of the redis-server answering ``url`` (``INFO server``), else
    ``(None, why)``: not answering, or answering without saying (password redacted)."""
    try:
        client = redis_client(url, socket_timeout=3, socket_connect_timeout=3)
        try:
            return int(client.info("server")["process_id"]), None
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - down, refused, or INFO renamed: the reason says which
        return None, f"{type(exc).__name__}: {exc}".replace(url, redact_url(url))


def eviction_warning(url: str) -> str:
    """A warning when ``url``'s Redis may evict keys (its ``maxmemory-policy`` is not
    ``noeviction``): it could drop queued messages and job records. Empty when it cannot, or
    when CONFIG is not allowed (a managed Redis): nothing is known then."""
    try:
        client = redis_client(url, socket_timeout=3, socket_connect_timeout=3)
        try:
            policy = client.config_get("maxmemory-policy").get("maxmemory-policy", "")
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - CONFIG refused or renamed: nothing to say
        return ""
    if policy in ("", "noeviction"):
        return ""
    return (f"; WARNING: its maxmemory-policy is {policy}, so under memory pressure Redis may "
            "evict queued jobs and results: set it to noeviction")


def port_taken(port: int, holder: str, reason: str) -> str:
    """What ``up`` says of a local Redis port it can neither use nor start a Redis on."""
    if reason.startswith("AuthenticationError"):  # often another `up`'s private Redis
        return (f"127.0.0.1:{port} is a Redis that wants a password, held by {holder} ({reason}); "
                "to share it set REDIS_URL to it and REDIS_PASSWORD_FILE to its password (another "
                "`bge-m3 up` keeps it in its data folder's redis/password), or set "
                "BGE_M3_EMBEDDED_REDIS_PORT to start one here")
    return (f"127.0.0.1:{port} is taken by {holder}, which does not answer Redis without settings "
            f"({reason}); set REDIS_URL (with its password) or BGE_M3_EMBEDDED_REDIS_PORT")


def local_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only, never through a link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does nothing to a file that was already there
        f.write(text)


class EmbeddedRedis:
    """A redis-server child on 127.0.0.1:``port``, in its own process group, with a password
    made for this run: loopback is every local user's, and its data is every job's texts and
    vectors. The password is in ``password_file`` (0600, in the 0700 data folder), which is how
    the children get it (``REDIS_PASSWORD_FILE``); redis-server reads it from a config file
    there, never from its command line, which any user can read in ``ps``."""

    def __init__(self, port: int, data_dir: Path, log_file: Path, exe: str | None = None):
        self.port = port
        self.dir = Path(data_dir) / "redis"
        self.log_file = Path(log_file)
        self.exe = exe or shutil.which("redis-server")
        self.proc: subprocess.Popen | None = None
        self.password = secrets.token_hex(32)

    @property
    def url(self) -> str:
        """The URL without the password (for lines a person reads, and ``REDIS_URL``)."""
        return local_url(self.port)

    @property
    def dsn(self) -> str:
        """The URL this process connects with, password included."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def password_file(self) -> Path:
        return self.dir / "password"

    def args(self) -> list[str]:
        return [str(self.exe), str(self.dir / "redis.conf"), "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "everysec",
                "--maxmemory-policy", "noeviction", "--save", "", "--daemonize", "no",
                "--logfile", str(self.log_file)]

    def start(self, popen) -> subprocess.Popen:
        """Start with ``popen`` (the supervisor's spawner) and wait until it answers."""
        if not self.exe:
            raise RedisProblem(f"no redis-server binary on the PATH: {INSTALL_HINT}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)  # its AOF holds every job's texts and vectors: no other user's to read
        write_private(self.dir / "redis.conf", f"requirepass {self.password}\n")
        write_private(self.password_file, self.password + "\n")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.proc = popen("redis", self.args(), self.log_file.with_suffix(".out"))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            # Exited first, then answering, and answering as this child: a Redis that took the
            # port since it was found free would answer the PING while this one exits.
            if self.proc.poll() is not None:
                raise RedisProblem(f"redis-server exited with {self.proc.returncode}: see "
                                   f"{self.log_file}")
            # One connection a poll: INFO both answers and names the process that answers.
            pid, reason = server_pid(self.dsn)
            if pid == self.proc.pid:
                return self.proc
            if pid is not None:
                reason = f"another Redis (pid {pid}) answers on port {self.port}"
            if time.monotonic() > deadline:
                raise RedisProblem(f"redis-server on port {self.port} did not answer within "
                                   f"{START_TIMEOUT:.0f}s ({reason}); see {self.log_file}")
            time.sleep(0.1)
