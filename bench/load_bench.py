"""Load: N jobs from C concurrent HTTP clients, mixed sizes and modes, through the real stack.

Starts a private redis-server, W `bge-m3 worker` processes and `bge-m3 api` (gunicorn) on the
tiny model, then C client threads each submit ``POST /v1/jobs`` and long-poll
``GET /v1/jobs/<id>?wait=30`` until their share of the N jobs is done. Every job has 1 to 64
texts of 5 to ``--max-chars`` characters drawn from a pool, and a random non-empty set of modes.
Every result is checked against a direct, one-text-at-a-time encode of its texts; no job may
be missing, failed or run twice. Prints throughput and p50/p99 of queue and total latency
(from the job records: created -> started, created -> finished).

Usage: .venv/bin/python bench/load_bench.py [--jobs 2000] [--clients 50] [--workers 1 2]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402

MODES = ("dense", "sparse", "colbert")
MAX_TEXTS_PER_JOB = 64
"""Largest job of the mix (texts)."""

MIN_CHARS = 5
"""Shortest text of the mix (characters)."""

POOL_SIZE = 300
"""Distinct texts jobs draw from: each is encoded once directly to check every result."""

WORDS = ("the quick brown fox jumps over lazy dog query document passage dense sparse colbert "
         "今天 天气 真好 阳光 明媚 我们 le la les et est der die das und").split()


@dataclass(frozen=True)
class JobSpec:
    texts: tuple[int, ...]  # indices into the pool
    modes: tuple[str, ...]


@dataclass
class Outcome:
    id: str
    spec: JobSpec
    body: dict[str, Any]


@dataclass
class Report:
    jobs: int
    clients: int
    workers: int
    wall_s: float
    queue_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    texts: int = 0

    def lines(self) -> list[str]:
        return [f"{self.workers} worker process(es): {self.jobs} jobs ({self.texts} texts) from "
                f"{self.clients} clients in {self.wall_s:.1f} s = {self.jobs / self.wall_s:.1f} jobs/s, "
                f"{self.texts / self.wall_s:.0f} texts/s",
                f"  queue latency  p50 {pct(self.queue_ms, 50):8.1f} ms   p99 {pct(self.queue_ms, 99):8.1f} ms",
                f"  total latency  p50 {pct(self.total_ms, 50):8.1f} ms   p99 {pct(self.total_ms, 99):8.1f} ms"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else 0.0


def text_pool(max_chars: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pool = []
    for i in range(POOL_SIZE):
        size = rng.randint(MIN_CHARS, max_chars)
        words: list[str] = [str(i)]
        while sum(len(w) + 1 for w in words) < size:
            words.append(rng.choice(WORDS))
        pool.append(" ".join(words)[:size])
    return pool


def job_specs(n: int, seed: int = 1) -> list[JobSpec]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        count = rng.randint(1, MAX_TEXTS_PER_JOB)
        modes = tuple(m for m in MODES if rng.random() < 0.5) or (rng.choice(MODES),)
        out.append(JobSpec(tuple(rng.randrange(POOL_SIZE) for _ in range(count)), modes))
    return out


def run_load(url: str, pool: list[str], specs: list[JobSpec], clients: int) -> tuple[list[Outcome], float]:
    """Submit and long-poll every spec from ``clients`` threads; (outcomes, wall seconds)."""
    lock = threading.Lock()
    todo = iter(specs)
    outcomes: list[Outcome] = []
    errors: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while True:
                with lock:
                    spec = next(todo, None)
                if spec is None:
                    return
                try:
                    r = http.post("/v1/jobs", json={"texts": [pool[i] for i in spec.texts],
                                                    "modes": list(spec.modes)})
                    r.raise_for_status()
                    job_id = r.json()["id"]
                    body = r.json()
                    while body["status"] not in ("succeeded", "failed", "cancelled"):
                        body = http.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
                except Exception as exc:  # noqa: BLE001 - reported, and fails the run
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    outcomes.append(Outcome(job_id, spec, body))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} client errors, first: {errors[0]}")
    return outcomes, wall


def report(outcomes: list[Outcome], wall: float, clients: int, workers: int) -> Report:
    rep = Report(len(outcomes), clients, workers, wall)
    for o in outcomes:
        body = o.body
        rep.texts += len(o.spec.texts)
        if body.get("started_at") and body.get("finished_at"):
            rep.queue_ms.append((body["started_at"] - body["created_at"]) * 1000)
            rep.total_ms.append((body["finished_at"] - body["created_at"]) * 1000)
    return rep


def check(outcomes: list[Outcome], specs: list[JobSpec], reference_items: list[dict]) -> list[str]:
    """Every spec done exactly once, succeeded, and equal to the direct encode; a list of problems."""
    from tests.stack_support import same_item

    problems = []
    ids = [o.id for o in outcomes]
    if len(ids) != len(set(ids)):
        problems.append("duplicate job ids")
    if len(outcomes) != len(specs):
        problems.append(f"{len(specs) - len(outcomes)} jobs missing")
    for o in outcomes:
        if o.body["status"] != "succeeded":
            problems.append(f"job {o.id} {o.body['status']}: {o.body.get('error')}")
            continue
        items = o.body["result"]["items"]
        if len(items) != len(o.spec.texts):
            problems.append(f"job {o.id}: {len(items)} items for {len(o.spec.texts)} texts")
            continue
        for item, index in zip(items, o.spec.texts):
            extra = [m for m in MODES if m in item and m not in o.spec.modes]
            if extra or not same_item(item, reference_items[index], o.spec.modes):
                problems.append(f"job {o.id}: item for pool text {index} differs from a direct encode")
                break
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--max-chars", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)

    from bge_m3.settings import Settings
    from bge_m3.tinymodel import build
    from tests.stack_support import Reference, start_api
    from tests.support import RedisServer, spawn_worker

    root = Path(tempfile.mkdtemp(prefix="bge-m3-load-bench-"))
    manifest = build(root / "model", seed=0)
    pool = text_pool(args.max_chars)
    reference = Reference(root / "model").items(pool)
    specs = job_specs(args.jobs)
    redis = RedisServer(root / "redis")
    print(f"tiny model, {os.cpu_count()} CPUs, no GPU; {args.jobs} jobs of 1-{MAX_TEXTS_PER_JOB} texts of "
          f"{MIN_CHARS}-{args.max_chars} chars, random modes, {args.clients} clients")
    try:
        for db, count in enumerate(args.workers):
            settings = Settings.from_env({}, redis_url=redis.url(db), model_dir=root / "model",
                                         manifest=manifest, device="cpu", auto_download=False,
                                         log_dir=root / "logs", data_dir=root / "data",
                                         max_queued=args.jobs + 1)
            workers = [spawn_worker(settings, root) for _ in range(count)]
            api = start_api(settings, root, threads=args.clients + 8)
            try:
                outcomes, wall = run_load(api.url, pool, specs, args.clients)
            finally:
                api.stop()
                for w in workers:
                    w.stop()
            problems = check(outcomes, specs, reference)
            print("\n".join(report(outcomes, wall, args.clients, count).lines()))
            print(f"  checked: {len(outcomes)} results equal a direct encode; problems: {len(problems)}")
            for line in problems[:10]:
                print("   ", line)
    finally:
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
