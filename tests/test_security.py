"""Security: API keys on every route but the probes, one key's jobs invisible to another, Redis
passwords never in logs or /v1/models, and a pickle message never deserialized by a worker."""
from __future__ import annotations

import pickle
import re
import uuid

import httpx
import pytest

from api import create_app
from bge_m3.jobs import JobStore
from bge_m3.queue import QUEUE_NAME, TASK_NAME, celery_config, make_celery, redis_client
from bge_m3.redaction import redact_url
from bge_m3.settings import Settings
from tests.stack_support import start_api
from tests.support import RedisServer, settings_on_db
from tests.worker_support import Queue

KEYS = ("key-alpha-0123456789", "key-bravo-9876543210")
OPEN_ENDPOINTS = {"ops.healthz", "ops.readyz", "ops.metrics"}
"""The only data routes that answer without a key (the issue's list)."""

PAGE_ENDPOINTS = {"console.index", "console.asset"}
"""The web page's own files: open by design (README, API section), they hold no data and the
page must load so a user can type a key into it. Checked below to read nothing from Redis."""


def concrete(rule) -> str:
    path = rule.rule
    for name in rule.arguments:
        value = {"job_id": "0" * 32, "name": "index.html", "filename": "index.html"}.get(name, "x")
        path = re.sub(rf"<(?:[^:<>]+:)?{name}>", value, path)
    return path


def test_no_route_but_the_probes_answers_without_a_key(base_settings, redis_server):
    settings = settings_on_db(base_settings, redis_server, "security", api_keys=KEYS)
    app = create_app(settings)
    client = app.test_client()
    opened, checked = set(), 0
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            path = concrete(rule)
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEYS[0]}"}):
                r = client.open(path, method=method, headers=headers, json={"texts": ["a"]})
                checked += 1
                if r.status_code == 401:
                    assert r.is_json and r.get_json()["error"]["code"] == "unauthorized"
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                else:
                    opened.add(rule.endpoint)
    assert checked > 30
    assert opened - PAGE_ENDPOINTS == OPEN_ENDPOINTS, opened
    # The page's routes read nothing from Redis: they answer with Redis gone.
    dead = create_app(settings.replace(redis_url="redis+socket:///nonexistent/redis.sock"))
    for path in ("/", "/console/app.js"):
        assert dead.test_client().get(path).status_code == 200
    # And with a right key the data routes answer.
    r = client.get("/v1/models", headers={"Authorization": f"Bearer {KEYS[1]}"})
    assert r.status_code == 200
    # No second copy of the page without its headers (Flask's /static served one, frameable).
    assert client.get("/static/index.html").status_code == 401  # no such route: a key first
    assert client.get("/static/index.html", headers={"Authorization": f"Bearer {KEYS[0]}"}).status_code == 404
    # OPTIONS lists a route's methods (Allow): a key first, as for GET; only a CORS preflight,
    # which browsers send without Authorization, is let through, and only with CORS on.
    assert client.options("/v1/jobs/" + "0" * 32).status_code == 401
    assert client.options("/v1/jobs", headers={"Authorization": f"Bearer {KEYS[0]}"}).status_code == 200
    cors = create_app(settings.replace(cors_origins=("https://app.example",))).test_client()
    pre = cors.options("/v1/jobs", headers={"Origin": "https://app.example",
                                            "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 200 and pre.headers["Access-Control-Allow-Origin"] == "https://app.example"


def test_one_key_cannot_read_cancel_or_list_another_keys_jobs(base_settings, redis_server,
                                                              worker_factory, tmp_path):
    settings = settings_on_db(base_settings, redis_server, "security", api_keys=KEYS)
    worker_factory(settings)
    api = start_api(settings, tmp_path, access_log=True)
    a = {"Authorization": f"Bearer {KEYS[0]}"}
    b = {"Authorization": f"Bearer {KEYS[1]}"}
    try:
        with api.client() as http:
            done = http.post("/v1/jobs", json={"texts": ["alpha's secret text"]}, headers=a).json()["id"]
            assert http.get(f"/v1/jobs/{done}?wait=30", headers=a).json()["status"] == "succeeded"
            for r in (http.get(f"/v1/jobs/{done}", headers=b), http.get(f"/v1/jobs/{done}?wait=1", headers=b),
                      http.delete(f"/v1/jobs/{done}", headers=b)):
                assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
                assert "secret" not in r.text
            # No route lists jobs at all, for any key.
            for headers in (a, b):
                assert http.get("/v1/jobs", headers=headers).status_code == 405
        assert KEYS[0] not in api.output() and KEYS[1] not in api.output()
    finally:
        api.stop()


def test_cancel_by_another_key_is_404_and_the_job_stays_queued(base_settings, redis_server, tmp_path):
    settings = settings_on_db(base_settings, redis_server, "security", api_keys=KEYS)  # no worker here
    api = start_api(settings, tmp_path)
    a = {"Authorization": f"Bearer {KEYS[0]}"}
    b = {"Authorization": f"Bearer {KEYS[1]}"}
    try:
        with api.client() as http:
            job_id = http.post("/v1/jobs", json={"texts": ["queued"]}, headers=a).json()["id"]
            assert http.delete(f"/v1/jobs/{job_id}", headers=b).status_code == 404
            assert http.get(f"/v1/jobs/{job_id}", headers=a).json()["status"] == "queued"
            assert http.delete(f"/v1/jobs/{job_id}", headers=a).json()["status"] == "cancelled"
    finally:
        api.stop()


@pytest.mark.parametrize("form", ["kombu", "redis-py"])
def test_redis_password_never_in_logs_or_models(base_settings, worker_factory, tmp_path, form):
    """Both socket URL forms: kombu's (password in the userinfo) and redis-py's (``unix://`` with
    ``password=`` in the query, which kombu alone would ignore and never connect)."""
    password = f"pw-{uuid.uuid4().hex}"
    redis = RedisServer(tmp_path / "auth-redis", password=password)
    try:
        url = redis.url(0) if form == "kombu" else f"unix://{redis.socket}?db=0&password={password}"
        settings = base_settings.replace(redis_url=url)
        assert password in settings.redis_url and password not in redact_url(settings.redis_url)
        worker = worker_factory(settings)
        api = start_api(settings, tmp_path, access_log=True)
        try:
            with api.client() as http:
                job = http.post("/v1/jobs", json={"texts": ["hello"]}).json()
                assert http.get(f"/v1/jobs/{job['id']}?wait=30").json()["status"] == "succeeded"
                models = http.get("/v1/models")
                assert models.status_code == 200 and models.json()["workers"]
                assert password not in models.text
                assert password not in http.get("/metrics").text
                assert password not in http.get("/readyz").text
        finally:
            api.stop()
        # A wrong password: refused, and neither password is echoed.
        wrong = settings.replace(redis_url=url.replace(password, "not-the-password"))
        bad_api = start_api(wrong, tmp_path)
        try:
            r = httpx.get(bad_api.url + "/readyz")
            assert r.status_code == 503 and "not-the-password" not in r.text
        finally:
            bad_api.stop()
        worker.stop()
        for text in (worker.output(), api.output(), bad_api.output()):
            assert password not in text and "not-the-password" not in text
        assert "Connected to" in worker.output()  # the broker line is there, redacted
    finally:
        redis.stop()


def test_rediss_url_is_accepted_and_redacted_without_connecting():
    """There is no TLS Redis on this machine: this checks parsing, configuration and redaction
    only; nothing connects."""
    url = "rediss://:tls-secret-pw@redis.example.internal:6380/2?ssl_cert_reqs=required"
    settings = Settings.from_env({"REDIS_URL": url})
    assert settings.redis_url == url
    assert redact_url(url) == "rediss://:***@redis.example.internal:6380/2?ssl_cert_reqs=required"
    assert celery_config(settings)["broker_url"] == url
    app = make_celery(settings)
    conn = app.connection_for_write()
    assert conn.transport_cls in ("rediss", "redis") and conn.ssl
    assert "tls-secret-pw" not in conn.as_uri()  # kombu masks it too
    client = redis_client(url)
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    assert kwargs["host"] == "redis.example.internal" and kwargs["port"] == 6380 and kwargs["db"] == 2
    app.close()


class Tripwire:
    """Unpickling this creates a file: proof of code execution if a worker ever loads it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_message_is_refused_and_never_executed(base_settings, redis_server, worker_factory,
                                                       tmp_path):
    settings = settings_on_db(base_settings, redis_server, "security")
    worker = worker_factory(settings)
    queue = Queue(settings)
    marker = tmp_path / "pwned"
    job = queue.store.create({"texts": ["must not run"], "modes": ["dense"], "max_length": 64,
                              "truncate": True})
    body = pickle.dumps(((), {"job_id": job.id, "evil": Tripwire(str(marker))}, {}), protocol=2)
    with make_celery(settings).connection_for_write() as conn:
        producer = conn.Producer()
        producer.publish(body, routing_key=QUEUE_NAME, exchange=QUEUE_NAME,
                         content_type="application/x-python-serialize", content_encoding="binary",
                         headers={"lang": "py", "task": TASK_NAME, "id": job.id, "root_id": job.id,
                                  "parent_id": None, "group": None, "retries": 0, "eta": None,
                                  "expires": None, "argsrepr": "()", "kwargsrepr": "{}"})
    from tests.support import wait_for

    refusal = "Refusing to deserialize untrusted content of type pickle"
    wait_for(lambda: refusal in worker.output(), 30, what="the worker to log the refusal")
    after = queue.wait(queue.submit(["a normal job after the pickle"]), 60)  # still serving
    assert after.status == "succeeded"
    assert not marker.exists()
    record = JobStore(redis_client(settings.redis_url), 60).get(job.id)
    assert record.status == "queued" and record.attempts == 0  # never started
    # Not requeued. The normal job's own ack lands just after its result: wait for it.
    wait_for(lambda: queue.redis.llen(QUEUE_NAME) == 0 and queue.redis.hlen("unacked") == 0, 10,
             what="no message left queued or unacked")
    assert worker.proc.poll() is None
    queue.close()
