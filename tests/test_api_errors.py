"""Validation and errors: every error is JSON with a code and a message, never HTML, never 500."""
from __future__ import annotations

import pytest

from api import create_app
from tests.support import conforms

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
    ("/v1/jobs", b'{"texts": ["a"], "max_length": 1}', "invalid_request"),  # less than CLS + EOS
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
    ("/v1/score", b'{"query": "q", "documents": ["a"], "weights": [1' + b"0" * 400 + b', 0, 0]}',
     "invalid_request"),  # too big for a float: OverflowError, not a 500
    ("/v1/jobs", b'{"texts": 5, "texts": ["a"]}', "invalid_json"),  # which one did the client mean?
]


@pytest.mark.parametrize("path,body,code", BAD_BODIES)
def test_bad_bodies_are_400(client, path, body, code):
    r = client.post(path, data=body, content_type="application/json")
    assert r.status_code == 400, r.data
    assert r.is_json and r.get_json()["error"]["code"] == code
    assert r.get_json()["error"]["message"]


@pytest.mark.parametrize("body,param", [
    (b"{}", "input"), (b'{"input": []}', "input"), (b'{"input": [1, 2]}', "input"),
    (b'{"input": "a"}', "model"), (b'{"input": "a", "model": "\\ud800"}', "model"),
    (b'{"input": "a", "model": "m", "encoding_format": "hex"}', "encoding_format"),
    (b'{"input": "a", "model": "m", "encoding_format": false}', "encoding_format"),
    (b'{"input": "a", "model": "m", "encoding_format": ""}', "encoding_format"),
    (b'{"input": "a", "model": "m", "dimensions": 0}', "dimensions"),
    (b'{"input": ["a", "\\ud800"], "model": "m"}', "input"),
    (b"nope", None),  # not JSON at all: no field is at fault
])
@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/embeddings/"])
def test_openai_errors_have_openai_shape(client, body, param, path):
    r = client.post(path, data=body, content_type="application/json")
    assert r.status_code == 400
    error = r.get_json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] and error["message"]
    assert error["param"] == param, error  # OpenAI's shape names the field at fault


def test_openai_integral_numbers_are_integers(base_settings):
    """JSON Schema counts 1024.0 as an integer, as it does for max_length; "" is one empty text."""
    from api.validation import embeddings_request

    _, _, dimensions, params = embeddings_request({"input": "", "model": "m", "dimensions": 1024.0},
                                                  base_settings)
    assert dimensions == 1024 and type(dimensions) is int and params["texts"] == [""]


def test_bodies_are_read_as_declared_json_only(client):
    """A form, text/plain or multipart body is what a browser sends cross-site without a CORS
    preflight: refused, so a web page cannot submit jobs to a server without keys."""
    body = b'{"texts": ["a"]}'
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        r = client.post("/v1/jobs", data=body, content_type=kind)
        assert r.status_code == 415, (kind, r.data)
        assert r.get_json()["error"]["code"] == "unsupported_media_type"
    import gzip
    r = client.post("/v1/jobs", data=gzip.compress(body), content_type="application/json",
                    headers={"Content-Encoding": "gzip"})
    assert r.status_code == 415 and "Content-Encoding 'gzip'" in r.get_json()["error"]["message"]
    r = client.post("/v1/embeddings", data=b'{"input": "a", "model": "m"}', content_type="text/plain")
    assert r.status_code == 415 and r.get_json()["error"]["type"] == "invalid_request_error"
    assert client.post("/v1/jobs", data=body, content_type="application/json; charset=utf-8").status_code == 202
    assert client.post("/v1/jobs", data=body, content_type="application/vnd.api+json").status_code == 202


def test_python_limits_are_worded_for_clients(client):
    for body, fragment in ((b'{"texts": ["a"], "max_length": ' + b"9" * 5000 + b"}", "digits"),
                           (b"[" * 100_000 + b"]" * 100_000, "nested too deeply")):
        r = client.post("/v1/jobs", data=body, content_type="application/json")
        error = r.get_json()["error"]
        assert r.status_code == 400 and fragment in error["message"], error
        assert "sys." not in error["message"] and "recursion" not in error["message"]


def test_body_over_limit_is_413(base_settings):
    client = create_app(base_settings.replace(max_body_bytes=1000)).test_client()
    r = client.post("/v1/jobs", json={"texts": ["x" * 2000]})
    assert r.status_code == 413 and r.is_json
    assert r.get_json()["error"]["code"] == "payload_too_large"
    r = client.post("/v1/embeddings", json={"input": "x" * 2000, "model": "bge-m3"})
    assert r.status_code == 413 and r.get_json()["error"]["type"] == "invalid_request_error"


def test_chunked_body_over_limit_is_413_under_gunicorn(base_settings, tmp_path):
    """Without a Content-Length werkzeug reads a body up to the limit and stops silently; the
    API must still answer 413, not parse the cut body (400) or accept what was cut (202), and
    take a body of exactly the limit (202). Broken chunked framing is 400, not 500."""
    import socket
    from urllib.parse import urlsplit

    import httpx

    from tests.stack_support import start_api

    api = start_api(base_settings.replace(max_body_bytes=1000), tmp_path, threads=2)
    try:
        def chunked(body: bytes):
            yield from (body[i:i + 100] for i in range(0, len(body), 100))

        for body in (b'{"texts": ["' + b"x" * 5000 + b'"]}', b'{"texts": ["a"]}' + b" " * 5000):
            r = httpx.post(api.url + "/v1/jobs", content=chunked(body),
                           headers={"Content-Type": "application/json"}, timeout=10)
            assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", r.text
        small = httpx.post(api.url + "/v1/jobs", content=chunked(b'{"texts": ["a"], "x": 1}'),
                           headers={"Content-Type": "application/json"}, timeout=10)
        assert small.status_code == 400 and "unknown field" in small.json()["error"]["message"]
        for size, status in ((1000, 202), (1001, 413)):  # the limit is 1000 bytes
            body = b'{"texts": ["a"]}'.ljust(size)
            r = httpx.post(api.url + "/v1/jobs", content=chunked(body),
                           headers={"Content-Type": "application/json"}, timeout=10)
            assert r.status_code == status, (size, r.text)
        where = urlsplit(api.url)
        for framing in (b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcXY0\r\n\r\n"):
            with socket.create_connection((where.hostname, where.port), timeout=10) as conn:
                conn.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + framing)
                answer = b""
                while chunk := conn.recv(65536):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 400") and b'"invalid_body"' in answer, answer
        assert "Traceback" not in api.output()
    finally:
        api.stop()


def test_made_up_methods_share_one_metrics_label(client):
    for method in ("ZZQQ", "ZZQQRR"):
        assert client.open("/healthz", method=method).status_code == 405
    text = client.get("/metrics").get_data(as_text=True)
    assert 'method="OTHER"' in text and "ZZQQ" not in text
    # A 405 counts under the route whose path matched (werkzeug names no rule for it), an
    # unknown path under <unmatched>.
    assert 'bge_m3_http_requests_total{method="OTHER",route="/healthz",status="405"} 2.0' in text, text
    assert client.post("/v1/jobs/" + "0" * 32).status_code == 405
    assert client.put("/v2/nowhere").status_code == 404
    text = client.get("/metrics").get_data(as_text=True)
    assert 'bge_m3_http_requests_total{method="POST",route="/v1/jobs/<job_id>",status="405"} 1.0' in text
    assert 'bge_m3_http_requests_total{method="PUT",route="<unmatched>",status="404"} 1.0' in text


def test_too_many_texts_is_413(base_settings):
    client = create_app(base_settings.replace(max_texts=3)).test_client()
    for path, body in (("/v1/jobs", {"texts": ["a"] * 4}), ("/embed", {"texts": ["a"] * 4}),
                       ("/v1/embeddings", {"input": ["a"] * 4, "model": "bge-m3"}),
                       ("/v1/score", {"query": "q", "documents": ["a"] * 3})):
        r = client.post(path, json=body)
        assert r.status_code == 413, (path, r.get_json())
        assert r.get_json()["error"]["code"] == "too_many_texts"
    r = client.post("/v1/embeddings", json={"input": ["a"] * 4, "model": "bge-m3"})
    assert r.get_json()["error"]["param"] == "input"  # OpenAI's shape names the field at fault


def test_unknown_route_and_wrong_method(client):
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    r = client.get("/embed")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]
    r = client.put("/v1/jobs/" + "0" * 32)
    assert r.status_code == 405 and r.is_json


def test_a_callers_long_value_is_quoted_cut_short(client):
    """An error message names what it refuses, but an 8 kB id or field name comes back as its
    first 100 characters and its length, not whole."""
    r = client.get("/v1/jobs/" + "a" * 8100)
    message = r.get_json()["error"]["message"]
    assert r.status_code == 404 and message.startswith("no job " + "a" * 100 + "… (8,100 characters)"), message
    assert len(message) < 200
    r = client.post("/v1/jobs", json={"texts": ["a"], "x" * 5000: 1})
    message = r.get_json()["error"]["message"]
    assert r.status_code == 400 and f"unknown field(s): {'x' * 100}… (5,000 characters); allowed:" in message
    r = client.post("/v1/jobs", json={"texts": ["a"], "modes": ["dense", "m" * 300]})
    assert "unknown mode(s) " + "m" * 100 + "… (300 characters)" in r.get_json()["error"]["message"]
    r = client.get("/v1/jobs/" + "0" * 32)  # a short value is quoted whole
    assert r.get_json()["error"]["message"] == f"no job {'0' * 32} (unknown, expired or not yours)"
    r = client.get("/v1/models/" + "m" * 7000)
    assert r.status_code == 404 and "'" + "m" * 99 + "… (7,002 characters)" in r.get_json()["error"]["message"]


def test_a_duplicate_key_is_refused_as_such_not_as_invalid_json(client):
    """RFC 8259 only says names SHOULD be unique: the body is JSON, refused all the same."""
    r = client.post("/v1/embeddings", data=b'{"model": "m", "input": "a", "input": "b"}',
                    content_type="application/json")
    assert r.status_code == 400
    assert r.get_json()["error"]["message"] == ("request body has the key 'input' twice in one "
                                                "object; each key may appear once")


def test_the_models_routes_answer_errors_in_openais_shape(client):
    """OpenAI's SDKs call /v1/models and /v1/models/{id}: their errors carry ``type`` and
    ``param`` as /v1/embeddings' do, as OpenAI's own 404 for an unknown model does."""
    r = client.get("/v1/models/nope")
    error = r.get_json()["error"]
    assert r.status_code == 404 and error["code"] == "model_not_found"
    assert (error["type"], error["param"]) == ("invalid_request_error", "model")
    r = client.get("/v1/jobs/" + "0" * 32)  # not an OpenAI route: our shape
    assert set(r.get_json()["error"]) == {"code", "message"}


def test_flasks_own_options_answer_declares_no_type_for_its_empty_body(client):
    r = client.options("/v1/embeddings")
    assert r.status_code == 200 and "POST" in r.headers["Allow"]
    assert r.get_data() == b"" and "Content-Type" not in r.headers


def test_bad_wait_is_400(client):
    # float() takes all but the first four too; each is a typo or a guess, not a number of seconds
    for wait in ("soon", "-1", "nan", "inf", "1_0", "%2B1", "1.", ".5", "1%20", "%EF%BC%91",
                 "%D9%A1", "0x10", "01", "-01", "-1e400", "-" + "9" * 400):
        r = client.get(f"/v1/jobs/{'0' * 32}?wait={wait}")
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_request", wait
        negative = wait in ("-1", "-1e400", "-" + "9" * 400)  # numbers, but not ones of seconds
        assert ("negative" in r.get_json()["error"]["message"]) == negative, wait
    # the job is unknown: 404, not 400; a number past a double's range is capped as 31 is
    for wait in ("0", "0.5", "30", "1e1", "2.5E-1", "-0", "1e400", "9" * 400):
        assert client.get(f"/v1/jobs/{'0' * 32}?wait={wait}").status_code == 404, wait


def test_cors_off_by_default_and_on_when_configured(client, base_settings):
    r = client.get("/healthz", headers={"Origin": "https://example.com"})
    assert "Access-Control-Allow-Origin" not in r.headers
    cors = create_app(base_settings.replace(cors_origins=("https://example.com",))).test_client()
    r = cors.get("/healthz", headers={"Origin": "https://example.com"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://example.com"
    r = cors.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    assert r.headers["Vary"] == "Origin"  # also when refused: a shared cache keys on it
    # Every answer: not to be sniffed, and kept by no cache (a job's answer holds its texts'
    # vectors); the page's own files keep their own caching.
    for r in (client.get("/healthz"), client.get("/v1/jobs/" + "0" * 32), client.post("/embed", json=[])):
        assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["Cache-Control"] == "no-store"
    assert client.get("/").headers["Cache-Control"] == "no-cache"
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
    assert r.get_json()["redis"] is True and r.get_json()["workers"] == 0
    conforms(client.get("/openapi.json").get_json(), "/readyz", "get", r)
    db.flushdb()


def test_a_sync_job_the_worker_finds_invalid_is_400(base_settings, redis_server, worker_factory):
    """A worker with lower limits than the API (BGE_M3_MAX_LENGTH 512 against 8192) fails the job
    with ``invalid_request``: the client's input is at fault, so the sync route answers 400 with
    the worker's reason, not 500."""
    db = redis_server.client(3)
    db.flushdb()
    settings = base_settings.replace(redis_url=redis_server.url(3))
    worker_factory(settings.replace(max_length=512))
    try:
        client = create_app(settings).test_client()
        r = client.post("/embed", json={"texts": ["a"], "max_length": 8192})
        assert r.status_code == 400, r.get_json()
        error = r.get_json()["error"]
        assert error["code"] == "invalid_request" and "512" in error["message"]
    finally:
        db.flushdb()


def test_a_redis_failure_is_warned_once_a_while_not_once_a_request(caplog):
    """During an outage every request fails the same way: a soak run's API logged 326 warnings
    in 15 s. One line at most every REDIS_WARN_EVERY seconds, the next saying how many it held."""
    import logging
    import time

    import redis

    from api.errors import _Throttled

    throttled = _Throttled("redis unavailable", every=0.3)
    with caplog.at_level(logging.WARNING, logger="bge_m3.api"):
        for _ in range(50):
            throttled.warn(redis.ConnectionError("down"))
        time.sleep(0.35)
        throttled.warn(redis.ConnectionError("down"))
    lines = [r.getMessage() for r in caplog.records if r.name == "bge_m3.api"]
    assert lines == ["redis unavailable: ConnectionError",
                     "redis unavailable: ConnectionError (and 49 more like it since the last such line)"]
