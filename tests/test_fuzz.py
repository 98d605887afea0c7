"""Bad input and fuzzing against the real HTTP server (gunicorn) with a live worker.

schemathesis (pinned in constraints.txt) drives ``/openapi.json`` with every check on, stateless
and stateful, bounded by examples per operation and a time budget: zero 5xx, zero responses that
break the schema. Hand-written hostile inputs each get their documented 4xx with a JSON error,
and the worker never sees the invalid work (its statistics hash and the queue say so).
"""
from __future__ import annotations

import http.client
import json
import subprocess
from urllib.parse import urlsplit

import pytest

from bge_m3.records import PREFIX, TERMINAL
from bge_m3.queue import QUEUE_NAME, redis_client
from bge_m3.workers import STATS_PREFIX
from tests.stack_support import start_api
from tests.support import BIN, settings_on_db, wait_for

MAX_EXAMPLES = 15
"""Generated cases per operation and phase (bounds the run with MAX_SECONDS)."""

MAX_SECONDS = 45
"""schemathesis' own time budget for the whole run."""


DECIDED = ("positive_data_acceptance", "use_after_free")
"""Checks that contradict documented decisions (README, API section), not bugs:
- positive_data_acceptance: a schema-valid body may still be refused with 400 when the schema
  cannot say why: ``dimensions`` other than the serving model's (known only from the workers),
  weights whose sum overflows to infinity, strings with lone surrogates (valid JSON, not Unicode);
- use_after_free: DELETE cancels a job, it does not erase it; the job stays readable as
  ``cancelled``."""


@pytest.fixture(scope="module")
def stack(base_settings, redis_server, tmp_path_factory):
    from tests.support import spawn_worker

    folder = tmp_path_factory.mktemp("fuzz")
    settings = settings_on_db(base_settings, redis_server, "fuzz", sync_timeout=20.0)
    worker = spawn_worker(settings, folder)
    api = start_api(settings, folder)
    yield settings, api, worker
    api.stop()
    worker.stop()


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_schema_violation(stack, tmp_path):
    _, api, _ = stack
    cmd = [str(BIN / "st"), "run", f"{api.url}/openapi.json", "--checks", "all",
           "--exclude-checks", ",".join(DECIDED),
           "--max-examples", str(MAX_EXAMPLES), "--max-time", str(MAX_SECONDS), "--seed", "8",
           "--phases", "examples,coverage,fuzzing,stateful", "--request-timeout", "40",
           "--report", "junit", "--report-dir", str(tmp_path), "--no-color"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=MAX_SECONDS + 120,
                          cwd=tmp_path)  # its .schemathesis cache stays out of the checkout
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "unhandled error" not in api.output() and "Traceback" not in api.output()


class Counts:
    """What the worker and Redis have seen, to prove invalid input never reached them."""

    def __init__(self, settings, worker):
        self.redis = redis_client(settings.redis_url)
        self.key = STATS_PREFIX + worker.hostname
        # Let earlier tests' jobs (schemathesis leaves some) drain before the "before" snapshot.
        # The queue and kombu's unacked hash are both empty for a moment while a message is
        # handed to the worker, so every job record must be terminal too.
        wait_for(self._idle, 60, what="the worker to be idle")

    def _idle(self) -> bool:
        if self.redis.llen(QUEUE_NAME) or self.redis.hlen("unacked"):
            return False
        keys = [k for k in self.redis.scan_iter(f"{PREFIX}:job:*", count=1000)
                if self.redis.type(k) == "hash"]
        return all(self.redis.hget(k, "status") in TERMINAL for k in keys)

    def snapshot(self) -> tuple:
        stats = self.redis.hgetall(self.key)
        jobs = len(list(self.redis.scan_iter(f"{PREFIX}:job:*", count=1000)))
        return (stats.get("jobs"), stats.get("failed_jobs"), jobs, self.redis.llen(QUEUE_NAME))


def raw(url: str, method: str, path: str, body: bytes | None = None,
        headers: dict | None = None) -> tuple[int, dict, dict]:
    """One request over http.client, so paths and bodies go out exactly as written."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json",
                                                        **(headers or {})})
        r = conn.getresponse()
        data = r.read()
        return r.status, dict(r.getheaders()), json.loads(data)
    finally:
        conn.close()


def nested(depth: int) -> bytes:
    return b'{"texts": ' + b"[" * depth + b"]" * depth + b"}"


HOSTILE = [
    ("invalid UTF-8", "/v1/jobs", b'{"texts": ["\xff\xfe\xc3\x28"]}', 400, "invalid_utf8"),
    ("lone surrogate", "/v1/jobs", b'{"texts": ["ok", "\\udc80 alone"]}', 400, "invalid_request"),
    ("lone surrogate, embed", "/embed", b'{"texts": ["\\ud83d"]}', 400, "invalid_request"),
    ("deep nesting", "/v1/jobs", nested(100_000), 400, "invalid_json"),
    ("deep nesting, score", "/v1/score", b'{"query": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400,
     "invalid_json"),
    ("100,000 empty strings", "/v1/jobs", json.dumps({"texts": [""] * 100_000}).encode(), 413,
     "too_many_texts"),
    ("non-string items", "/v1/jobs", b'{"texts": ["a", 1, null, {"x": 1}, ["b"]]}', 400, "invalid_request"),
    ("non-string items, embed", "/embed", b'{"texts": [true]}', 400, "invalid_request"),
    ("non-string input, openai", "/v1/embeddings", b'{"input": [[1, 2]], "model": "bge-m3"}', 400,
     "invalid_request"),
    ("unknown field", "/v1/jobs", b'{"texts": ["a"], "priority": 9}', 400, "invalid_request"),
    ("unknown field, score", "/v1/score", b'{"query": "q", "documents": ["a"], "top_k": 1}', 400,
     "invalid_request"),
]


@pytest.mark.parametrize("name,path,body,status,code", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_bodies_get_documented_4xx_and_never_reach_the_worker(stack, name, path, body,
                                                                      status, code):
    settings, api, worker = stack
    counts = Counts(settings, worker)
    before = counts.snapshot()
    got, _, answer = raw(api.url, "POST", path, body)
    assert got == status, answer
    assert answer["error"]["code"] == code and answer["error"]["message"]
    assert counts.snapshot() == before


def test_fifty_megabyte_body_is_413(stack):
    settings, api, worker = stack
    counts = Counts(settings, worker)
    before = counts.snapshot()
    body = b'{"texts": ["' + b"x" * (50 * 1024 * 1024) + b'"]}'
    assert len(body) > settings.max_body_bytes
    # httpx (like curl) reads the early answer while the body is still being sent; a client that
    # only reads after sending everything sees a broken pipe, as with any server that refuses
    # to buffer 50 MB it will not use.
    with api.client() as http_:
        r = http_.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert counts.snapshot() == before


def test_million_character_text_truncated_or_refused(stack):
    """Decided by the worker (the API has no tokenizer): truncate true cuts it to max_length
    tokens; truncate false is 422 ``too_long`` on sync routes and a failed job on /v1/jobs."""
    settings, api, worker = stack
    text = ("weather today is sunny 今天天气真好 " * 40_000)[:1_000_000]
    assert len(text) == 1_000_000
    with api.client(timeout=120) as http_:
        r = http_.post("/embed", json={"texts": [text], "truncate": True, "max_length": 512})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["tokens"] == 512
        r = http_.post("/embed", json={"texts": [text], "truncate": False, "max_length": 512})
        assert r.status_code == 422 and r.json()["error"]["code"] == "too_long"
        job = http_.post("/v1/jobs", json={"texts": ["short", text], "truncate": False}).json()
        done = http_.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
        assert done["status"] == "failed" and done["error"]["code"] == "too_long"
        assert "texts[1]" in done["error"]["message"] and done.get("result") is None


def test_schema_edge_cases_found_by_schemathesis(stack):
    _, api, _ = stack
    with api.client() as http_:
        job = http_.post("/v1/jobs", json={"texts": ["a"], "max_length": 16.0})
        assert job.status_code == 202  # 16.0 is an integer to JSON Schema
        r = http_.get(f"/v1/jobs/{job.json()['id']}?wait=")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
        done = http_.get(f"/v1/jobs/{job.json()['id']}", params={"wait": 30}).json()
        assert done["status"] == "succeeded", done  # and leaves no job running into the next test
        assert http_.post("/v1/jobs", json={"texts": ["a"], "max_length": 16.5}).status_code == 400


BAD_IDS = [
    # one path segment after /v1/jobs/ (once decoded): routed as a job id that does not exist
    ("/v1/jobs/abc%0d%0aX-Injected:%20yes", "job_not_found"),
    ("/v1/jobs/" + "a" * 31 + "%0d%0aSet-Cookie:%20x=1", "job_not_found"),
    ("/v1/jobs/%2e%2e", "job_not_found"),
    ("/v1/jobs/" + "0" * 32 + "%00", "job_not_found"),
    ("/v1/jobs/" + "A" * 32, "job_not_found"),
    # an encoded slash decodes to more segments: no route matches, never a job lookup
    ("/v1/jobs/..%2F..%2Fetc%2Fpasswd", "not_found"),
    ("/v1/jobs/..%2f" + "0" * 29, "not_found"),
]


@pytest.mark.parametrize("path,code", BAD_IDS, ids=[path for path, _ in BAD_IDS])
def test_hostile_job_ids_are_json_404_without_injected_headers(stack, path, code):
    settings, api, worker = stack
    counts = Counts(settings, worker)
    before = counts.snapshot()
    for method in ("GET", "DELETE"):
        status, headers, answer = raw(api.url, method, path)
        assert status == 404, (method, path, answer)
        assert answer["error"]["code"] == code, (method, path, answer)
        assert "X-Injected" not in headers and "Set-Cookie" not in headers
        assert all("\r" not in v and "\n" not in v for v in headers.values())
    assert counts.snapshot() == before


def test_dot_segments_do_not_escape_the_job_route(stack):
    """``..`` in a job id is an id like any other (404); a path that climbs out of /v1/jobs is
    not resolved by the server (no dot-segment removal): an unknown route, never a job lookup."""
    _, api, _ = stack
    status, _, answer = raw(api.url, "GET", "/v1/jobs/../../openapi.json")
    assert status == 404 and answer["error"]["code"] == "not_found", answer
    status, _, answer = raw(api.url, "GET", "/v1/jobs/..")
    assert status == 404 and answer["error"]["code"] == "job_not_found"


def test_errors_from_the_http_server_itself_are_json(stack):
    """gunicorn answers an over-long request line (414) and huge headers (431) before Flask runs;
    those answers are JSON too, and documented in /openapi.json."""
    _, api, _ = stack
    long_line = raw(api.url, "GET", "/v1/jobs/" + "a" * 32 + "?wait=" + "1" * 9000)
    big_header = raw(api.url, "GET", "/healthz", headers={"X-Filler": "x" * 9000})
    codes = {414: "uri_too_long", 431: "headers_too_large"}
    for (status, headers, body), expected in ((long_line, 414), (big_header, 431)):
        assert status == expected, body
        assert headers["Content-Type"].startswith("application/json")
        error = body["error"]  # raw() parses JSON: an HTML page would fail here
        assert error["code"] == codes[expected] and error["message"], body
    doc = raw(api.url, "GET", "/openapi.json")[2]
    assert {"414", "431"} <= set(doc["paths"]["/v1/jobs/{job_id}"]["get"]["responses"])
