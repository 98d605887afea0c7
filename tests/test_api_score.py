"""``/v1/score`` equals FlagEmbedding's scores on the tiny model (the worker runs the model; the API
computes the scores from the job result, with numpy)."""
from __future__ import annotations

import numpy as np
import pytest

from api import scoring
from api.scoring import colbert, hybrid, lexical

QUERY = "what is the weather like today"
DOCUMENTS = ["今天天气真好", "the weather is sunny and beautiful today", "redis queue worker python",
             "阳光明媚"]
COLBERT_TOLERANCE = 2e-3
"""ColBERT vectors are float16 at rest (BGE_M3_COLBERT_DTYPE default): about 3 decimal digits."""


@pytest.fixture(scope="module")
def flag_model(tiny_model):
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel(str(tiny_model.dir), use_fp16=False, devices="cpu")


def test_scores_match_definitions(monkeypatch):
    assert lexical({"indices": [1, 5, 9], "values": [0.5, 1.0, 2.0]},
                   {"indices": [5, 9, 11], "values": [3.0, 0.25, 7.0]}) == 3.5
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    d = np.array([[0.6, 0.8], [-1.0, 0.0]], dtype=np.float32)
    assert colbert(q, d) == pytest.approx((0.6 + 0.8) / 2)
    assert colbert(q, d[:0]) == 0.0 and colbert(q[:0], d) == 0.0
    # Taken in blocks of query rows, a long query scores the same as in one product.
    rng = np.random.default_rng(0)
    q, d = rng.standard_normal((300, 16), dtype=np.float32), rng.standard_normal((200, 16), dtype=np.float32)
    whole = colbert(q, d)
    monkeypatch.setattr(scoring, "BLOCK_ENTRIES", 1000)
    assert colbert(q, d) == pytest.approx(whole, rel=1e-6)
    assert whole == pytest.approx(float((q @ d.T).max(axis=1).mean()), rel=1e-5)
    assert hybrid(1.0, 0.5, 0.25, [0.4, 0.2, 0.4]) == pytest.approx(0.4 + 0.1 + 0.1)
    assert hybrid(1.0, 0.5, 0.25, [1, 1, 1]) == pytest.approx(1.75 / 3)
    assert hybrid(1.0, 0.5, 0.25, [1e300, 0, 1e300]) == pytest.approx(0.625)  # no overflow


@pytest.mark.parametrize("weights", [None, [1.0, 1.0, 1.0], [0.5, 0.3, 0.2]])
def test_score_equals_flagembedding(client, live_worker, flag_model, weights):
    body = {"query": QUERY, "documents": DOCUMENTS}
    if weights is not None:
        body["weights"] = weights
    r = client.post("/v1/score", json=body)
    assert r.status_code == 200, r.get_json()
    answer = r.get_json()
    assert answer["weights"] == (weights or [0.4, 0.2, 0.4])
    got = answer["scores"]
    assert [s["index"] for s in got] == list(range(len(DOCUMENTS)))
    w = weights or [0.4, 0.2, 0.4]
    for doc, score in zip(DOCUMENTS, got):
        # one pair at a time: compute_score pads a batch, and padded ColBERT rows would score 0
        ref = flag_model.compute_score([QUERY, doc], weights_for_different_modes=w)
        assert score["dense"] == pytest.approx(ref["dense"], abs=1e-5)
        assert score["sparse"] == pytest.approx(ref["sparse"], abs=1e-5)
        assert score["colbert"] == pytest.approx(ref["colbert"], abs=COLBERT_TOLERANCE)
        assert score["hybrid"] == pytest.approx(ref["colbert+sparse+dense"], abs=COLBERT_TOLERANCE)
    # and the encode-level helpers give the same numbers
    enc = flag_model.encode([QUERY, *DOCUMENTS], return_dense=True, return_sparse=True,
                            return_colbert_vecs=True)
    for i, score in enumerate(got, start=1):
        assert score["sparse"] == pytest.approx(
            flag_model.compute_lexical_matching_score(enc["lexical_weights"][0], enc["lexical_weights"][i]),
            abs=1e-5)
        assert score["colbert"] == pytest.approx(
            float(flag_model.colbert_score(enc["colbert_vecs"][0], enc["colbert_vecs"][i])),
            abs=COLBERT_TOLERANCE)
    assert len({round(s["hybrid"], 6) for s in got}) > 1, "every document scored the same"


def test_a_score_over_the_token_pair_limit_is_413(client, live_worker, monkeypatch):
    """The ColBERT work grows with query tokens x document tokens; past the limit, 413 with both
    counts, not minutes of one API thread."""
    monkeypatch.setattr(scoring, "MAX_COLBERT_PAIRS", 50)
    r = client.post("/v1/score", json={"query": QUERY, "documents": DOCUMENTS})
    assert r.status_code == 413, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "score_too_large" and "more than the limit of 50" in error["message"]
