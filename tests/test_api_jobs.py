"""The job routes and /embed through the real stack: private Redis, a real worker, the Flask app."""
from __future__ import annotations

import base64
import struct

import pytest

from api import create_app
from bge_m3.codec import unpack_rows
from bge_m3.jobs import JobStore
from bge_m3.records import job_key
from bge_m3.queue import QUEUE_NAME, queue_depth, redis_client

SEED_BODY = {"texts": ["今天天气真好", "阳光明媚"], "mode": "dense"}
"""The seed's curl example, byte for byte the same JSON object."""


def poll(client, job_id: str, headers: dict | None = None) -> dict:
    """Long-poll (event-driven server side) until the job is terminal."""
    for _ in range(20):
        body = client.get(f"/v1/jobs/{job_id}?wait=30", headers=headers).get_json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
    raise AssertionError(f"job {job_id} never finished: {body}")


def floats_b64(data: str) -> list[float]:
    raw = base64.b64decode(data)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


@pytest.fixture
def idle_app(base_settings, redis_server):
    """An app on database 2, which no worker consumes: its jobs stay queued."""
    redis_server.client(2).flushdb()
    yield create_app(base_settings.replace(redis_url=redis_server.url(2)))
    redis_server.client(2).flushdb()


def test_job_polled_to_completion_all_modes(client, live_worker):
    r = client.post("/v1/jobs", json={"texts": ["hello world", "今天天气真好", ""],
                                      "modes": ["colbert", "dense", "sparse"]})
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    assert body["status"] == "queued" and len(body["id"]) == 32
    assert r.headers["Location"] == f"/v1/jobs/{body['id']}" == body["links"]["self"]
    done = poll(client, body["id"])
    assert done["status"] == "succeeded", done
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    result = done["result"]
    assert result["dimension"] == 32 and len(result["items"]) == 3
    first = result["items"][0]
    assert isinstance(first["dense"], list) and len(first["dense"]) == 32
    assert abs(sum(v * v for v in first["dense"]) - 1.0) < 1e-4  # normalised
    assert len(first["sparse"]["indices"]) == len(first["sparse"]["values"]) > 0
    # default encoding: ColBERT stays packed base64 (float16 at rest), one row per token after CLS
    colbert = first["colbert"]
    assert isinstance(colbert["data"], str) and colbert["shape"] == [first["tokens"] - 1, 32]
    assert done["usage"]["tokens"] == sum(item["tokens"] for item in result["items"])
    timings = done["timings"]
    assert set(timings) == {"queue_ms", "compute_ms", "total_ms", "tokenize_ms", "forward_ms",
                            "serialize_ms", "stream_ms"}
    assert 0 <= timings["queue_ms"] <= timings["total_ms"] and 0 < timings["compute_ms"] <= timings["total_ms"]
    # where the worker's time went: each phase is part of compute_ms, the forward passes most
    phases = [timings[k] for k in ("tokenize_ms", "forward_ms", "serialize_ms", "stream_ms")]
    assert all(ms >= 0 for ms in phases) and timings["forward_ms"] > 0
    assert sum(phases) <= timings["compute_ms"] + 0.5  # each is rounded to 0.1 ms


def test_encodings_agree(client, live_worker):
    texts = ["the quick brown fox", "阳光明媚"]
    ids = {}
    for encoding in ("float", "base64"):
        r = client.post("/v1/jobs", json={"texts": texts, "modes": ["dense", "colbert"],
                                          "encoding": encoding})
        ids[encoding] = r.get_json()["id"]
    as_float = poll(client, ids["float"])["result"]["items"]
    as_b64 = poll(client, ids["base64"])["result"]["items"]
    assert as_float and len(as_float) == len(as_b64)
    for f, b in zip(as_float, as_b64):
        assert floats_b64(b["dense"]) == pytest.approx(f["dense"], abs=0)
        assert isinstance(f["colbert"]["data"], list)  # explicit float: ColBERT as float lists too
        assert unpack_rows(b["colbert"]) == f["colbert"]["data"]


def test_seed_curl_body(client, live_worker):
    r = client.post("/embed", data='{"texts": ["今天天气真好", "阳光明媚"], "mode": "dense"}',
                    content_type="application/json")
    assert r.status_code == 200, r.get_json()
    assert list(r.get_json()) == ["embeddings", "dimension", "mode", "latency_ms", "usage"]
    body = r.get_json()
    assert body["dimension"] == 32 and body["mode"] == "dense"
    assert len(body["embeddings"]) == 2 and all(len(v) == 32 for v in body["embeddings"])
    assert body["latency_ms"] > 0 and body["usage"]["tokens"] > 2
    # the same vectors as the job route
    job = client.post("/v1/jobs", json={"texts": SEED_BODY["texts"]}).get_json()
    items = poll(client, job["id"])["result"]["items"]
    assert [item["dense"] for item in items] == body["embeddings"]


@pytest.mark.parametrize("mode", ["sparse", "colbert", "all"])
def test_embed_other_modes(client, live_worker, mode):
    r = client.post("/embed", json={"texts": ["hello world"], "mode": mode})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    expected = ["dense", "sparse", "colbert"] if mode == "all" else [mode]
    assert [k for k in ("dense", "sparse", "colbert") if k in body] == expected, body
    assert body["embeddings"] == body["dense" if mode == "all" else mode]
    # the same values as the job route for the same text, mode by mode
    job = client.post("/v1/jobs", json={"texts": ["hello world"], "modes": expected}).get_json()
    item = poll(client, job["id"])["result"]["items"][0]
    for key in expected:
        assert body[key] == [item[key]], key
    if "sparse" in expected:
        sparse = body["sparse"][0]
        assert len(sparse["indices"]) == len(sparse["values"]) > 0
    if "colbert" in expected:
        colbert = body["colbert"][0]
        assert colbert["shape"] == [item["tokens"] - 1, 32]
        rows = unpack_rows(colbert)
        assert len(rows) == item["tokens"] - 1 and all(len(row) == 32 for row in rows)


def test_too_long_without_truncate_is_422(client, live_worker):
    text = "the quick brown fox jumps over the lazy dog " * 10
    r = client.post("/embed", json={"texts": [text], "max_length": 8, "truncate": False})
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "too_long"
    ok = client.post("/embed", json={"texts": [text], "max_length": 8})
    assert ok.status_code == 200 and ok.get_json()["usage"]["tokens"] == 8
    job = client.post("/v1/jobs", json={"texts": [text], "max_length": 8, "truncate": False}).get_json()
    failed = poll(client, job["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "too_long"
    assert "texts[0] has" in failed["error"]["message"]


def test_a_colbert_result_over_the_budget_is_413_before_any_pass(client, live_worker):
    """BGE_M3_MAX_COLBERT_TOKENS (262,144 by default) bounds one job's ColBERT output, which
    would otherwise grow with the body (a 20 MB body is some 10 GB of vectors in Redis)."""
    words = "dense sparse colbert hybrid retrieval vector search model".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(600)) for i in range(520)]
    r = client.post("/embed", json={"texts": texts, "mode": "colbert", "max_length": 512})
    assert r.status_code == 413, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "result_too_large"
    assert "colbert for 265,720 tokens" in error["message"] and "262,144" in error["message"]
    assert "about 17.0 MB of result; split the job, or leave colbert out" in error["message"]  # 32-d
    job = client.get(f"/v1/jobs/{error['job_id']}").get_json()
    assert job["status"] == "failed" and job["error"]["code"] == "result_too_large", job
    assert not job["timings"].get("forward_ms"), job["timings"]  # refused before any pass
    # /v1/score always asks for ColBERT: its advice is about the documents, not the modes.
    r = client.post("/v1/score", json={"query": "q", "documents": texts, "max_length": 512})
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "result_too_large", r.get_json()
    assert r.get_json()["error"]["message"].endswith("of result; score fewer or shorter documents "
                                                     "per request"), r.get_json()
    record = client.get(f"/v1/jobs/{r.get_json()['error']['job_id']}").get_json()["error"]
    assert record["message"] == r.get_json()["error"]["message"], record  # the record says the same


def test_too_long_names_the_field_the_text_came_in(client, live_worker):
    """The worker names texts by their place in the job; a route whose texts came in other
    fields says which of them was too long."""
    long, short = "the quick brown fox jumps over the lazy dog " * 10, "fox"
    r = client.post("/v1/score", json={"query": short, "documents": [short, long],
                                       "max_length": 8, "truncate": False})
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "too_long"
    assert r.get_json()["error"]["message"].startswith("documents[1] has"), r.get_json()
    r = client.post("/v1/score", json={"query": long, "documents": [short], "max_length": 8,
                                       "truncate": False})
    assert r.get_json()["error"]["message"].startswith("query has"), r.get_json()
    # /v1/embeddings has no max_length: a text over the server's BGE_M3_MAX_LENGTH is cut there
    r = client.post("/embed", json={"texts": [short, long], "max_length": 8, "truncate": False})
    assert r.get_json()["error"]["message"].startswith("texts[1] has"), r.get_json()


def test_sync_timeout_is_504_with_job_id(base_settings, live_worker):
    client = create_app(base_settings.replace(sync_timeout=0.0)).test_client()
    r = client.post("/embed", json=SEED_BODY)
    assert r.status_code == 504
    job_id = r.get_json()["error"]["job_id"]
    assert r.headers["Location"] == f"/v1/jobs/{job_id}"
    assert poll(client, job_id)["status"] == "succeeded"  # the job went on and can be read


def test_unknown_and_malformed_ids_are_404(client, redis_server):
    for job_id in ("0" * 32, "not-a-job", "f" * 31):
        r = client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "job_not_found"
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 404


def test_cancel_queued_job(idle_app, redis_server):
    client = idle_app.test_client()
    job = client.post("/v1/jobs", json={"texts": ["a"]}).get_json()
    assert client.get(f"/v1/jobs/{job['id']}").get_json()["status"] == "queued"
    r = client.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
    again = client.delete(f"/v1/jobs/{job['id']}")
    assert again.status_code == 409 and "cancelled" in again.get_json()["error"]["message"]
    # a long-poll on a cancelled job answers at once with the terminal state
    assert client.get(f"/v1/jobs/{job['id']}?wait=30").get_json()["status"] == "cancelled"


def test_cancel_running_or_finished_is_409(client, idle_app, redis_server, live_worker):
    store = JobStore(redis_server.client(2), 60)
    idle = idle_app.test_client()
    job_id = idle.post("/v1/jobs", json={"texts": ["a"]}).get_json()["id"]
    assert store.start(job_id, max_attempts=3)[0] == "running"  # what a worker does on pick-up
    r = idle.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "job_running"
    done = client.post("/v1/jobs", json={"texts": ["a"]}).get_json()["id"]
    assert poll(client, done)["status"] == "succeeded"
    r = client.delete(f"/v1/jobs/{done}")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "job_finished"
    assert "succeeded" in r.get_json()["error"]["message"]


def test_long_poll_returns_when_job_finishes(idle_app, redis_server):
    """The waiter is woken by the finish event, not by its timeout."""
    import threading
    import time

    client = idle_app.test_client()
    job_id = client.post("/v1/jobs", json={"texts": ["a"]}).get_json()["id"]
    store = JobStore(redis_server.client(2), 60)
    store.start(job_id, max_attempts=3)
    timer = threading.Timer(0.3, store.succeed, args=(job_id, {"items": [{"tokens": 1}]}))
    started = time.monotonic()
    timer.start()
    body = client.get(f"/v1/jobs/{job_id}?wait=30").get_json()
    assert body["status"] == "succeeded"
    assert time.monotonic() - started < 25, "long-poll ran to its timeout instead of waking up"
    timer.join()


def test_queue_full_is_429_with_retry_after(base_settings, redis_server):
    redis_server.client(2).flushdb()
    app = create_app(base_settings.replace(redis_url=redis_server.url(2), max_queued=2))
    client = app.test_client()
    try:
        posted = [client.post("/v1/jobs", json={"texts": ["a"]}) for _ in range(2)]
        assert [r.status_code for r in posted] == [202, 202]
        assert queue_depth(redis_server.client(2)) == 2
        r = client.post("/v1/jobs", json={"texts": ["a"]})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        assert r.get_json()["error"]["code"] == "queue_full"
        # A cancelled job leaves the queue: its room is free again, and the depth says so.
        assert client.delete(f"/v1/jobs/{posted[0].get_json()['id']}").status_code == 200
        assert queue_depth(redis_server.client(2)) == 1
        assert client.post("/v1/jobs", json={"texts": ["a"]}).status_code == 202
        assert queue_depth(redis_server.client(2)) == 2
    finally:
        redis_server.client(2).flushdb()


def test_api_keys_scope_jobs(base_settings, redis_server):
    redis_server.client(2).flushdb()
    app = create_app(base_settings.replace(redis_url=redis_server.url(2), api_keys=("key-a", "key-b")))
    client = app.test_client()
    a, b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
    try:
        assert client.post("/v1/jobs", json={"texts": ["a"]}).status_code == 401
        assert client.post("/v1/jobs", json={"texts": ["a"]},
                           headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = client.post("/v1/jobs", json={"texts": ["a"]}, headers=a)
        assert r.status_code == 202
        job_id = r.get_json()["id"]
        record = redis_server.client(2).hgetall(job_key(job_id))
        assert "key-a" not in str(record)  # only a hash of the key is stored
        assert client.get(f"/v1/jobs/{job_id}", headers=a).status_code == 200
        assert client.get(f"/v1/jobs/{job_id}", headers=b).status_code == 404
        assert client.delete(f"/v1/jobs/{job_id}", headers=b).status_code == 404
        assert client.get(f"/v1/jobs/{job_id}").status_code == 401
        for open_route in ("/healthz", "/metrics"):
            assert client.get(open_route).status_code == 200
        # open without a key; database 2 (flushed above) has no worker, so not ready
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.get_json()["error"]["code"] == "no_ready_worker"
        assert ready.get_json()["workers"] == 0
        assert client.get("/v1/models").status_code == 401
    finally:
        redis_server.client(2).flushdb()


def test_job_ids_are_random_128_bit(idle_app):
    client = idle_app.test_client()
    ids = {client.post("/v1/jobs", json={"texts": ["a"]}).get_json()["id"] for _ in range(20)}
    assert len(ids) == 20 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert redis_client(idle_app.config["SETTINGS"].redis_url).llen(QUEUE_NAME) == 20
