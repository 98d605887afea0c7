"""Shared fixtures: the tiny model, a private redis-server, settings, real workers, the Flask app.

Nothing here touches 127.0.0.1:6379 or the network.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bge_m3.settings import Settings  # noqa: E402
from tests.console_support import CHROMIUM, LAUNCH_ARGS, UI_TIMEOUT_MS  # noqa: E402
from tests.support import RedisServer, spawn_worker  # noqa: E402


@dataclass(frozen=True)
class TinyModel:
    dir: Path
    manifest: Path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    from bge_m3.tinymodel import build

    root = tmp_path_factory.mktemp("tiny")
    manifest = build(root / "model", seed=0)
    return TinyModel(root / "model", manifest)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_db(redis_server):
    """A clean database (1) for unit tests, flushed around each test (rq style)."""
    client = redis_server.client(1)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture(scope="session")
def base_settings(tiny_model, redis_server, tmp_path_factory) -> Settings:
    """Settings for the live stack: database 0 of the private Redis, the tiny model, CPU."""
    return Settings.from_env({}, redis_url=redis_server.url(0), model_dir=tiny_model.dir,
                             manifest=tiny_model.manifest, device="cpu",
                             log_dir=tmp_path_factory.mktemp("logs"),
                             data_dir=tmp_path_factory.mktemp("data"), auto_download=False,
                             endpoints=("http://127.0.0.1:9",))


@pytest.fixture(scope="session")
def live_worker(base_settings, tmp_path_factory):
    """One real `bge-m3 worker` subprocess shared by the API tests."""
    worker = spawn_worker(base_settings, tmp_path_factory.mktemp("worker"))
    yield worker
    worker.stop()


@pytest.fixture
def worker_factory(base_settings, tmp_path):
    """Start extra workers (function scope); all are stopped at the end of the test."""
    started = []

    def start(settings: Settings | None = None, **kwargs):
        worker = spawn_worker(settings or base_settings, tmp_path, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout=10)


JOB_STATE = ("job", "result", "done", "lease", "staging", "events")
"""Key kinds of jobs (``bge-m3:{kind}:…``) removed from database 0 before each API test: the
shared live worker's readiness, statistics and queue stay, earlier tests' jobs do not."""


@pytest.fixture
def app(base_settings, redis_server):
    from api import create_app

    db = redis_server.client(0)
    for kind in JOB_STATE:
        keys = list(db.scan_iter(match=f"bge-m3:{kind}:*", count=1000))
        if keys:
            db.delete(*keys)
    return create_app(base_settings)


@pytest.fixture
def client(app):
    return app.test_client()


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# -- the web console's browser (tests/test_console*.py) ---------------------------------------
@pytest.fixture(scope="module")
def served(base_settings, live_worker):
    from tests.console_support import serve

    server = serve(base_settings)
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing; install it with `apt-get install -y chromium`"
        if os.environ.get("CI"):  # CI must run the browser tests, never skip them silently
            pytest.fail(message)
        pytest.skip(message + " (not in CI)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser):
    """Opens the console in a fresh context; fails the test on any uncaught page error or alert."""
    contexts, problems = [], []

    def open_(url: str, width: int = 1280, height: int = 800, setup=None):
        """``setup(page)`` runs before the page loads: routes and clocks that its very first
        requests must meet."""
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"),
                                          dialog.dismiss()))
        if setup:
            setup(page)
        page.goto(url + "/")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not problems, problems
