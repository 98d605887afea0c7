"""What the web console's browser tests share (``tests/test_console*.py``): the served API, the
browser's settings, maths from the API's numbers, and helpers that read the page. Their fixtures
(``served``, ``browser``, ``open_page``) are in ``tests/conftest.py``.
"""
from __future__ import annotations

import json
import math
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.support import SUITE_DBS


CHROMIUM = Path("/usr/bin/chromium")
"""Debian's chromium; Playwright's own browser download cannot work offline."""

LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]

UI_TIMEOUT_MS = 60_000
"""Bounds one wait for the page (a job on the tiny model takes well under a second)."""

STATUS_DB = SUITE_DBS["console"]
"""Redis database of the tests that need no worker or their own, so no other suite's worker is
seen as ready."""

THREE_TEXTS = ["今天天气真好", "阳光明媚", "The stock market fell sharply today"]


# -- stack -----------------------------------------------------------------------------------
class ServedApp:
    """A Flask app on a free port in a thread (threaded: long-polls must not block the page)."""

    def __init__(self, app):
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def request(self, method: str, path: str, body=None, key: str | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=60) as res:
                return res.status, json.loads(res.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def job(self, job_id: str, key: str | None = None) -> dict:
        status, body = self.request("GET", f"/v1/jobs/{job_id}?wait=30", key=key)
        assert status == 200, body
        assert body["status"] == "succeeded", body
        return body

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


def serve(settings) -> ServedApp:
    from api import create_app

    return ServedApp(create_app(settings))


# -- maths, from the API's numbers -----------------------------------------------------------
def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def lexical(a: dict, b: dict) -> float:
    other = dict(zip(b["indices"], b["values"]))
    return sum(w * other[i] for i, w in zip(a["indices"], a["values"]) if i in other)


def rows(colbert: dict) -> list[list[float]]:
    data = colbert["data"]
    if isinstance(data, list) and data and isinstance(data[0], list):
        return data
    from bge_m3.codec import unpack_rows

    return unpack_rows(colbert)


def maxsim(q: list[list[float]], p: list[list[float]]) -> float:
    return sum(max(sum(x * y for x, y in zip(qv, pv)) for pv in p) for qv in q) / len(q)


def items(job: dict) -> list[dict]:
    return job["result"]["items"]


def latency_ms(job: dict) -> tuple[float, float, float]:
    """Queue, compute and total time as the API reports them (the worker's timings)."""
    timings = job["timings"]
    return timings["queue_ms"], timings["compute_ms"], timings["total_ms"]


def shown_ms(text: str) -> tuple[float, float]:
    """A displayed duration in ms, and the rounding of its display ("12.3 ms" or "1.01 s")."""
    value, unit = text.split()
    return (float(value) * 1000, 5.0) if unit == "s" else (float(value), 0.05)


# -- page helpers ----------------------------------------------------------------------------
def run_embed(page, texts: list[str], mode: str) -> str:
    page.fill("#texts", "\n".join(texts))
    page.check(f'input[name="mode"][value="{mode}"]')
    previous = page.get_attribute("#embed-results", "data-job")
    page.click("#run-embed")
    page.wait_for_function(
        "prev => { const r = document.querySelector('#embed-results');"
        " return !r.hidden && r.dataset.job && r.dataset.job !== prev; }", arg=previous)
    return page.get_attribute("#embed-results", "data-job")


def heatmap(page) -> dict[tuple[int, int], tuple[float, str]]:
    cells = page.eval_on_selector_all(
        "#heatmap td.cell", "cells => cells.map(c => [+c.dataset.row, +c.dataset.col,"
        " +c.dataset.value, c.textContent, getComputedStyle(c).backgroundColor])")
    assert len({c[4] for c in cells}) > 1, "cells are not coloured by value"
    return {(r, c): (v, label) for r, c, v, label, _ in cells}


def assert_matrix(page, expected, tolerance: float = 1e-5) -> None:
    shown = heatmap(page)
    n = len(expected)
    assert set(shown) == {(i, j) for i in range(n) for j in range(n)}
    for (i, j), (value, label) in shown.items():
        assert value == pytest.approx(expected[i][j], abs=tolerance), (i, j)
        assert float(label) == pytest.approx(expected[i][j], abs=0.0005 + tolerance), (i, j, label)


def assert_the_one_job_cancelled(page, redis_server) -> None:
    """The page says the job was cancelled, and the console's database holds it, cancelled."""
    error = page.locator("#embed-error")
    error.wait_for(state="visible")
    assert "cancelled" in error.text_content(), error.text_content()
    db = redis_server.client(STATUS_DB)
    (key,) = list(db.scan_iter("bge-m3:job:*"))
    assert db.hget(key, "status") == "cancelled"


def no_horizontal_overflow(page) -> None:
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"page is {width[0]}px wide in a {width[1]}px window"
