"""The start-up gate: a worker whose model folder fails verification exits non-zero and consumes
nothing; the job it could have taken stays queued and a healthy worker serves it afterwards."""
from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from bge_m3.queue import QUEUE_NAME
from tests.support import BIN, settings_on_db, spawn_worker, worker_env
from tests.worker_support import Queue

REFUSED = 3  # worker.gate.EXIT_REFUSED
NO_DEVICE = 7  # worker.signals.EXIT_NO_DEVICE
ROOT = Path(__file__).resolve().parent.parent


def _copy_model(tiny_model, dest: Path) -> Path:
    shutil.copytree(tiny_model.dir, dest)
    return dest


def _tamper(folder: Path) -> str:
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # same size, different SHA-256
    path.write_bytes(bytes(data))
    return "model.safetensors"


def _truncate(folder: Path) -> str:
    path = folder / "colbert_linear.pt"
    path.write_bytes(path.read_bytes()[:-64])
    return "colbert_linear.pt"


def _remove_sparse(folder: Path) -> str:
    (folder / "sparse_linear.pt").unlink()
    return "sparse_linear.pt"


def _start_celery_cli(settings, log_path: Path, hostname: str) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen([str(BIN / "celery"), "-A", "worker", "worker", "--hostname", hostname,
                                 "--without-mingle", "--without-gossip"], env=worker_env(settings),
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def test_bad_folders_refuse_and_the_job_waits_for_a_healthy_worker(tiny_model, base_settings,
                                                                   redis_server, tmp_path):
    """Tampered, truncated, missing sparse head: each `bge-m3 worker` exits non-zero without taking
    the queued job; then a healthy worker (started as `celery -A worker worker`) serves it."""
    settings = settings_on_db(base_settings, redis_server, "gate")
    queue = Queue(settings)
    job_id = queue.submit(["hello world"], ("dense", "sparse"))
    for damage, reason in ((_tamper, "HASH"), (_truncate, "SIZE"), (_remove_sparse, "MISSING")):
        bad_dir = _copy_model(tiny_model, tmp_path / f"model-{reason}")
        name = damage(bad_dir)
        bad = spawn_worker(settings.replace(model_dir=bad_dir), tmp_path, wait=False)
        assert bad.proc.wait(60) == REFUSED, bad.output()[-2000:]
        log = bad.output()
        assert reason in log and name in log and "Refusing to start" in log
        assert f"({name}); `bge-m3 download` fetches what is missing" in log  # auto-download off here
        assert not bad.ready()
        assert queue.store.get(job_id).status == "queued"
        assert queue.redis.llen(QUEUE_NAME) == 1  # the message was never taken

    hostname = f"cli-{uuid.uuid4().hex[:8]}@localhost"
    proc = _start_celery_cli(settings, tmp_path / "celery.log", hostname)
    try:
        job = queue.wait(job_id, 90)
        assert job is not None and job.status == "succeeded", (tmp_path / "celery.log").read_text()[-3000:]
        assert job.attempts == 1 and job.stats["forward_passes"] == 1
        assert queue.store.result(job_id)["items"][0]["sparse"]["indices"]
        info = json.loads(queue.redis.get("bge-m3:worker:" + hostname))
        assert info["hostname"] == hostname and info["dimension"] == 32 and info["device"] == "cpu"
    finally:
        proc.terminate()
        proc.wait(30)
        queue.close()
    assert proc.returncode == 0
    assert queue.redis.get("bge-m3:worker:" + hostname) is None  # withdrawn on shutdown


def test_manifest_without_sparse_head_is_refused(tiny_model, base_settings, redis_server, tmp_path):
    """FlagEmbedding would run with a random sparse head; a manifest that does not pin it is refused."""
    data = json.loads(tiny_model.manifest.read_text())
    data["files"] = [f for f in data["files"] if f["path"] != "sparse_linear.pt"]
    manifest = tmp_path / "no-sparse.manifest.json"
    manifest.write_text(json.dumps(data))
    settings = settings_on_db(base_settings, redis_server, "gate", manifest=manifest)
    bad = spawn_worker(settings, tmp_path, wait=False)
    assert bad.proc.wait(60) == REFUSED
    assert "sparse_linear.pt" in bad.output() and "does not pin" in bad.output()


def test_celery_cli_runs_the_same_gate(tiny_model, base_settings, redis_server, tmp_path):
    """`celery -A worker worker`: Celery swallows Exceptions from worker_init, so the gate must not
    rely on one. The refused worker exits non-zero and the queued job is untouched."""
    settings = settings_on_db(base_settings, redis_server, "gate")
    queue = Queue(settings)
    job_id = queue.submit(["queued before a bad worker"])
    bad_dir = _copy_model(tiny_model, tmp_path / "model")
    _tamper(bad_dir)
    env = worker_env(settings.replace(model_dir=bad_dir))
    hostname = f"cli-{uuid.uuid4().hex[:8]}@localhost"
    proc = subprocess.run([str(BIN / "celery"), "-A", "worker", "worker", "--hostname", hostname,
                           "--loglevel", "INFO"], env=env, capture_output=True, text=True, timeout=90,
                          cwd=ROOT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == REFUSED, output[-3000:]
    assert "HASH" in output and "model.safetensors" in output
    assert queue.store.get(job_id).status == "queued"
    assert queue.redis.llen(QUEUE_NAME) == 1
    queue.close()


def test_a_forking_pool_is_refused_before_the_model_loads(base_settings, redis_server):
    """prefork would fork the process that owns the batcher thread and (on a GPU) CUDA: the
    worker exits 5 before loading anything, and a queued job stays queued. ``processes`` is
    prefork's other name: Celery's CLI reads a literal ``--pool prefork`` as "the default" and
    runs the configured threads pool instead, so that spelling cannot fork anyway."""
    settings = settings_on_db(base_settings, redis_server, "gate")
    queue = Queue(settings)
    job_id = queue.submit(["queued before a prefork worker"])
    hostname = f"prefork-{uuid.uuid4().hex[:8]}@localhost"
    proc = subprocess.run([str(BIN / "celery"), "-A", "worker", "worker", "--hostname", hostname,
                           "--pool", "processes", "--loglevel", "INFO"], env=worker_env(settings),
                          capture_output=True, text=True, timeout=90, cwd=ROOT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 5, output[-3000:]
    assert "would fork the model" in output and "Model loaded" not in output
    assert queue.store.get(job_id).status == "queued" and queue.redis.llen(QUEUE_NAME) == 1
    queue.close()


def test_a_missing_device_refuses_before_the_folder_is_hashed(tiny_model, base_settings,
                                                             redis_server, tmp_path):
    """A worker asked for a GPU it cannot see (compose's `cuda` default on a host whose driver is
    too old) exits 7 at once: a tampered folder is not even reached (that would be exit 3), so a
    restart loop never re-hashes the model. ``cuda:99`` is past the last GPU on any machine."""
    settings = settings_on_db(base_settings, redis_server, "gate", device="cuda:99")
    queue = Queue(settings)
    job_id = queue.submit(["queued before a worker without its GPU"])
    bad_dir = _copy_model(tiny_model, tmp_path / "model")
    _tamper(bad_dir)
    bad = spawn_worker(settings.replace(model_dir=bad_dir), tmp_path, wait=False)
    assert bad.proc.wait(60) == NO_DEVICE, bad.output()[-2000:]
    log = bad.output()
    assert "Refusing to start: BGE_M3_DEVICE=cuda:99" in log
    assert "HASH" not in log and "Verified" not in log and "Model loaded" not in log
    assert queue.store.get(job_id).status == "queued" and queue.redis.llen(QUEUE_NAME) == 1
    queue.close()


def test_the_loaded_files_are_the_hashed_ones_whatever_is_renamed_over_them(tiny_model, tmp_path):
    """The gate keeps each verified file open and the model is read through those descriptors:
    a file renamed over a verified one between the hash and the load (a download with another
    manifest on a shared volume) is not what gets loaded. Every real worker start in these tests
    loads through such a view too."""
    import os

    from bge_m3.settings import Settings
    from verify.hashes import file_sha256
    from verify.manifest import load_manifest
    from worker import gate
    from worker.model import verified_view

    folder = _copy_model(tiny_model, tmp_path / "model")
    manifest = load_manifest(tiny_model.manifest)
    verified = gate.check(Settings.from_env({}, model_dir=folder, manifest=tiny_model.manifest,
                                            auto_download=False))
    try:
        assert set(verified.handles) == {f.path for f in manifest.files}
        for entry in manifest.files:  # every pinned file swapped after it was hashed
            swap = folder / f".swap-{entry.path.replace('/', '_')}"
            swap.write_bytes(b"\0" * entry.size)
            os.replace(swap, folder / entry.path)
        view = verified_view(folder, [f.path for f in manifest.files], verified.handles)
        for entry in manifest.files:
            assert file_sha256(view / entry.path) == entry.sha256, entry.path
            assert file_sha256(folder / entry.path) != entry.sha256  # the path holds the swap
    finally:
        verified.release()
    assert verified.handles == {}


def test_a_manifest_repinning_the_packaged_repo_is_logged(tmp_path, caplog):
    """BGE_M3_MANIFEST may replace the packaged pin (an upgrade), but never silently when it names
    the same repository: edited hashes would verify edited files."""
    from bge_m3.settings import PACKAGED_MANIFEST
    from verify.manifest import load_manifest
    from worker import gate

    def warnings(manifest) -> list[str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="bge_m3.worker"):
            gate._warn_if_repinned(manifest)
        return [r.getMessage() for r in caplog.records]

    packaged = load_manifest(PACKAGED_MANIFEST)
    assert warnings(packaged) == []
    data = json.loads(PACKAGED_MANIFEST.read_text())
    data["files"][0]["sha256"] = "0" * 64
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    (line,) = warnings(load_manifest(edited))
    assert "not the packaged pin" in line and load_manifest(edited).digest()[:12] in line
    data["repo_id"] = "someone/else"
    edited.write_text(json.dumps(data))
    assert warnings(load_manifest(edited)) == []


def test_a_failed_download_refuses_naming_the_folder_as_it_is_now(tiny_model, tmp_path, caplog):
    """A download that fails part-way has still changed the folder: here the damaged weights were
    deleted (their fetch then failed) and the missing config fetched. The refusal names what is on
    disk after the download, not the report from before it (a HASH line for a deleted file)."""
    from bge_m3.settings import Settings
    from tests.fakehub import FakeHub
    from verify.manifest import load_manifest
    from worker import gate

    manifest = load_manifest(tiny_model.manifest)
    folder = _copy_model(tiny_model, tmp_path / "model")
    weights = _tamper(folder)
    (folder / "config.json").unlink()
    hub = FakeHub(tiny_model.dir, manifest.repo_id, revision=manifest.revision)
    hub.fault("status", path=weights, times=None, on="any", code=404)
    settings = Settings.from_env({}, model_dir=folder, manifest=tiny_model.manifest,
                                 endpoints=(hub.url,), auto_download=True)
    try:
        with caplog.at_level("ERROR", logger="bge_m3.worker"), \
                pytest.raises(gate.GateRefused) as refused:
            gate.check(settings)
    finally:
        hub.stop()
    said = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("download failed: could not fetch 1 file(s)") for line in said)
    assert [line for line in said if line.startswith("Verification failed")] == \
        [f"Verification failed: MISSING  {weights}"]
    assert str(refused.value).endswith(f"({weights}); the download above failed; see its lines")
    assert (folder / "config.json").is_file() and not (folder / weights).exists()


def test_an_unreadable_file_refuses_with_its_line(tiny_model, tmp_path, caplog, monkeypatch):
    """A file that cannot be opened (EACCES; tests run as root, so the open is made to fail) is a
    failed file like any other: one log line naming it and the error, then the refusal."""
    import errno
    import os

    import verify.verifier as verifier
    from bge_m3.settings import Settings
    from worker import gate

    folder = _copy_model(tiny_model, tmp_path / "model")
    real_open = os.open

    def open_denied(path, flags, *args):
        if os.path.basename(path) == "sparse_linear.pt":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(verifier.os, "open", open_denied)
    settings = Settings.from_env({}, model_dir=folder, manifest=tiny_model.manifest,
                                 auto_download=False)
    with caplog.at_level("ERROR", logger="bge_m3.worker"), \
            pytest.raises(gate.GateRefused, match=r"\(sparse_linear\.pt\); make each file its line "
                                                  r"names readable by this user$"):
        gate.check(settings)
    assert [r.getMessage() for r in caplog.records] == [
        "Verification failed: UNREADABLE sparse_linear.pt: cannot be read: "
        "Permission denied (EACCES)"]
