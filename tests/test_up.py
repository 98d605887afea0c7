"""`bge-m3 up` as a user runs it: a subprocess with the tiny model, real Redis, workers and gunicorn.

Every test picks free ports (API and the embedded Redis) and its own log and data
folders, so nothing here depends on or disturbs a Redis on 127.0.0.1:6379.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisDown

from bge_m3.queue import redis_client
from tests.support import BGE_M3, free_port, wait_for

SEED_BODY = {"texts": ["今天天气真好", "阳光明媚"], "mode": "dense"}
"""The seed's curl example."""

START_TIMEOUT = 240.0
"""Seconds `bge-m3 up` may take to reach ready on a busy 2-core machine (tiny model)."""


class UpRun:
    """A `bge-m3 up` subprocess in its own session, as a terminal would run it; output collected."""

    def __init__(self, env: dict[str, str], *args: str):
        self.proc = subprocess.Popen([BGE_M3, "up", *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout: float) -> re.Match:
        def found():
            for line in self.lines:
                match = re.search(pattern, line)
                if match:
                    return match
            if self.proc.poll() is not None:
                self.reader.join(5)
                raise AssertionError(f"bge-m3 up exited {self.proc.returncode}:\n{self.output}")
            return None
        return wait_for(found, timeout, interval=0.1, what=f"line {pattern!r}")

    def finish(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout)
        self.reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def up_env(tiny_model, tmp_path):
    """Environment for `bge-m3 up`: tiny model, no download, free ports, private folders."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BGE_M3_") and k not in {"REDIS_URL", "CPU_ONLY", "HF_TOKEN"}}
    env.update({
        "BGE_M3_MODEL_DIR": str(tiny_model.dir), "BGE_M3_MANIFEST": str(tiny_model.manifest),
        "BGE_M3_AUTO_DOWNLOAD": "0", "BGE_M3_ENDPOINTS": "http://127.0.0.1:9",
        "BGE_M3_HOST": "127.0.0.1", "BGE_M3_PORT": str(free_port()),
        "BGE_M3_EMBEDDED_REDIS_PORT": str(free_port()),
        "BGE_M3_LOG_DIR": str(tmp_path / "logs"), "BGE_M3_DATA_DIR": str(tmp_path / "data"),
        "BGE_M3_WORKER_THREADS": "4", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    })
    return env


@pytest.fixture
def runs():
    started: list[UpRun] = []

    def start(env, *args):
        run = UpRun(env, *args)
        started.append(run)
        return run

    yield start
    for run in started:  # a failed assertion must not leave a stack running
        run.kill()


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a live process, None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2])


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            children.setdefault(stat[1], []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def post_json(url: str, body: dict, key: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def healthcheck(env: dict[str, str], *args: str) -> int:
    return subprocess.run([sys.executable, "-m", "bge_m3.healthcheck", *args], env=env,
                          capture_output=True, timeout=60).returncode


def test_up_serves_the_seed_request_and_sigint_stops_every_process(up_env, runs, tmp_path):
    port, redis_port = int(up_env["BGE_M3_PORT"]), int(up_env["BGE_M3_EMBEDDED_REDIS_PORT"])
    # REDIS_PASSWORD belongs with REDIS_URL: the private Redis started here has a password of its
    # own, which the children get as a file; one set for another Redis must not reach them.
    key = "up-key-0123456789"  # given as a value: the children get it as a file, not a value
    run = runs({**up_env, "REDIS_PASSWORD": "for-another-redis", "BGE_M3_API_KEYS": key}, "--workers", "2")
    run.wait_line(r"^web page: ", START_TIMEOUT)
    out = run.output
    assert re.search(r"^\[1/5\] environment (GPU mode: cuda:0|CPU mode: no CUDA device found)",
                     out, re.M), out
    assert re.search(r"^\[2/5\] model .* verified", out, re.M)
    password_file = tmp_path / "data" / "redis" / "password"
    assert re.search(rf"^\[4/5\] redis +started a private redis-server on 127\.0\.0\.1:{redis_port}"
                     rf" \(pid \d+; password in {re.escape(str(password_file))};", out, re.M), out
    assert re.search(rf"^\[5/5\] start +2 workers and the API ready .*{re.escape(str(tmp_path))}",
                     out, re.M)
    assert f"http://127.0.0.1:{port}/" in out

    listed = dict(item.split("=") for item in run.wait_line(r"pids: ([^;]+);", 1).group(1).split())
    assert set(listed) == {"redis", "worker-1", "worker-2", "api"}
    tree = descendants(run.proc.pid)
    assert {int(pid) for pid in listed.values()} <= tree
    assert len(tree) > len(listed), "gunicorn's worker process should be in the tree too"

    status, body = post_json(f"http://127.0.0.1:{port}/embed", SEED_BODY, key)
    assert status == 200 and len(body["embeddings"]) == 2
    assert all(len(vector) == 32 for vector in body["embeddings"])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
        assert page.status == 200 and "html" in page.headers["Content-Type"]

    # The embedded Redis: durable settings, the data folder, reachable only while `up` runs, and
    # only with its password, which is in a file of this user's alone and in no child's environment.
    with pytest.raises(AuthenticationError):
        redis_client(f"redis://127.0.0.1:{redis_port}/0").ping()
    password = password_file.read_text().strip()
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600 and len(password) == 64
    keys_file = tmp_path / "logs" / "api-keys"
    assert keys_file.read_text() == key + "\n" and stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    for name, pid in listed.items():
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert password.encode() not in environ and b"for-another-redis" not in environ, pid
        assert key.encode() not in environ, name
        if name != "redis":  # redis-server writes its title over its environment: it reads empty
            assert f"BGE_M3_API_KEYS_FILE={keys_file}".encode() in environ, name
    assert f"REDIS_PASSWORD_FILE={password_file}".encode() in Path(f"/proc/{listed['api']}/environ").read_bytes()
    assert password not in out
    redis = redis_client(f"redis://:{password}@127.0.0.1:{redis_port}/0")
    assert redis.config_get("appendonly") == {"appendonly": "yes"}
    assert redis.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert redis.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert redis.config_get("dir")["dir"] == str(tmp_path / "data" / "redis")
    redis.set("bge-m3:test:durable", "1")
    ready_keys = sorted(redis.scan_iter(match="bge-m3:worker:*"))
    assert len(ready_keys) == 2

    check_env = {**up_env, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                 "REDIS_PASSWORD_FILE": str(password_file)}
    worker_hostname = ready_keys[0].removeprefix("bge-m3:worker:")
    assert healthcheck(check_env, "--worker", worker_hostname) == 0
    assert healthcheck(check_env, "--worker", "nobody@nowhere") == 1
    assert healthcheck(up_env, f"http://127.0.0.1:{port}/healthz") == 0

    os.killpg(run.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert run.finish() == 0, run.output
    assert run.lines[-1] == "stopped"
    still = sorted(pid for pid in tree if alive(pid))
    assert not still, f"orphans after SIGINT: {still}"
    with pytest.raises(RedisDown):
        redis_client(f"redis://127.0.0.1:{redis_port}/0", socket_connect_timeout=1).ping()
    assert healthcheck(up_env, f"http://127.0.0.1:{port}/healthz") == 1
    aof = tmp_path / "data" / "redis" / "appendonlydir"
    assert b"bge-m3:test:durable" in b"".join(p.read_bytes() for p in aof.glob("*.aof"))
    for name in ("redis.log", "worker-1.log", "worker-2.log", "api.log"):
        assert (tmp_path / "logs" / name).stat().st_size > 0
    assert "fsync" in (tmp_path / "logs" / "redis.log").read_text()


def _nothing_started(run: UpRun, env: dict[str, str], tmp_path: Path, failed_at: int = 3) -> None:
    """Nothing ran after step ``failed_at`` (the one that printed FAILED), and no child started."""
    assert not re.search(rf"^\[[{failed_at + 1}-5]/5\]", run.output, re.M), run.output
    # the folder itself may exist (step 3 locks it); a log in it means a child was started
    assert not list((tmp_path / "logs").glob("*.log")), "a log means a child process was started"
    assert not (tmp_path / "data" / "redis").exists()  # the embedded Redis's folder
    port = env["BGE_M3_EMBEDDED_REDIS_PORT"]
    with pytest.raises(RedisDown):
        redis_client(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1).ping()


def test_port_taken_fails_naming_the_port_and_its_owner(up_env, runs, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        run = runs({**up_env, "BGE_M3_PORT": str(port), "CPU_ONLY": "1"})
        assert run.finish() == 1
    out = run.output
    assert re.search(r"^\[1/5\] environment CPU mode: forced", out, re.M), out
    line = next(line for line in run.lines if line.startswith("[3/5]"))
    assert "FAILED" in line and f"port {port}" in line
    assert f"pid {os.getpid()}" in line, "the owner (this test process) should be named"
    _nothing_started(run, up_env, tmp_path)


def test_tampered_model_fails_before_anything_starts(tiny_model, up_env, runs, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model.dir, model)
    target = model / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    expected = next(f["sha256"] for f in json.loads(tiny_model.manifest.read_text())["files"]
                    if f["path"] == "model.safetensors")
    actual = hashlib.sha256(bytes(data)).hexdigest()

    run = runs({**up_env, "BGE_M3_MODEL_DIR": str(model)})
    assert run.finish() == 1
    out = run.output
    failed = next(i for i, line in enumerate(run.lines) if line.startswith("[2/5] model"))
    assert "FAILED" in run.lines[failed]
    detail = "\n".join(run.lines[failed:])
    assert "model.safetensors" in detail and expected in detail and actual in detail
    assert not re.search(r"^\[3/5\]", out, re.M)
    _nothing_started(run, up_env, tmp_path)


@pytest.mark.parametrize("spelling", ["REDIS_URL", "REDIS_URL_FILE", "REDIS_PASSWORD_FILE"])
def test_redis_url_that_does_not_answer_fails_clearly_without_leaking_the_password(
        up_env, runs, tmp_path, spelling):
    """Given by value or as a secret file, REDIS_URL is the Redis used: never a stand-in one on
    the embedded port (which may be another application's)."""
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    env = {spelling: url}
    if spelling == "REDIS_URL_FILE":
        (tmp_path / "redis_url").write_text(url + "\n")
        env = {spelling: str(tmp_path / "redis_url")}
    elif spelling == "REDIS_PASSWORD_FILE":
        (tmp_path / "redis_password").write_text("s3cret-pw\n")
        env = {"REDIS_URL": url.replace(":s3cret-pw@", ""), spelling: str(tmp_path / "redis_password")}
    run = runs({**up_env, **env, "CPU_ONLY": "1"})
    assert run.finish() == 1
    line = next(line for line in run.lines if line.startswith("[4/5]"))
    assert "FAILED" in line and "REDIS_URL" in line and "does not answer" in line
    assert "s3cret-pw" not in run.output
    assert not list((tmp_path / "logs").glob("*.log"))


def test_a_local_redis_wanting_a_password_is_named_as_such(up_env, runs, tmp_path):
    port = int(up_env["BGE_M3_EMBEDDED_REDIS_PORT"])
    argv = [shutil.which("redis-server") or "/usr/bin/redis-server", "--bind", "127.0.0.1",
            "--port", str(port), "--save", "", "--dir", str(tmp_path), "--requirepass", "pw"]
    guarded = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: not _port_free(port), 10, what="password-protected redis-server")
        run = runs({**up_env, "CPU_ONLY": "1"})
        assert run.finish() == 1
        line = next(line for line in run.lines if line.startswith("[4/5]"))
        assert "FAILED" in line and f"127.0.0.1:{port} is a Redis that wants a password, held by" in line, line
        assert "AuthenticationError" in line and "set REDIS_URL to it and REDIS_PASSWORD_FILE" in line
        assert "BGE_M3_EMBEDDED_REDIS_PORT" in line
    finally:
        guarded.terminate()
        guarded.wait(10)


def test_a_local_port_held_by_something_else_is_named_with_its_holder(up_env, runs):
    """Not a Redis at all (here a socket that never answers): the line says what holds the port
    and how to go elsewhere, not that a password is wanted."""
    port = int(up_env["BGE_M3_EMBEDDED_REDIS_PORT"])
    with socket.create_server(("127.0.0.1", port)):
        run = runs({**up_env, "CPU_ONLY": "1"})
        assert run.finish() == 1
    line = next(line for line in run.lines if line.startswith("[4/5]"))
    assert "FAILED" in line and f"127.0.0.1:{port} is taken by" in line, line
    assert "does not answer Redis without settings" in line and "wants a password" not in line, line
    assert "set REDIS_URL (with its password) or BGE_M3_EMBEDDED_REDIS_PORT" in line, line


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_sighup_stops_the_stack_in_order(up_env, runs, tmp_path):
    """A closed terminal or ssh session sends SIGHUP: the same ordered stop as Ctrl-C (API,
    workers, then Redis), not an instant death whose children all stop at once."""
    run = runs({**up_env, "CPU_ONLY": "1"})
    run.wait_line(r"^web page: ", START_TIMEOUT)
    listed = dict(item.split("=") for item in run.wait_line(r"pids: ([^;]+);", 1).group(1).split())
    stages = [["api"], sorted(name for name in listed if name.startswith("worker-")), ["redis"]]
    assert stages[1] and set(listed) == {name for stage in stages for name in stage}, listed
    tree = descendants(run.proc.pid)
    os.kill(run.proc.pid, signal.SIGHUP)
    # Poll the listed pids until all are gone, noting the poll that first found each gone. Each
    # poll looks at the later stages first, so one found gone in an earlier poll than a process
    # of an earlier stage really exited first: the order is never wrongly failed, only proven.
    gone_at: dict[str, int] = {}
    polls, deadline = 0, time.monotonic() + 120
    while len(gone_at) < len(listed):
        for name in (name for stage in reversed(stages) for name in stage):
            if name not in gone_at and not alive(int(listed[name])):
                gone_at[name] = polls
        polls += 1
        assert time.monotonic() < deadline, f"still running: {set(listed) - set(gone_at)}"
        time.sleep(0.01)
    assert gone_at["api"] <= min(gone_at[name] for name in stages[1]), gone_at
    assert max(gone_at[name] for name in stages[1]) <= gone_at["redis"], gone_at
    assert gone_at["api"] < gone_at["redis"], gone_at  # the stop took more than one poll
    assert run.finish() == 0, run.output
    assert any(line.startswith("stopping: API, worker(s), then Redis") for line in run.lines)
    assert run.lines[-1] == "stopped"
    assert not [pid for pid in tree if alive(pid)]


@pytest.mark.parametrize("folder,step,setting", [("logs", 3, "BGE_M3_LOG_DIR"),
                                                   ("data", 4, "BGE_M3_DATA_DIR")])
def test_a_folder_another_stack_uses_fails_naming_it_and_its_holder(up_env, runs, tmp_path,
                                                                    folder, step, setting):
    """Two stacks on different ports must not append to one api.log, nor run two redis-servers
    on one append-only file: the second stops at the step that would share the folder."""
    from bge_m3.folderlock import claim

    held = claim(tmp_path / folder, "held by the test", "-")  # this test process is the holder
    try:
        run = runs({**up_env, "CPU_ONLY": "1"})
        assert run.finish() == 1
    finally:
        held.close()
    line = next(line for line in run.lines if line.startswith(f"[{step}/5]"))
    assert "FAILED" in line and str(tmp_path / folder) in line, run.output
    assert f"pid {os.getpid()}" in line and setting in line
    _nothing_started(run, up_env, tmp_path, failed_at=step)


def test_a_folder_lock_dies_with_its_holder(tmp_path):
    """A stack killed with SIGKILL leaves no stale lock: the kernel drops a flock with its holder."""
    from bge_m3.folderlock import FolderTaken, claim

    code = ("import sys, time; from pathlib import Path; from bge_m3.folderlock import claim; "
            "h = claim(Path(sys.argv[1]), 'x', 'X'); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(FolderTaken, match=rf"log folder {re.escape(str(tmp_path))} .*pid {holder.pid}\)"):
            claim(tmp_path, "log folder", "BGE_M3_LOG_DIR")
    finally:
        holder.kill()
        holder.wait(10)
    mine = claim(tmp_path, "log folder", "BGE_M3_LOG_DIR")
    # the log and data folders may be one: a second claim in the same process is the same lock
    assert claim(tmp_path, "data folder", "BGE_M3_DATA_DIR") is mine
    mine.close()


def test_missing_redis_server_binary_says_how_to_get_one(up_env, runs, tmp_path):
    path = str(Path(BGE_M3).parent)  # the venv only: no redis-server on this PATH
    run = runs({**up_env, "PATH": path, "CPU_ONLY": "1"})
    assert run.finish() == 1
    line = next(line for line in run.lines if line.startswith("[4/5]"))
    assert "no redis-server binary" in line and "apt-get install redis-server" in line
    assert "REDIS_URL" in line
    assert not re.search(r"^\[5/5\]", run.output, re.M)


def test_sigterm_stops_the_stack_but_not_a_redis_it_did_not_start(up_env, runs, tmp_path):
    redis_port = int(up_env["BGE_M3_EMBEDDED_REDIS_PORT"])
    folder = tmp_path / "own-redis"
    folder.mkdir()
    # A Redis that may evict keys could drop queued jobs: up warns about the one it adopts.
    argv = [shutil.which("redis-server") or "/usr/bin/redis-server", "--bind", "127.0.0.1", "--port",
            str(redis_port), "--save", "", "--dir", str(folder), "--maxmemory-policy", "allkeys-lru"]
    own = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis_client(f"redis://127.0.0.1:{redis_port}/0")
        wait_for(lambda: _answers(client), 10, what="own redis-server")
        run = runs(up_env)
        run.wait_line(r"^web page: ", START_TIMEOUT)
        assert re.search(rf"^\[4/5\] redis +using the Redis already answering on "
                         rf"127\.0\.0\.1:{redis_port} \(not started here.*WARNING: its "
                         r"maxmemory-policy is allkeys-lru", run.output, re.M), run.output
        listed = run.wait_line(r"pids: ([^;]+);", 1).group(1)
        assert "redis=" not in listed
        tree = descendants(run.proc.pid)
        assert own.pid not in tree
        # It is not up's child, so nothing else would tell: up says when it goes and comes back.
        own.terminate()
        own.wait(10)
        run.wait_line(r"^Redis redis://127\.0\.0\.1:\d+/0 stopped answering", 20)
        own = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _answers(client), 10, what="own redis-server again")
        run.wait_line(r"^Redis redis://127\.0\.0\.1:\d+/0 answers again", 20)
        os.kill(run.proc.pid, signal.SIGTERM)
        assert run.finish() == 0, run.output
        assert "then Redis" not in run.output  # it stops only what it started
        assert not [pid for pid in tree if alive(pid)]
        assert own.poll() is None and client.ping(), "a Redis up did not start must keep running"
        assert not list(client.scan_iter(match="bge-m3:worker:*")), "workers withdraw on stop"
    finally:
        own.terminate()
        own.wait(10)


def _answers(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def _fake_python(tmp_path: Path, reply: dict) -> str:
    """An interpreter stand-in that answers the torch probe: there is no GPU here to ask."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\necho '{json.dumps(reply)}'\n")
    script.chmod(0o755)
    return str(script)


def test_gpu_mode_names_the_devices_and_spreads_workers(tmp_path):
    from bge_m3.accelerator import detect

    python = _fake_python(tmp_path, {"torch": "2.13.0", "cuda": True,
                                     "devices": ["NVIDIA H200", "NVIDIA H200"]})
    gpu = detect("auto", python)
    assert gpu.describe() == ("GPU mode: cuda:0 NVIDIA H200, cuda:1 NVIDIA H200 "
                              "(torch 2.13.0)")
    assert [gpu.worker_device("auto", i) for i in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert gpu.worker_device("cuda:1", 0) == "cuda:1"
    with pytest.raises(RuntimeError, match="only 2 CUDA"):
        detect("cuda:2", python)


def test_cpu_fallback_and_missing_torch_are_explained(tmp_path):
    from bge_m3.accelerator import EnvironmentProblem, detect

    no_gpu = _fake_python(tmp_path, {"torch": "2.13.0", "cuda": False, "devices": []})
    assert detect("auto", no_gpu).describe().startswith("CPU mode: no CUDA device found")
    assert detect("auto", no_gpu).worker_device("auto", 1) == "cpu"
    with pytest.raises(EnvironmentProblem, match="BGE_M3_DEVICE=cuda but"):
        detect("cuda", no_gpu)
    no_torch = _fake_python(tmp_path, {"error": "ModuleNotFoundError: No module named 'torch'"})
    with pytest.raises(EnvironmentProblem, match=r"pip install torch"):
        detect("auto", no_torch)


def test_real_probe_matches_torch_in_a_child(tmp_path):
    from bge_m3.accelerator import detect

    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, timeout=120)
    assert detect("auto").mode == ("gpu" if probe.stdout.strip() == "True" else "cpu")


def test_up_process_never_imports_torch():
    code = ("import sys; import bge_m3.up; from bge_m3.accelerator import detect; "
            "detect('auto'); print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_child_killed_by_a_signal_is_named_so():
    from bge_m3.startup import exit_status

    assert exit_status(-signal.SIGKILL) == "killed by SIGKILL"
    assert exit_status(1) == "status 1" and exit_status(-200) == "status -200"


def test_start_server_sh_is_bge_m3_up():
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(["bash", str(root / "start_server.sh"), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: bge-m3 up") and "--workers" in done.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_stop_even_when_up_is_killed(up_env, runs):
    run = runs(up_env)
    run.wait_line(r"^web page: ", START_TIMEOUT)
    tree = descendants(run.proc.pid)
    assert len(tree) >= 4  # redis, worker, gunicorn master and its worker
    os.kill(run.proc.pid, signal.SIGKILL)  # no handler runs: only the kernel's parent-death signal
    run.finish(10)
    try:
        wait_for(lambda: not [pid for pid in tree if alive(pid)], 90, interval=0.2,
                 what="every child of a SIGKILLed bge-m3 up to exit")
    finally:
        for pid in tree:  # on failure, do not leave the orphans running
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_healthcheck_says_unhealthy_to_a_reply_that_is_not_http(up_env):
    """A port answering garbage (another program, a proxy cut short) is unhealthy, in one line:
    no traceback in `docker ps` or in `bge-m3 up`'s start step, which uses the same check."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"garbage\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        done = subprocess.run([sys.executable, "-m", "bge_m3.healthcheck",
                               f"http://127.0.0.1:{server.getsockname()[1]}/healthz"],
                              env=up_env, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (1, "unhealthy", "")
