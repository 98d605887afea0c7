"""Operations routes, OpenAPI accuracy, outages (Redis down, broker down) and the torch-free import."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from api import create_app
from bge_m3.jobreader import CREATE_SLICE_SECONDS
from bge_m3.queue import QUEUE_NAME
from bge_m3.records import new_job_id
from tests.support import RedisServer, conforms, wait_for


def test_healthz_readyz_models(client, live_worker):
    doc = client.get("/openapi.json").get_json()
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "ok"}
    conforms(doc, "/healthz", "get", r)
    r = client.get("/readyz")
    assert r.status_code == 200 and r.get_json()["workers"] >= 1
    conforms(doc, "/readyz", "get", r)
    r = client.get("/v1/models")
    conforms(doc, "/v1/models", "get", r)
    workers = r.get_json()["workers"]
    mine = next(w for w in workers if w["hostname"] == live_worker.hostname)
    assert mine["device"] == "cpu" and mine["dimension"] == 32 and len(mine["manifest_digest"]) >= 32
    assert {"model", "revision"} <= set(mine)
    assert "bge-m3" in [m["id"] for m in r.get_json()["data"]]


def test_ready_workers_are_found_without_scanning_the_keyspace(redis_server):
    """/readyz, /metrics and /v1/models read the registry of hostnames and their records: a SCAN
    would walk every job's keys too (1.35 s at a million keys). Withdrawn and expired workers and
    draining ones do not count."""
    from bge_m3 import workers

    db = redis_server.client(1)
    db.flushdb()
    db.mset({f"bge-m3:job:{i:032x}": "x" for i in range(2000)})
    workers.announce(db, "a@h", {"hostname": "a@h"})
    workers.announce(db, "b@h", {"hostname": "b@h"})
    workers.announce(db, "c@h", {"hostname": "c@h", "accepting": False})
    workers.announce(db, "d@h", {"hostname": "d@h"}, ttl=1)
    workers.withdraw(db, "b@h")
    wait_for(lambda: not workers.is_announced(db, "d@h"), 5, what="d's record to expire")
    scans = _calls(db, "scan")
    assert [w["hostname"] for w in workers.ready_workers(db)] == ["a@h"]
    assert _calls(db, "scan") == scans
    assert db.zrange(workers.REGISTRY_KEY, 0, -1) == ["a@h", "c@h", "d@h"]
    db.flushdb()


def _calls(db, command: str) -> int:
    return int(db.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_every_answer_has_a_request_id_and_job_answers_name_their_job(client, base_settings,
                                                                      live_worker):
    """A usable X-Request-ID is echoed, anything else replaced by a fresh one; an answer that
    created, ran or read a job names it in X-Job-Id (the access log writes both)."""
    fresh = re.compile(r"[0-9a-f]{32}")
    assert client.get("/healthz", headers={"X-Request-ID": "trace-1.2:3"}).headers["X-Request-ID"] == "trace-1.2:3"
    for unusable in ("two words", "x" * 129, "é", 'quo"te'):
        echoed = client.get("/healthz", headers={"X-Request-ID": unusable}).headers["X-Request-ID"]
        assert fresh.fullmatch(echoed), unusable
    first, second = (client.get("/healthz").headers["X-Request-ID"] for _ in range(2))
    assert fresh.fullmatch(first) and first != second
    assert "X-Job-Id" not in client.get("/healthz").headers
    refused = create_app(base_settings.replace(api_keys=("k",))).test_client().post("/embed", json={})
    assert refused.status_code == 401 and fresh.fullmatch(refused.headers["X-Request-ID"])
    assert "X-Job-Id" not in refused.headers
    done = client.post("/embed", json={"texts": ["a"]}, headers={"X-Request-ID": "trace-worker-7"})
    assert done.status_code == 200
    said = f"Job {done.headers['X-Job-Id']} (request trace-worker-7): 1 texts"
    wait_for(lambda: said in live_worker.output(), 10, what="the worker's line naming the request")
    job = client.get(f"/v1/jobs/{done.headers['X-Job-Id']}")
    assert job.status_code == 200 and job.headers["X-Job-Id"] == job.get_json()["id"]
    created = client.post("/v1/jobs", json={"texts": ["b"]})
    assert created.headers["X-Job-Id"] == created.get_json()["id"]
    assert "X-Job-Id" not in client.get(f"/v1/jobs/{'0' * 32}").headers  # 404: no job named


def test_metrics(client, live_worker):
    client.post("/embed", json={"texts": ["hello"]})
    client.get("/v2/missing")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    text = r.get_data(as_text=True)
    assert 'bge_m3_http_requests_total{method="POST",route="/embed",status="200"} 1.0' in text
    assert 'route="<unmatched>",status="404"' in text
    for name in ("bge_m3_job_queue_seconds_count", "bge_m3_job_compute_seconds_count",
                 "bge_m3_job_total_seconds_count"):
        assert f"{name} 1.0" in text, name
    assert "bge_m3_queue_depth 0.0" in text
    ready = [line for line in text.splitlines() if line.startswith("bge_m3_ready_workers ")]
    assert ready and float(ready[0].split()[1]) >= 1

    # Each worker's own counts, read from its statistics hash at scrape time.
    from bge_m3.queue import redis_client
    from bge_m3.workers import STATS_PREFIX

    stats = redis_client(live_worker.settings.redis_dsn).hgetall(STATS_PREFIX + live_worker.hostname)
    worker = f'worker="{live_worker.hostname}"'
    assert f'bge_m3_worker_jobs_total{{outcome="succeeded",{worker}}} {float(stats["jobs"])}' in text
    assert f'bge_m3_worker_jobs_total{{outcome="failed",{worker}}} {float(stats.get("failed_jobs", 0))}' in text
    for field in ("texts", "tokens", "padded_tokens", "forward_passes"):
        assert int(stats[field]) >= 1 and f"bge_m3_worker_{field}_total{{{worker}}} {float(stats[field])}" in text


def test_metrics_sum_every_gunicorn_process(base_settings, live_worker, tmp_path):
    """With `bge-m3 api --workers 2` a scrape answered by either process counts the requests
    both served (prometheus_client's multiprocess files, in a folder made for this run and
    deleted when it stops): a per-process count would jump between scrapes."""
    import httpx

    from tests.stack_support import start_api

    # TMPDIR: where its metrics folder goes
    api = start_api(base_settings, tmp_path, threads=4, workers=2, TMPDIR=str(tmp_path))
    base = api.url
    try:
        (folder,) = tmp_path.glob("bge-m3-metrics-*")
        for _ in range(40):  # a new connection each: the kernel hands them to either process
            assert httpx.get(base + "/openapi.json", timeout=10).status_code == 200
        line = 'bge_m3_http_requests_total{method="GET",route="/openapi.json",status="200"} 40.0'
        for _ in range(6):
            text = httpx.get(base + "/metrics", timeout=10).text
            assert line in text, [l for l in text.splitlines() if "openapi" in l]
            assert text.count("\nbge_m3_ready_workers ") == 1  # the Redis gauges, once
        served = {path.name: _openapi_count(path) for path in folder.glob("counter_*.db")}
        assert len(served) == 2 and sum(served.values()) == 40, served  # one file per process
        # A worker that leaves (a graceful exit, a timeout) is replaced; the folder is the
        # master's alone to delete, and the counts of the one that left still add up.
        (first, second) = _children(api.proc.pid)
        os.kill(first, signal.SIGTERM)
        wait_for(lambda: len(_children(api.proc.pid)) == 2 and first not in _children(api.proc.pid),
                 30, what="gunicorn replacing its worker")
        assert folder.is_dir() and api.proc.poll() is None, api.output()[-2000:]
        for _ in range(4):
            assert line in httpx.get(base + "/metrics", timeout=10).text
    finally:
        api.stop()
    assert not folder.exists()


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _openapi_count(path: Path) -> float:
    """GETs of /openapi.json one process counted, read from its multiprocess file."""
    from prometheus_client.mmap_dict import MmapedDict

    return sum(value for key, value, *_ in MmapedDict.read_all_values_from_file(str(path))
               if "bge_m3_http_requests_total" in key and "/openapi.json" in key)


def test_openapi_describes_every_route(app, client, live_worker):
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    flask_routes = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
                    for rule in app.url_map.iter_rules() if rule.endpoint.split(".")[0] in
                    ("jobs", "sync", "ops") for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert flask_routes == documented
    for ops in doc["paths"].values():
        for op in ops.values():
            for status, response in op["responses"].items():
                if int(status) >= 400 and "content" in response:
                    assert "$ref" in response["content"]["application/json"]["schema"]
    # real answers fit the declared schemas, including errors, with the status each call must get
    def check(path: str, method: str, response, status: int) -> None:
        assert response.status_code == status, (path, method, response.status_code, response.get_data())
        conforms(doc, path, method, response)

    job = client.post("/v1/jobs", json={"texts": ["a", "b"], "modes": ["dense", "sparse", "colbert"]})
    check("/v1/jobs", "post", job, 202)
    job_id = job.get_json()["id"]
    done = client.get(f"/v1/jobs/{job_id}?wait=30")
    check("/v1/jobs/{job_id}", "get", done, 200)
    check("/v1/jobs/{job_id}", "delete", client.delete(f"/v1/jobs/{job_id}"), 409)
    check("/v1/jobs/{job_id}", "get", client.get(f"/v1/jobs/{'0' * 32}"), 404)
    for mode in ("dense", "all"):
        check("/embed", "post", client.post("/embed", json={"texts": ["a"], "mode": mode}), 200)
    check("/embed", "post", client.post("/embed", json={"texts": []}), 400)
    check("/v1/models/{model}", "get", client.get("/v1/models/bge-m3"), 200)
    check("/v1/models/{model}", "get", client.get("/v1/models/no/such-model"), 404)
    check("/v1/embeddings", "post", client.post("/v1/embeddings", json={"input": "a", "model": "bge-m3"}), 200)
    check("/v1/embeddings", "post", client.post("/v1/embeddings", json={"input": 3}), 400)
    check("/v1/score", "post", client.post("/v1/score", json={"query": "q", "documents": ["a"]}), 200)
    # What the sync routes can answer, and what they cannot: /v1/embeddings always truncates.
    sync = {path: doc["paths"][path]["post"]["responses"] for path in ("/embed", "/v1/embeddings", "/v1/score")}
    assert "422" not in sync["/v1/embeddings"] and "422" in sync["/embed"]
    for responses in sync.values():
        assert set(responses["504"]["headers"]) == {"Location", "x-should-retry"}
        assert "cancelled" in responses["409"]["description"]
    assert doc["paths"]["/v1/jobs/{job_id}"]["delete"]["responses"]["409"]["description"] == \
        "The job cannot be cancelled"


def test_openapi_loads_in_schemathesis(client):
    import schemathesis

    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").get_json())
    operations = [op.ok().label for op in schema.get_all_operations()]
    assert "POST /v1/jobs" in operations and "GET /v1/jobs/{job_id}" in operations


def test_redis_down_is_503_and_no_orphan(base_settings, tmp_path, caplog):
    server = RedisServer(tmp_path / "redis", appendonly=True)
    client = create_app(base_settings.replace(redis_url=server.url(0))).test_client()
    assert client.post("/v1/jobs", json={"texts": ["a"]}).status_code == 202
    server.wait_written()
    server.kill()
    for method, path, body in (("post", "/v1/jobs", {"texts": ["a"]}), ("post", "/embed", {"texts": ["a"]}),
                               ("get", f"/v1/jobs/{'0' * 32}", None)):
        r = getattr(client, method)(path, json=body)
        assert r.status_code == 503 and r.get_json()["error"]["code"] == "redis_unavailable", path
    warned = [r for r in caplog.records if r.getMessage().startswith("redis unavailable")]
    assert len(warned) <= 1  # once a while, not once a request (api.errors.REDIS_WARN_EVERY)
    r = client.get("/readyz")
    assert r.status_code == 503 and "Redis" in r.get_json()["error"]["message"]
    assert r.get_json()["redis"] is False and r.get_json()["workers"] == 0
    conforms(client.get("/openapi.json").get_json(), "/readyz", "get", r)
    assert client.get("/healthz").status_code == 200
    exposition = client.get("/metrics").get_data(as_text=True)
    assert "bge_m3_redis_up 0.0" in exposition
    # Unknown while Redis is down: absent, not a zero that an autoscaler would act on.
    assert "bge_m3_queue_depth" not in exposition and "bge_m3_ready_workers" not in exposition
    server.start()  # the AOF brings back what was written before the outage, and nothing else
    redis = server.client(0)
    assert len(list(redis.scan_iter("bge-m3:job:*"))) == redis.llen(QUEUE_NAME) == 1
    server.stop()


def test_enqueue_failure_leaves_no_orphan(base_settings, redis_server, tmp_path):
    """Redis answers but the queue cannot take the message (its key holds a string): the
    record and the message are one atomic script, so neither is written."""
    db = redis_server.client(4)
    db.flushdb()
    db.set(QUEUE_NAME, "not a list")
    app = create_app(base_settings.replace(redis_url=redis_server.url(4)))
    r = app.test_client().post("/v1/jobs", json={"texts": ["a"]})
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "queue_unavailable"
    assert list(db.scan_iter("bge-m3:*")) == []
    db.flushdb()


def test_a_redis_refusing_writes_still_serves_finished_jobs(base_settings, tmp_path):
    """Reading a finished job writes one bookkeeping flag (its latency is observed once): at
    ``maxmemory`` (noeviction), or on a replica still read-only after a failover, that write is
    skipped and the stored result is served; a write the route needs is a 503, never a 500."""
    server = RedisServer(tmp_path / "redis")
    try:
        app = create_app(base_settings.replace(redis_url=server.url(0)))
        client = app.test_client()
        done, queued = (client.post("/v1/jobs", json={"texts": [t]}).get_json()["id"] for t in "ab")
        store = app.extensions["bge_m3"].backend.store
        store.start(done, 3)
        store.succeed(done, {"items": [{"tokens": 1}]})
        server.client(0).config_set("maxmemory", 1)
        r = client.get(f"/v1/jobs/{done}")
        assert r.status_code == 200 and r.get_json()["status"] == "succeeded", r.get_json()
        assert r.get_json()["result"]["items"] == [{"tokens": 1}]
        job, result, first = store.read(done, observe=True)  # the sync routes' one round trip
        assert (job.status, result, first) == ("succeeded", {"items": [{"tokens": 1}]}, False)
        r = client.delete(f"/v1/jobs/{queued}")
        assert r.status_code in (200, 503), r.get_json()
        status = server.client(0).hget(f"bge-m3:job:{queued}", "status")
        assert (r.status_code, status) in ((200, "cancelled"), (503, "queued"))
        r = client.post("/v1/jobs", json={"texts": ["c"]})  # Redis's refusal, not the queue's
        assert r.status_code == 503 and r.get_json()["error"]["code"] == "redis_unavailable"
        # A sync create can push no refusal either: the BLPOP behind it is short, not 5 s.
        started = time.monotonic()
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            store.create_and_await({"texts": ["d"]}, "", 30.0, job_id=new_job_id(), message="m",
                                   queue=QUEUE_NAME)
        assert time.monotonic() - started < CREATE_SLICE_SECONDS + 1
        server.client(0).config_set("maxmemory", 0)
        assert client.get(f"/v1/jobs/{done}").status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize("code", ["import api", "from api.wsgi import app",
                                  "from api import create_app; create_app().test_client().get('/openapi.json')"])
def test_api_never_imports_torch(code, base_settings):
    check = (f"import sys\n{code}\nheavy = [m for m in ('torch', 'transformers', 'FlagEmbedding', 'numpy') "
             "if m in sys.modules]\nprint(heavy)\nsys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60,
                          env={**base_settings.env(), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_waits_leave_threads_for_quick_routes(base_settings, redis_server, live_worker, tmp_path):
    """Under gunicorn with 4 threads, 3 may wait on jobs. With 3 long-polls held, a fourth
    answers at once (Retry-After), a sync call gets 503 busy before creating anything, and the
    health check, a submit and a read are served by the reserved thread."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from api.serve import wait_slots
    from bge_m3.jobs import JobStore
    from bge_m3.records import job_key
    from tests.stack_support import start_api
    from tests.support import wait_for

    assert wait_slots(4) == 3 and wait_slots(64) == 56 and wait_slots(1) == 1
    store = JobStore(redis_server.client(0), 600)
    held = [store.create({"texts": ["never sent to a worker"]}) for _ in range(4)]  # stay queued
    api = start_api(base_settings, tmp_path, threads=4)
    try:
        with api.client() as http, ThreadPoolExecutor(3) as pool:
            def hold(job_id: str):  # a long-poll refused a slot (by the probe below) asks again
                while "Retry-After" in (r := http.get(f"/v1/jobs/{job_id}?wait=60")).headers:
                    time.sleep(0.05)
                return r
            polls = [pool.submit(hold, job.id) for job in held[:3]]

            def refused_a_slot() -> bool:  # a short wait answered at once: all three hold theirs
                early = http.get(f"/v1/jobs/{held[3].id}?wait=2")
                assert early.status_code == 200 and early.json()["status"] == "queued"
                return early.headers.get("Retry-After") == "1"
            wait_for(refused_a_slot, 30, interval=0.1, what="the wait slots all held")
            t0 = time.monotonic()
            early = http.get(f"/v1/jobs/{held[3].id}?wait=60")
            assert early.headers["Retry-After"] == "1" and time.monotonic() - t0 < 30
            before = set(redis_server.client(0).scan_iter(job_key("*")))
            busy = http.post("/embed", json={"texts": ["a"]})
            assert busy.status_code == 503 and busy.json()["error"]["code"] == "busy"
            assert busy.headers["Retry-After"] == "1"
            assert set(redis_server.client(0).scan_iter(job_key("*"))) == before  # nothing created
            assert http.get("/healthz", timeout=5).status_code == 200
            assert http.post("/v1/jobs", json={"texts": ["a"]}, timeout=5).status_code == 202
            assert all(not p.done() for p in polls)  # still waiting, as asked
            for job in held[:3]:
                store.cancel(job.id)
            assert [p.result().json()["status"] for p in polls] == ["cancelled"] * 3
    finally:
        api.stop()


@pytest.mark.parametrize("timeout", [10.0, 60.0, 300.0])
def test_gunicorn_lets_a_waiting_sync_call_finish_on_sigterm(base_settings, timeout):
    """gunicorn kills what is still running after its graceful timeout: that must outlast a sync
    call's wait, or a stop drops the call with neither its result nor a 504."""
    from api.serve import options, parse
    from bge_m3.jobreader import MAX_WAIT_SECONDS

    opts = options(base_settings.replace(sync_timeout=timeout), parse([]))
    assert opts["graceful_timeout"] > max(timeout, MAX_WAIT_SECONDS)
    assert opts["timeout"] > timeout
