"""Device choice, and the CUDA path itself.

No GPU exists on this machine or in CI, so the choice logic is tested against a stand-in for
``torch.cuda`` (the only mock: a GPU), and the real CUDA comparison is a ``gpu`` test, skipped
only when no CUDA device exists.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from worker.device import DeviceUnavailable, choose


def fake_torch(gpus: int):
    """Stands in for a machine with ``gpus`` CUDA devices (none exist here)."""
    cuda = SimpleNamespace(is_available=lambda: gpus > 0, device_count=lambda: gpus,
                           get_device_name=lambda i: f"Fake GPU {i}" if i < gpus else 1 / 0)
    return SimpleNamespace(cuda=cuda)


def test_auto_without_cuda_is_cpu_fp32():
    placement = choose("auto", fake_torch(0))
    assert (placement.device, placement.dtype_name, placement.label) == ("cpu", "float32", "FP32")


def test_auto_with_cuda_is_first_gpu_fp16():
    placement = choose("auto", fake_torch(2))
    assert (placement.device, placement.dtype_name) == ("cuda:0", "float16")
    assert placement.description == "cuda:0 (Fake GPU 0)"


def test_explicit_cpu_wins_over_a_gpu_and_explicit_index_is_kept():
    assert choose("cpu", fake_torch(1)).device == "cpu"
    assert choose("cuda:1", fake_torch(2)).description == "cuda:1 (Fake GPU 1)"


def test_cuda_requested_without_cuda_refuses():
    with pytest.raises(DeviceUnavailable, match="no CUDA device"):
        choose("cuda", fake_torch(0))


def test_a_gpu_index_past_the_visible_ones_refuses_by_name():
    with pytest.raises(DeviceUnavailable, match=r"BGE_M3_DEVICE=cuda:2 but only 2 CUDA device\(s\)"):
        choose("cuda:2", fake_torch(2))


@pytest.mark.gpu
def test_cuda_fp16_matches_cpu_fp32(tiny_model):
    import numpy as np
    import torch

    from worker.encoder import Encoder
    from worker.model import M3Model

    texts = ["今天天气真好", "the quick brown fox jumps over the lazy dog " * 20, ""]
    want = frozenset({"dense", "sparse", "colbert"})
    outputs = {}
    for device in ("cpu", "cuda"):
        model = M3Model(tiny_model.dir, choose(device, torch))
        encoder = Encoder(model, colbert_dtype="float32")
        rows = encoder.tokenize(texts, 512, True)
        outputs[device] = encoder.run_batch(rows, [want] * len(rows))
    for cpu, gpu in zip(outputs["cpu"], outputs["cuda"]):
        assert np.allclose(cpu.dense, gpu.dense, atol=2e-2)
        assert np.allclose(cpu.weights, gpu.weights, atol=5e-2)
        assert np.allclose(cpu.colbert, gpu.colbert, atol=2e-2)


@pytest.mark.gpu
def test_cuda_worker_serves_fp16_and_matches_flagembedding(base_settings, redis_server, tiny_model,
                                                           tmp_path):
    """A real `bge-m3 worker` on CUDA: it logs the device and precision, announces them, and its
    all-three-outputs result matches FlagEmbedding's own fp16 GPU encode."""
    import json

    import numpy as np
    from FlagEmbedding import BGEM3FlagModel

    from bge_m3.workers import WORKER_PREFIX
    from tests.support import settings_on_db, spawn_worker
    from tests.worker_support import Queue, colbert, dense

    texts = ["今天天气真好", "阳光明媚", "the quick brown fox jumps over the lazy dog " * 30, ""]
    settings = settings_on_db(base_settings, redis_server, "gpu", device="cuda",
                              colbert_dtype="float32")
    worker = spawn_worker(settings, tmp_path)
    queue = Queue(settings)
    try:
        job = queue.wait(queue.submit(texts, ("dense", "sparse", "colbert"), 512), 120)
        assert job.status == "succeeded", job.error
        result = queue.store.result(job.id)
        info = json.loads(queue.redis.get(WORKER_PREFIX + worker.hostname))
    finally:
        queue.close()
        worker.stop()
    log = worker.output()
    assert "Device: cuda:0 (" in log and "(FP16, 32-dim)" in log, log[-2000:]
    assert info["device"].startswith("cuda:0 (") and info["dtype"] == "float16", info
    ref = BGEM3FlagModel(str(tiny_model.dir), use_fp16=True, devices="cuda:0").encode(
        texts, return_dense=True, return_sparse=True, return_colbert_vecs=True, max_length=512)
    assert len(result["items"]) == len(texts) == len(ref["dense_vecs"])
    for i, item in enumerate(result["items"]):
        assert np.allclose(dense(item), ref["dense_vecs"][i], atol=2e-2)
        assert np.allclose(colbert(item), ref["colbert_vecs"][i], atol=2e-2)
        weights = dict(zip(item["sparse"]["indices"], item["sparse"]["values"]))
        assert set(weights) == {int(k) for k in ref["lexical_weights"][i]}
        for key, value in ref["lexical_weights"][i].items():
            assert abs(weights[int(key)] - float(value)) < 5e-2


@pytest.mark.gpu
def test_cuda_pipelined_passes_match_cpu(tiny_model):
    """The pipelined CUDA path (``Batcher(start_batch=...)``: pass k+1 queued before pass k's
    rows are taken, outputs DMA'd into pinned host memory) over many passes: every row equals a
    CPU pass over the same text, and rows held until the end are not overwritten when the
    caching pinned allocator hands their blocks out again."""
    import numpy as np
    import torch

    from worker.batcher import Batcher
    from worker.pending import JobTrace
    from worker.encoder import Encoder
    from worker.model import M3Model

    want = frozenset({"dense", "sparse", "colbert"})
    texts = [("word " * (1 + (i * 37) % 90)) + str(i) for i in range(60)]
    cpu = Encoder(M3Model(tiny_model.dir, choose("cpu", torch)), colbert_dtype="float32")
    gpu = Encoder(M3Model(tiny_model.dir, choose("cuda", torch)), colbert_dtype="float16")
    assert gpu.asynchronous and not cpu.asynchronous
    rows = gpu.tokenize(texts, 512, True)
    batcher = Batcher(gpu.run_batch, max_batch_tokens=256, wait_ms=0, start_batch=gpu.start_batch)
    batcher.start()
    try:
        trace = JobTrace()
        held = [f.result(60) for f in batcher.submit(rows, want, trace)]
    finally:
        batcher.stop()
    assert len(trace.passes) >= 10, trace.passes
    for ids, row in zip(rows, held):
        ref = cpu.run_batch([ids], [want])[0]
        assert row.colbert.dtype == np.float16 and row.colbert.shape == ref.colbert.shape
        assert np.allclose(row.dense, ref.dense, atol=2e-2)
        assert np.allclose(row.colbert.astype(np.float32), ref.colbert, atol=2e-2)
        assert np.allclose(row.weights, ref.weights, atol=5e-2)


def test_colbert_is_normalised_in_float32_as_flagembedding_does(tiny_model):
    """FlagEmbedding multiplies the ColBERT head's output by a float32 mask, so in fp16 its vectors
    are normalised in float32; normalised in fp16 they came out up to two fp16 steps off. The
    model in fp16 on the CPU stands in for the GPU's precision (no GPU here): its stored vectors
    must be exactly FlagEmbedding's formula, rounded once to float16."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from worker.device import Placement
    from worker.model import M3Model

    m3 = M3Model(tiny_model.dir, Placement("cpu", "float16", "cpu (fp16)"))
    rows = m3.tokenize(["the quick brown fox jumps over the lazy dog " * 6, "阳光明媚", ""])
    out = m3.forward(rows, dense=False, sparse=False, colbert=True)
    width = max(map(len, rows))
    ids = torch.tensor([r + [m3.pad_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.inference_mode():
        hidden = m3.backbone(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
        want = F.normalize(m3.colbert(hidden[:, 1:]) * mask[:, 1:][:, :, None].float(), dim=-1)
    assert out.colbert.dtype == np.float16
    np.testing.assert_array_equal(out.colbert, want.half().numpy())
    wide = M3Model(tiny_model.dir, Placement("cpu", "float16", "cpu (fp16)"), colbert_half=False)
    kept = wide.forward(rows, dense=False, sparse=False, colbert=True).colbert
    assert kept.dtype == np.float32  # BGE_M3_COLBERT_DTYPE=float32: never rounded to fp16 on the way
    np.testing.assert_allclose(kept, want.numpy(), rtol=0, atol=1e-6)
