"""A real `bge-m3 worker` returns what BGEM3FlagModel.encode returns (fp32, CPU, atol 1e-5)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.support import settings_on_db
from tests.worker_support import Queue, colbert, dense

MAX_LENGTH = 48
TEXTS = [
    "",
    "hello world",
    "今天天气真好阳光明媚",
    "the quick brown fox jumps over the lazy dog " * 3,
    "dense sparse colbert hybrid score query document passage " * 12,  # over MAX_LENGTH: truncated
    "a",
    "der die das und ist ein nicht le la les et est une pas 我们你他她是的了",
]
LONG_MAX_LENGTH = 1024
LONG_TEXTS = ["dense sparse colbert hybrid score query document passage " * 80, "short"]
"""A text whose ColBERT vectors (float32) pass bge_m3.payload.RAW_ELEMENT_BYTES, beside one that do not."""


@pytest.fixture(scope="module")
def reference(tiny_model):
    from FlagEmbedding import BGEM3FlagModel

    model = BGEM3FlagModel(str(tiny_model.dir), use_fp16=False, devices="cpu")
    return model.encode(TEXTS, return_dense=True, return_sparse=True, return_colbert_vecs=True,
                        max_length=MAX_LENGTH, batch_size=3)


@pytest.fixture(scope="module")
def results(base_settings, redis_server, tmp_path_factory):
    from tests.support import spawn_worker

    settings = settings_on_db(base_settings, redis_server, "parity", colbert_dtype="float32")
    worker = spawn_worker(settings, tmp_path_factory.mktemp("parity-worker"))
    queue = Queue(settings)
    try:
        all_modes = queue.submit(TEXTS, ("dense", "sparse", "colbert"), MAX_LENGTH)
        singles = {mode: queue.submit(TEXTS, (mode,), MAX_LENGTH) for mode in ("dense", "sparse", "colbert")}
        out = {"all": queue.wait(all_modes)}
        out.update({mode: queue.wait(job_id) for mode, job_id in singles.items()})
        assert all(job.status == "succeeded" for job in out.values()), {k: v.error for k, v in out.items()}
        long_job = queue.wait(queue.submit(LONG_TEXTS, ("dense", "colbert"), LONG_MAX_LENGTH))
        assert long_job.status == "succeeded", long_job.error
        out["long"] = long_job
        from bge_m3.jobreader import result_chunks

        results = {k: queue.store.result(v.id) for k, v in out.items()}
        results["long_elements"] = result_chunks(queue.redis, long_job.id)
        yield results
    finally:
        queue.close()
        worker.stop()


def test_result_header(results, tiny_model):
    from verify.manifest import load_manifest

    manifest = load_manifest(tiny_model.manifest)
    result = results["all"]
    assert (result["model"], result["revision"], result["dimension"]) == (manifest.repo_id, manifest.revision, 32)
    assert len(result["items"]) == len(TEXTS)


def test_dense_parity(results, reference):
    assert len(results["all"]["items"]) == len(reference["dense_vecs"]) == len(TEXTS)
    for i, item in enumerate(results["all"]["items"]):
        assert np.allclose(dense(item), reference["dense_vecs"][i], atol=1e-5), i
        assert abs(np.linalg.norm(dense(item)) - 1) < 1e-5


def test_sparse_parity(results, reference):
    assert len(results["all"]["items"]) == len(reference["lexical_weights"]) == len(TEXTS)
    for i, item in enumerate(results["all"]["items"]):
        expected = {int(k): float(v) for k, v in reference["lexical_weights"][i].items()}
        got = dict(zip(item["sparse"]["indices"], item["sparse"]["values"]))
        assert item["sparse"]["indices"] == sorted(got)
        assert set(got) == set(expected), i
        assert np.allclose([got[k] for k in expected], list(expected.values()), atol=1e-5), i
    assert any(item["sparse"]["indices"] for item in results["all"]["items"])


def test_colbert_parity(results, reference):
    assert len(results["all"]["items"]) == len(reference["colbert_vecs"]) == len(TEXTS)
    for i, item in enumerate(results["all"]["items"]):
        vecs = colbert(item)
        assert item["colbert"]["dtype"] == "float32"
        assert vecs.shape == reference["colbert_vecs"][i].shape, i
        assert vecs.shape[0] == item["tokens"] - 1
        assert np.allclose(vecs, reference["colbert_vecs"][i], atol=1e-5), i


def test_token_counts_and_truncation(results):
    tokens = [item["tokens"] for item in results["all"]["items"]]
    assert tokens[0] == 2  # an empty text is CLS + EOS
    assert tokens[4] == MAX_LENGTH
    assert max(tokens) == MAX_LENGTH and min(tokens) < MAX_LENGTH // 2  # mixed lengths


def test_each_mode_alone_matches_all_modes(results):
    for mode in ("dense", "sparse", "colbert"):
        assert len(results[mode]["items"]) == len(results["all"]["items"]) == len(TEXTS)
        for single, full in zip(results[mode]["items"], results["all"]["items"]):
            assert set(single) == {"tokens", mode}
            if mode == "dense":
                assert np.allclose(dense(single), dense(full), atol=1e-5)
            elif mode == "colbert":
                assert np.allclose(colbert(single), colbert(full), atol=1e-5)
            else:
                assert single["sparse"]["indices"] == full["sparse"]["indices"]
                assert np.allclose(single["sparse"]["values"], full["sparse"]["values"], atol=1e-5)


def test_long_colbert_is_stored_as_its_own_element_and_matches(results, tiny_model):
    """Vectors of RAW_ELEMENT_BYTES or more go to Redis as a list element of their own, straight
    from the pass's output (no copy into the item's chunk), and read back equal to encode's."""
    from FlagEmbedding import BGEM3FlagModel

    from bge_m3.payload import RAW_ELEMENT_BYTES

    items = results["long"]["items"]
    sizes = [(item["tokens"] - 1) * 32 * 4 for item in items]
    assert sizes[0] >= RAW_ELEMENT_BYTES > sizes[1]
    lengths = [len(e) for e in results["long_elements"]]
    assert sizes[0] in lengths and sizes[1] not in lengths
    model = BGEM3FlagModel(str(tiny_model.dir), use_fp16=False, devices="cpu")
    expected = model.encode(LONG_TEXTS, return_dense=True, return_colbert_vecs=True,
                            max_length=LONG_MAX_LENGTH)
    for i, item in enumerate(items):
        assert np.allclose(colbert(item), expected["colbert_vecs"][i], atol=1e-5), i
        assert np.allclose(dense(item), expected["dense_vecs"][i], atol=1e-5), i
