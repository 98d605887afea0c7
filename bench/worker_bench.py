"""Worker throughput against FlagEmbedding, measured in the same run on the same machine.

    .venv/bin/python bench/worker_bench.py                     # tiny model, built in a temp folder
    .venv/bin/python bench/worker_bench.py --full /tmp/full    # plus a `bge-m3 tiny-model --full` folder

For each model: a private redis-server and a real `bge-m3 worker` subprocess serve
  1. one bulk job (dense + sparse + ColBERT): tokens/s from submit to stored result,
     against BGEM3FlagModel.encode on the same texts, and against a bare transformer
     forward over the same token-budget batches (no heads, no postprocess, no Redis);
  2. 64 concurrent one-text jobs, against one BGEM3FlagModel.encode call per job.
Baselines run in this process while the worker idles, so they never share the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bge_m3.settings import Settings  # noqa: E402
from tests.support import RedisServer, spawn_worker  # noqa: E402
from tests.worker_support import Queue  # noqa: E402

MODES = ("dense", "sparse", "colbert")
WORDS = ("embedding vector search retrieval model dense sparse colbert hybrid score query document "
         "passage token weather sunny beautiful today weight index service worker queue redis python "
         "der die das und ist le la les et est el los que 今天 天气 真好 阳光 明媚 我们").split()


def make_texts(count: int, min_words: int, max_words: int, seed: int = 0) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(min_words, max_words + 1))))
            for _ in range(count)]


def timed(fn, repeat: int) -> float:
    """Best of ``repeat`` wall times (the first call of each kind is a warm-up and not counted)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_model(name: str, model_dir: Path, manifest: Path, args, work: Path) -> dict:
    import torch
    from FlagEmbedding import BGEM3FlagModel

    from worker.batcher import JobTrace, Pending, plan_batches

    redis = RedisServer(work / f"redis-{name}")
    settings = Settings.from_env({}, redis_url=redis.url(0), model_dir=model_dir, manifest=manifest,
                                 device="cpu", auto_download=False, max_texts=100_000,
                                 endpoints=("http://127.0.0.1:9",))
    worker = spawn_worker(settings, work, timeout=600)
    queue = Queue(settings)
    texts = make_texts(args.texts, args.min_words, args.max_words)
    singles = make_texts(64, 8, 24, seed=1)
    try:
        def service_bulk():
            job = queue.wait(queue.submit(texts, MODES, max_length=args.max_length), 3600)
            assert job.status == "succeeded", job.error
            service_bulk.tokens = job.stats["tokens"]

        def service_small():
            ids = [queue.submit([t], MODES, max_length=args.max_length) for t in singles]
            for job_id in ids:
                assert queue.wait(job_id, 600).status == "succeeded"

        before = queue.stats(worker.hostname)
        t_service = timed(service_bulk, args.repeat)
        t_small = timed(service_small, args.repeat)
        after = queue.stats(worker.hostname)
        passes = after["forward_passes"] - before.get("forward_passes", 0)
    finally:
        queue.close()
        worker.stop()
        redis.stop()

    ref = BGEM3FlagModel(str(model_dir), use_fp16=False, devices="cpu")
    encode = lambda batch: ref.encode(batch, return_dense=True, return_sparse=True,  # noqa: E731
                                      return_colbert_vecs=True, max_length=args.max_length)
    t_flag = timed(lambda: encode(texts), args.repeat)
    t_flag_small = timed(lambda: [encode([t]) for t in singles], args.repeat)

    # The bare forward over exactly the batches the worker builds (same budget, same sorting).
    tok = ref.tokenizer
    rows = [tok(t, truncation=True, max_length=args.max_length)["input_ids"] for t in texts]
    batches = plan_batches([Pending(r, frozenset(), None, JobTrace()) for r in rows],
                           settings.max_batch_tokens)
    backbone = ref.model.model.eval()
    tensors = []
    for batch in batches:
        width = len(batch[0].ids)
        ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, p in enumerate(batch):
            ids[i, :len(p.ids)] = torch.tensor(p.ids)
            mask[i, :len(p.ids)] = 1
        tensors.append((ids, mask))

    def raw():
        with torch.inference_mode():
            for ids, mask in tensors:
                backbone(input_ids=ids, attention_mask=mask)

    t_raw = timed(raw, args.repeat)
    tokens = service_bulk.tokens
    return {
        "model": name, "texts": len(texts), "tokens": tokens, "max_length": args.max_length,
        "max_batch_tokens": settings.max_batch_tokens, "torch_threads": torch.get_num_threads(),
        "service_tokens_per_s": tokens / t_service, "flag_tokens_per_s": tokens / t_flag,
        "raw_forward_tokens_per_s": tokens / t_raw,
        "bulk_vs_flag": t_flag / t_service, "bulk_vs_raw_forward": t_raw / t_service,
        "small_jobs_service_s": t_small, "small_jobs_flag_s": t_flag_small,
        "small_jobs_vs_flag": t_flag_small / t_small,
        "forward_passes_per_run": passes / (args.repeat + 1) if passes else None,
    }


def report(row: dict) -> str:
    return "\n".join([
        f"== {row['model']}: {row['texts']} texts, {row['tokens']:,} tokens, max_length "
        f"{row['max_length']}, budget {row['max_batch_tokens']:,} tokens, {row['torch_threads']} torch threads",
        f"bulk job       service {row['service_tokens_per_s']:,.0f} tok/s | FlagEmbedding encode "
        f"{row['flag_tokens_per_s']:,.0f} tok/s | bare forward {row['raw_forward_tokens_per_s']:,.0f} tok/s",
        f"  ratio service / BGEM3FlagModel.encode   {row['bulk_vs_flag']:.2f}   (target >= 1.5)",
        f"  ratio service / bare forward            {row['bulk_vs_raw_forward']:.2f}   (target >= 0.9)",
        f"64 one-text jobs  service {row['small_jobs_service_s'] * 1000:,.0f} ms | one encode per job "
        f"{row['small_jobs_flag_s'] * 1000:,.0f} ms",
        f"  ratio one-encode-per-job / service      {row['small_jobs_vs_flag']:.2f}   (target >= 4)",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", type=Path, help="a `bge-m3 tiny-model DIR --full` folder (manifest beside it)")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--texts", type=int, default=2000, help="bulk job size on the tiny model")
    parser.add_argument("--full-texts", type=int, default=64, help="bulk job size on the full model")
    parser.add_argument("--min-words", type=int, default=8)
    parser.add_argument("--max-words", type=int, default=120)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bge-m3-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_tiny:
            from bge_m3.tinymodel import build

            manifest = build(work / "tiny", seed=0)
            rows.append(bench_model("tiny", work / "tiny", manifest, args, work))
            print(report(rows[-1]), flush=True)
        if args.full:
            full_args = argparse.Namespace(**{**vars(args), "texts": args.full_texts, "repeat": 1})
            manifest = args.full.parent / f"{args.full.name}.manifest.json"
            rows.append(bench_model("full (24x1024)", args.full, manifest, full_args, work))
            print(report(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
