"""``bge-m3 up``: check this machine, verify the model, and run Redis, worker(s) and API.

Five steps, one status line each; the first failure stops with exit status 1 before
the next step starts, so a tampered model never gets as far as starting anything.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from pathlib import Path

from bge_m3 import ports
from bge_m3.accelerator import EnvironmentProblem, detect
from bge_m3.envvars import env_is_set
from bge_m3.folderlock import FolderTaken, claim
from bge_m3.redaction import redact_url
from bge_m3.redisproc import (EmbeddedRedis, RedisProblem, eviction_warning, local_url, ping, port_taken,
                              write_private)
from bge_m3.settings import Settings
from bge_m3.startup import StartProblem, child_command, exit_status, probe_host, wait_until_ready
from bge_m3.supervisor import API_GRACE_MARGIN, REDIS_GRACE, Supervisor

STEPS = 5

WORKER_GRACE_MARGIN = 30.0
"""Seconds a stopping worker gets beyond BGE_M3_TIME_LIMIT, so a running job can finish."""


REDIS_CHECK_INTERVAL = 5.0
"""Seconds between checks, while serving, that the Redis in use still answers."""

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that stop the stack in order (API, workers, then Redis) once children exist."""


class Failed(Exception):
    """A step failed; its message is the status line's reason."""


class Interrupted(Failed):
    """A signal stopped a step (Ctrl-C): not a failure of the machine or the model."""


class Up:
    def __init__(self, settings: Settings, workers: int, ready_timeout: float):
        self.settings = settings
        self.workers = workers
        self.ready_timeout = ready_timeout
        self.accelerator = None
        self.redis_url = settings.redis_dsn  # what this process connects to, password included
        self.embedded: EmbeddedRedis | None = None
        self.supervisor = Supervisor({})
        self.stop_signal: int | None = None
        self.signals = 0
        self.locks: list = []  # open lock files (bge_m3.folderlock), held until this process exits

    # -- output -------------------------------------------------------------------------
    @staticmethod
    def status(number: int, name: str, text: str) -> None:
        print(f"[{number}/{STEPS}] {name:<11} {text}", flush=True)

    def run_step(self, number: int, name: str, step) -> None:
        try:
            text = step()
        except Interrupted as exc:
            self.status(number, name, f"stopped: {exc}")
            raise
        except (Failed, EnvironmentProblem, RedisProblem, StartProblem, FolderTaken, OSError) as exc:
            # OSError: an unwritable log or data folder, an address that cannot be bound.
            self.status(number, name, f"FAILED: {exc}")
            raise Failed(str(exc)) from None
        self.status(number, name, text)

    # -- steps --------------------------------------------------------------------------
    def environment(self) -> str:
        self.accelerator = detect(self.settings.device)
        return self.accelerator.describe()

    def model(self) -> str:
        from verify.errors import VerifyError
        from verify.manifest import load_manifest
        from verify.verifier import verify_folder

        s = self.settings
        try:
            manifest = load_manifest(s.manifest)
            if s.auto_download:
                from verify.download import ensure_model

                report = ensure_model(s.model_dir, manifest, s.endpoints, s.hf_token,
                                      log=lambda line: print(f"      [model] {line}", flush=True))
            else:
                report = verify_folder(s.model_dir, manifest)
        except VerifyError as exc:
            raise Failed(f"{exc} (model folder {s.model_dir}, manifest {s.manifest})") from None
        if not report.ok:
            bad = report.failures
            more = "".join(f"\n      {f.describe()}" for f in bad[1:])
            hint = "" if s.auto_download else "; BGE_M3_AUTO_DOWNLOAD=1 or `bge-m3 download` fetches them"
            raise Failed(f"{len(bad)} of {len(report.files)} files in {s.model_dir} do not match "
                         f"{s.manifest}{hint}:\n      {bad[0].describe()}{more}")
        return (f"{len(report.files)} files of {manifest.repo_id}@{manifest.revision} verified "
                f"(sha256) in {s.model_dir}")

    def port(self) -> str:
        s = self.settings
        if not ports.is_free(s.host, s.port):
            raise Failed(ports.describe_taken(s.host, s.port))
        # checked with the port: a second stack on another port would share the first's logs
        self.locks.append(claim(s.log_dir, "log folder", "BGE_M3_LOG_DIR"))
        return f"port {s.port} on {s.host} is free"

    def redis(self) -> str:
        s = self.settings
        if env_is_set("REDIS_URL"):
            reason = ping(s.redis_dsn)
            if reason:
                raise Failed(f"REDIS_URL {redact_url(s.redis_dsn)} does not answer: {reason}")
            return f"using REDIS_URL {redact_url(s.redis_dsn)}{eviction_warning(s.redis_dsn)}"
        port = s.embedded_redis_port
        reason = ping(local_url(port))
        if reason is None:
            self.redis_url = local_url(port)
            return (f"using the Redis already answering on 127.0.0.1:{port} (not started here: "
                    f"it keeps running after this stops){eviction_warning(self.redis_url)}")
        if not ports.is_free("127.0.0.1", port, "BGE_M3_EMBEDDED_REDIS_PORT"):
            raise Failed(port_taken(port, ports.owner(port) or "another process", reason))
        self.locks.append(claim(s.data_dir, "data folder", "BGE_M3_DATA_DIR"))
        self.embedded = EmbeddedRedis(port, s.data_dir, s.log_dir / "redis.log")
        self.embedded.start(self._spawn_redis)
        self.redis_url = self.embedded.dsn
        return (f"started a private redis-server on 127.0.0.1:{port} (pid "
                f"{self.embedded.proc.pid}; password in {self.embedded.password_file}; AOF "
                f"everysec in {self.embedded.dir}; log {self.embedded.log_file})")

    def _spawn_redis(self, name: str, argv: list[str], log: Path):
        return self.supervisor.spawn(name, argv, log)

    def start(self) -> str:
        s = self.settings
        children = s
        if self.embedded is not None:  # children get the path of its password, not the password
            files = tuple(f for f in s.secret_files if f[0] not in ("REDIS_URL", "REDIS_PASSWORD"))
            children = s.replace(redis_url=self.embedded.url, redis_password=self.embedded.password,
                                 secret_files=(*files, ("REDIS_PASSWORD", str(self.embedded.password_file))))
        elif self.redis_url != s.redis_dsn:  # a local Redis found answering: no password
            children = s.replace(redis_url=self.redis_url, redis_password=None)
        if s.api_keys and "BGE_M3_API_KEYS" not in dict(children.secret_files):
            # Given as a value: the children get a file of this user's (in the log folder this
            # run holds the lock of), not the keys in their environment.
            keys = s.log_dir / "api-keys"
            write_private(keys, "\n".join(s.api_keys) + "\n")
            children = children.replace(secret_files=(*children.secret_files, ("BGE_M3_API_KEYS", str(keys))))
        self.supervisor.env = {**children.child_env(os.environ), "PYTHONUNBUFFERED": "1"}
        host = socket.gethostname()
        hostnames = [f"bge-m3-{os.getpid()}-{i}@{host}" for i in range(1, self.workers + 1)]
        for i, hostname in enumerate(hostnames, start=1):
            device = self.accelerator.worker_device(s.device, i - 1)
            self.supervisor.spawn(f"worker-{i}", child_command("worker", "--hostname", hostname),
                                  s.log_dir / f"worker-{i}.log", kind="worker",
                                  env={"BGE_M3_DEVICE": device})
        self.supervisor.spawn("api", child_command("api"), s.log_dir / "api.log")
        print(f"        pids: {self.supervisor.pids()}; logs in {s.log_dir}", flush=True)
        started = time.monotonic()
        if not wait_until_ready(self.supervisor, self.redis_url, hostnames,
                                f"http://{probe_host(s.host)}:{s.port}/readyz", self.ready_timeout,
                                lambda: self.stop_signal is not None):
            raise Interrupted(f"{signal.Signals(self.stop_signal).name} before ready")
        plural = "s" if self.workers > 1 else ""
        return (f"{self.workers} worker{plural} and the API ready in "
                f"{time.monotonic() - started:.1f}s; logs in {s.log_dir}")

    # -- lifecycle ----------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = signum
        self.signals += 1

    def serve(self) -> int:
        s = self.settings
        base = f"http://{probe_host(s.host)}:{s.port}"
        print(f"web page: {base}/\nAPI:      {base}/v1  (POST {base}/embed, {base}/v1/embeddings)\n"
              "Press Ctrl-C to stop.", flush=True)
        next_check, redis_down = time.monotonic() + REDIS_CHECK_INTERVAL, False
        while self.stop_signal is None:
            child = self.supervisor.exited()
            if child is not None:
                print(f"{child.name} (pid {child.pid}) exited with {exit_status(child.proc.returncode)}; "
                      f"see {child.log}; stopping", flush=True)
                return 1
            if time.monotonic() >= next_check:  # a Redis not started here can go away alone
                reason = ping(self.redis_url)
                if (reason is not None) != redis_down:
                    redis_down = reason is not None
                    print(f"Redis {redact_url(self.redis_url)} stopped answering ({reason}); jobs wait "
                          "until it is back" if redis_down else
                          f"Redis {redact_url(self.redis_url)} answers again", flush=True)
                next_check = time.monotonic() + REDIS_CHECK_INTERVAL
            time.sleep(0.5)
        return 0

    def run(self) -> int:
        try:
            self.run_step(1, "environment", self.environment)
            self.run_step(2, "model", self.model)
            self.run_step(3, "port", self.port)
        except Failed:
            return 1
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            return 130
        # From here on children exist: signals only set a flag, and every exit path stops them.
        # SIGHUP too (its terminal or ssh session closed): unhandled it would end this process at
        # once, and the children's die-with-parent signal would stop Redis beside the workers
        # still finishing their jobs, instead of after them.
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        code, started = 0, False
        try:
            self.run_step(4, "redis", self.redis)
            self.run_step(5, "start", self.start)
            code = self.serve()
        except Failed:
            code = 128 + self.stop_signal if self.stop_signal else 1
        finally:
            if self.supervisor.children:
                started = True
                then = ", then Redis" if self.embedded is not None else ""
                print(f"stopping: API, worker(s){then} (Ctrl-C again kills them now) ...", flush=True)
                grace = {"api": self.settings.request_grace + API_GRACE_MARGIN, "redis": REDIS_GRACE,
                         "worker": self.settings.time_limit + WORKER_GRACE_MARGIN}
                at_stop = self.signals
                self.supervisor.stop_all(grace, hurry=lambda: self.signals > at_stop)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if started:
            print("stopped", flush=True)
        return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bge-m3 up", description=(
        "Check this machine (CUDA or CPU), download and verify the model, check the port, "
        "find or start Redis, start worker(s) and the API, and wait until /readyz answers. "
        "Settings come from the environment (see the README); Ctrl-C stops everything."))
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="worker processes to start (GPU mode: spread over the GPUs; default: 1)")
    parser.add_argument("--ready-timeout", type=float, default=900.0, metavar="SECONDS",
                        help="how long to wait for /readyz (the first model load can be slow; default: 900)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"bge-m3 up: {exc}", file=sys.stderr)
        return 2
    return Up(settings, args.workers, args.ready_timeout).run()
