"""Validation and errors: every error is JSON with a code and a message, never HTML, never 500."""
from __future__ import annotations

import pytest

from api import create_app

BAD_BODIES = [
    ("/v1/jobs", b"\xff\xfe{}", "invalid_utf8"),
    ("/v1/jobs", b"{not json", "invalid_json"),
    ("/v1/jobs", b"[1, 2]", "invalid_json"),
    ("/v1/jobs", b'{"texts": ["a"], "max_length": NaN}', "invalid_json"),
    ("/v1/jobs", b'{"texts": "a"}', "invalid_request"),
    ("/v1/jobs", b'{"texts": []}', "invalid_request"),
    ("/v1/jobs", b'{"texts": ["a", 1]}', "invalid_request"),
    ("/v1/jobs", b'{"texts": ["\\ud800"]}', "invalid_request"),
    ("/v1/jobs", b'{"texts": ["a"], "modes": ["dense", "bogus"]}', "invalid_request"),
    ("/v1/jobs", b'{"texts": ["a"], "modes": []}', "invalid_request"),
    ("/v1/jobs", b'{"texts": ["a"], "mode": "dense"}', "invalid_request"),  # unknown field
    ("/v1/jobs", b'{"texts": ["a"], "max_length": true}', "invalid_request"),
    ("/v1/jobs", b'{"texts": ["a"], "max_length": 0}', "invalid_request"),
    ("/v1/jobs", b'{"texts": ["a"], "max_length": 9000}', "invalid_request"),
    ("/v1/jobs", b'{"texts": ["a"], "truncate": "no"}', "invalid_request"),
    ("/v1/jobs", b'{"texts": ["a"], "encoding": "hex"}', "invalid_request"),
    ("/v1/jobs", b'{"texts": ["a"], "encoding": null}', "invalid_request"),
    ("/embed", b'{"texts": ["a"], "mode": "hybrid"}', "invalid_request"),
    ("/embed", b'{"texts": ["a"], "modes": ["dense"]}', "invalid_request"),
    ("/embed", b"", "invalid_json"),
    ("/v1/score", b'{"query": 1, "documents": ["a"]}', "invalid_request"),
    ("/v1/score", b'{"query": "q", "documents": []}', "invalid_request"),
    ("/v1/score", b'{"query": "q", "documents": ["a"], "weights": [1, 2]}', "invalid_request"),
    ("/v1/score", b'{"query": "q", "documents": ["a"], "weights": [0, 0, 0]}', "invalid_request"),
    ("/v1/score", b'{"query": "q", "documents": ["a"], "weights": [-1, 1, 1]}', "invalid_request"),
    ("/v1/score", b'{"query": "q", "documents": ["a"], "weights": [1e308, 1e308, 1]}', "invalid_request"),
]


@pytest.mark.parametrize("path,body,code", BAD_BODIES)
def test_bad_bodies_are_400(client, path, body, code):
    r = client.post(path, data=body, content_type="application/json")
    assert r.status_code == 400, r.data
    assert r.is_json and r.get_json()["error"]["code"] == code
    assert r.get_json()["error"]["message"]


@pytest.mark.parametrize("body", [b"{}", b'{"input": []}', b'{"input": [1, 2]}', b'{"input": "a"}',
                                  b'{"input": "a", "model": "m", "encoding_format": "hex"}',
                                  b'{"input": "a", "model": "m", "encoding_format": false}',
                                  b'{"input": "a", "model": "m", "encoding_format": ""}',
                                  b'{"input": "a", "model": "m", "dimensions": 0}', b"nope"])
def test_openai_errors_have_openai_shape(client, body):
    r = client.post("/v1/embeddings", data=body, content_type="application/json")
    assert r.status_code == 400
    error = r.get_json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] and error["message"]


def test_body_over_limit_is_413(base_settings):
    client = create_app(base_settings.replace(max_body_bytes=1000)).test_client()
    r = client.post("/v1/jobs", json={"texts": ["x" * 2000]})
    assert r.status_code == 413 and r.is_json
    assert r.get_json()["error"]["code"] == "payload_too_large"
    r = client.post("/v1/embeddings", json={"input": "x" * 2000, "model": "bge-m3"})
    assert r.status_code == 413 and r.get_json()["error"]["type"] == "invalid_request_error"


def test_too_many_texts_is_413(base_settings):
    client = create_app(base_settings.replace(max_texts=3)).test_client()
    for path, body in (("/v1/jobs", {"texts": ["a"] * 4}), ("/embed", {"texts": ["a"] * 4}),
                       ("/v1/embeddings", {"input": ["a"] * 4, "model": "bge-m3"}),
                       ("/v1/score", {"query": "q", "documents": ["a"] * 3})):
        r = client.post(path, json=body)
        assert r.status_code == 413, (path, r.get_json())
        assert r.get_json()["error"]["code"] == "too_many_texts"


def test_unknown_route_and_wrong_method(client):
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    r = client.get("/embed")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]
    r = client.put("/v1/jobs/" + "0" * 32)
    assert r.status_code == 405 and r.is_json


def test_bad_wait_is_400(client):
    for wait in ("soon", "-1", "nan", "inf"):
        r = client.get(f"/v1/jobs/{'0' * 32}?wait={wait}")
        assert r.status_code == 400, wait


def test_cors_off_by_default_and_on_when_configured(client, base_settings):
    r = client.get("/healthz", headers={"Origin": "https://example.com"})
    assert "Access-Control-Allow-Origin" not in r.headers
    cors = create_app(base_settings.replace(cors_origins=("https://example.com",))).test_client()
    r = cors.get("/healthz", headers={"Origin": "https://example.com"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://example.com"
    r = cors.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    pre = cors.options("/v1/jobs", headers={"Origin": "https://example.com",
                                            "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 200 and "POST" in pre.headers["Access-Control-Allow-Methods"]


def test_sync_routes_need_a_ready_worker(base_settings, redis_server):
    """Database 3 has no readiness record: sync routes answer 503 at once and leave no job."""
    db = redis_server.client(3)
    db.flushdb()
    client = create_app(base_settings.replace(redis_url=redis_server.url(3))).test_client()
    for path, body in (("/embed", {"texts": ["a"]}), ("/v1/score", {"query": "q", "documents": ["a"]}),
                       ("/v1/embeddings", {"input": "a", "model": "bge-m3"})):
        r = client.post(path, json=body)
        assert r.status_code == 503 and r.get_json()["error"]["code"] == "no_ready_worker", path
        assert int(r.headers["Retry-After"]) > 0
    assert list(db.scan_iter("bge-m3:job:*")) == []
    r = client.get("/readyz")
    assert r.status_code == 503 and "worker" in r.get_json()["error"]["message"]
    db.flushdb()
