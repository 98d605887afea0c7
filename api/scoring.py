"""Relevance scores in pure Python, with FlagEmbedding's semantics (``BGEM3FlagModel``):

- dense: inner product of the normalised dense vectors (``q @ p.T``);
- sparse: ``compute_lexical_matching_score``: sum over shared token ids of the two weights;
- colbert: ``colbert_score``: for each query token vector the best inner product with any
  document token vector, summed and divided by the number of query vectors;
- hybrid: ``compute_score``'s ``colbert+sparse+dense``: the weighted sum divided by the sum of
  the weights (so the default [0.4, 0.2, 0.4] sums to 1 and divides by 1).

Vectors come from the job result (packed, decoded by ``bge_m3.codec``), so no numpy or torch.
"""
from __future__ import annotations

import operator
from typing import Any, Sequence

from bge_m3.codec import unpack_floats, unpack_rows


def dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(map(operator.mul, a, b))


def lexical(q: dict[str, Any], d: dict[str, Any]) -> float:
    doc = dict(zip(d.get("indices", []), d.get("values", [])))
    return sum(w * doc[i] for i, w in zip(q.get("indices", []), q.get("values", [])) if i in doc)


def colbert(q_rows: list[list[float]], d_rows: list[list[float]]) -> float:
    if not q_rows or not d_rows:
        return 0.0
    return sum(max(dot(q, d) for d in d_rows) for q in q_rows) / len(q_rows)


def hybrid(dense: float, sparse: float, colbert_score: float, weights: Sequence[float]) -> float:
    # Normalise the weights first: the same value, but huge weights cannot overflow to inf/NaN.
    total = sum(weights)
    return dense * (weights[0] / total) + sparse * (weights[1] / total) + colbert_score * (weights[2] / total)


def scores(items: list[dict[str, Any]], weights: Sequence[float]) -> list[dict[str, float]]:
    """``items``: the stored job items, the query first, then one per document."""
    query, documents = items[0], items[1:]
    q_dense = unpack_floats(query["dense"])
    q_rows = unpack_rows(query["colbert"])
    out = []
    for index, doc in enumerate(documents):
        d = dot(q_dense, unpack_floats(doc["dense"]))
        s = lexical(query["sparse"], doc["sparse"])
        c = colbert(q_rows, unpack_rows(doc["colbert"]))
        out.append({"index": index, "dense": d, "sparse": s, "colbert": c,
                    "hybrid": hybrid(d, s, c, weights)})
    return out
