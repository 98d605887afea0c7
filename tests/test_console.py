"""The web console at ``/``, driven in a real browser (Debian's chromium via Playwright).

The stack is real: the API served over HTTP by werkzeug on a free port, a `bge-m3 worker`
subprocess with the tiny model, and the private redis-server. Every value the page shows is
checked against numbers the test fetches from the API itself, never against constants.
"""
from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request

import pytest

from tests.console_support import (
    STATUS_DB, THREE_TEXTS, ServedApp, assert_matrix, assert_the_one_job_cancelled, cosine, items,
    latency_ms, lexical, maxsim, no_horizontal_overflow, rows, run_embed, serve, shown_ms,
)

pytestmark = pytest.mark.timeout(300)


# -- tests -----------------------------------------------------------------------------------
def test_dense_heatmap_is_cosine_of_the_apis_vectors(served, open_page, tmp_path):
    page = open_page(served.url)
    job_id = run_embed(page, THREE_TEXTS, "dense")
    assert page.locator("#heatmap td.cell").count() == 9

    job = served.job(job_id)
    vectors = [item["dense"] for item in items(job)]
    assert_matrix(page, [[cosine(a, b) for b in vectors] for a in vectors])
    assert page.text_content("#f-texts") == "3"
    assert page.text_content("#f-dim") == str(len(vectors[0]))
    assert page.text_content("#f-tokens") == str(job["usage"]["tokens"])
    for fact, expected in zip(("#f-queue", "#f-compute", "#f-total"), latency_ms(job)):
        shown, rounding = shown_ms(page.text_content(fact))
        assert shown == pytest.approx(expected, abs=rounding + 0.001), fact
    assert page.locator("#heat-tabs button").all_text_contents() == ["Dense"]
    no_horizontal_overflow(page)
    page.screenshot(path=str(tmp_path / "dense.png"), full_page=True)


ELLIPSIS_SIDE = """th => {
  const text = [...th.querySelectorAll('*'), th].map(n => [...n.childNodes]).flat()
    .find(n => n.nodeType === 3 && n.data.endsWith('\u2026'));
  const rect = (i) => { const r = document.createRange(); r.setStart(text, i); r.setEnd(text, i + 1);
                        return r.getBoundingClientRect().left; };
  return { first: rect(0), ellipsis: rect(text.data.length - 1) };
}"""
"""Where a cut row label's first character and its "…" are drawn (x of their left edges)."""


def test_a_cut_label_ends_where_its_own_text_ends(served, open_page):
    """A right-to-left text's label is cut at its end, its left side; the "…" used to sit at the
    right, beside the text's first word. A left-to-right one ends at the right as before."""
    arabic = "الطقس اليوم مشمس وجميل جدا في المدينة"
    english = "the weather today is sunny and very nice in the city"
    page = open_page(served.url)
    run_embed(page, [arabic, english], "dense")
    arabic_label, english_label = page.locator("#heatmap tbody th").all()[:2]
    rtl, ltr = arabic_label.evaluate(ELLIPSIS_SIDE), english_label.evaluate(ELLIPSIS_SIDE)
    assert rtl["ellipsis"] < rtl["first"], rtl
    assert ltr["ellipsis"] > ltr["first"], ltr
    assert arabic_label.text_content().startswith("1. ") and english_label.text_content().startswith("2. ")


def test_all_modes_show_sparse_chips_colbert_counts_and_four_heatmaps(served, open_page, tmp_path):
    page = open_page(served.url)
    job_id = run_embed(page, THREE_TEXTS, "all")
    job = served.job(job_id)
    results = items(job)

    assert page.locator("#heat-tabs button").all_text_contents() == ["Dense", "Sparse", "ColBERT",
                                                                     "Hybrid"]
    # Sparse chips: the top-weighted token ids of each text, heaviest first.
    page.locator("#sparse-chips .chip").first.wait_for()
    for i, item in enumerate(results):
        ranked = sorted(zip(item["sparse"]["values"], item["sparse"]["indices"]), reverse=True)
        shown = page.eval_on_selector_all(f'#sparse-chips [data-text="{i}"] .chip',
                                          "chips => chips.map(c => c.dataset.token)")
        assert shown, f"no chips for text {i}"
        assert [str(idx) for _, idx in ranked[:len(shown)]] == shown

    sparse = [item["sparse"] for item in results]
    page.click('#heat-tabs button[data-kind="sparse"]')
    assert_matrix(page, [[lexical(a, b) for b in sparse] for a in sparse])

    colbert = [rows(item["colbert"]) for item in results]
    page.click('#heat-tabs button[data-kind="colbert"]')
    maxsims = [[maxsim(a, b) for b in colbert] for a in colbert]
    assert_matrix(page, maxsims, tolerance=1e-4)  # float16 at rest by default

    vectors = [item["dense"] for item in results]
    page.click('#heat-tabs button[data-kind="hybrid"]')
    hybrid = [[(0.4 * cosine(vectors[i], vectors[j]) + 0.2 * lexical(sparse[i], sparse[j])
                + 0.4 * maxsims[i][j]) for j in range(3)] for i in range(3)]
    assert_matrix(page, hybrid, tolerance=1e-4)

    counts = page.eval_on_selector_all(
        "#colbert-table tbody tr", "trs => trs.map(t => [t.querySelector('.tokens').textContent,"
        " t.querySelector('.vectors').textContent])")
    assert counts == [[str(item["tokens"]), str(item["colbert"]["shape"][0])] for item in results]
    page.screenshot(path=str(tmp_path / "all.png"), full_page=True)


CANDIDATE_DOCUMENTS = [
    ["阳光明媚", "The stock market fell sharply today", "今天天气真好，适合散步",
     "A guide to baking sourdough bread", "weather report: sunny and warm"],
    ["apples and oranges", "orange juice recipe", "the history of Rome", "fresh fruit salad",
     "citrus trees in winter", "Roman roads and bridges"],
]
QUERY = "what's the weather like today"


def ranking(scores: list[dict]) -> list[int]:
    ordered = sorted(scores, key=lambda s: -s["hybrid"])
    return [s["index"] for s in ordered]


def score_list(body) -> list[dict]:
    if isinstance(body, list):
        return body
    for key in ("scores", "data", "results", "documents"):
        if isinstance(body.get(key), list):
            return body[key]
    raise AssertionError(f"unexpected /v1/score body: {body}")


def shown_ranking(page, weights: str) -> list[int]:
    page.wait_for_function("w => document.querySelector('#score-results').dataset.weights === w",
                           arg=weights)
    return [int(d) for d in page.eval_on_selector_all("#ranking tbody tr",
                                                      "trs => trs.map(t => t.dataset.doc)")]


def test_score_ranking_follows_the_weight_sliders(served, open_page, tmp_path):
    # Pick documents whose ranking differs between the default weights and dense-only, as the
    # API itself ranks them: the browser must then show both orders.
    for documents in CANDIDATE_DOCUMENTS:
        expected = {}
        for weights in ([0.4, 0.2, 0.4], [1.0, 0.0, 0.0]):
            status, body = served.request("POST", "/v1/score", {"query": QUERY, "documents": documents,
                                                                 "weights": weights})
            assert status == 200, body
            expected[tuple(weights)] = ranking(score_list(body))
        if expected[(0.4, 0.2, 0.4)] != expected[(1.0, 0.0, 0.0)]:
            break
    else:
        pytest.fail("no candidate document set ranks differently under 1/0/0 on this model")

    page = open_page(served.url)
    page.click("#tab-score")
    page.fill("#query", QUERY)
    page.fill("#documents", "\n".join(documents))
    page.click("#run-score")
    first = shown_ranking(page, "0.4,0.2,0.4")
    assert first == expected[(0.4, 0.2, 0.4)]

    for name, value in (("dense", "1"), ("sparse", "0"), ("colbert", "0")):
        page.fill(f"#w-{name}", value)
    moved = shown_ranking(page, "1,0,0")
    assert moved == expected[(1.0, 0.0, 0.0)]
    assert moved != first
    page.screenshot(path=str(tmp_path / "score.png"), full_page=True)


def test_score_sends_max_length_and_truncate(served, open_page):
    page = open_page(served.url)
    page.click("#tab-score")
    page.fill("#query", QUERY)
    page.fill("#documents", "a document far longer than four tokens, about the weather today")
    page.fill("#score-max-length", "0.4e1")  # 4, as the browser reads the field (parseInt: 0)
    page.uncheck("#score-truncate")
    page.click("#run-score")
    error = page.locator("#score-error")
    error.wait_for(state="visible")
    assert re.fullmatch(r"a text could not be embedded: query has \d+ tokens, more than "
                        r"max_length 4 \(send truncate=true to cut it\)", error.text_content())
    page.check("#score-truncate")
    page.click("#run-score")
    page.locator("#score-results").wait_for(state="visible")
    assert page.locator("#ranking tbody tr").count() == 1


def test_status_strip_shows_worker_then_no_worker_ready(base_settings, redis_server,
                                                        worker_factory, open_page, tmp_path):
    redis_server.client(STATUS_DB).flushdb()
    settings = base_settings.replace(redis_url=redis_server.url(STATUS_DB))
    worker = worker_factory(settings)
    server = serve(settings)
    try:
        page = open_page(server.url)
        page.wait_for_function("() => document.querySelector('#st-ready').dataset.state === 'ok'")
        assert page.text_content("#st-workers") == "workers: 1"
        status, models = server.request("GET", "/v1/models")
        assert status == 200, models
        strip = page.text_content("#status")
        assert "device: cpu" in strip.lower()
        # the model and manifest as status.js renders the one worker record /v1/models gives
        [record] = models["workers"]
        assert record["model"] and record["revision"] and record["manifest_digest"], record
        assert page.text_content("#st-model") == (
            f"model: {record['model']}@{str(record['revision'])[:12]}")
        digest = str(record["manifest_digest"]).removeprefix("sha256:")
        assert page.text_content("#st-manifest") == f"manifest verified: {digest[:12]}"
        # the queue depth comes from /metrics, fetched after the readiness is shown
        page.wait_for_function("() => document.querySelector('#st-queue').textContent === 'queue: 0'")
        page.screenshot(path=str(tmp_path / "ready.png"))

        worker.stop()
        page.wait_for_function(
            "() => document.querySelector('#st-ready').textContent.includes('no worker ready')")
        assert page.text_content("#st-workers") == "workers: 0"
        page.screenshot(path=str(tmp_path / "no-worker.png"))
    finally:
        server.close()
        redis_server.client(STATUS_DB).flushdb()


def test_api_key_is_asked_for_kept_in_session_and_sent(base_settings, live_worker, open_page,
                                                       tmp_path):
    key = "console-test-key"
    server = serve(base_settings.replace(api_keys=(key,)))
    try:
        page = open_page(server.url)
        # /readyz is open to all, the rest is not: the strip says a key is needed before a run.
        page.wait_for_function(
            "() => document.querySelector('#st-ready').textContent.includes('an API key is needed')")
        page.fill("#texts", "\n".join(THREE_TEXTS))
        page.click("#run-embed")
        error = page.locator("#embed-error")
        error.wait_for(state="visible")
        assert "API key" in error.text_content()
        page.screenshot(path=str(tmp_path / "key-missing.png"))

        page.fill("#api-key", key)
        page.press("#api-key", "Tab")
        page.wait_for_function("() => document.querySelector('#st-ready').dataset.state === 'ok'")
        job_id = run_embed(page, THREE_TEXTS, "dense")
        assert not error.is_visible()
        assert server.job(job_id, key=key)["id"] == job_id  # created under this key
        assert server.request("GET", f"/v1/jobs/{job_id}")[0] == 401
        assert page.evaluate("() => sessionStorage.getItem('bge-m3.api-key')") == key
        page.reload()
        assert page.input_value("#api-key") == key
    finally:
        server.close()


def test_errors_show_inline_in_plain_words(served, open_page):
    page = open_page(served.url)
    page.fill("#texts", "word " * 200)
    page.fill("#max-length", "0.8e1")  # 8, as the browser reads the field (parseInt: 0)
    page.uncheck("#truncate")
    page.click("#run-embed")
    error = page.locator("#embed-error")
    error.wait_for(state="visible")
    text = error.text_content()
    assert "Traceback" not in text and "{" not in text
    assert re.fullmatch(r"the job failed: texts\[0\] has \d+ tokens, more than "
                        r"max_length 8 \(send truncate=true to cut it\)", text), text


def test_usable_at_phone_width(served, open_page, tmp_path):
    """Also with a long unbroken token (a URL), which used to widen the ColBERT table and the page."""
    texts = [*THREE_TEXTS, "see https://example.com/docs/bge-m3/embedding-service/readme.html"]
    page = open_page(served.url, width=375, height=812)
    run_embed(page, texts, "all")
    assert page.locator("#heatmap td.cell").count() == 16
    no_horizontal_overflow(page)
    assert page.locator("#run-embed").bounding_box()["width"] <= 375
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)


def test_page_and_assets_are_served_without_a_key_and_nothing_else_is(base_settings):
    from api import create_app

    client = create_app(base_settings.replace(api_keys=("k",))).test_client()
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    script = client.get("/console/app.js")
    assert script.status_code == 200 and "javascript" in script.mimetype
    assert client.get("/console/nope.js").get_json()["error"]["code"] == "not_found"
    open_client = create_app(base_settings).test_client()
    for path in ("/console/..%2Fconsole.py", "/console/../console.py", "/console/nope.js"):
        missing = open_client.get(path)
        assert missing.status_code == 404 and missing.is_json, path


def test_a_job_with_no_worker_says_so_and_cancel_cancels_it(base_settings, redis_server, open_page):
    """No worker: the page says why the job waits instead of showing "queued" forever, and
    Cancel withdraws the job (DELETE) rather than leaving it queued behind the user's back."""
    redis_server.client(STATUS_DB).flushdb()
    server = serve(base_settings.replace(redis_url=redis_server.url(STATUS_DB)))
    try:
        page = open_page(server.url)
        page.fill("#texts", "nobody will embed this")
        page.click("#run-embed")
        page.wait_for_function(
            "() => document.querySelector('#embed-progress').textContent.includes('no worker is ready')")
        page.click("#cancel-embed")
        assert_the_one_job_cancelled(page, redis_server)
        assert page.is_hidden("#cancel-embed") and page.is_enabled("#run-embed")
    finally:
        server.close()
        redis_server.client(STATUS_DB).flushdb()


def test_a_running_job_is_shown_running_and_cancel_links_to_it(base_settings, redis_server,
                                                               worker_factory, open_page):
    """The page learns a job's status when a long-poll returns, and a long-poll returns at the
    job's end: its first waits are short, so a job that runs for seconds is shown running. Cancel
    then cannot stop it (it started): the page stops waiting and links to the job, which goes on."""
    redis_server.client(STATUS_DB).flushdb()
    settings = base_settings.replace(redis_url=redis_server.url(STATUS_DB), test_faults=True)
    worker_factory(settings)
    server = serve(settings)
    try:
        page = open_page(server.url)
        # The page looks at ~1, 3 and 7 s (waits of 1, 2, 4 s); the job sleeps past all of them,
        # so it is still running when Cancel is pressed, however late the worker claims it.
        page.fill("#texts", "BGE_M3_TEST_FAULT:sleep=15")
        page.click("#run-embed")
        page.wait_for_function(
            "() => document.querySelector('#embed-progress').textContent.includes('job running')",
            timeout=10_000)
        page.click("#cancel-embed")
        link = page.locator("#embed-error a")
        link.wait_for(state="visible")
        assert "already started and goes on" in page.text_content("#embed-error")
        href = link.get_attribute("href")
        assert href.startswith("/v1/jobs/") and link.text_content() == f"GET {href}"
        with urllib.request.urlopen(server.url + href + "?wait=60", timeout=70) as answer:
            job = json.load(answer)
        assert job["status"] == "succeeded", job  # it went on; the link shows its result
        assert page.is_hidden("#embed-results") and page.is_enabled("#run-embed")
    finally:
        server.close()
        redis_server.client(STATUS_DB).flushdb()


def test_cancel_while_the_job_is_submitted_cancels_the_job(base_settings, redis_server, open_page):
    """Cancel pressed while the POST is in flight: the job the server creates anyway is found and
    cancelled, not left to run unseen."""
    redis_server.client(STATUS_DB).flushdb()
    server = serve(base_settings.replace(redis_url=redis_server.url(STATUS_DB)))
    try:
        page = open_page(server.url)
        held = []
        page.route("**/v1/jobs", lambda route: held.append(route))  # the submit waits here
        page.fill("#texts", "cancelled on its way in")
        page.click("#run-embed")
        while not held:
            page.wait_for_timeout(20)
        page.click("#cancel-embed")
        held[0].continue_()
        assert_the_one_job_cancelled(page, redis_server)
    finally:
        server.close()
        redis_server.client(STATUS_DB).flushdb()


def test_redis_down_is_named_and_the_queue_depth_unknown(base_settings, open_page, tmp_path):
    from tests.support import RedisServer

    redis = RedisServer(tmp_path / "redis")
    server = serve(base_settings.replace(redis_url=redis.url(0)))
    try:
        page = open_page(server.url)
        page.wait_for_function("() => document.querySelector('#st-queue').textContent === 'queue: 0'")
        redis.stop()
        page.wait_for_function(
            "() => document.querySelector('#st-ready').textContent.startsWith('Redis is down')")
        assert page.text_content("#st-queue") == "queue: —"
    finally:
        server.close()
        redis.stop()


def test_one_text_and_sparse_only_show_honest_facts(served, open_page):
    """One text: every similarity is 1, which the caption says (no colour scale of one value).
    Sparse only: no vector width to show. And the page loads without a single failed request."""
    failed = []
    page = open_page(served.url)
    page.on("response", lambda r: failed.append((r.status, r.url)) if r.status >= 400 else None)
    page.reload()
    job_id = run_embed(page, ["only one text"], "dense")
    assert "every value 1.000" in page.text_content("#heat-caption")
    assert page.text_content("#f-dim") == str(served.job(job_id)["result"]["dimension"])
    run_embed(page, ["only one text", "and a second"], "sparse")
    assert page.text_content("#f-dim") == "—"
    assert failed == []


def test_a_large_batch_draws_a_bounded_heatmap(served, open_page):
    texts = [f"text number {i} about topic {i % 7}" for i in range(45)]
    page = open_page(served.url)
    job_id = run_embed(page, texts, "all")
    assert page.text_content("#f-texts") == "45"
    assert len(items(served.job(job_id))) == 45
    assert page.locator("#heatmap td.cell").count() == 40 * 40
    for caption in ("#heat-caption", "#sparse-cut", "#colbert-cut"):
        assert "first 40 of 45 texts" in page.text_content(caption), caption
    # Scrolled to its far corner, the matrix still shows which texts its cells belong to.
    wrap = ".heat-wrap:has(#heatmap)"
    page.eval_on_selector(wrap, "w => { w.scrollLeft = w.scrollWidth; w.scrollTop = w.scrollHeight; }")
    box = page.locator(wrap).bounding_box()
    assert page.evaluate(f"() => document.querySelector('{wrap}').scrollLeft") > 0
    row_label = page.locator('#heatmap th[scope="row"]').last.bounding_box()
    column_label = page.locator('#heatmap th[scope="col"]').last.bounding_box()
    assert abs(row_label["x"] - box["x"]) < 4 and abs(column_label["y"] - box["y"]) < 4


# -- review fixes (2026-11-30): polling under load, limits, cancel, focus, contrast, tabs --------
CONTRAST = """els => els.map(e => {
  const rgb = s => s.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const lum = c => { const [r, g, b] = c.map(v => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  let bg = null;
  for (let n = e; n && !bg; n = n.parentElement) {
    const c = getComputedStyle(n).backgroundColor;
    if (c && !c.startsWith('rgba(0, 0, 0, 0)') && c !== 'transparent') bg = c;
  }
  const [a, b] = [lum(rgb(getComputedStyle(e).color)), lum(rgb(bg))].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
})"""
"""WCAG contrast ratio of each element's text against the nearest background behind it."""


def test_polls_answered_early_wait_their_retry_after(base_settings, redis_server, open_page):
    """Every thread that may wait on a job is taken: the API answers a long-poll at once with
    Retry-After: 1. The page waits that long before asking again, instead of hundreds of polls
    a second from one tab."""
    redis_server.client(STATUS_DB).flushdb()
    from api import create_app

    server = ServedApp(create_app(base_settings.replace(redis_url=redis_server.url(STATUS_DB)),
                                  wait_slots=1))
    try:
        _, held_job = server.request("POST", "/v1/jobs", {"texts": ["holds the only wait slot"]})
        holder = threading.Thread(target=server.request,
                                  args=("GET", f"/v1/jobs/{held_job['id']}?wait=30"), daemon=True)
        holder.start()
        page = open_page(server.url)
        polls = []
        page.on("request", lambda r: polls.append(r.url) if "?wait=" in r.url else None)
        page.fill("#texts", "polled while the API is busy")
        page.click("#run-embed")
        page.wait_for_timeout(4000)
        assert 2 <= len(polls) <= 8, len(polls)
        page.click("#cancel-embed")
        page.locator("#embed-error").wait_for(state="visible")
        assert "cancelled" in page.text_content("#embed-error")
    finally:
        server.close()
        redis_server.client(STATUS_DB).flushdb()


def test_max_length_follows_the_workers_limit_and_a_drained_worker_is_said(
        base_settings, redis_server, worker_factory, open_page):
    """A deployment whose BGE_M3_MAX_LENGTH (256) is under the page's default (512): the fields
    take the workers' limit, so a run with the defaults is not refused. Then, while a job runs,
    its worker starts shutting down (SIGTERM): no worker takes jobs, and the page says what
    becomes of a job whose worker stopped instead of "running" alone."""
    redis_server.client(STATUS_DB).flushdb()
    settings = base_settings.replace(redis_url=redis_server.url(STATUS_DB), max_length=256,
                                     test_faults=True)
    worker = worker_factory(settings)
    server = serve(settings)
    try:
        page = open_page(server.url)
        page.wait_for_function("() => document.querySelector('#max-length').value === '256'")
        assert page.get_attribute("#score-max-length", "max") == "256"
        assert page.input_value("#score-max-length") == "256"
        job_id = run_embed(page, THREE_TEXTS, "dense")
        assert server.job(job_id)["id"] == job_id

        page.fill("#texts", "BGE_M3_TEST_FAULT:sleep=12")
        page.click("#run-embed")
        page.wait_for_function(
            "() => document.querySelector('#embed-progress').textContent.includes('job running')",
            timeout=10_000)
        worker.proc.send_signal(15)  # warm shutdown: it finishes the job but takes no new one
        page.wait_for_function("() => document.querySelector('#embed-progress').textContent"
                               ".includes('if its worker stopped')", timeout=20_000)
        page.locator("#embed-results").wait_for(state="visible", timeout=30_000)  # it finished
    finally:
        server.close()
        redis_server.client(STATUS_DB).flushdb()


def test_cancel_after_the_job_finished_shows_its_results(served, open_page):
    """The job ended while the page was between polls: Cancel finds it finished (409
    job_finished) and shows its results, not "goes on"."""
    page = open_page(served.url)
    held = []
    page.route("**/v1/jobs/*?wait=*", lambda route: held.append(route))  # polls never answer
    page.fill("#texts", "\n".join(THREE_TEXTS))
    page.click("#run-embed")
    while not held:
        page.wait_for_timeout(20)
    job_id = held[0].request.url.split("/v1/jobs/")[1].split("?")[0]
    assert served.job(job_id)["status"] == "succeeded"
    page.click("#cancel-embed")
    page.locator("#embed-results").wait_for(state="visible")
    assert page.get_attribute("#embed-results", "data-job") == job_id
    assert page.is_hidden("#embed-error")


def test_a_refused_score_hides_the_old_ranking(served, open_page):
    page = open_page(served.url)
    page.click("#tab-score")
    page.fill("#query", QUERY)
    page.fill("#documents", "sunny weather\nrain in Paris")
    page.click("#run-score")
    page.locator("#score-results").wait_for(state="visible")
    for name in ("dense", "sparse", "colbert"):
        page.fill(f"#w-{name}", "0")
    page.click("#run-score")
    page.locator("#score-error").wait_for(state="visible")
    assert "above zero" in page.text_content("#score-error")
    assert page.is_hidden("#score-results")  # its caption named weights no longer on the sliders


def test_keyboard_use_contrast_and_tabs(served, open_page):
    """Run by keyboard keeps the focus on the form (Cancel while it runs, Run after); the heatmap's
    numbers, the header's label and the tabs meet WCAG's 4.5:1; arrow keys move between tabs."""
    page = open_page(served.url)
    page.fill("#texts", "\n".join(THREE_TEXTS + ["a fourth text", "and a fifth"]))
    page.check('input[name="mode"][value="all"]')
    page.focus("#run-embed")
    page.keyboard.press("Enter")
    page.locator("#embed-results").wait_for(state="visible")
    page.wait_for_function("() => document.activeElement.id === 'run-embed'")
    for kind in ("dense", "sparse", "colbert", "hybrid"):
        page.click(f'#heat-tabs button[data-kind="{kind}"]')
        ratios = page.eval_on_selector_all("#heatmap td.cell", CONTRAST)
        assert min(ratios) >= 4.5, (kind, min(ratios))
    assert min(page.eval_on_selector_all("header .key", CONTRAST)) >= 4.5
    page.focus('#heat-tabs button[data-kind="hybrid"]')
    page.keyboard.press("ArrowRight")  # wraps to the first
    assert page.get_attribute("#heatmap", "data-kind") == "dense"
    assert page.evaluate("() => document.activeElement.dataset.kind") == "dense"

    page.focus("#tab-embed")
    page.keyboard.press("ArrowRight")
    assert page.is_visible("#panel-score") and page.is_hidden("#panel-embed")
    assert page.get_attribute("#tab-score", "aria-selected") == "true"
    assert page.get_attribute("#panel-score", "aria-labelledby") == "tab-score"
    page.keyboard.press("Home")
    assert page.is_visible("#panel-embed")


def test_ranking_numbers_stay_on_one_line_at_phone_width(served, open_page):
    page = open_page(served.url, width=375, height=812)
    page.click("#tab-score")
    page.fill("#query", QUERY)
    page.fill("#documents", "sunny weather today\n" + "rain " * 30)
    page.click("#run-score")
    page.locator("#score-results").wait_for(state="visible")
    # The URL rule (break anywhere) must not reach the numbers: "0.93 / 74" was one score.
    wraps = page.eval_on_selector_all("#ranking td.num", "tds => tds.map(t => "
                                      "[getComputedStyle(t).whiteSpace, getComputedStyle(t).overflowWrap])")
    assert wraps and set(map(tuple, wraps)) == {("nowrap", "normal")}, wraps
    no_horizontal_overflow(page)
    # And the ranking fits its card: no sideways scroll to reach the last score.
    wide = page.eval_on_selector("#ranking", "t => [t.parentElement.scrollWidth, t.parentElement.clientWidth]")
    cells = page.eval_on_selector_all("#ranking tr:first-child > *",
                                      "cs => cs.map(c => [c.textContent, c.offsetWidth])")
    assert wide[0] <= wide[1], (f"the ranking is {wide[0]}px wide in its {wide[1]}px card", cells)
