"""Worker logic on its own, without a worker process: truncation, params, the gate's manifest
check, the stored result's encoding, tokenizing, and leases. The batcher's tests are in
``tests/test_batcher.py``. One test starts a worker process: a setting that only a booting
worker applies (BGE_M3_TORCH_THREADS) is seen there.
"""
from __future__ import annotations

import json
import re
import threading
import time

import pytest

from tests.support import spawn_worker, wait_for
from worker.encoder import truncate_ids
from worker.execution import describe
from worker.params import InvalidJob, parse_params


def test_truncation_keeps_head_and_eos():
    ids = [0, 11, 12, 13, 14, 2]
    assert truncate_ids(ids, 10) == ids
    assert truncate_ids(ids, 4) == [0, 11, 12, 2]


@pytest.mark.parametrize("params, fragment", [
    ({"texts": []}, "non-empty"), ({"texts": "abc"}, "non-empty"), ({"texts": ["a", None]}, "texts[1]"),
    ({"texts": ["a"] * 6}, "more than the limit"), ({"texts": ["a"], "modes": ["dense", "x"]}, "modes"),
    ({"texts": ["a"], "max_length": 9000}, "max_length"), ({"texts": ["a"], "truncate": "no"}, "truncate"),
    # below CLS + EOS a tokenizer cannot cut, and FlagEmbedding embeds the whole text instead
    ({"texts": ["a"], "max_length": 1}, "between 2 and 8192"),
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
    empty = np.zeros((0, 4), dtype="<f2")  # ColBERT of no tokens
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


def test_torch_threads_setting_is_applied(base_settings, redis_server, redis_db, tmp_path):
    """BGE_M3_TORCH_THREADS reaches torch in a real worker: its DEBUG line gives the count in force.
    The count set is not torch's default here (the worker inherits this environment), so a worker
    that never applied it cannot pass."""
    from worker.model import torch_threads

    wanted = 1 if torch_threads() > 1 else 2
    settings = base_settings.replace(redis_url=redis_server.url(1), torch_threads=wanted,
                                     log_level="DEBUG")
    worker = spawn_worker(settings, tmp_path)
    try:
        assert re.findall(r"torch CPU threads: (\d+)", worker.output()) == [str(wanted)], worker.output()
    finally:
        worker.stop()


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
    with pytest.raises(ResultTooLarge, match=r"colbert for 4 tokens is more than .*\(3\), about 8.2 kB "
                                             r"of result; split the job, or leave colbert out"):
        check_result_size(rows, frozenset({"colbert", "dense"}), 3, 1024, 2)
    # The size in a unit that shows it (the tiny model's was "0.0 GB"): 750,000 x 1024 x 2 bytes.
    with pytest.raises(ResultTooLarge, match=r"about 1.5 GB of result"):
        check_result_size([[0] * 750_001], frozenset({"colbert"}), 3, 1024, 2)
    with pytest.raises(ResultTooLarge, match=r"about 1.5 MB of result"):
        check_result_size([[0] * 751], frozenset({"colbert"}), 3, 1024, 2)
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


def test_a_lease_that_could_not_be_dropped_is_dropped_once_redis_answers(unbooted, monkeypatch):
    """Another worker sees a live holder and would wait a lease out (the time limit and a minute),
    and a client would read running: a delivery that ended while Redis failed leaves its lease to
    the heartbeat, which drops it and requeues the job once Redis answers, and only while that
    delivery still holds it."""
    import redis

    from bge_m3.jobs import JobStore
    from worker import lease

    rt = unbooted
    jobs = [rt.store.create({"texts": ["a"], "modes": ["dense"]}) for _ in range(2)]
    held = [lease.Lease.new(rt, job.id) for job in jobs]
    for job, one in zip(jobs, held):
        assert lease.claim(rt, job.id, one).state == "running"
    down = JobStore(redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=1), 60)
    real = rt.store
    monkeypatch.setattr(rt, "store", down)  # Redis is down while the deliveries end
    for one in held:
        one.drop(rt)
    assert rt.releases.pending() == 2
    rt.releases.retry(down)  # still down: kept for the next beat
    assert rt.releases.pending() == 2 and all(rt.redis.get(one.key) == one.holder for one in held)
    assert [real.get(job.id).status for job in jobs] == ["running", "running"]
    rt.redis.set(held[1].key, "someone-else|x|y")  # lapsed and taken by another delivery since
    rt.releases.retry(real)
    assert rt.releases.pending() == 0
    assert rt.redis.get(held[0].key) is None and rt.redis.get(held[1].key) == "someone-else|x|y"
    # The handed-back job reads queued again; the one another delivery took stays running.
    back, taken = (real.get(job.id) for job in jobs)
    assert (back.status, back.started_at, taken.status) == ("queued", None, "running")


def test_drain_from_a_signal_handler_never_waits_on_an_announce_in_flight(unbooted, monkeypatch):
    """Celery calls ``drain`` from its SIGTERM handler, on the main thread, which may be inside an
    announce (``set_consuming`` during a Redis outage, seconds of retries) holding its lock: a
    drain that announced itself would wait on its own thread forever. It only wakes the heartbeat,
    which writes the not-accepting record once the announce in flight is done."""
    from bge_m3 import workers

    rt = unbooted
    rt._consuming = True
    rt.ready()
    assert [w["hostname"] for w in workers.ready_workers(rt.redis)] == [rt.hostname]
    entered, release = threading.Event(), threading.Event()
    real = workers.announce

    def slow(redis, hostname, info):
        entered.set()
        release.wait(10)
        real(redis, hostname, info)

    monkeypatch.setattr(workers, "announce", slow)
    in_flight = threading.Thread(target=rt._announce_now)  # holds the lock, as the main thread may
    in_flight.start()
    try:
        assert entered.wait(5)
        started = time.monotonic()
        rt.drain()
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
        in_flight.join(10)
    wait_for(lambda: not workers.ready_workers(rt.redis), 5, interval=0.05, what="not accepting")
    assert workers.is_announced(rt.redis, rt.hostname)  # alive, for its jobs' leases
    rt.shutdown()
    assert not workers.is_announced(rt.redis, rt.hostname)


def test_the_lost_message_sweep_pauses_over_a_long_queue(redis_db, base_settings, monkeypatch, caplog):
    """The sweep reads the whole queue in one script (~8 ms of Redis per 1,000 messages): over
    SWEEP_QUEUE_MAX queued it is not run, said once per stretch, and runs again below it."""
    import logging

    from bge_m3.jobs import JobStore
    from bge_m3.queue import QUEUE_NAME
    from worker import sweep

    monkeypatch.setattr(sweep, "SWEEP_QUEUE_MAX", 2)
    store = JobStore(redis_db, 60)
    swept = []
    monkeypatch.setattr(store, "sweep_lost", lambda *a, **k: swept.append(1) or [])
    sweeper = sweep.Sweeper(store, redis_db, base_settings, "w@test")
    redis_db.rpush(QUEUE_NAME, "a", "b", "c")
    with caplog.at_level(logging.WARNING, logger="bge_m3.worker"):
        for _ in range(2):
            sweeper._next = 0.0
            redis_db.delete(sweep.LOCK_KEY)
            assert sweeper.beat() == []
    assert swept == [] and sum("sweep paused: 3 messages queued" in r.getMessage() for r in caplog.records) == 1
    redis_db.lpop(QUEUE_NAME)
    sweeper._next = 0.0
    redis_db.delete(sweep.LOCK_KEY)
    assert sweeper.beat() == [] and swept == [1]
    assert sweeper.beat() == [] and swept == [1]  # once an interval
