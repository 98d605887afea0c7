"""``bge_m3.ports``: a port someone holds and a port this user may not bind are different problems.

Tests run as root, where every port binds; a user's EACCES is stood in for by a ``bind`` that
raises it for one port only.
"""
from __future__ import annotations

import errno
import socket

import pytest

from bge_m3 import ports
from bge_m3.settings import Settings
from bge_m3.up import Failed, Up

PRIVILEGED = 80


@pytest.fixture
def unprivileged(monkeypatch):
    """Binding port 80 fails as it does for a user without CAP_NET_BIND_SERVICE."""
    real_bind = socket.socket.bind

    def bind(sock, address):
        if address[1] == PRIVILEGED:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_bind(sock, address)

    monkeypatch.setattr(socket.socket, "bind", bind)


def test_a_port_in_use_is_taken():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert ports.is_free("127.0.0.1", port) is False
        assert "is already taken" in ports.describe_taken("127.0.0.1", port)


def test_a_privileged_port_is_not_called_taken(unprivileged):
    with pytest.raises(ports.PrivilegedPort) as refused:
        ports.is_free("0.0.0.0", PRIVILEGED)
    text = str(refused.value)
    assert text.startswith(f"port {PRIVILEGED} on 0.0.0.0 is a privileged port (below ")
    assert "may not bind" in text and text.endswith("choose another port with BGE_M3_PORT")
    assert "taken" not in text
    with pytest.raises(ports.PrivilegedPort, match="with BGE_M3_EMBEDDED_REDIS_PORT$"):
        ports.is_free("127.0.0.1", PRIVILEGED, "BGE_M3_EMBEDDED_REDIS_PORT")


def test_up_port_step_says_privileged(unprivileged, tmp_path, capsys):
    settings = Settings.from_env({}, host="0.0.0.0", port=PRIVILEGED, log_dir=tmp_path / "logs")
    up = Up(settings, workers=1, ready_timeout=1.0)
    with pytest.raises(Failed):
        up.run_step(3, "port", up.port)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"[3/5] port        FAILED: port {PRIVILEGED} on 0.0.0.0 is a "
                           "privileged port"), line
    assert "BGE_M3_PORT" in line and "taken" not in line
    assert up.locks == []  # failed before claiming the log folder
