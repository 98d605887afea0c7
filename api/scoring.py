"""Relevance scores with FlagEmbedding's semantics (``BGEM3FlagModel``):

- dense: inner product of the normalised dense vectors (``q @ p.T``);
- sparse: ``compute_lexical_matching_score``: sum over shared token ids of the two weights;
- colbert: ``colbert_score``: for each query token vector the best inner product with any
  document token vector, summed and divided by the number of query vectors;
- hybrid: ``compute_score``'s ``colbert+sparse+dense``: the weighted sum divided by the sum of
  the weights (so the default [0.4, 0.2, 0.4] sums to 1 and divides by 1).

ColBERT is query tokens x document tokens x 1024 multiply-adds per document: numpy's float32
matrix product (pure Python took seconds per document on the real model). numpy, not torch:
the API process never loads a model runtime. The work is bounded by MAX_COLBERT_PAIRS per request.
"""
from __future__ import annotations

import base64
from typing import Any, Sequence

import numpy as np

from api.errors import ApiError

MAX_COLBERT_PAIRS = 1 << 27
"""Query tokens x document tokens (summed over documents) one /v1/score request may ask for:
about 137 GFLOP on the real model, a few seconds of one core (``bge-m3 api`` gives numpy one
thread). An 8,192-token query against 16,384 document tokens, or a 32-token query against 8,000
documents of 512 tokens."""

BLOCK_ENTRIES = 1 << 22
"""Similarity entries computed at once (16 MB of float32): a long query against a long document
is taken in blocks of query rows, so one request never holds a q x d matrix of gigabytes."""

NUMPY_DTYPES = {"float32": "<f4", "float16": "<f2"}


def matrix(packed: dict[str, Any]) -> np.ndarray:
    """A packed array (``bge_m3.codec``) as a float32 matrix of its shape (a vector: one row)."""
    values = np.frombuffer(base64.b64decode(packed["data"]), dtype=NUMPY_DTYPES[packed["dtype"]])
    shape = packed["shape"]
    return values.astype(np.float32).reshape(shape if len(shape) == 2 else (1, -1))


def lexical(q: dict[str, Any], d: dict[str, Any]) -> float:
    doc = dict(zip(d.get("indices", []), d.get("values", [])))
    return sum(w * doc[i] for i, w in zip(q.get("indices", []), q.get("values", [])) if i in doc)


def colbert(q: np.ndarray, d: np.ndarray) -> float:
    if not len(q) or not len(d):
        return 0.0
    step = max(1, BLOCK_ENTRIES // len(d))
    best = np.concatenate([(q[i:i + step] @ d.T).max(axis=1) for i in range(0, len(q), step)])
    return float(best.sum(dtype=np.float64) / len(q))


def hybrid(dense: float, sparse: float, colbert_score: float, weights: Sequence[float]) -> float:
    # Normalise the weights first: the same value, but huge weights cannot overflow to inf/NaN.
    total = sum(weights)
    return dense * (weights[0] / total) + sparse * (weights[1] / total) + colbert_score * (weights[2] / total)


def check_cost(items: list[dict[str, Any]]) -> None:
    """413 ``score_too_large`` when the ColBERT work is over MAX_COLBERT_PAIRS (known only once
    the worker has tokenized the texts)."""
    rows = [item["colbert"]["shape"][0] for item in items]
    pairs = rows[0] * sum(rows[1:]) if rows else 0
    if pairs > MAX_COLBERT_PAIRS:
        raise ApiError(413, "score_too_large", f"the query's {rows[0]:,} tokens against the documents' "
                       f"{sum(rows[1:]):,} are {pairs:,} token pairs to score, more than the limit of "
                       f"{MAX_COLBERT_PAIRS:,}; send fewer or shorter documents, or a lower max_length")


def scores(items: list[dict[str, Any]], weights: Sequence[float]) -> list[dict[str, float]]:
    """``items``: the stored job items, the query first, then one per document."""
    check_cost(items)
    query, documents = items[0], items[1:]
    q_dense, q_rows = matrix(query["dense"])[0], matrix(query["colbert"])
    out = []
    for index, doc in enumerate(documents):
        d = float(q_dense @ matrix(doc["dense"])[0])
        s = lexical(query["sparse"], doc["sparse"])
        c = colbert(q_rows, matrix(doc["colbert"]))
        out.append({"index": index, "dense": d, "sparse": s, "colbert": c,
                    "hybrid": hybrid(d, s, c, weights)})
    return out
