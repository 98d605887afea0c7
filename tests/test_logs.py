"""``BGE_M3_LOG_JSON``: a real worker's and a real API's whole output is JSON lines, their
libraries' lines included (Celery's start-up banner, its warning when run as root, its shutdown
line from a signal handler; gunicorn's error and access lines)."""
from __future__ import annotations

import json
import os
import signal

from tests.stack_support import start_api
from tests.support import settings_on_db, spawn_worker
from tests.worker_support import Queue


def _records(output: str) -> list[dict]:
    """Every non-blank line of ``output`` as a JSON log record; fails on the first that is not."""
    records = []
    for line in output.splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}\n{output[-3000:]}") from None
    assert records and all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    return records


def test_json_logs_are_json_from_start_to_warm_shutdown(tiny_model, base_settings, redis_server,
                                                         tmp_path):
    settings = settings_on_db(base_settings, redis_server, "gate", log_json=True)
    worker = spawn_worker(settings, tmp_path, BGE_M3_LOG_LEVEL="DEBUG")  # stdout and stderr both
    queue = Queue(settings)
    try:
        job_id = queue.submit(["one", "two"], ("dense", "sparse"))
        assert queue.wait(job_id).status == "succeeded"
    finally:
        queue.close()
        assert worker.stop(signal.SIGTERM) == 0
    messages = [r["message"] for r in _records(worker.output())]
    for wanted in ("Model loaded: ", "Device: cpu", "Batch: 2 texts", "Ready: ",
                   "worker: Warm shutdown (MainProcess)", "stopped"):
        assert any(wanted in m for m in messages), (wanted, messages)
    assert not any("[queues]" in m or "-------" in m for m in messages)  # no banner
    if os.geteuid() == 0:  # Celery warns a root worker; the warning is a record too
        assert any("SecurityWarning" in m for m in messages)


def test_the_api_logs_json_lines_gunicorn_and_access_lines_included(base_settings, tmp_path):
    api = start_api(base_settings.replace(log_json=True), tmp_path, threads=2, access_log=True)
    try:
        with api.client() as client:
            assert client.get("/healthz").status_code == 200
            assert client.post("/v1/embeddings", content=b"{", headers={
                "content-type": "application/json"}).status_code == 400
    finally:
        api.stop()
    records = _records(api.output())
    loggers = {r["logger"] for r in records}
    assert {"gunicorn.error", "gunicorn.access"} <= loggers, loggers
    access = [r["message"] for r in records if r["logger"] == "gunicorn.access"]
    assert any('"GET /healthz HTTP/1.1" 200' in m for m in access), access
    assert any('"POST /v1/embeddings HTTP/1.1" 400' in m for m in access), access
    assert any("Booting worker" in r["message"] for r in records)
