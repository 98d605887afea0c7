"""Secrets from files (``REDIS_URL_FILE``, ``REDIS_PASSWORD_FILE``, ``HF_TOKEN_FILE``,
``BGE_M3_API_KEYS_FILE``): Docker and Kubernetes mount secrets as files, so the value need not sit
in any process's environment."""
from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from bge_m3.settings import Settings, SettingsError
from tests.stack_support import start_api
from tests.support import BGE_M3, RedisServer, spawn_worker, worker_env

PASSWORD = "pw-from-a-file-7f3a"
KEY = "key-from-a-file-91c2"


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_each_secret_is_read_from_its_file_and_children_get_the_path(tmp_path):
    url = _write(tmp_path / "redis_url", "redis://:s3cret@db:6379/0\n")
    keys = _write(tmp_path / "keys", "k1\nk2, k3\n\n")
    token = _write(tmp_path / "token", "hf_abc123\n")
    env = {"REDIS_URL_FILE": url, "BGE_M3_API_KEYS_FILE": keys, "HF_TOKEN_FILE": token,
           "HF_TOKEN": ""}  # compose passes unset optional variables as empty strings
    s = Settings.from_env(env)
    assert (s.redis_url, s.api_keys, s.hf_token) == ("redis://:s3cret@db:6379/0", ("k1", "k2", "k3"),
                                                     "hf_abc123")
    child = s.env()
    assert {"REDIS_URL", "BGE_M3_API_KEYS", "HF_TOKEN"}.isdisjoint(child)
    assert (child["REDIS_URL_FILE"], child["BGE_M3_API_KEYS_FILE"]) == (url, keys)
    assert "s3cret" not in repr(s) and "s3cret" not in str(child)
    assert Settings.from_env(child) == s
    # A value set in code (say `bge-m3 up`'s own Redis) is no longer the file's: it goes by value.
    moved = s.replace(redis_url="redis://127.0.0.1:7000/0")
    assert moved.env()["REDIS_URL"] == "redis://127.0.0.1:7000/0" and "REDIS_URL_FILE" not in moved.env()
    assert s.replace(redis_url=s.redis_url).env()["REDIS_URL_FILE"] == url
    # Merged over a parent environment that has both spellings, each secret is given once.
    merged = moved.child_env({"REDIS_URL_FILE": url, "HF_TOKEN": "from-the-parent", "PATH": "/bin"})
    assert merged["REDIS_URL"] == "redis://127.0.0.1:7000/0" and "REDIS_URL_FILE" not in merged
    assert merged["HF_TOKEN_FILE"] == token and "HF_TOKEN" not in merged and merged["PATH"] == "/bin"
    assert Settings.from_env(merged).hf_token == "hf_abc123"


@pytest.mark.parametrize("url, dsn", [
    ("redis://redis:6379/0", "redis://:p%40ss%2Fw%3Ard%23@redis:6379/0"),
    ("rediss://default@redis:6380/1", "rediss://default:p%40ss%2Fw%3Ard%23@redis:6380/1"),
    ("redis+socket:///run/r.sock?virtual_host=2", "redis+socket://:p%40ss%2Fw%3Ard%23@/run/r.sock?virtual_host=2"),
    ("unix:///run/r.sock?db=2", "unix://:p%40ss%2Fw%3Ard%23@/run/r.sock?db=2"),
])
def test_redis_password_file_joins_the_url_only_where_connections_are_made(tmp_path, url, dsn):
    """The compose shape: the URL is plain configuration, the password a secret file."""
    password = _write(tmp_path / "redis_password", "p@ss/w:rd#\n")
    s = Settings.from_env({"REDIS_URL": url, "REDIS_PASSWORD_FILE": password})
    assert (s.redis_url, s.redis_dsn) == (url, dsn)
    child = s.env()
    assert child["REDIS_URL"] == url and child["REDIS_PASSWORD_FILE"] == password
    assert "REDIS_PASSWORD" not in child and "p@ss" not in repr(s) + str(child)
    assert Settings.from_env(child) == s and Settings.from_env(child).redis_dsn == dsn
    assert Settings.from_env({"REDIS_URL": url}).redis_dsn == url  # no password: the URL as is
    # Two passwords would leave one of them unused, and which one wins a guess: refused, unshown.
    for doubled in ("redis://:other@redis:6379/0", "redis://redis:6379/0?password=other"):
        with pytest.raises(SettingsError, match="REDIS_URL holds a password and REDIS_PASSWORD is set") as raised:
            Settings.from_env({"REDIS_URL": doubled, "REDIS_PASSWORD_FILE": password})
        assert "other" not in str(raised.value) and "p@ss" not in str(raised.value)


def test_a_secret_file_that_is_empty_unreadable_or_doubled_is_refused_unshown(tmp_path):
    empty = _write(tmp_path / "empty", " \n")
    # An empty key file must not read as "no keys", which would turn authentication off.
    with pytest.raises(SettingsError, match=f"BGE_M3_API_KEYS_FILE: {empty} is empty"):
        Settings.from_env({"BGE_M3_API_KEYS_FILE": empty})
    with pytest.raises(SettingsError, match=r"REDIS_URL_FILE: cannot read /nonexistent/url: No such file"):
        Settings.from_env({"REDIS_URL_FILE": "/nonexistent/url"})
    with pytest.raises(SettingsError, match="REDIS_URL and REDIS_URL_FILE are both set") as raised:
        Settings.from_env({"REDIS_URL": "redis://:s3cret@h/0",
                           "REDIS_URL_FILE": _write(tmp_path / "url", "redis://:s3cret@h/1")})
    assert "s3cret" not in str(raised.value)
    # A secret file often holds a bare password: a REDIS_URL_FILE pointed at one must not print it.
    for held in ("hunter2-secret\n", "s3cret@redis.internal:6379\n", "s3cret://x\n"):
        path = _write(tmp_path / "password", held)
        with pytest.raises(SettingsError, match=f"REDIS_URL_FILE: {path} holds no URL") as raised:
            Settings.from_env({"REDIS_URL_FILE": path})
        assert held.strip() not in str(raised.value) and "s3cret" not in str(raised.value)
    with pytest.raises(SettingsError, match="HF_TOKEN holds a space") as raised:
        Settings.from_env({"HF_TOKEN_FILE": _write(tmp_path / "token", "hf_abc 123\n")})
    assert "abc" not in str(raised.value)


def test_api_keys_are_lines_and_commas_never_spaces_and_never_none(tmp_path):
    """A key file with a comment line, blank lines and commas gives exactly its keys; anything
    that would read as no keys (auth off) or split a line at its spaces is refused, unshown."""
    keys = _write(tmp_path / "keys", "# CI runner\nk1\n\n  k2,k3  \n")
    assert Settings.from_env({"BGE_M3_API_KEYS_FILE": keys}).api_keys == ("k1", "k2", "k3")
    only_commas = _write(tmp_path / "commas", ",\n , \n")
    only_comments = _write(tmp_path / "comments", "# nothing yet\n")
    for env in ({"BGE_M3_API_KEYS": " , "}, {"BGE_M3_API_KEYS": " "},
                {"BGE_M3_API_KEYS_FILE": only_commas}, {"BGE_M3_API_KEYS_FILE": only_comments}):
        with pytest.raises(SettingsError, match="BGE_M3_API_KEYS"):
            Settings.from_env(env)
    # "key  # note" was three keys ("key", "#", "note"); "correct horse" one from the environment
    # and two from a file. Both are now one key with a space in it: refused, and not shown.
    for env in ({"BGE_M3_API_KEYS_FILE": _write(tmp_path / "noted", "prod-7f3a  # CI runner\n")},
                {"BGE_M3_API_KEYS": "correct horse"}, {"BGE_M3_API_KEYS": "k1,bad\tkey"},
                {"BGE_M3_API_KEYS": "clé-horse"}):  # sent as UTF-8 it never matched: 401 always
        with pytest.raises(SettingsError, match="a key holds a space, a control or a non-ASCII") as raised:
            Settings.from_env(env)
        assert "7f3a" not in str(raised.value) and "horse" not in str(raised.value)


def test_bge_m3_commands_exit_2_naming_the_file(tmp_path):
    env = {**worker_env(Settings()), "BGE_M3_API_KEYS_FILE": str(tmp_path / "missing")}
    done = subprocess.run([BGE_M3, "api"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"BGE_M3_API_KEYS_FILE: cannot read {tmp_path / 'missing'}" in done.stderr


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


@pytest.mark.parametrize("form", ["REDIS_URL_FILE", "REDIS_PASSWORD_FILE"])
def test_api_and_worker_run_on_secrets_from_files_that_stay_out_of_their_environment(
        tiny_model, base_settings, tmp_path, form):
    """A password-protected Redis, a real worker and a gunicorn API, each told only where the
    Redis URL (or, as docker-compose.yml does, only the Redis password) and the API keys are:
    they serve jobs, authenticate with the key from the file, and neither secret is in either
    process's environment."""
    # In a URL this password must be percent-encoded; in its own file it is written as it is.
    password = PASSWORD if form == "REDIS_URL_FILE" else "p@ss/w:rd#" + PASSWORD
    redis = RedisServer(tmp_path / "redis", password=password)
    try:
        files = {"BGE_M3_API_KEYS_FILE": _write(tmp_path / "api_keys", KEY + "\n")}
        if form == "REDIS_URL_FILE":
            files[form] = _write(tmp_path / "redis_url", redis.url(0) + "\n")
        else:
            files.update(REDIS_URL=f"redis+socket://{redis.socket}?virtual_host=0",
                         REDIS_PASSWORD_FILE=_write(tmp_path / "redis_password", password + "\n"))
        parent = {k: v for k, v in base_settings.env().items()
                  if k not in {"REDIS_URL", "BGE_M3_API_KEYS"}}
        settings = Settings.from_env({**parent, **files})
        assert settings.api_keys == (KEY,) and settings.redis_dsn.endswith(f"@{redis.socket}?virtual_host=0")
        worker = spawn_worker(settings, tmp_path)
        try:
            api = start_api(settings, tmp_path)
            body = {"texts": ["a secret kept in a file"]}
            assert httpx.post(api.url + "/embed", json=body, timeout=60).status_code == 401
            done = httpx.post(api.url + "/embed", json=body, timeout=60,
                              headers={"Authorization": f"Bearer {KEY}"})
            assert done.status_code == 200, done.text
            assert len(done.json()["embeddings"][0]) == 32
            for pid in (api.proc.pid, worker.proc.pid):
                environ = _environ(pid)
                assert PASSWORD.encode() not in environ and KEY.encode() not in environ
                assert f"{form}={files[form]}".encode() in environ
            api.stop()
        finally:
            worker.stop()
    finally:
        redis.stop()
