"""Batcher, truncation, params and gate logic on their own (no model, no worker process).

The batcher runs its real thread; the forward pass is a stand-in function because
these tests are about scheduling and isolation, which the real-model tests cannot steer.
"""
from __future__ import annotations

import json
import re
import threading

import pytest

from worker.batcher import Batcher
from worker.pending import JobTrace, Pending
from worker.planning import pass_cost, plan_batches
from worker.encoder import truncate_ids
from worker.execution import describe
from worker.params import InvalidJob, parse_params


def _pending(length: int) -> Pending:
    from concurrent.futures import Future

    return Pending(list(range(length)), frozenset({"dense"}), Future(), JobTrace())


def test_plan_batches_respects_padded_budget_and_sorts_by_length():
    items = [_pending(n) for n in (5, 100, 7, 60, 3, 100, 40)]
    batches = plan_batches(items, max_batch_tokens=200)
    for batch in batches:
        lengths = [len(p.ids) for p in batch]
        assert lengths == sorted(lengths, reverse=True)
        assert len(batch) == 1 or len(batch) * lengths[0] <= 200
    assert sorted(len(p.ids) for b in batches for p in b) == sorted([5, 100, 7, 60, 3, 100, 40])
    assert [len(p.ids) for p in batches[0]] == [100, 100]


def test_a_text_longer_than_the_budget_gets_its_own_batch():
    batches = plan_batches([_pending(10), _pending(500), _pending(10)], max_batch_tokens=64)
    assert [[len(p.ids) for p in b] for b in batches] == [[500], [10, 10]]


def test_plan_batches_bounds_padding_by_the_cost_of_a_pass():
    lengths = [30, 29, 28, 28, 27, 24, 23, 23, 20, 20, 17, 16, 15, 13, 12, 10]
    unbounded = plan_batches([_pending(n) for n in lengths], max_batch_tokens=16384)
    assert len(unbounded) == 1
    batches = plan_batches([_pending(n) for n in lengths], max_batch_tokens=16384, pass_tokens=20)
    assert [len(p.ids) for b in batches for p in b] == lengths  # same order, cut into bands
    padding = [len(b) * len(b[0].ids) - sum(len(p.ids) for p in b) for b in batches]
    assert len(batches) > 1 and all(pad <= 20 for pad in padding)
    cost = lambda plan: sum(20 + len(b) * len(b[0].ids) for b in plan)  # noqa: E731
    assert cost(batches) < cost(unbounded)
    # Equal lengths never pad, so no bound cuts them; the budget still does.
    assert len(plan_batches([_pending(8) for _ in range(10)], 16384, pass_tokens=1)) == 1
    assert len(plan_batches([_pending(8) for _ in range(10)], 40, pass_tokens=1)) == 2


class _Clock:
    """A clock that a stand-in pass advances by its modelled cost: the fit is exact, with no
    dependence on this machine's timer."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


def test_pass_cost_fits_fixed_plus_per_token():
    clock = _Clock()

    def run(rows, width):  # 50 ms a pass plus 0.5 ms a padded token: 100 tokens of padding
        clock.spend(0.050 + rows * width * 0.0005)

    tokens, fixed, per_token = pass_cost(run, max_batch_tokens=16384, clock=clock)
    assert tokens == 100 and fixed == pytest.approx(50) and per_token == pytest.approx(0.5)
    # A pass whose time does not grow with its size (a GPU at these shapes): bounded by the budget.
    flat = _Clock()
    assert pass_cost(lambda rows, width: flat.spend(0.01), max_batch_tokens=4096, clock=flat)[0] == 4096


def test_pass_cost_grows_its_larger_pass_until_the_tokens_show():
    """A GPU-like pass: 5 ms to launch, 0.5 µs a padded token (10,000 tokens of padding cost one
    more pass). At 4 x 32 tokens the tokens add 0.06 ms, less than a sleep's jitter: the fit must
    time larger passes, up to the budget and no further."""
    sizes = []
    clock = _Clock()

    def run(rows, width):
        sizes.append(rows * width)
        # The one-row pass measures 0.1 ms slow every time (launch jitter that best-of-two keeps):
        # more than the 0.06 ms that 120 more tokens add, so two small passes alone fit nonsense.
        clock.spend(0.005 + rows * width * 0.0000005 + (0.0001 if rows * width <= 8 else 0.0))

    tokens, fixed, per_token = pass_cost(run, max_batch_tokens=16384, clock=clock)
    assert max(sizes) == 16384, sizes
    assert 9500 <= tokens <= 10500 and 4.9 <= fixed <= 5.2 and 0.00048 <= per_token <= 0.00052


def test_a_job_still_tokenizing_is_waited_for(monkeypatch):
    """Two jobs land together: the first must not run alone inline while the second, already
    claimed, is still tokenizing; both share one pass."""
    import time

    from worker import batcher as batcher_module

    monkeypatch.setattr(batcher_module, "ARRIVAL_WAIT_MS", 3000.0)  # no flake on a stalled machine
    forward = _Forward()
    batcher = Batcher(forward, max_batch_tokens=1000, wait_ms=0)
    batcher.start()
    try:
        with batcher.arriving() as second:
            with batcher.arriving() as first:
                done = []
                thread = threading.Thread(target=lambda: done.append(
                    batcher.submit([[1, 2]], frozenset({"dense"}), arrival=first)))
                thread.start()
                thread.join(0.05)
            time.sleep(0.2)  # the first job did not run inline, nor alone from the queue
            assert forward.batches == []
            futures = batcher.submit([[3, 4, 5]], frozenset({"dense"}), arrival=second)
        thread.join(5)
        assert [f.result(5) for f in done[0] + futures] == [2, 3] and forward.batches == [2]
        # An announcement withdrawn without a submit does not hold later passes.
        with batcher.arriving():
            pass
        started = time.monotonic()
        assert batcher.submit([[1]], frozenset({"dense"}))[0].result(5) == 1
        assert forward.batches == [2, 1] and time.monotonic() - started < 1.5
    finally:
        batcher.stop()


def test_truncation_keeps_head_and_eos():
    ids = [0, 11, 12, 13, 14, 2]
    assert truncate_ids(ids, 10) == ids
    assert truncate_ids(ids, 4) == [0, 11, 12, 2]


@pytest.mark.parametrize("params, fragment", [
    ({"texts": []}, "non-empty"), ({"texts": "abc"}, "non-empty"), ({"texts": ["a", None]}, "texts[1]"),
    ({"texts": ["a"] * 6}, "more than the limit"), ({"texts": ["a"], "modes": ["dense", "x"]}, "modes"),
    ({"texts": ["a"], "max_length": 9000}, "max_length"), ({"texts": ["a"], "truncate": "no"}, "truncate"),
])
def test_invalid_params_are_rejected(params, fragment):
    with pytest.raises(InvalidJob, match=re.escape(fragment)):
        parse_params(params, max_texts=5, max_length=8192)


def test_a_forward_error_reaches_the_client_without_its_text():
    oom = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; pid 4242 at /srv/m)")
    assert describe(oom) == "out of memory on the device"
    other = ValueError("index 250003 is out of bounds for /srv/models/bge-m3 on host gpu-7")
    said = describe(other)
    assert said.startswith("ValueError") and "/srv" not in said and "gpu-7" not in said


def test_valid_params():
    texts, modes, length, truncate = parse_params(
        {"texts": ["", "b"], "modes": ["sparse", "colbert"], "max_length": 8192, "truncate": False}, 5, 8192)
    assert texts == ["", "b"] and modes == {"sparse", "colbert"} and length == 8192 and truncate is False


class _Forward:
    """Stand-in forward pass: fails every batch holding a poisoned row, records batch sizes."""

    def __init__(self):
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, rows, wants):
        self.gate.wait(10)
        self.batches.append(len(rows))
        if any(r and r[0] == -1 for r in rows):
            raise RuntimeError("poisoned row")
        return [len(r) for r in rows]


def test_failing_text_fails_alone_and_jobs_share_passes(monkeypatch):
    from worker import batcher as batcher_module

    # the window waits for the announced arrival (closed right after the second submit), not
    # 50 ms that a stalled machine could spend between the two submits
    monkeypatch.setattr(batcher_module, "ARRIVAL_WAIT_MS", 3000.0)
    forward = _Forward()
    batcher = Batcher(forward, max_batch_tokens=1000, wait_ms=50)
    batcher.start()
    try:
        good_trace, bad_trace = JobTrace(), JobTrace()
        # An announced arrival keeps both jobs off the inline path: they queue for one window.
        with batcher.arriving():
            good = batcher.submit([[1, 2, 3], [4, 5]], frozenset({"dense"}), good_trace)
            bad = batcher.submit([[-1, 9], [7, 7, 7, 7]], frozenset({"sparse"}), bad_trace)
        assert [f.result(10) for f in good] == [3, 2]
        assert bad[1].result(10) == 4
        with pytest.raises(RuntimeError, match="poisoned"):
            bad[0].result(10)
        # One pass of all four texts failed; its halves ran again; the half without the
        # poisoned row holds texts of both jobs, which is the sharing.
        assert forward.batches[0] == 4 and good_trace.passes & bad_trace.passes
    finally:
        batcher.stop()


def test_a_pass_with_missing_rows_fails_its_texts_and_the_batcher_lives_on():
    """A bug outside the model's call (here a pass returning fewer rows than texts) must fail
    the texts it touched, not leave their futures hanging or kill the model's only thread."""
    short = {"on": True}

    def forward(rows, wants):
        return [len(r) for r in rows][:-1] if short["on"] else [len(r) for r in rows]

    batcher = Batcher(forward, max_batch_tokens=1000, wait_ms=0)
    batcher.start()
    try:
        with batcher.arriving():  # an announced job keeps the submission off the inline path
            futures = batcher.submit([[1, 2], [3, 4]], frozenset({"dense"}))
            with pytest.raises(RuntimeError, match="1 rows for 2 texts"):
                futures[0].result(10)
        short["on"] = False
        assert [f.result(10) for f in batcher.submit([[1], [1, 2]], frozenset({"dense"}))] == [1, 2]
    finally:
        batcher.stop()


def test_texts_are_cut_at_the_models_positions(tiny_model):
    import torch

    from worker.device import choose
    from worker.encoder import Encoder, TooLong
    from worker.model import M3Model

    model = M3Model(tiny_model.dir, choose("cpu", torch))
    model.max_positions = 16  # as a model with a shorter position table than BGE_M3_MAX_LENGTH
    encoder = Encoder(model)
    long_text = "a fairly long text " * 20
    assert len(encoder.tokenize([long_text], 8192, True)[0]) == 16
    with pytest.raises(TooLong, match="max_length 16"):
        encoder.tokenize([long_text], 8192, False)


@pytest.mark.parametrize("message,sticky", [
    ("CUDA error: device-side assert triggered", True),
    ("CUDA error: an illegal memory access was encountered", True),
    ("CUDA out of memory. Tried to allocate 2.00 GiB", False),
    ("CUDA error: out of memory", False),
    ("index out of range in self", False),
])
def test_sticky_device_errors_are_told_from_recoverable_ones(message, sticky):
    from worker.device import is_sticky

    assert is_sticky(RuntimeError(message)) is sticky


def test_a_sticky_device_error_is_not_retried_in_halves(caplog):
    from worker.pending import JobTrace

    calls, failed = [], []

    def forward(rows, wants):
        calls.append(len(rows))
        raise RuntimeError("CUDA error: device-side assert triggered")

    batcher = Batcher(forward, max_batch_tokens=1000, wait_ms=0, on_device_failed=failed.append)
    batcher.start()
    try:
        with caplog.at_level("CRITICAL", logger="bge_m3.worker"):
            futures = batcher.submit([[1], [2, 3], [4, 5, 6], [7]], frozenset({"dense"}),
                                     JobTrace(job="job-7f3a"))
            for future in futures:
                with pytest.raises(RuntimeError, match="device-side assert"):
                    future.result(10)
        assert calls == [4] and len(failed) == 1  # one pass, one report, no halving retries
        lines = [r.getMessage() for r in caplog.records if r.levelname == "CRITICAL"]
        assert len(lines) == 1 and "(jobs job-7f3a)" in lines[0], lines  # which job to look at
    finally:
        batcher.stop()


def test_a_failed_pass_names_its_jobs_and_counts_the_rest():
    from concurrent.futures import Future

    from worker.pending import JOBS_NAMED, JobTrace, Pending, job_names

    traces = [JobTrace(job=f"j{i}") for i in range(JOBS_NAMED + 3)]
    batch = [Pending([1], frozenset({"dense"}), Future(), t) for t in (traces[0], *traces)]
    named = job_names(batch)
    assert named.startswith("j0, j1, ") and named.count("j0") == 1  # each job once, in order
    assert named.endswith(f"j{JOBS_NAMED - 1} (+3 more)") and f"j{JOBS_NAMED}," not in named
    assert job_names(batch[:2]) == "j0"
    assert job_names([Pending([1], frozenset(), Future(), JobTrace())]) == "?"


def test_a_small_job_behind_a_big_one_waits_one_window_at_most():
    """Jobs take turns in a window: a 1-text job submitted while a 100-text job's first window
    runs goes in the next window, not after every text of the big job (plain FIFO: 10 passes)."""
    import time

    from worker.batcher import WINDOW_BATCHES

    gate, order = threading.Event(), []

    def forward(rows, wants):
        gate.wait(10)
        order.append([r[0] for r in rows])
        return [len(r) for r in rows]

    batcher = Batcher(forward, max_batch_tokens=100, wait_ms=0)
    batcher.start()
    try:
        with batcher.arriving():  # queued, not inline
            big = batcher.submit([[1] * 10 for _ in range(100)], frozenset({"dense"}))
        time.sleep(0.2)  # the first window is taken and held at the gate meanwhile
        small = batcher.submit([[2] * 10], frozenset({"dense"}))
        gate.set()
        assert small[0].result(10) == 10 and all(f.result(10) == 10 for f in big)
        before = next(i for i, texts in enumerate(order) if 2 in texts)
        assert before <= WINDOW_BATCHES, order  # the window already taken, then the small job
        assert len(order) == 11
    finally:
        batcher.stop()


def test_large_submission_is_split_into_budgeted_batches():
    forward = _Forward()
    batcher = Batcher(forward, max_batch_tokens=64, wait_ms=0)
    batcher.start()
    try:
        futures = batcher.submit([[1] * 8 for _ in range(100)], frozenset({"dense"}))
        assert [f.result(10) for f in futures] == [8] * 100
        assert max(forward.batches) <= 8 and sum(forward.batches) == 100
    finally:
        batcher.stop()


class _AsyncForward(_Forward):
    """Stand-in for an asynchronous device (``Encoder.start_batch`` on CUDA): records when each
    pass is queued and when its rows are taken; a poisoned row fails at queueing or at taking."""

    def __init__(self, fail_at: str):
        super().__init__()
        self.fail_at = fail_at
        self.events: list[tuple[str, int]] = []

    def start(self, rows, wants):
        poisoned = any(r and r[0] == -1 for r in rows)
        if poisoned and self.fail_at == "start":
            raise RuntimeError("poisoned row")
        self.events.append(("start", len(rows[0])))

        def finish():
            self.events.append(("finish", len(rows[0])))
            if poisoned:
                raise RuntimeError("poisoned row")
            return [len(r) for r in rows]
        return finish


@pytest.mark.parametrize("fail_at", ["start", "finish"])
def test_passes_are_pipelined_on_an_asynchronous_device(fail_at):
    """The next pass is queued before the one before it is taken, so the device never waits for
    the host between them; a failing pass is run again through ``run_batch`` and only its
    failing text fails."""
    forward = _AsyncForward(fail_at)
    batcher = Batcher(forward, max_batch_tokens=8, wait_ms=0, start_batch=forward.start)
    batcher.start()
    try:
        traced = JobTrace()
        futures = batcher.submit([[1] * 4, [1] * 4, [1] * 3, [1] * 3, [1] * 2, [-1, 1]],
                                 frozenset({"dense"}), traced)
        assert [f.result(10) for f in futures[:5]] == [4, 4, 3, 3, 2]
        with pytest.raises(RuntimeError, match="poisoned"):
            futures[5].result(10)
        started = [n for kind, n in forward.events if kind == "start"]
        assert started[:2] == [4, 3]  # the batches, longest first
        assert forward.events[:3] == [("start", 4), ("start", 3), ("finish", 4)]
        assert len(traced.passes) >= 3 and traced.forward_ms > 0
    finally:
        batcher.stop()


def test_gate_refuses_a_manifest_without_both_heads(tmp_path, tiny_model):
    from bge_m3.settings import Settings
    from worker.gate import GateRefused, check

    data = json.loads(tiny_model.manifest.read_text())
    data["files"] = [f for f in data["files"] if f["path"] != "colbert_linear.pt"]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(data))
    settings = Settings.from_env({}, model_dir=tiny_model.dir, manifest=manifest, auto_download=False)
    with pytest.raises(GateRefused, match="colbert_linear.pt"):
        check(settings)
    assert check(settings.replace(manifest=tiny_model.manifest)).report.ok


def test_pack_json_encodes_an_array_as_the_at_rest_object():
    import base64
    import json

    import numpy as np

    from bge_m3 import codec

    arr = np.arange(12, dtype="<f2").reshape(3, 4) / 8
    obj = json.loads(codec.pack_json(arr, [3, 4], "float16"))
    assert obj == {"shape": [3, 4], "dtype": "float16", "data": base64.b64encode(arr.tobytes()).decode()}
    assert codec.unpack_rows(obj) == arr.astype(float).tolist()
    with pytest.raises(ValueError):
        codec.pack_json(arr, [3, 4], "int8")
    empty = np.zeros((0, 4), dtype="<f2")  # ColBERT of a text cut to max_length 1
    assert json.loads(codec.pack_json(empty, [0, 4], "float16"))["data"] == ""


def test_stored_chunks_keep_vectors_raw_and_read_back_as_base64_json():
    """A stored item keeps its vectors' bytes raw (2 bytes a float16 value) and reads back as the
    JSON text with their base64; a chunk an earlier version wrote (zlib) still reads."""
    import base64
    import zlib

    import numpy as np

    from bge_m3 import codec, payload

    vecs = np.arange(240, dtype="<f2").reshape(60, 4) / 8
    parts = [b'{"tokens":61,"colbert":', *codec.pack_json_parts(vecs, [60, 4], "float16"), b"}"]
    chunk = payload.pack(*parts)
    assert vecs.tobytes() in chunk and base64.b64encode(vecs.tobytes()) not in chunk
    assert len(chunk) < 0.8 * len(codec.json_text(parts))
    text = payload.unpack(chunk)
    assert text == codec.json_text(parts)
    assert json.loads(text)["colbert"]["data"] == base64.b64encode(vecs.tobytes()).decode()
    built = payload.ItemsResult({"model": "m"}, 2)
    built.add(1, [b'{"tokens":1}'])
    built.add(0, parts)
    assert payload.decode(built.chunks())["items"][1] == {"tokens": 1}
    assert payload.decode([zlib.compress(b'{"items":[]}')]) == {"items": []}
    empty = payload.pack(*codec.pack_json_parts(np.zeros((0, 4), dtype="<f2"), [0, 4], "float16"))
    assert json.loads(payload.unpack(empty))["data"] == ""


def test_big_vectors_become_an_element_of_their_own_without_a_copy():
    """Vectors of RAW_ELEMENT_BYTES or more are not joined into their item's chunk: the element
    is the array's own buffer, announced by the chunk before it; the elements read back as the
    same JSON text, and a damaged sequence is refused rather than misread."""
    import numpy as np
    import pytest

    from bge_m3 import codec, payload

    vecs = np.ones((payload.RAW_ELEMENT_BYTES // 8, 4), dtype="<f2")
    dense = np.arange(8, dtype="<f4")
    parts = [b'{"tokens":9,"dense":', *codec.pack_json_parts(dense, [8], "float32"), b',"colbert":',
             *codec.pack_json_parts(vecs, list(vecs.shape), "float16"), b"}"]
    elements = payload.pack_item(*parts)
    assert len(elements) == 3
    assert isinstance(elements[1], memoryview) and np.shares_memory(np.asarray(elements[1]), vecs)
    assert b"".join(payload.texts(elements)) == codec.json_text(parts)
    assert payload.pack_item(b'{"tokens":1}') == [payload.pack(b'{"tokens":1}')]  # small: one element
    built = payload.ItemsResult({}, 2)
    built.add(1, parts)
    first = built.take_ready()
    assert len(first) == 4 and np.shares_memory(np.asarray(first[2]), vecs)  # head, item in 3
    built.add(0, [b'{"tokens":1}'])
    stored = [bytes(e) for e in first + built.take_ready()]  # as Redis gives them back
    assert payload.decode(stored)["items"] == [{"tokens": 1}, json.loads(codec.json_text(parts))]
    with pytest.raises(ValueError, match="raw element"):
        list(payload.texts([elements[0], bytes(elements[1])[:-1], elements[2]]))
    with pytest.raises(ValueError, match="announces"):
        list(payload.texts(elements[:1]))
    with pytest.raises(ValueError, match="next element"):
        payload.unpack(elements[0])


def test_torch_threads_setting_is_applied():
    from worker.model import torch_threads

    before = torch_threads()
    try:
        assert torch_threads(1) == 1 and torch_threads() == 1
    finally:
        torch_threads(before)


def test_tokenize_gives_the_hf_tokenizers_ids(tiny_model):
    """The worker's offsets-free batch encode yields exactly the ids FlagEmbedding's tokenizer
    call does (parity of every output rests on it), untruncated."""
    import torch
    from transformers import AutoTokenizer

    from tests.test_worker_parity import TEXTS
    from worker.device import choose
    from worker.model import M3Model

    model = M3Model(tiny_model.dir, choose("cpu", torch))
    texts = [*TEXTS, "word " * 700]
    reference = AutoTokenizer.from_pretrained(str(tiny_model.dir))(texts)["input_ids"]
    assert model.tokenize(texts) == reference
    assert len(reference[-1]) > 512


def test_a_serialised_row_lets_its_batch_output_go(tiny_model):
    """Once every row of a pass is serialised and cleared, the pass's output arrays are freed,
    though the job's futures (which hold the rows) live on: a streamed job holds about one window."""
    import gc
    import weakref

    import torch

    from worker.device import choose
    from worker.encoder import Encoder
    from worker.model import M3Model

    encoder = Encoder(M3Model(tiny_model.dir, choose("cpu", torch)))
    ids = encoder.tokenize(["one text", "and another, longer text"], 64, True)
    rows = encoder.run_batch(ids, [frozenset({"dense", "sparse", "colbert"})] * 2)
    output = weakref.ref(rows[0].colbert.base)  # the pass's ColBERT array the rows are views of
    for tokens, row in zip(ids, rows):
        encoder.item_json(tokens, row)
        row.clear()
    gc.collect()
    assert output() is None and rows[0].colbert is None


def test_the_colbert_budget_counts_one_vector_per_token_but_cls():
    from worker.params import ResultTooLarge, check_result_size

    rows = [[0, 5, 6, 2], [0, 2]]  # 3 + 1 vectors
    check_result_size(rows, frozenset({"colbert"}), 4, 1024, 2)
    with pytest.raises(ResultTooLarge, match=r"colbert for 4 tokens is more than .*\(3\)"):
        check_result_size(rows, frozenset({"colbert", "dense"}), 3, 1024, 2)
    check_result_size(rows, frozenset({"dense", "sparse"}), 1, 1024, 2)  # no ColBERT, no budget


def test_a_job_is_named_with_its_request_only_when_the_id_is_well_formed():
    from worker.execution import job_label

    assert job_label("j1", {"request_id": "trace-42"}) == "j1 (request trace-42)"
    for params in ({"request_id": "two words"}, {"request_id": "x\nInjected"}, {"request_id": 7},
                   {}, None):
        assert job_label("j1", params) == "j1"


# -- leases and records (a real Runtime, not booted: no model; real Redis) ----------------------
@pytest.fixture
def unbooted(base_settings, redis_server):
    """A worker Runtime on the unit-test database, without a model: what claim() reads."""
    from worker.runtime import Runtime

    redis_server.client(1).flushdb()
    settings = base_settings.replace(redis_url=redis_server.url(1), time_limit=600,
                                     visibility_timeout=3600, result_ttl=700)
    rt = Runtime(settings, "units@host")
    yield rt
    redis_server.client(1).flushdb()


def test_a_claimed_record_outlives_a_redelivery_of_its_job(unbooted):
    """Claimed with less left than the visibility timeout (a short result TTL, or a job that
    waited long): if the worker dies at once, its message comes back only after the visibility
    timeout and one sweep, and that delivery may run the whole time limit. The record must still
    be there, or that delivery would find nothing and drop the job. The lease outlives the time
    limit by a minute (the owner still finishes after its deadline), below the visibility."""
    from bge_m3.queue import restore_interval
    from worker import lease

    rt, s = unbooted, unbooted.settings
    job = rt.store.create({"texts": ["a"], "modes": ["dense"]})
    assert rt.redis.ttl(f"bge-m3:job:{job.id}") <= 700
    held = lease.Lease.new(rt, job.id)
    assert lease.claim(rt, job.id, held).state == "running"
    need = s.visibility_timeout + restore_interval(s.visibility_timeout) + s.time_limit
    assert rt.redis.ttl(f"bge-m3:job:{job.id}") > need
    assert s.time_limit + 55 <= rt.redis.ttl(held.key) <= s.time_limit + 60 < s.visibility_timeout


def test_a_lease_left_by_an_ended_delivery_of_this_process_is_taken_over(unbooted):
    """A delivery that handed its job back while Redis was down could not drop its lease. Its
    redelivery, here to the same process, takes the job over at once instead of waiting out the
    lease; a lease of a delivery still running here is waited for."""
    from worker import lease

    rt = unbooted
    job = rt.store.create({"texts": ["a"], "modes": ["dense"]})
    first = lease.Lease.new(rt, job.id)
    with rt.delivery(first.token):
        assert lease.claim(rt, job.id, first).state == "running"
        second = lease.Lease.new(rt, job.id)
        rt._draining = True  # a delivery that would wait hands its job back instead, at once
        with pytest.raises(lease.Unclaimed, match="held by another delivery"):
            lease.claim(rt, job.id, second)
        rt._draining = False
    # The first delivery ended without releasing (Redis was down then): its lease stays.
    assert rt.redis.get(first.key) == first.holder
    third = lease.Lease.new(rt, job.id)
    with rt.delivery(third.token):
        claimed = lease.claim(rt, job.id, third)
    assert claimed.state == "running" and claimed.attempt == 2
    assert rt.redis.get(third.key) == third.holder
