"""What a job asks for, checked by the worker before any pass: its params (the API validates
them too; the worker trusts nothing it reads from Redis) and the size of the result they imply.
"""
from __future__ import annotations

from typing import Any, Sequence

from bge_m3.records import RESULT_ADVICE
from bge_m3.settings import MIN_MAX_LENGTH
from worker.encoder import MODES


class InvalidJob(ValueError):
    """The job's params break the contract (the API validates too; the worker trusts nothing)."""


class ResultTooLarge(ValueError):
    """The job's ColBERT vectors would pass ``BGE_M3_MAX_COLBERT_TOKENS``: one request must not
    fill Redis (a 20 MB body of text is some 5 M tokens, 10 GB of float16 vectors)."""


def check_result_size(rows: Sequence[Sequence[int]], modes: frozenset[str], limit: int,
                      dimension: int, itemsize: int, advice: str = RESULT_ADVICE) -> None:
    """Raise ``ResultTooLarge`` before any pass when the ColBERT output is over ``limit``
    vectors (one per token but the first, as FlagEmbedding drops CLS)."""
    if "colbert" not in modes:
        return
    vectors = sum(max(0, len(r) - 1) for r in rows)
    if vectors > limit:
        size = vectors * dimension * itemsize  # as stored; base64 in a response is 4/3 of it
        raise ResultTooLarge(f"colbert for {vectors:,} tokens is more than BGE_M3_MAX_COLBERT_TOKENS "
                             f"({limit:,}), about {_size(size)} of result; {advice}")


def _size(nbytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 1e3:.1f} kB"


def parse_params(params: Any, max_texts: int, max_length: int) -> tuple[list[str], frozenset[str], int, bool]:
    if not isinstance(params, dict):
        raise InvalidJob("job has no params")
    texts = params.get("texts")
    if not isinstance(texts, list) or not texts:
        raise InvalidJob("texts must be a non-empty list of strings")
    if len(texts) > max_texts:
        raise InvalidJob(f"{len(texts)} texts is more than the limit of {max_texts}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidJob(f"texts[{i}] is not a string")
    modes = params.get("modes") or ["dense"]
    if not isinstance(modes, list) or not set(modes) <= set(MODES) or not modes:
        raise InvalidJob(f"modes must be a non-empty subset of {list(MODES)}")
    length = params.get("max_length", max_length)
    if (not isinstance(length, int) or isinstance(length, bool)
            or not MIN_MAX_LENGTH <= length <= max_length):
        raise InvalidJob(f"max_length must be an integer between {MIN_MAX_LENGTH} and {max_length}")
    truncate = params.get("truncate", True)
    if not isinstance(truncate, bool):
        raise InvalidJob("truncate must be true or false")
    return texts, frozenset(modes), length, truncate
