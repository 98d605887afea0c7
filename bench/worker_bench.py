"""Worker throughput against FlagEmbedding, measured in the same run on the same machine.

    .venv/bin/python bench/worker_bench.py                     # tiny model, built in a temp folder
    .venv/bin/python bench/worker_bench.py --full /tmp/full    # plus a `bge-m3 tiny-model --full` folder
    python bench/worker_bench.py --skip-tiny --full /tmp/full --device cuda --mfu   # on a GPU

For each model: a private redis-server and a real `bge-m3 worker` subprocess serve
  1. one bulk job (dense + sparse + ColBERT): tokens/s from submit to stored result,
     against BGEM3FlagModel.encode on the same texts, and against a bare transformer
     forward over the same token-budget batches (no heads, no postprocess, no Redis);
  2. 64 concurrent one-text jobs, against one BGEM3FlagModel.encode call per job.
Each encode baseline is measured twice: as users call it, and with its batch-size probe
(its first batch run once more, outputs dropped) skipped, so the probe's share is shown.
Baselines run in this process while the worker idles, so they never share the CPU.
With ``--device cuda`` the worker and both baselines run on the GPU (fp16, FlagEmbedding's
own ``use_fp16``); ``--mfu`` adds 512-token inputs: tokens/s and MFU (``bench/flops.py``)
for dense-only and all-three-output jobs, against a bare forward at the same shapes.
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
# Tokenizer threads on, as in production (the tests turn them off; nothing here forks after use).
os.environ["TOKENIZERS_PARALLELISM"] = "true"

from bge_m3.settings import Settings  # noqa: E402
from tests.support import RedisServer, spawn_worker  # noqa: E402
from tests.worker_support import Queue  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from flops import flops_per_token, mfu, peak_tflops  # noqa: E402

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


def sync(device: str) -> None:
    if device != "cpu":
        import torch

        torch.cuda.synchronize()


class SkipProbe:
    """Stands in for BGEM3FlagModel's model so that, once armed, the next call (encode's
    batch-size probe: its first batch run once more, the outputs dropped) runs nothing."""

    def __init__(self, inner):
        self.__dict__.update(inner=inner, armed=False)

    def __call__(self, *args, **kwargs):
        if self.armed:
            self.__dict__["armed"] = False
            return None
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def arm(self) -> None:
        self.__dict__["armed"] = True


def worker_batches(rows: list[list[int]], budget: int, pass_tokens: int | None):
    """The batches the worker builds for one job of ``rows``: cut, in order, into collection
    windows of WINDOW_BATCHES budgets (worker.batcher), each planned on its own."""
    from worker.batcher import WINDOW_BATCHES
    from worker.pending import JobTrace, Pending
    from worker.planning import plan_batches

    windows, window, tokens = [], [], 0
    for row in rows:
        if window and tokens + len(row) > WINDOW_BATCHES * budget:
            windows.append(window)
            window, tokens = [], 0
        window.append(Pending(row, frozenset(), None, JobTrace()))
        tokens += len(row)
    windows.append(window)
    return [batch for w in windows if w for batch in plan_batches(w, budget, pass_tokens)]


def bare_forward(backbone, pad_id: int, rows: list[list[int]], budget: int, device: str,
                 pass_tokens: int | None = None):
    """A callable running the bare transformer over exactly the batches the worker builds
    (its windows, its budget, and the padding bound it calibrated at start-up)."""
    import torch

    tensors = []
    for batch in worker_batches(rows, budget, pass_tokens):
        width = len(batch[0].ids)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, p in enumerate(batch):
            ids[i, :len(p.ids)] = torch.tensor(p.ids)
            mask[i, :len(p.ids)] = 1
        tensors.append((ids.to(device), mask.to(device)))

    def run():
        with torch.inference_mode():
            for ids, mask in tensors:
                backbone(input_ids=ids, attention_mask=mask)
        sync(device)
    return run


def bench_model(name: str, model_dir: Path, manifest: Path, args, work: Path) -> dict:
    import torch
    from FlagEmbedding import BGEM3FlagModel

    redis = RedisServer(work / f"redis-{name}")
    overrides = {"max_batch_tokens": args.max_batch_tokens} if args.max_batch_tokens else {}
    settings = Settings.from_env({}, redis_url=redis.url(0), model_dir=model_dir, manifest=manifest,
                                 device=args.device, auto_download=False, max_texts=100_000,
                                 log_level=args.log_level, endpoints=("http://127.0.0.1:9",),
                                 **overrides)
    worker = spawn_worker(settings, work, timeout=600, TOKENIZERS_PARALLELISM="true")
    queue = Queue(settings)
    from bge_m3.workers import ready_workers

    pass_tokens = ready_workers(queue.redis)[0].get("pass_tokens")
    texts = make_texts(args.texts, args.min_words, args.max_words)
    singles = make_texts(64, 8, 24, seed=1)
    long_texts = make_texts(args.mfu_texts, 700, 800, seed=2) if args.mfu else []
    service: dict[str, float] = {}
    phases: dict[str, dict] = {}
    try:
        def bulk(batch: list[str], modes: tuple[str, ...], key: str) -> None:
            job = queue.wait(queue.submit(batch, modes, max_length=args.max_length), 3600)
            assert job.status == "succeeded", job.error
            service[key] = job.stats["tokens"]
            if job.stats["total_ms"] < phases.get(key, {}).get("total_ms", float("inf")):
                phases[key] = job.stats  # the fastest run's, as timed() keeps the fastest

        def service_small():
            ids = [queue.submit([t], MODES, max_length=args.max_length) for t in singles]
            for job_id in ids:
                assert queue.wait(job_id, 600).status == "succeeded"

        before = queue.stats(worker.hostname)
        t_service = timed(lambda: bulk(texts, MODES, "bulk"), args.repeat)
        print(f"  measured: service bulk job {t_service:.3f} s, {service['bulk']:,} tokens", flush=True)
        t_small = timed(service_small, args.repeat)
        print(f"  measured: service 64 one-text jobs {t_small:.3f} s", flush=True)
        after = queue.stats(worker.hostname)
        passes = after["forward_passes"] - before.get("forward_passes", 0)
        if args.mfu:  # 512-token inputs: the MFU figure, with and without the big ColBERT output
            t_mfu = {key: timed(lambda m=modes, k=key, n=count: bulk(long_texts[:n], m, k), args.repeat)
                     for key, modes, count in (("dense", ("dense",), len(long_texts)),
                                               ("all", MODES, args.mfu_colbert_texts))}
            print(f"  measured: 512-token jobs {t_mfu}", flush=True)
    finally:
        queue.close()
        worker.stop()
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            tag = f"{name.split()[0]}-{settings.max_batch_tokens}"
            (args.keep_logs / f"worker-{tag}.log").write_text(worker.output())
        redis.stop()

    cuda = args.device != "cpu"
    ref = BGEM3FlagModel(str(model_dir), use_fp16=cuda, devices="cuda:0" if args.device == "cuda"
                         else args.device)
    encode = lambda batch: ref.encode(batch, return_dense=True, return_sparse=True,  # noqa: E731
                                      return_colbert_vecs=True, max_length=args.max_length)
    t_flag = timed(lambda: (encode(texts), sync(args.device)), args.repeat)
    t_flag_small = timed(lambda: [encode([t]) for t in singles], args.repeat)
    ref.model = probe = SkipProbe(ref.model)

    def no_probe(batch):
        probe.arm()
        return encode(batch)

    t_noprobe = timed(lambda: (no_probe(texts), sync(args.device)), args.repeat)
    t_noprobe_small = timed(lambda: [no_probe([t]) for t in singles], args.repeat)
    ref.model = probe.inner
    print(f"  measured: encode {t_flag:.3f} s ({t_noprobe:.3f} s without its probe), 64 one-text "
          f"encodes {t_flag_small:.3f} s ({t_noprobe_small:.3f} s)", flush=True)

    tok = ref.tokenizer
    backbone = ref.model.model.eval()
    device = str(next(backbone.parameters()).device)
    tokenize = lambda batch: [tok(t, truncation=True, max_length=args.max_length)["input_ids"]  # noqa: E731
                              for t in batch]
    t_raw = timed(bare_forward(backbone, tok.pad_token_id, tokenize(texts), settings.max_batch_tokens,
                               device, pass_tokens), args.repeat)
    print(f"  measured: bare forward {t_raw:.3f} s", flush=True)
    tokens = service["bulk"]
    row = {
        "model": name, "device": args.device, "device_name": device_name(args.device),
        "texts": len(texts), "tokens": tokens, "max_length": args.max_length,
        "max_batch_tokens": settings.max_batch_tokens, "pass_tokens": pass_tokens,
        "torch_threads": torch.get_num_threads(),
        "service_tokens_per_s": tokens / t_service, "flag_tokens_per_s": tokens / t_flag,
        "flag_noprobe_tokens_per_s": tokens / t_noprobe,
        "raw_forward_tokens_per_s": tokens / t_raw,
        "bulk_vs_flag": t_flag / t_service, "bulk_vs_flag_noprobe": t_noprobe / t_service,
        "bulk_vs_raw_forward": t_raw / t_service,
        "small_jobs_service_s": t_small, "small_jobs_flag_s": t_flag_small,
        "small_jobs_flag_noprobe_s": t_noprobe_small,
        "small_jobs_vs_flag_noprobe": t_noprobe_small / t_small,
        "small_jobs_vs_flag": t_flag_small / t_small,
        "forward_passes_per_run": passes / (args.repeat + 1) if passes else None,
        "bulk_job_stats": phases.get("bulk"),
    }
    if args.mfu:
        rows = tokenize(long_texts)
        t_raw_long = timed(bare_forward(backbone, tok.pad_token_id, rows, settings.max_batch_tokens,
                                        device, pass_tokens), args.repeat)
        cfg, seq_len = backbone.config, max(len(r) for r in rows)
        per_token = flops_per_token(cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, seq_len)
        peak = args.peak_tflops or peak_tflops(row["device_name"]) or float("nan")
        raw_rate = sum(len(r) for r in rows) / t_raw_long
        row["mfu"] = {"seq_len": seq_len, "gflop_per_token": per_token / 1e9,
                      "peak_tflops": peak, "raw_forward_tokens_per_s": raw_rate,
                      "raw_forward_mfu": mfu(raw_rate, per_token, peak)}
        for key, seconds in t_mfu.items():
            rate = service[key] / seconds
            row["mfu"][key] = {"texts": len(long_texts) if key == "dense" else args.mfu_colbert_texts,
                               "tokens_per_s": rate, "mfu": mfu(rate, per_token, peak)}
    return row


def device_name(device: str) -> str:
    if device == "cpu":
        return "cpu"
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def report(row: dict) -> str:
    return "\n".join([
        f"== {row['model']}: {row['texts']} texts, {row['tokens']:,} tokens, max_length "
        f"{row['max_length']}, budget {row['max_batch_tokens']:,} tokens, padding bound "
        f"{row.get('pass_tokens') or 0:,} tokens, {row['torch_threads']} torch threads",
        f"bulk job       service {row['service_tokens_per_s']:,.0f} tok/s | FlagEmbedding encode "
        f"{row['flag_tokens_per_s']:,.0f} tok/s | bare forward {row['raw_forward_tokens_per_s']:,.0f} tok/s",
        f"  ratio service / BGEM3FlagModel.encode   {row['bulk_vs_flag']:.2f}   (target >= 1.5)",
        f"    the same, encode's batch-size probe skipped   {row['bulk_vs_flag_noprobe']:.2f}",
        f"  ratio service / bare forward            {row['bulk_vs_raw_forward']:.2f}   (target >= 0.9)",
        *phase_report(row.get("bulk_job_stats")),
        f"64 one-text jobs  service {row['small_jobs_service_s'] * 1000:,.0f} ms | one encode per job "
        f"{row['small_jobs_flag_s'] * 1000:,.0f} ms",
        f"  ratio one-encode-per-job / service      {row['small_jobs_vs_flag']:.2f}   (target >= 4)",
        f"    the same, encode's batch-size probe skipped   {row['small_jobs_vs_flag_noprobe']:.2f}",
        *mfu_report(row.get("mfu")),
    ])


def phase_report(stats: dict | None) -> list[str]:
    """Where the fastest bulk run's time went, from its job statistics (the worker's clocks)."""
    if not stats or "forward_ms" not in stats:
        return []
    names = ("queue", "tokenize", "forward", "serialize", "stream")
    parts = ", ".join(f"{name} {stats[name + '_ms']:,.0f}" for name in names)
    return [f"  job timings, ms: total {stats['total_ms']:,.0f} = queue + compute "
            f"{stats['compute_ms']:,.0f} + finish; {parts} (serialize and stream overlap the passes)"]


def mfu_report(m: dict | None) -> list[str]:
    if not m:
        return []
    lines = [f"{m['seq_len']}-token inputs, {m['gflop_per_token']:.3f} GFLOP/token, "
             f"peak {m['peak_tflops']:.1f} TFLOP/s (bf16 dense)",
             f"  bare forward             {m['raw_forward_tokens_per_s']:>12,.0f} tok/s   "
             f"MFU {m['raw_forward_mfu']:.1%}"]
    for key, label in (("dense", "service, dense only"), ("all", "service, all three")):
        lines.append(f"  {label:<24} {m[key]['tokens_per_s']:>12,.0f} tok/s   MFU {m[key]['mfu']:.1%}"
                     f"   ({m[key]['texts']} texts)")
    return lines


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
    parser.add_argument("--full-repeat", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (worker and baselines)")
    parser.add_argument("--max-batch-tokens", type=int, help="worker token budget (default: the setting's)")
    parser.add_argument("--mfu", action="store_true", help="add 512-token inputs: tokens/s and MFU")
    parser.add_argument("--mfu-texts", type=int, default=512, help="texts of the dense-only MFU job")
    parser.add_argument("--mfu-colbert-texts", type=int, default=128,
                        help="texts of the all-outputs MFU job (ColBERT is ~1 MB a 512-token text)")
    parser.add_argument("--peak-tflops", type=float, help="override the card's bf16 peak")
    parser.add_argument("--log-level", default="INFO", help="the worker's log level")
    parser.add_argument("--keep-logs", type=Path, help="copy the worker logs into this folder")
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
            if args.json:  # now, not at the end: a run cut short keeps what it measured
                args.json.write_text(json.dumps(rows, indent=2))
        if args.full:
            full_args = argparse.Namespace(**{**vars(args), "texts": args.full_texts,
                                                  "repeat": args.full_repeat})
            manifest = args.full.parent / f"{args.full.name}.manifest.json"
            rows.append(bench_model("full (24x1024)", args.full, manifest, full_args, work))
            print(report(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
