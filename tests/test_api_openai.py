"""The official ``openai`` client against ``bge-m3 api`` (gunicorn) on a free port, with API keys."""
from __future__ import annotations

import subprocess
import time

import httpx
import openai
import pytest

from api.serve import wait_slots
from tests.support import BGE_M3, free_port, wait_for, worker_env

KEY = "sk-test-4f1c9e2a"
TEXTS = ["今天天气真好", "阳光明媚", "the quick brown fox"]


THREADS = 16
"""Request threads of the test's gunicorn process: enough wait slots (``api.serve.wait_slots``)
for every concurrent client below, so none is refused as ``busy``."""
CLIENTS = 8
"""Clients that publish and wait at the same time in the gthread test."""


@pytest.fixture(scope="module")
def server(base_settings, live_worker, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("gunicorn") / "api.log"
    settings = base_settings.replace(api_keys=(KEY, "sk-other"), host="127.0.0.1", port=port)
    with open(log, "wb") as fh:
        proc = subprocess.Popen([BGE_M3, "api", "--workers", "1", "--threads", str(THREADS), "--access-log"],
                                env=worker_env(settings), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"bge-m3 api exited {proc.returncode}: {log.read_text()}")
        try:
            return httpx.get(base + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 30, interval=0.1, what="gunicorn")
    yield base, log
    proc.terminate()
    proc.wait(30)


def job_vectors(base: str) -> list[list[float]]:
    headers = {"Authorization": f"Bearer {KEY}"}
    job = httpx.post(base + "/v1/jobs", json={"texts": TEXTS}, headers=headers).json()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = httpx.get(f"{base}/v1/jobs/{job['id']}?wait=30", headers=headers, timeout=40).json()
        if body["status"] == "succeeded":
            return [item["dense"] for item in body["result"]["items"]]
    raise AssertionError("job did not finish")


def test_openai_client_both_encodings(server):
    base, log = server
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
    expected = job_vectors(base)
    as_float = client.embeddings.create(model="bge-m3", input=TEXTS, encoding_format="float")
    as_b64 = client.embeddings.create(model="bge-m3", input=TEXTS)  # the client asks for base64
    for response in (as_float, as_b64):
        assert [d.index for d in response.data] == [0, 1, 2]
        assert [list(d.embedding) for d in response.data] == expected
        assert response.model == "bge-m3" and response.usage.total_tokens > len(TEXTS)
    single = client.embeddings.create(model="bge-m3", input=TEXTS[0], dimensions=32)
    # Alone in its batch the text is padded differently: equal within float noise, not bit for bit.
    assert len(single.data[0].embedding) == len(expected[0])
    assert max(abs(a - b) for a, b in zip(single.data[0].embedding, expected[0])) < 1e-5
    assert KEY not in log.read_text()  # the access log saw every request, never the key
    traced = httpx.post(base + "/embed", json={"texts": ["traced"]}, timeout=60,
                        headers={"Authorization": f"Bearer {KEY}", "X-Request-ID": "trace-42"})
    job_id = traced.headers["X-Job-Id"]
    wait_for(lambda: f"request_id=trace-42 job_id={job_id}" in log.read_text(), 10,
             what="the access line with both ids")


def test_openai_client_errors(server):
    base, _ = server
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
    other_name = client.embeddings.create(model="text-embedding-3-small", input=TEXTS[0])
    assert other_name.model == "text-embedding-3-small"  # one model here: any name is served, echoed
    with pytest.raises(openai.BadRequestError) as bad_input:
        client.embeddings.create(model="bge-m3", input=[])
    assert bad_input.value.code == "invalid_request"
    with pytest.raises(openai.BadRequestError) as bad_dims:
        client.embeddings.create(model="bge-m3", input="a", dimensions=8)
    assert bad_dims.value.code == "dimensions_unsupported"
    with pytest.raises(openai.BadRequestError) as huge_dims:  # quoted cut short, not 400 digits
        client.embeddings.create(model="bge-m3", input="a", dimensions=int("9" * 400))
    assert huge_dims.value.code == "dimensions_unsupported"
    assert "9" * 100 + "… (400 characters) is not supported" in huge_dims.value.message
    assert client.models.retrieve("bge-m3").id == "bge-m3"
    assert [m.id for m in client.models.list()][0] == "bge-m3"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("text-embedding-3-small")
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        openai.OpenAI(base_url=base + "/v1", api_key="sk-wrong", max_retries=0).embeddings.create(
            model="bge-m3", input="a")
    assert unauthorized.value.body["type"] == "authentication_error"


def test_gunicorn_routes_over_http(server):
    base, _ = server
    headers = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(base + "/embed", json={"texts": ["今天天气真好", "阳光明媚"], "mode": "dense"},
                   headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert list(r.json()) == ["embeddings", "dimension", "mode", "latency_ms", "usage"]
    assert httpx.get(base + "/readyz").status_code == 200
    assert httpx.get(base + "/v1/models").status_code == 401
    r = httpx.post(base + "/v1/jobs", content=b"x" * 100,
                   headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.get(base + "/nowhere", headers=headers)
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"


def test_concurrent_requests_under_gthread(server):
    """Many threads of one gunicorn process publish and wait at once; each gets its own vectors."""
    from concurrent.futures import ThreadPoolExecutor

    base, _ = server
    headers = {"Authorization": f"Bearer {KEY}"}
    words = "quick brown fox lazy dog weather sunny query document token redis python".split()
    # the tiny tokenizer has no digits (they all map to <unk>), so vary words instead
    texts = [f"{a} {b} today" for a in words[:6] for b in words[6:10]]

    def embed(text: str) -> list[float]:
        r = httpx.post(base + "/embed", json={"texts": [text]}, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["embeddings"][0]

    assert CLIENTS <= wait_slots(THREADS)  # else the test would measure the busy guard instead
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        together = list(pool.map(embed, texts))
    alone = [embed(text) for text in texts]
    # Each text got its own vector back (co-batched texts are padded differently: float noise).
    assert len(together) == len(texts) and all(len(v) == len(alone[0]) for v in together)
    for i, (got, want) in enumerate(zip(together, alone)):
        assert len(got) == len(want)
        assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5, (i, texts[i])
    assert len({tuple(v) for v in together}) == len(texts)


def test_the_openai_client_does_not_retry_a_sync_timeout(base_settings, live_worker, redis_server):
    """A 504 leaves its job running; the SDK's default two retries would start two more."""
    from api import create_app
    from bge_m3.records import job_key

    app = create_app(base_settings.replace(sync_timeout=0.0))
    client = openai.OpenAI(base_url="http://api.test/v1", api_key="unused",  # default max_retries: 2
                           http_client=httpx.Client(transport=httpx.WSGITransport(app=app)))
    db = redis_server.client(0)
    before = set(db.scan_iter(job_key("*")))
    with pytest.raises(openai.APIStatusError) as timed_out:
        client.embeddings.create(model="bge-m3", input=TEXTS)
    assert timed_out.value.status_code == 504
    assert timed_out.value.response.headers["x-should-retry"] == "false"
    assert len(set(db.scan_iter(job_key("*"))) - before) == 1
