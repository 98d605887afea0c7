"""``/v1/score``'s scoring against the pure-Python scoring it replaced, measured in the same run
on the same job result: real-model shapes (1024-dim dense and ColBERT, float16 ColBERT at rest)
with random unit vectors, since the scores' cost depends only on the shapes.

Prints both times and the ratio (pure Python / numpy; > 1 means the numpy path is faster).

    python bench/score_bench.py [--query-tokens 32] [--documents 20] [--doc-tokens 512]
"""
from __future__ import annotations

import argparse
import operator
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.scoring import hybrid, lexical, scores  # noqa: E402
from bge_m3.codec import pack, unpack_floats, unpack_rows  # noqa: E402

DIM = 1024


def item(rng: np.random.Generator, tokens: int) -> dict:
    dense = rng.standard_normal(DIM).astype("<f4")
    rows = rng.standard_normal((tokens, DIM)).astype("<f2")
    ids = sorted(rng.choice(250_000, size=min(tokens, 200), replace=False).tolist())
    return {"dense": pack((dense / np.linalg.norm(dense)).tobytes(), [DIM], "float32"),
            "colbert": pack(rows.tobytes(), [tokens, DIM], "float16"),
            "sparse": {"indices": ids, "values": rng.random(len(ids)).tolist()}}


def pure_python(items: list[dict], weights: list[float]) -> list[dict]:
    """The scoring as it was (api/scoring.py before numpy): lists of floats and sum(map(mul))."""
    def dot(a, b):
        return sum(map(operator.mul, a, b))

    query = items[0]
    q_dense, q_rows = unpack_floats(query["dense"]), unpack_rows(query["colbert"])
    out = []
    for index, doc in enumerate(items[1:]):
        d_rows = unpack_rows(doc["colbert"])
        c = sum(max(dot(q, r) for r in d_rows) for q in q_rows) / len(q_rows)
        d = dot(q_dense, unpack_floats(doc["dense"]))
        s = lexical(query["sparse"], doc["sparse"])
        out.append({"index": index, "dense": d, "sparse": s, "colbert": c, "hybrid": hybrid(d, s, c, weights)})
    return out


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--doc-tokens", type=int, default=512)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    items = [item(rng, args.query_tokens)] + [item(rng, args.doc_tokens) for _ in range(args.documents)]
    weights = [0.4, 0.2, 0.4]
    fast, got = timed(scores, items, weights)
    slow, want = timed(pure_python, items, weights)
    worst = max(abs(a[k] - b[k]) for a, b in zip(got, want) for k in ("dense", "sparse", "colbert", "hybrid"))
    print(f"{args.documents} documents x {args.doc_tokens} tokens, query {args.query_tokens} tokens, {DIM}-dim")
    print(f"numpy        {fast * 1000:9.1f} ms")
    print(f"pure Python  {slow * 1000:9.1f} ms")
    print(f"ratio (pure Python / numpy): {slow / fast:.0f}x; largest score difference {worst:.2e}")
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
