"""Float-encoded vectors are written row by row as the response is sent (``api.streaming``), so
a long ColBERT result in float lists costs the API its stored size, not ~50 bytes a value."""
from __future__ import annotations

import base64
import json
import struct
import tracemalloc

import pytest

from api import create_app
from api.results import result_out
from api.streaming import (EAGER_VALUES, FloatArray, Numbers, array_values, gathered, holds_arrays,
                           iter_json, plain, respond)
from bge_m3.codec import pack, unpack_floats, unpack_rows
from tests.support import SUITE_DBS

ROWS, WIDTH = 1024, 1024
"""A ColBERT result of 1,024 tokens at the real model's width: 1M values, 2 MiB stored."""


def _packed(rows: int, width: int, dtype: str = "float16") -> dict:
    code = {"float16": "e", "float32": "f"}[dtype]
    values = [((i * 7919) % 2001 - 1000) / 1000 for i in range(rows * width)]
    return pack(struct.pack(f"<{len(values)}{code}", *values), [rows, width] if rows else [0, width], dtype)


@pytest.mark.parametrize("rows, width, dtype", [(3, 4, "float16"), (2, 5, "float32"), (0, 8, "float16"),
                                                (2, 0, "float16")])
def test_a_float_array_writes_what_the_codec_reads(rows, width, dtype):
    packed = _packed(rows, width, dtype) if width else pack(b"", [rows, 0], dtype)
    assert FloatArray(packed, True).tolist() == unpack_rows(packed)
    flat = FloatArray(packed, False).tolist()
    assert flat == unpack_floats(packed) and len(flat) == rows * width


def test_arrays_are_found_and_written_wherever_they_are():
    """Not only as the first element of a list: a body the JSON encoder meets a FloatArray in
    raises mid-response."""
    array = FloatArray(_packed(1, 3), False)
    body = {"a": [None, array], "b": (1, {"c": array}), "d": [1, 2], "e": "é"}
    assert holds_arrays(body) and not holds_arrays({"d": [1, [2, None]]})
    text = b"".join(gathered(iter_json(body))).decode()
    assert json.loads(text) == {"a": [None, array.tolist()], "b": [1, {"c": array.tolist()}],
                                "d": [1, 2], "e": "é"}


def test_sparse_weights_are_passed_over_whole_not_walked_value_by_value():
    """A sparse result's ids and weights hold no vectors: the walks take each list as it is (a
    10,000-text sparse job spent 300 ms walking its numbers) and the JSON is unchanged."""
    stored = {"model": "m", "items": [{"tokens": 3, "sparse": {"indices": [5, 9], "values": [0.5, 0.25]}},
                                      {"tokens": 2, "dense": pack(struct.pack("<2f", 0.5, -1.0), [2], "float32"),
                                       "sparse": {"indices": [], "values": []}}]}
    body = result_out(stored, {"encoding": "float"})
    weights = body["items"][0]["sparse"]["values"]
    assert type(weights) is Numbers and array_values(body) == 2
    assert plain(body)["items"][0]["sparse"]["values"] is weights  # not rebuilt value by value
    expected = {"model": "m", "revision": None, "dimension": None,
                "items": [{"tokens": 3, "sparse": {"indices": [5, 9], "values": [0.5, 0.25]}},
                          {"tokens": 2, "dense": [0.5, -1.0], "sparse": {"indices": [], "values": []}}]}
    assert json.loads(json.dumps(plain(body))) == expected
    assert json.loads(b"".join(gathered(iter_json(body)))) == expected
    # A list that is not marked is still searched: a vector inside one is found.
    assert array_values({"a": [1, [2.0, body["items"][1]["dense"]]]}) == 2


def test_a_few_vectors_are_written_whole_and_many_are_streamed():
    """A sequential /embed of a few texts answers with a Content-Length (chunks cost it ~0.3 ms);
    past EAGER_VALUES values the body streams."""
    from flask import Flask

    few = {"v": [FloatArray(_packed(1, 1024, "float32"), False)] * 3}
    many = {"v": FloatArray(_packed(EAGER_VALUES // 1024 + 1, 1024), True)}
    app = Flask(__name__)
    with app.test_request_context():
        body, status, headers = respond(few, 200, {"X": "1"})  # Flask's own JSON of the floats
        assert body == {"v": [few["v"][0].tolist()] * 3} and (status, headers) == (200, {"X": "1"})
        whole = app.make_response((body, status, headers))
        assert not whole.is_streamed and whole.content_length == len(whole.get_data())
        streamed = respond(many)
        assert streamed.is_streamed and streamed.content_length is None
        assert json.loads(streamed.get_data()) == {"v": many["v"].tolist()}
        assert respond({"plain": [1.5]}) == ({"plain": [1.5]}, 200, {})  # Flask's own JSON


def test_a_damaged_array_is_refused_before_anything_is_sent():
    packed = _packed(3, 4)
    odd = base64.b64encode(base64.b64decode(packed["data"]) + b"x").decode()
    for broken in ({**packed, "data": "not base64!"}, {**packed, "shape": [4, 4]},
                   {**packed, "dtype": "int8"}, {"data": packed["data"]},
                   {**packed, "shape": [-3, -4]}, {**packed, "shape": []},
                   {**packed, "data": odd, "shape": [25]}):
        for rows in (True, False):  # a flat (dense) array is checked as strictly as rows
            with pytest.raises(ValueError, match="stored array"):
                FloatArray(broken, rows)


@pytest.fixture
def stored_job(base_settings, redis_server):
    """A job whose result holds one long ColBERT item, stored as a worker stores it."""
    db = SUITE_DBS["console"]
    redis_server.client(db).flushdb()
    app = create_app(base_settings.replace(redis_url=redis_server.url(db)))
    client = app.test_client()
    job_id = client.post("/v1/jobs", json={"texts": ["x"], "modes": ["dense", "colbert"],
                                           "encoding": "float"}).get_json()["id"]
    store = app.extensions["bge_m3"].backend.store
    store.start(job_id, 3)
    item = {"tokens": ROWS + 1, "dense": _packed(1, WIDTH, "float32"), "colbert": _packed(ROWS, WIDTH)}
    item["dense"]["shape"] = [WIDTH]
    store.succeed(job_id, {"model": "m", "revision": "r", "dimension": WIDTH, "items": [item]})
    yield client, job_id, item
    redis_server.client(db).flushdb()


def test_a_long_float_colbert_result_streams_in_bounded_memory(stored_job):
    client, job_id, item = stored_job
    tracemalloc.start()
    try:
        response = client.get(f"/v1/jobs/{job_id}", buffered=False)
        assert response.status_code == 200 and response.is_streamed
        size = sum(len(chunk) for chunk in response.response)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 1M values as Python floats in lists took the peak to ~76 MiB; streamed it is ~8 MiB: the
    # stored bytes (2 MiB, 2.7 MiB as base64, read from Redis), one row and a 64 KiB chunk.
    assert peak < 20 * 2**20, f"{peak / 2**20:.1f} MiB"
    assert size > ROWS * WIDTH * 2  # every value was written


def test_the_streamed_body_is_the_json_of_the_stored_values(stored_job):
    client, job_id, item = stored_job
    body = json.loads(client.get(f"/v1/jobs/{job_id}").get_data())
    (out,) = body["result"]["items"]
    assert out["colbert"]["shape"] == [ROWS, WIDTH] and out["colbert"]["data"] == unpack_rows(item["colbert"])
    assert out["dense"] == unpack_floats(item["dense"]) and body["status"] == "succeeded"
    assert client.get(f"/v1/jobs/{job_id}").headers["Content-Type"] == "application/json"


def test_a_big_streamed_body_hands_freed_memory_back_at_its_end(monkeypatch):
    """glibc keeps what a request thread freed in that thread's arena: a soak run's API grew from
    63 to 405 MB in minutes of big reads and never shrank. A body of 16 MB or more calls
    ``malloc_trim`` when it ends, also when its client goes away mid-body; a small one does not."""
    from bge_m3 import heap

    assert heap.trim() is True  # glibc here: the call is there to make
    calls = []
    monkeypatch.setattr(heap, "trim", lambda: calls.append(1) or True)
    piece = "x" * 1024 * 1024
    assert sum(map(len, gathered(iter([piece] * 4)))) == 4 * len(piece)
    assert calls == []  # 4 MB: not worth a trim
    assert sum(map(len, gathered(iter([piece] * 20)))) == 20 * len(piece)  # 20 MB: a trim
    body = gathered(iter([piece] * 64))
    for _ in range(20):
        next(body)
    body.close()  # the client went away after 20 MB
    assert calls == [1, 1]
