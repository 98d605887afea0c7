"""The start-up gate: a worker whose model folder fails verification exits non-zero and consumes
nothing; the job it could have taken stays queued and a healthy worker serves it afterwards."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bge_m3.queue import QUEUE_NAME
from tests.support import BIN, spawn_worker, worker_env
from tests.worker_support import Queue, settings_on_db

REFUSED = 3  # worker.gate.EXIT_REFUSED


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


@pytest.mark.parametrize("damage, reason", [(_tamper, "HASH"), (_truncate, "SIZE"),
                                            (_remove_sparse, "MISSING")])
def test_bad_folder_refuses_and_job_waits_for_healthy_worker(damage, reason, tiny_model, base_settings,
                                                            redis_server, tmp_path):
    settings = settings_on_db(base_settings, redis_server, "gate")
    queue = Queue(settings)
    job_id = queue.submit(["hello world"], ("dense", "sparse"))
    bad_dir = _copy_model(tiny_model, tmp_path / "model")
    name = damage(bad_dir)

    bad = spawn_worker(settings.replace(model_dir=bad_dir), tmp_path, wait=False)
    assert bad.proc.wait(60) == REFUSED
    log = bad.output()
    assert f"{reason}" in log and name in log and "Refusing to start" in log
    assert not bad.ready()
    assert queue.store.get(job_id).status == "queued"
    assert queue.redis.llen(QUEUE_NAME) == 1  # the message was never taken

    good = spawn_worker(settings, tmp_path)
    try:
        job = queue.wait(job_id, 60)
        assert job.status == "succeeded", job.error
        assert job.attempts == 1
        assert queue.store.result(job_id)["items"][0]["sparse"]["indices"]
    finally:
        good.stop()
        queue.close()


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
                          cwd=Path(__file__).resolve().parent.parent)
    output = proc.stdout + proc.stderr
    assert proc.returncode == REFUSED, output[-3000:]
    assert "HASH" in output and "model.safetensors" in output
    assert queue.store.get(job_id).status == "queued"
    assert queue.redis.llen(QUEUE_NAME) == 1
    queue.close()


def test_celery_cli_serves_when_verified(base_settings, redis_server, tmp_path):
    """The positive half: the same entry point with a good folder announces itself and serves."""
    settings = settings_on_db(base_settings, redis_server, "gate")
    queue = Queue(settings)
    job_id = queue.submit(["served by celery -A worker worker"], ("colbert",))
    hostname = f"cli-{uuid.uuid4().hex[:8]}@localhost"
    log = open(tmp_path / "celery.log", "wb")
    proc = subprocess.Popen([str(BIN / "celery"), "-A", "worker", "worker", "--hostname", hostname,
                             "--without-mingle", "--without-gossip"], env=worker_env(settings),
                            stdout=log, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        job = queue.wait(job_id, 90)
        assert job is not None and job.status == "succeeded", (tmp_path / "celery.log").read_text()[-3000:]
        assert job.stats["forward_passes"] == 1
        ready = queue.redis.get("bge-m3:worker:" + hostname)
        info = json.loads(ready)
        assert info["hostname"] == hostname and info["dimension"] == 32 and info["device"] == "cpu"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        queue.close()
    assert queue.redis.get("bge-m3:worker:" + hostname) is None  # withdrawn on shutdown
