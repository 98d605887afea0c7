"""The worker's host-side work for one bulk job, without the model: what a GPU leaves to the CPU.

Runs the worker's own ``Encoder.run_batch`` (rows, lexical weights), ``Encoder.item_json`` and
``payload.pack`` over batch outputs shaped like the full-size model's (1024-d, float16 ColBERT)
for the benchmark's 2,000 texts, with the forward pass replaced by precomputed random arrays. In
the same run, the baseline is what the previous stored form cost: base64 of the item's JSON
text, then a Huffman-only deflate (zlib), and its reading back. Single-threaded, so each figure
is CPU time.

Usage: .venv/bin/python bench/host_bench.py [--texts N] [--model-dir DIR]   (DIR: a `--full`
folder, for its tokenizer; the tiny model's tokenizer is built when none is given)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

HIDDEN = 1024
"""The full-size model's width: ColBERT rows of 1024 float16 values, dense of 1024 float32."""


class _Outputs:
    """Stands in for ``M3Model``: ``forward`` returns the precomputed output of the batch."""
    hidden, vocab, special_ids = HIDDEN, 250002, frozenset({0, 1, 2, 3})

    class placement:  # noqa: N801 - mirrors worker.device.Placement's attribute
        device = "cuda"

    def __init__(self) -> None:
        self.outputs: dict[int, object] = {}

    def forward(self, rows, dense, sparse, colbert):
        return self.outputs[id(rows)]


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from bge_m3 import codec, payload
    from worker.pending import JobTrace, Pending
    from worker.planning import plan_batches
    from worker.encoder import Encoder
    from worker.model import BatchOutput
    from worker_bench import make_texts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--model-dir", type=Path, help="a model folder, for its tokenizer")
    args = parser.parse_args(argv)
    folder = args.model_dir
    if folder is None:
        from bge_m3.tinymodel import build

        folder = Path(tempfile.mkdtemp(prefix="bge-m3-host-bench-")) / "model"
        build(folder, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    rows = [tokenizer(t, truncation=True, max_length=512)["input_ids"]
            for t in make_texts(args.texts, 8, 120)]
    model = _Outputs()
    encoder = Encoder(model, "float16")
    rng = np.random.default_rng(0)
    batches = []
    for batch in plan_batches([Pending(r, frozenset(), None, JobTrace()) for r in rows], 16384):
        ids_rows = [p.ids for p in batch]
        width = max(map(len, ids_rows))
        ids = np.full((len(batch), width), 1, dtype=np.int64)
        for i, r in enumerate(ids_rows):
            ids[i, :len(r)] = r
        colbert = torch.from_numpy(rng.standard_normal((len(batch), width - 1, HIDDEN),
                                                       dtype=np.float32)).half().numpy()
        model.outputs[id(ids_rows)] = BatchOutput(
            dense=rng.standard_normal((len(batch), HIDDEN), dtype=np.float32),
            weights=rng.random((len(batch), width), dtype=np.float32), colbert=colbert, ids=ids)
        batches.append(ids_rows)

    want = frozenset({"dense", "sparse", "colbert"})
    spent = dict.fromkeys(("serialise", "pack", "unpack", "deflate", "inflate"), 0.0)
    stored = {"pack": 0, "deflate": 0}
    for ids_rows in batches:
        t0 = time.perf_counter()
        items = [encoder.item_json(ids, row) for ids, row in
                 zip(ids_rows, encoder.run_batch(ids_rows, [want] * len(ids_rows)))]
        t1 = time.perf_counter()
        packed = [payload.pack(*parts) for parts in items]
        t2 = time.perf_counter()
        for chunk in packed:
            payload.unpack(chunk)
        t3 = time.perf_counter()
        deflated = [_deflate(codec.json_text(parts)) for parts in items]  # the previous stored form
        t4 = time.perf_counter()
        for chunk in deflated:
            zlib.decompress(chunk)
        t5 = time.perf_counter()
        for key, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            spent[key] += seconds
        stored["pack"] += sum(map(len, packed))
        stored["deflate"] += sum(map(len, deflated))
    colbert_values = sum((len(r) - 1) * HIDDEN for r in rows)
    print(f"{len(rows):,} texts, {sum(map(len, rows)):,} tokens, {colbert_values * 2 / 1e6:,.0f} MB of "
          f"float16 ColBERT, {len(batches)} batches; CPU seconds, one thread")
    print(f"serialise (rows, lexical weights, item JSON)  {spent['serialise']:.3f} s")
    print(f"pack (this version)      {spent['pack']:.3f} s, {stored['pack'] / colbert_values:.2f} "
          f"bytes per ColBERT value at rest; read back {spent['unpack']:.3f} s")
    print(f"base64 + deflate (before) {spent['deflate']:.3f} s, {stored['deflate'] / colbert_values:.2f} "
          f"bytes per ColBERT value at rest; read back {spent['inflate']:.3f} s")
    print(f"worker's host work, previous / this version: "
          f"{(spent['serialise'] + spent['deflate']) / (spent['serialise'] + spent['pack']):.1f}x")
    return 0


def _deflate(text: bytes) -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_HUFFMAN_ONLY)
    return packer.compress(text) + packer.flush()


if __name__ == "__main__":
    sys.exit(main())
