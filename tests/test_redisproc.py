"""``bge_m3.redisproc.EmbeddedRedis``: the private redis-server ``bge-m3 up`` starts is trusted only
once it answers as itself, and it and its data folder are its user's alone."""
from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from bge_m3.redisproc import EmbeddedRedis, RedisProblem, server_pid
from tests.support import free_port, wait_for


def _popen(name: str, argv: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT)


def test_the_private_redis_answers_as_itself_in_a_private_folder(tmp_path):
    embedded = EmbeddedRedis(free_port(), tmp_path / "data", tmp_path / "logs" / "redis.log")
    proc = embedded.start(_popen)
    try:
        assert server_pid(embedded.dsn) == (proc.pid, None)
        pid, reason = server_pid(embedded.url)  # no password, no answer
        assert pid is None and "Authentication" in reason
        assert stat.S_IMODE(embedded.dir.stat().st_mode) == 0o700
        for private in (embedded.password_file, embedded.dir / "redis.conf"):
            assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert embedded.password_file.read_text().strip() == embedded.password
        assert embedded.password not in " ".join(proc.args)  # `ps` shows every user the arguments
    finally:
        proc.terminate()
        proc.wait(30)


def test_another_redis_taking_the_port_meanwhile_is_not_taken_for_it(tmp_path):
    """The port was free when `up` looked; another Redis bound it since. Its answer to PING must
    not pass for the child's, which exits on the taken port."""
    port = free_port()
    other = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: server_pid(f"redis://127.0.0.1:{port}/0")[0] == other.pid, 15, what="the other Redis")
        embedded = EmbeddedRedis(port, tmp_path / "data", tmp_path / "logs" / "redis.log")
        with pytest.raises(RedisProblem, match="exited|another Redis"):
            embedded.start(_popen)
        assert embedded.proc.wait(15) != 0
    finally:
        other.terminate()
        other.wait(30)
