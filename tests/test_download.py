"""``ensure_model`` / ``bge-m3 download`` against a local fake hub speaking the real protocol.

Every case ends verified or with a clear error, never with a wrong file under its final name.
"""
from __future__ import annotations

import dataclasses

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.fakehub import COMMIT, FakeHub
from tests.support import BGE_M3, wait_for
from verify.commands import EXIT_DOWNLOAD, EXIT_OK
from verify.download import ensure_model
from verify.errors import DownloadError
from verify.hashes import file_sha256
from verify.manifest import Manifest, load_manifest
from verify.retry import RetryPolicy
from verify.transfer import Partial
from verify.verifier import verify_folder

FAST = RetryPolicy(base_delay=0.01, max_delay=0.05)
"""Real backoff logic, tiny delays: tests stay quick without sleeping in the code under test."""

BIG = "model.safetensors"
"""The tiny model's largest file (~1.4 MB), an LFS file served through the fake CDN."""

TOKEN = "hf_test_secret_token_123"


@pytest.fixture
def manifest(tiny_model):
    return load_manifest(tiny_model.manifest)


def _hub(tiny_model, manifest) -> FakeHub:
    return FakeHub(tiny_model.dir, manifest.repo_id, revision=manifest.revision)


@pytest.fixture
def hub(tiny_model, manifest):
    server = _hub(tiny_model, manifest)
    yield server
    server.stop()


@pytest.fixture
def mirror(tiny_model, manifest):
    server = _hub(tiny_model, manifest)
    yield server
    server.stop()


def fetch(dest, manifest, *endpoints, lines=None, policy=FAST, **kwargs):
    return ensure_model(dest, manifest, [e.url if isinstance(e, FakeHub) else e for e in endpoints],
                        token=TOKEN, log=(lines.append if lines is not None else lambda _: None),
                        policy=policy, **kwargs)


def assert_verified(dest, manifest):
    report = verify_folder(dest, manifest)
    assert report.ok, [f.describe() for f in report.failures]
    leftovers = [p.name for p in Path(dest).rglob(".*incomplete*")]
    assert leftovers == []


def test_fresh_download_verifies_and_keeps_the_token_on_the_endpoint(hub, manifest, tmp_path):
    report = fetch(tmp_path / "m", manifest, hub)
    assert report.ok and len(report.files) == len(manifest.files)
    assert_verified(tmp_path / "m", manifest)
    assert all(hub.body_gets[f.path] == 1 for f in manifest.files)
    cdn = [r for r in hub.log if r["path"].startswith("/cdn/")]
    resolve = [r for r in hub.log if "/resolve/" in r["path"]]
    assert cdn and all(r["host"].startswith("localhost") and r["auth"] is None for r in cdn)
    assert resolve and all(r["auth"] == f"Bearer {TOKEN}" for r in resolve)
    heads = [r for r in resolve if r["method"] == "HEAD"]
    assert len(heads) == len(manifest.files)


def test_cut_mid_body_resumes_with_only_the_remainder(hub, manifest, tmp_path):
    size = manifest.entry(BIG).size
    hub.fault("cut", path=BIG, after=400_000)
    lines: list[str] = []
    fetch(tmp_path / "m", manifest, hub, lines=lines)
    assert_verified(tmp_path / "m", manifest)
    assert hub.bytes_served[BIG] == size  # 400 000 then exactly the rest
    gets = [r for r in hub.requests_for(BIG, "GET") if r["path"].startswith("/cdn/")]
    assert [r["range"] for r in gets] == [None, "bytes=400000-"]
    assert [r["status"] for r in gets] == [200, 206]
    assert any("resumed at byte 400000" in line for line in lines)


def test_5xx_then_success(hub, manifest, tmp_path):
    hub.fault("status", path=BIG, code=500, times=1)
    hub.fault("status", path=BIG, code=503, times=2)
    hub.fault("status", path="config.json", code=502, times=1, on="head")
    fetch(tmp_path / "m", manifest, hub)
    assert_verified(tmp_path / "m", manifest)
    statuses = [r["status"] for r in hub.requests_for(BIG) if r["path"].startswith("/cdn/")]
    assert statuses == [500, 503, 503, 200]


def test_429_honours_retry_after(hub, manifest, tmp_path):
    hub.fault("status", path=BIG, code=429, retry_after=1)
    fetch(tmp_path / "m", manifest, hub)
    assert_verified(tmp_path / "m", manifest)
    cdn = [r for r in hub.requests_for(BIG) if r["path"].startswith("/cdn/")]
    assert [r["status"] for r in cdn] == [429, 200]
    # A lower bound only: with FAST backoff the retry would come after ~0.01 s otherwise.
    assert cdn[1]["time"] - cdn[0]["time"] >= 0.9


def test_server_ignoring_range_restarts_from_zero(hub, manifest, tmp_path):
    size = manifest.entry(BIG).size
    hub.fault("cut", path=BIG, after=500_000)
    hub.fault("ignore_range", path=BIG)
    lines: list[str] = []
    fetch(tmp_path / "m", manifest, hub, lines=lines)
    assert_verified(tmp_path / "m", manifest)
    assert hub.bytes_served[BIG] == 500_000 + size  # the 200 was taken whole, not spliced
    assert not any("resumed" in line for line in lines)  # the log says what really happened


def test_an_endpoint_restarting_from_zero_and_cutting_again_is_given_up(hub, mirror, manifest, tmp_path):
    """Each attempt gets the same 500 kB again (Range ignored, body cut): bytes that reach no
    further than before are no progress, so the budget of failures in a row runs out (the file
    was fetched MAX_REQUESTS = 100 times, 100 times its size), and the mirror finishes it."""
    hub.fault("cut", path=BIG, after=500_000, times=None)
    hub.fault("ignore_range", path=BIG, times=None)
    lines: list[str] = []
    fetch(tmp_path / "m", manifest, hub, mirror, lines=lines)
    assert_verified(tmp_path / "m", manifest)
    assert hub.body_gets[BIG] == FAST.transient_attempts, lines
    assert any(f"{BIG} from" in line and "giving up on this endpoint" in line for line in lines)
    assert mirror.body_gets[BIG] == 1


def test_a_file_started_over_after_bad_bytes_may_resume_to_its_end(hub, manifest, tmp_path):
    """Bad bytes delete the partial file: from then on each cut that takes the new copy further
    is progress again, though it reaches no further than the deleted one had."""
    size = manifest.entry(BIG).size
    hub.fault("corrupt", path=BIG)
    hub.fault("cut", path=BIG, after=size // 8, times=None)  # more cuts than TRANSIENT_ATTEMPTS
    lines: list[str] = []
    fetch(tmp_path / "m", manifest, hub, lines=lines)
    assert_verified(tmp_path / "m", manifest)
    assert sum("sha256 mismatch" in line for line in lines) == 1, lines
    assert hub.body_gets[BIG] >= 2 * 8 and not any("giving up" in line for line in lines)


def test_corrupt_primary_falls_back_to_mirror(hub, mirror, manifest, tmp_path):
    hub.fault("corrupt", path=BIG, times=None)
    lines: list[str] = []
    fetch(tmp_path / "m", manifest, hub, mirror, lines=lines)
    assert_verified(tmp_path / "m", manifest)
    assert hub.body_gets[BIG] == 3  # three complete, wrong downloads, then the next endpoint
    assert mirror.body_gets[BIG] == 1 and sum(mirror.body_gets.values()) == 1
    assert sum("sha256 mismatch" in line for line in lines) == 3


def test_primary_down_entirely(hub, mirror, manifest, tmp_path):
    hub.fault("down", times=None, on="any")
    lines: list[str] = []
    fetch(tmp_path / "m", manifest, hub, mirror, lines=lines)
    assert_verified(tmp_path / "m", manifest)
    assert all(mirror.body_gets[f.path] == 1 for f in manifest.files)
    # Given up after the retry budget on the first file, then skipped for the rest.
    assert len(hub.log) == FAST.transient_attempts
    assert any("giving up on this endpoint" in line for line in lines)
    # HF_TOKEN is the hub's credential: it goes to the first endpoint only, never to a mirror.
    assert mirror.log and all(r["auth"] is None for r in mirror.log)


def test_an_endpoint_trickling_under_the_floor_is_given_up_for_the_mirror(hub, mirror, manifest,
                                                                          tmp_path):
    """A body slower than the floor (here 200 kB per 0.5 s against 20 kB/s served) is dropped as
    an attempt without progress: after the retry budget the mirror gets the file, resuming from
    the bytes the slow one brought (same ETag), instead of the download waiting for ever."""
    hub.rate = 20_000
    policy = dataclasses.replace(FAST, transient_attempts=2, low_speed_bytes=200_000,
                                 low_speed_window=0.5)
    lines: list[str] = []
    fetch(tmp_path / "m", manifest, hub, mirror, lines=lines, policy=policy)
    assert_verified(tmp_path / "m", manifest)
    slow = [line for line in lines if BIG in line and "under the floor of 200000" in line]
    assert len(slow) == 2 and "retrying" in slow[0] and "giving up on this endpoint" in slow[1]
    gets = [r for r in mirror.requests_for(BIG, "GET") if r["path"].startswith("/cdn/")]
    kept = int(gets[0]["range"].removeprefix("bytes=").removesuffix("-"))
    assert len(gets) == 1 and 0 < kept <= hub.bytes_served[BIG]  # (the rest sat in socket buffers)
    assert mirror.bytes_served[BIG] == manifest.entry(BIG).size - kept


def test_an_endpoint_that_never_answers_a_connect_is_skipped_after_one_file(
        hub, manifest, tmp_path, monkeypatch):
    """A blackholed primary (SYNs dropped: a listening socket whose accept queue is full) times
    out on connect. That is unreachable, like a refused connection: retried for the first file,
    then skipped, not retried for every file (a minute each at the default timeouts)."""
    import socket

    from verify import endpoint as endpoint_module

    monkeypatch.setattr(endpoint_module, "CONNECT_TIMEOUT", 0.3)
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    fillers = []
    for _ in range(4):  # fill the accept queue; later SYNs are dropped
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(hole.getsockname())
        fillers.append(filler)
    lines: list[str] = []
    try:
        fetch(tmp_path / "m", manifest, f"http://127.0.0.1:{hole.getsockname()[1]}", hub, lines=lines)
    finally:
        for sock in (*fillers, hole):
            sock.close()
    assert_verified(tmp_path / "m", manifest)
    assert sum("giving up on this endpoint" in line for line in lines) == 1, lines
    assert any("connect timed out" in line for line in lines)


@pytest.mark.parametrize("location", ["ftp://cdn.example/blob", "http://[::1/blob",
                                      "http://127.0.0.1:99999/blob"])
def test_an_endpoint_redirecting_to_a_bad_url_falls_back_to_the_next(hub, manifest, tmp_path,
                                                                      location):
    """requests raises neither Timeout nor ConnectionError for a redirect to ftp://, and URL
    parsing raises ValueError for a broken IPv6 literal or a port out of range (with a token
    set, its origin is compared): each fails that endpoint only, and the next one serves."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Redirect(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    lines: list[str] = []
    try:
        fetch(tmp_path / "m", manifest, f"http://127.0.0.1:{server.server_port}", hub, lines=lines)
    finally:
        server.shutdown()
        server.server_close()
    assert_verified(tmp_path / "m", manifest)
    assert all(hub.body_gets[f.path] == 1 for f in manifest.files)
    assert any("trying the next endpoint" in line for line in lines), lines


def test_secrets_never_reach_a_log_line(hub, manifest, tmp_path):
    """A token with a trailing newline (read from a secret file) makes requests refuse the header
    and quote it in its error; a mirror URL may carry user:password. Neither is printed."""
    lines: list[str] = []
    with pytest.raises(DownloadError) as failed:
        ensure_model(tmp_path / "a", manifest, [hub.url], token=TOKEN + "\n", log=lines.append,
                     policy=FAST)
    said = "\n".join(lines) + str(failed.value)
    assert "InvalidHeader" in said and "Bearer ***" in said, said  # the error is still told
    assert TOKEN not in said
    lines.clear()
    with_password = hub.url.replace("http://", "http://mirror-user:S3CRET-pw@")
    fetch(tmp_path / "b", manifest, with_password, lines=lines)
    assert_verified(tmp_path / "b", manifest)
    assert lines and not any("S3CRET-pw" in line for line in lines), lines
    assert any("http://***@127.0.0.1" in line for line in lines), lines
    from bge_m3.redaction import scrub  # urllib3 takes the host after the last @, so must this

    assert scrub("https://user:p@ss@mirror.internal/x y//a@b") == "https://***@mirror.internal/x y//***@b"


def test_a_damaged_file_is_repaired_by_the_worker_gate_alone(hub, manifest, tiny_model, tmp_path,
                                                             caplog):
    """With auto-download on, the gate replaces a wrong file even when nothing is missing (it once
    downloaded only when some file was absent, so a lone damaged file refused the worker)."""
    from bge_m3.settings import Settings
    from worker import gate

    dest = tmp_path / "m"
    shutil.copytree(tiny_model.dir, dest)
    data = bytearray((dest / BIG).read_bytes())
    data[-100] ^= 0xFF
    (dest / BIG).write_bytes(bytes(data))
    settings = Settings.from_env({}, model_dir=dest, manifest=tiny_model.manifest,
                                 endpoints=(hub.url,), auto_download=True)
    with caplog.at_level("WARNING", logger="bge_m3.worker"):
        verified = gate.check(settings)
    assert verified.report.ok
    verified.release()
    # the tiny manifest's revision is a name, not a commit: said, as downloads follow it
    assert any("is not a commit id" in r.getMessage() for r in caplog.records)
    assert_verified(dest, manifest)
    assert {p for p, n in hub.body_gets.items() if n} == {BIG}
    with pytest.raises(gate.GateRefused):  # off: the same damage refuses, as before
        data = bytearray((dest / BIG).read_bytes())
        data[-100] ^= 0xFF
        (dest / BIG).write_bytes(bytes(data))
        gate.check(settings.replace(auto_download=False))


def test_wrong_linked_etag_skips_that_endpoint_for_that_file(hub, mirror, manifest, tmp_path):
    hub.fault("wrong_etag", path=BIG, on="head")
    lines: list[str] = []
    fetch(tmp_path / "m", manifest, hub, mirror, lines=lines)
    assert_verified(tmp_path / "m", manifest)
    assert hub.body_gets[BIG] == 0 and mirror.body_gets[BIG] == 1
    assert sum(mirror.body_gets.values()) == 1  # every other file came from the primary
    assert any("serves sha256 ffff" in line for line in lines)


def test_every_endpoint_failing_is_one_readable_error(hub, mirror, manifest, tmp_path):
    hub.fault("wrong_size", path=BIG, on="head")
    mirror.fault("status", path=BIG, code=503, times=None)
    dead = "http://127.0.0.1:9"
    with pytest.raises(DownloadError) as info:
        fetch(tmp_path / "m", manifest, hub, mirror, dead)
    message = str(info.value)
    assert f"{BIG}: {hub.url} -> HEAD: serves" in message
    assert f"{mirror.url} -> gave up after {FAST.transient_attempts} attempts (last: GET: HTTP 503)" \
        in message
    assert f"{dead} -> gave up" in message and "Connection refused" in message
    assert TOKEN not in message
    assert not (tmp_path / "m" / BIG).exists()
    others = [f for f in manifest.files if f.path != BIG]
    assert all(file_sha256(tmp_path / "m" / f.path) == f.sha256 for f in others)


def test_bad_files_on_disk_are_replaced_and_only_they_fetched(hub, manifest, tiny_model, tmp_path):
    dest = tmp_path / "m"
    shutil.copytree(tiny_model.dir, dest)
    outside = tmp_path / "outside.pt"
    outside.write_bytes(b"not yours")
    data = bytearray((dest / BIG).read_bytes())
    data[1000] ^= 0x01
    (dest / BIG).write_bytes(bytes(data))                       # one bit flipped
    tok = (dest / "tokenizer.json").read_bytes()
    (dest / "tokenizer.json").write_bytes(tok[: len(tok) // 2])  # truncated
    (dest / "config.json").unlink()                             # missing
    (dest / "colbert_linear.pt").unlink()
    os.symlink(outside, dest / "colbert_linear.pt")             # symlink out of the folder
    fetch(dest, manifest, hub)
    assert_verified(dest, manifest)
    fetched = {p for p, n in hub.body_gets.items() if n}
    assert fetched == {BIG, "tokenizer.json", "config.json", "colbert_linear.pt"}
    assert not (dest / "colbert_linear.pt").is_symlink()
    assert outside.read_bytes() == b"not yours"


def test_partial_from_another_endpoint_is_spliced_only_on_same_etag(hub, manifest, tiny_model,
                                                                     tmp_path):
    entry = manifest.entry(BIG)
    head = (tiny_model.dir / BIG).read_bytes()[:300_000]
    for etag, expect_range in ((None, None), (entry.sha256, "bytes=300000-")):
        dest = tmp_path / f"m-{etag is None}"
        shutil.copytree(tiny_model.dir, dest)
        (dest / BIG).unlink()
        part = Partial(dest / BIG)
        part.path.write_bytes(head)
        part.write_sidecar("http://some-other-mirror", etag, len(head), entry)
        hub.clear()
        fetch(dest, manifest, hub)
        assert_verified(dest, manifest)
        cdn = [r for r in hub.requests_for(BIG, "GET") if r["path"].startswith("/cdn/")]
        assert [r["range"] for r in cdn] == [expect_range]


def _env(dest: Path, manifest_path: Path, *endpoints: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BGE_M3_", "HF_"))}
    env.update(BGE_M3_MODEL_DIR=str(dest), BGE_M3_MANIFEST=str(manifest_path),
               BGE_M3_ENDPOINTS=",".join(endpoints), HF_TOKEN=TOKEN, PYTHONUNBUFFERED="1",
               HF_HOME=str(dest.parent / "hf-home"))
    return env


def test_ctrl_c_stops_a_download_with_one_line_and_keeps_the_partial_file(hub, manifest, tiny_model,
                                                                         tmp_path):
    dest = tmp_path / "m"
    hub.rate = 150_000
    part = Partial(dest / BIG)
    proc = subprocess.Popen([BGE_M3, "download"], env=_env(dest, tiny_model.manifest, hub.url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: part.path.exists() and part.path.stat().st_size >= 200_000, 60,
                 what="partial download")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGINT, err  # ended by the signal, as a shell loop expects
    assert err.splitlines()[-1] == "bge-m3 download: interrupted" and "Traceback" not in err, err
    assert part.path.stat().st_size >= 200_000 and part.sidecar.exists()


def test_killed_download_resumes_in_the_next_process(hub, manifest, tiny_model, tmp_path):
    dest = tmp_path / "m"
    env = _env(dest, tiny_model.manifest, hub.url)
    hub.rate = 150_000  # bytes/s: slow enough to kill mid-file
    part = Partial(dest / BIG)
    proc = subprocess.Popen([BGE_M3, "download"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: part.path.exists() and part.path.stat().st_size >= 200_000, 60,
                 what="partial download")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    kept = part.path.stat().st_size
    side = json.loads(part.sidecar.read_text())
    assert side["endpoint"] == hub.url and side["etag"] == manifest.entry(BIG).sha256
    assert 0 < kept < manifest.entry(BIG).size and not (dest / BIG).exists()
    hub.rate = None
    wait_for(lambda: hub.sending == 0, 30, what="the killed client's response to end")
    hub.clear()
    rerun = subprocess.run([BGE_M3, "download"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == EXIT_OK, rerun.stderr
    assert_verified(dest, manifest)
    assert hub.bytes_served[BIG] == manifest.entry(BIG).size - kept
    assert f"resumed at byte {kept}" in rerun.stderr
    assert TOKEN not in rerun.stderr + rerun.stdout
    assert not (tmp_path / "hf-home").exists()  # the global hub cache is never touched


def test_two_concurrent_downloads_fetch_each_file_once(hub, manifest, tiny_model, tmp_path):
    dest = tmp_path / "m"
    env = _env(dest, tiny_model.manifest, hub.url)
    hub.rate = 150_000  # ~10 s in all: the second run starts (Python, imports) while the first downloads, on a loaded box too

    def start():
        return subprocess.Popen([BGE_M3, "download"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    first = start()
    wait_for(lambda: sum(hub.bytes_served.values()) > 0, 60, what="the first run downloading")
    second = start()
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [EXIT_OK, EXIT_OK], outs
    assert all(hub.body_gets[f.path] == 1 for f in manifest.files)
    # The second run found the lock held, waited, then found every file verified.
    assert "another process holds the download lock; waiting" in outs[1][1], outs[1][1]
    assert "nothing to download" in outs[1][1] and "nothing to download" not in outs[0][1]
    assert_verified(dest, manifest)


def test_cli_reports_failure_with_exit_code(hub, manifest, tiny_model, tmp_path):
    dest = tmp_path / "m"
    wrong = f"{hub.url}/not-a-hub"  # every file answers 404: fails at once, no backoff
    run = subprocess.run([BGE_M3, "download"], env=_env(dest, tiny_model.manifest, wrong),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == EXIT_DOWNLOAD
    assert f"could not fetch {len(manifest.files)} file(s)" in run.stderr
    assert f"{wrong} -> HEAD: HTTP 404" in run.stderr
    assert "no endpoint left to try" in run.stderr and "trying the next endpoint" not in run.stderr
    assert [p.name for p in dest.iterdir() if not p.name.startswith(".")] == []


def test_cli_tells_a_local_disk_failure_from_a_remote_one(hub, manifest, tiny_model, tmp_path):
    """Exit 1 when the folder cannot be written (here its parent is a file), 5 only when the
    endpoints could not bring it to a verified state."""
    from verify.commands import EXIT_FAILED

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run = subprocess.run([BGE_M3, "download"], env=_env(blocker / "m", tiny_model.manifest, hub.url),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == EXIT_FAILED, run.stderr
    assert "cannot write there" in run.stderr and not hub.log


def test_manifest_from_hub_matches_the_files(hub, manifest, tiny_model, tmp_path):
    env = _env(tmp_path / "unused", tiny_model.manifest, hub.url)
    env.pop("TRANSFORMERS_OFFLINE", None)  # huggingface_hub reads it as HF_HUB_OFFLINE too
    out = tmp_path / "hub.json"
    run = subprocess.run([BGE_M3, "manifest", "--from-hub", f"{manifest.repo_id}@{manifest.revision}",
                          "-o", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    built = load_manifest(out)
    assert built.revision == COMMIT
    assert {(f.path, f.size, f.sha256) for f in built.files} == \
        {(f.path, f.size, f.sha256) for f in manifest.files}
    small = [f.path for f in manifest.files if f.size < hub.lfs_threshold]
    assert small and all(hub.body_gets[p] == 1 for p in small)  # hashed: no sha256 in the API
    assert all(hub.body_gets[f.path] == 0 for f in manifest.files if f.path not in small)


def _from_hub(manifest, env, out):
    return subprocess.run([BGE_M3, "manifest", "--from-hub", f"{manifest.repo_id}@{manifest.revision}",
                           "-o", str(out)], env=env, capture_output=True, text=True, timeout=120)


def test_manifest_from_hub_never_pins_damaged_bytes(hub, manifest, tiny_model, tmp_path):
    """A plain git file's bytes are checked against the git blob id the hub lists: bytes damaged
    on the way are asked for again, and if they stay damaged nothing is written (they were
    pinned as the model's, and every later download held to them). A 503 or a cut body is
    asked again too, not a traceback."""
    env = _env(tmp_path / "unused", tiny_model.manifest, hub.url)
    env.pop("TRANSFORMERS_OFFLINE", None)
    small = "config.json"
    assert manifest.entry(small).size < hub.lfs_threshold
    out = tmp_path / "hub.json"
    hub.fault("corrupt", path=small, times=None)
    run = _from_hub(manifest, env, out)
    assert run.returncode == 1 and not out.exists(), run.stderr
    assert f"{small}: git blob sha1 mismatch: the hub lists " in run.stderr, run.stderr
    assert "(3 attempts)" in run.stderr and "Traceback" not in run.stderr
    assert hub.body_gets[small] == 3

    for faults in ([("status", {"code": 503}), ("corrupt", {})], [("cut", {"after": 100})]):
        hub.clear()
        for kind, params in faults:  # one fault a request, as the fake takes them
            hub.fault(kind, path=small, **params)
        run = _from_hub(manifest, env, out)
        assert run.returncode == 0, run.stderr
        assert load_manifest(out).entry(small).sha256 == manifest.entry(small).sha256
        statuses = [r["status"] for r in hub.requests_for(small, "GET")]
        assert statuses == ([503, 200, 200] if len(faults) == 2 else [200, 200]), (faults, statuses)


def _log_api_auth(server: FakeHub) -> list[str | None]:
    """The Authorization header of each ``model_info`` call (the fake logs only file requests)."""
    seen: list[str | None] = []

    class Logging(server.server.RequestHandlerClass):
        def _model_info(self, path: str) -> None:
            seen.append(self.headers.get("Authorization"))
            super()._model_info(path)

    server.server.RequestHandlerClass = Logging
    return seen


def test_manifest_from_hub_sends_the_token_to_the_first_endpoint_only(hub, mirror, manifest,
                                                                       tiny_model, tmp_path):
    """``--endpoint`` may name any URL: HF_TOKEN goes there only when it is the origin of the
    first of BGE_M3_ENDPOINTS, as for downloads, and never to a mirror (HfApi and hashing)."""
    env = _env(tmp_path / "unused", tiny_model.manifest, hub.url, mirror.url)
    env.pop("TRANSFORMERS_OFFLINE", None)
    hub_api, mirror_api = _log_api_auth(hub), _log_api_auth(mirror)

    def build(endpoint: str) -> None:
        run = subprocess.run([BGE_M3, "manifest", "--from-hub",
                              f"{manifest.repo_id}@{manifest.revision}", "--endpoint", endpoint,
                              "-o", str(tmp_path / "hub.json")],
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr

    build(mirror.url)
    assert mirror_api == [None] and mirror.log and all(r["auth"] is None for r in mirror.log)
    build(hub.url + "/")  # the same origin, however written, does get it
    assert hub_api == [f"Bearer {TOKEN}"] and hub.log
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in hub.log)


def _nested_hub(tmp_path) -> tuple[FakeHub, Manifest]:
    from verify.manifest import build_manifest

    src = tmp_path / "src"
    (src / "1_Pooling").mkdir(parents=True)
    (src / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    (src / "weights.bin").write_bytes(os.urandom(50_000))
    nested = build_manifest(src, repo_id="org/nested", revision="main")
    return FakeHub(src, nested.repo_id), nested


def test_nested_paths_download(tmp_path):
    hub, nested = _nested_hub(tmp_path)
    try:
        fetch(tmp_path / "m", nested, hub)
        assert_verified(tmp_path / "m", nested)
    finally:
        hub.stop()


def test_a_subfolder_symlinked_out_of_the_model_is_never_written(tmp_path):
    hub, nested = _nested_hub(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("someone else's file")  # a wrong file, to the manifest
    dest = tmp_path / "m"
    dest.mkdir()
    os.symlink(outside, dest / "1_Pooling")
    try:
        with pytest.raises(DownloadError, match="1_Pooling/config.json: its folder leads outside"):
            fetch(dest, nested, hub)
    finally:
        hub.stop()
    # Neither deleted as a bad file nor overwritten: it is outside the model folder.
    assert [p.name for p in outside.iterdir()] == ["config.json"]
    assert (outside / "config.json").read_text() == "someone else's file"
    assert hub.body_gets["1_Pooling/config.json"] == 0
    assert file_sha256(dest / "weights.bin") == nested.entry("weights.bin").sha256


def test_unwritable_folder_is_verified_without_the_lock(manifest, tiny_model, tmp_path):
    from verify.download import LOCK_NAME

    dest = tmp_path / "ro"
    shutil.copytree(tiny_model.dir, dest)
    (dest / LOCK_NAME).mkdir()  # the lock file cannot be created, even by root
    assert fetch(dest, manifest, "http://127.0.0.1:9").ok
    (dest / "config.json").unlink()
    with pytest.raises(DownloadError, match="cannot write there"):
        fetch(dest, manifest, "http://127.0.0.1:9")
