"""Real processes for tests: a private redis-server and `bge-m3 worker` subprocesses."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bge_m3.queue import redis_client
from bge_m3.settings import Settings
from bge_m3.workers import WORKER_PREFIX

BIN = Path(sys.executable).parent
BGE_M3 = str(BIN / "bge-m3")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class RedisServer:
    """redis-server on a unix socket in ``folder`` (``--port 0``: no TCP), optionally with AOF."""

    def __init__(self, folder: Path, *, appendonly: bool = False, password: str | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket = self.folder / "redis.sock"
        self.appendonly = appendonly
        self.password = password
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [exe, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                "--save", "", "--dir", str(self.folder), "--daemonize", "no",
                "--logfile", str(self.folder / "redis.log")]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, 10, what="redis-server")

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except Exception:
            return False

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis+socket://{auth}{self.socket}?virtual_host={db}"

    def client(self, db: int = 0):
        return redis_client(f"unix://{self.socket}?db={db}", password=self.password)

    def wait_written(self, timeout: float = 10) -> None:
        """Wait until every write so far is in the append-only file (the kernel's, so a SIGKILL
        cannot lose it). With ``appendfsync everysec`` Redis holds its AOF buffer back for up to
        2 s while a background fsync is slow (a loaded machine, a busy disk), acknowledging
        writes meanwhile: a kill then loses them, as everysec allows, and a test of the replay
        would fail for Redis' reason, not ours (it did once, with two test processes)."""
        wait_for(lambda: int(self.client().info("persistence")["aof_buffer_length"]) == 0, timeout,
                 interval=0.05, what="the append-only file to hold every write")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


@dataclass
class WorkerProcess:
    proc: subprocess.Popen
    hostname: str
    log: Path
    settings: Settings
    extra_env: dict = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ready(self) -> bool:
        return bool(redis_client(self.settings.redis_dsn).exists(WORKER_PREFIX + self.hostname))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


SUITE_DBS = {"faults": 5, "load": 6, "fuzz": 7, "security": 8, "faults-api": 9,
             "parity": 10, "gate": 11, "batching": 12, "kill": 13, "gpu": 14, "console": 15}
"""Private Redis databases of suites that run their own workers (0 is the shared live worker's,
1 the flushed unit-test database, 2-4 the API tests')."""


def settings_on_db(base: Settings, redis_server: RedisServer, name: str, **changes) -> Settings:
    """``base`` moved to the suite's own database (flushed), so no other worker takes its jobs."""
    db = SUITE_DBS[name]
    redis_server.client(db).flushdb()
    return base.replace(redis_url=redis_server.url(db), **changes)


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BGE_M3_")}
    env.update(settings.env())
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra)
    return env


def spawn_worker(settings: Settings, log_dir: Path, *, wait: bool = True, timeout: float = 120,
                 args: tuple[str, ...] = (), **extra_env: str) -> WorkerProcess:
    hostname = f"test-{uuid.uuid4().hex[:8]}@localhost"
    log = Path(log_dir) / f"{hostname.split('@')[0]}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([BGE_M3, "worker", "--hostname", hostname, *args],
                                env=worker_env(settings, **extra_env), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    worker = WorkerProcess(proc, hostname, log, settings, extra_env)
    if wait:
        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}:\n{worker.output()[-3000:]}")
            return worker.ready()
        wait_for(up, timeout, interval=0.2, what=f"worker {hostname} ready")
    return worker


def conforms(doc: dict, path: str, method: str, response) -> None:
    """Assert the response's status is declared for the route and its body fits the schema."""
    import jsonschema_rs

    declared = doc["paths"][path][method]["responses"]
    assert str(response.status_code) in declared, (path, method, response.status_code)
    content = declared[str(response.status_code)]["content"]
    if "application/json" in content:
        schema = {**content["application/json"]["schema"], "components": doc["components"]}
        jsonschema_rs.validator_for(schema).validate(response.get_json())
