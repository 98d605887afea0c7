"""The web console when the API answers badly: failed polls, a busy API, a key no header can
carry, slow readiness answers, and weights that make no hybrid score.

The stack and the page helpers are tests/console_support.py's (fixtures: tests/conftest.py); Playwright's ``page.route`` stands in
for the failures (a 503 from Redis, a dropped connection, a slow /readyz) in front of the real API.
"""
from __future__ import annotations

import json

import pytest

from tests.console_support import THREE_TEXTS, run_embed

pytestmark = pytest.mark.timeout(300)


def error_body(code: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "message": message}})


def fulfil(route, status: int, code: str, message: str, retry_after: str | None = None) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    route.fulfill(status=status, headers=headers, content_type="application/json",
                  body=error_body(code, message))


def wait_until(page, condition, seconds: float = 10) -> None:
    """Lets the page run (and its routes be called) until ``condition()`` holds."""
    for _ in range(int(seconds * 50)):
        if condition():
            return
        page.wait_for_timeout(20)
    raise AssertionError(f"not within {seconds} s")


def settles(page, results: str, error: str) -> None:
    """Waits until the panel shows either its results or its error, whichever comes."""
    page.wait_for_function(
        "([r, e]) => !document.querySelector(r).hidden || !document.querySelector(e).hidden",
        arg=[results, error])


def test_failed_polls_are_asked_again_and_the_job_still_shows(served, open_page):
    """Redis restarting (503 redis_unavailable, Retry-After: 1), then a dropped connection: the
    page asks again and shows the job's results, where it used to end the run and lose the job."""
    failures = ["503", "drop"]
    seen = []

    def poll(route):
        seen.append(route.request.url)
        if not failures:
            route.continue_()
        elif failures.pop(0) == "503":
            fulfil(route, 503, "redis_unavailable", "Redis is not answering; try again later", "1")
        else:
            route.abort("connectionreset")

    page = open_page(served.url, setup=lambda p: p.route("**/v1/jobs/*?wait=*", poll))
    page.fill("#texts", "\n".join(THREE_TEXTS))
    page.check('input[name="mode"][value="dense"]')
    page.click("#run-embed")
    page.wait_for_function("() => document.querySelector('#embed-progress').textContent"
                           ".includes('asking again in 1 s')")
    settles(page, "#embed-results", "#embed-error")
    assert page.is_hidden("#embed-error"), page.text_content("#embed-error")
    job_id = page.get_attribute("#embed-results", "data-job")
    assert served.job(job_id)["id"] == job_id
    assert page.locator("#heatmap td.cell").count() == 9
    assert len(seen) >= 3 and not failures


def test_a_job_the_api_cannot_be_asked_about_is_linked_not_lost(served, open_page):
    """Every poll fails for longer than the page waits (its clock run fast): the error says so
    and links to the job, which the API ran meanwhile."""
    polls = []

    def refuse(route):
        polls.append(route.request.url)
        fulfil(route, 503, "redis_unavailable", "Redis is not answering; try again later", "5")

    def setup(page):
        page.clock.install()
        page.route("**/v1/jobs/*?wait=*", refuse)

    page = open_page(served.url, setup=setup)
    page.fill("#texts", "\n".join(THREE_TEXTS))
    page.click("#run-embed")
    error = page.locator("#embed-error")
    for _ in range(100):
        if error.is_visible():
            break
        page.clock.fast_forward(5_000)
        page.wait_for_timeout(50)
    link = page.locator("#embed-error a")
    assert link.is_visible(), error.text_content()
    text = error.text_content()
    assert "Redis is down" in text and "the job may go on" in text, text
    href = link.get_attribute("href")
    assert href.startswith("/v1/jobs/") and link.text_content() == f"GET {href}"
    assert served.job(href.split("/v1/jobs/")[1])["status"] == "succeeded"
    assert 2 <= len(polls) <= 26, len(polls)  # at most every 5 s (its Retry-After) for 120 s
    assert page.is_enabled("#run-embed") and page.is_hidden("#cancel-embed")


def test_a_key_no_header_can_carry_is_refused_and_readiness_still_shows(served, open_page):
    """A zero-width space pasted with the key: fetch() would throw before sending anything, and
    the strip said "cannot reach the API". The page says the key is invalid and keeps none."""
    page = open_page(served.url)
    page.wait_for_function("() => document.querySelector('#st-ready').dataset.state === 'ok'")
    page.fill("#api-key", "console-key\u200b")
    page.press("#api-key", "Tab")
    key_error = page.locator("#key-error")
    key_error.wait_for(state="visible")
    assert "invalid" in key_error.text_content()
    assert page.get_attribute("#api-key", "aria-invalid") == "true"
    assert page.evaluate("() => sessionStorage.getItem('bge-m3.api-key')") is None
    page.wait_for_timeout(2500)  # the refresh the key started, and the next one
    assert page.text_content("#st-ready") == "ready"
    job_id = run_embed(page, THREE_TEXTS, "dense")  # no key is sent, and none is needed here
    assert served.job(job_id)["id"] == job_id

    page.fill("#api-key", "console-key")
    page.press("#api-key", "Tab")
    key_error.wait_for(state="hidden")
    assert page.evaluate("() => sessionStorage.getItem('bge-m3.api-key')") == "console-key"


def test_the_status_strip_asks_once_at_a_time_and_drops_stale_answers(served, open_page):
    """A /readyz answer that takes seconds: the next refresh waits for it, instead of one every
    2 s piling up; and an answer overtaken by a newer refresh (a key typed meanwhile) is dropped."""
    held = []
    page = open_page(served.url,
                     setup=lambda p: p.route("**/readyz", lambda route: held.append(route)))
    wait_until(page, lambda: held)
    page.wait_for_timeout(5000)
    assert len(held) == 1, [r.request.url for r in held]  # still the first: none piled up
    held[0].continue_()
    page.wait_for_function("() => document.querySelector('#st-ready').textContent === 'ready'")
    wait_until(page, lambda: len(held) == 2)  # the next refresh, 2 s after the first settled

    # A refresh out of turn (a new key) while the scheduled one is held: the newer answer wins.
    page.fill("#api-key", "any-key")
    page.press("#api-key", "Tab")
    wait_until(page, lambda: len(held) == 3)
    held[2].continue_()
    page.wait_for_timeout(500)
    fulfil(held[1], 503, "no_ready_worker", "a stale answer")
    page.wait_for_timeout(500)
    assert page.text_content("#st-ready") == "ready"
    # One refresh goes on from the newer answer; the overtaken one scheduled none beside it.
    wait_until(page, lambda: len(held) == 4)
    page.wait_for_timeout(3000)
    assert len(held) == 4


def test_a_busy_score_is_asked_again(served, open_page):
    """503 busy (every thread that may wait is taken, Retry-After: 1) is not "not ready": the page
    says the API is busy and asks again."""
    answers = []

    def score(route):
        answers.append(route.request.url)
        if len(answers) == 1:
            fulfil(route, 503, "busy", "every request thread that may wait on a job is waiting", "1")
        else:
            route.continue_()

    page = open_page(served.url, setup=lambda p: p.route("**/v1/score", score))
    page.click("#tab-score")
    page.fill("#query", "what's the weather like today")
    page.fill("#documents", "sunny weather\nrain in Paris")
    page.click("#run-score")
    page.wait_for_function("() => document.querySelector('#score-progress').textContent"
                           ".includes('the API is busy; retrying in 1 s')", timeout=10_000)
    settles(page, "#score-results", "#score-error")
    assert page.is_hidden("#score-error"), page.text_content("#score-error")
    assert page.locator("#ranking tbody tr").count() == 2
    assert len(answers) == 2


def test_hybrid_heatmap_is_left_out_when_every_weight_is_zero(served, open_page):
    """The Score tab refuses all-zero weights; the Embed tab's Hybrid matrix says it has no score
    rather than show zeros under a "weighted" caption, and comes back when a weight does."""
    page = open_page(served.url)
    run_embed(page, THREE_TEXTS, "all")
    page.click('#heat-tabs button[data-kind="dense"]')
    dense = page.eval_on_selector_all("#heatmap td.cell", "cs => cs.map(c => +c.dataset.value)")
    page.click("#tab-score")
    for name in ("dense", "sparse", "colbert"):
        page.fill(f"#w-{name}", "0")
    page.click("#tab-embed")
    page.click('#heat-tabs button[data-kind="hybrid"]')
    assert page.locator("#heatmap td.cell").count() == 0
    assert "every weight on the Score tab is zero" in page.text_content("#heat-caption")
    assert page.get_attribute("#heatmap", "data-kind") == "hybrid"
    assert page.get_attribute('#heat-tabs button[data-kind="hybrid"]', "aria-selected") == "true"

    page.click("#tab-score")
    page.fill("#w-dense", "1")  # the hybrid is then the dense matrix
    page.click("#tab-embed")
    hybrid = page.eval_on_selector_all("#heatmap td.cell", "cs => cs.map(c => +c.dataset.value)")
    assert hybrid == pytest.approx(dense, abs=1e-6)
    assert "weighted" in page.text_content("#heat-caption")


def test_an_unchanging_not_ready_is_asked_less_often_and_a_refused_key_not_again(
        base_settings, redis_server, open_page):
    """No worker and no key: /readyz keeps answering 503 and /v1/models 401, each a red line in
    the browser's console. The strip asks again after 2, 4, then 8 s (not every 2 s), and asks
    /v1/models nothing more until the key changes; a key typed (no Tab, no Enter) is taken within
    a second, and both are asked at once."""
    import time
    from urllib.parse import urlparse

    from tests.console_support import STATUS_DB, serve

    redis_server.client(STATUS_DB).flushdb()
    server = serve(base_settings.replace(redis_url=redis_server.url(STATUS_DB), api_keys=("strip-key",)))
    asked: list[tuple[float, str]] = []
    try:
        page = open_page(server.url, setup=lambda p: p.on(
            "request", lambda r: asked.append((time.monotonic(), urlparse(r.url).path))))
        page.wait_for_function(
            "() => document.querySelector('#st-ready').textContent.includes('no worker ready')")
        page.wait_for_timeout(12_500)
        readyz = [t for t, path in asked if path == "/readyz"]
        gaps = [round(b - a, 1) for a, b in zip(readyz, readyz[1:])]
        assert 3 <= len(readyz) <= 4 and gaps[0] < 3 and gaps[1] > 3.5, gaps  # 0, 2, 6, (14) s
        assert [path for _, path in asked].count("/v1/models") == 1

        page.fill("#api-key", "strip-key")  # typed, not yet left
        wait_until(page, lambda: [path for _, path in asked].count("/v1/models") == 2, seconds=3)
        assert page.evaluate("() => sessionStorage.getItem('bge-m3.api-key')") == "strip-key"
        assert len([1 for _, path in asked if path == "/readyz"]) == len(readyz) + 1
        assert page.text_content("#st-ready").startswith("no worker ready")
    finally:
        server.close()
        redis_server.client(STATUS_DB).flushdb()
