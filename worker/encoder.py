"""Texts in, BGE-M3 result items out: tokenize, one forward per batch, postprocess.

Postprocessing matches FlagEmbedding's ``M3Embedder.encode_single_device``:
dense is the normalised CLS vector; sparse keeps, per token id, the largest
positive weight, with CLS/EOS/PAD/UNK dropped; ColBERT keeps one normalised
vector per real token after CLS (``tokens - 1`` rows, EOS included).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import json

import numpy as np

from bge_m3 import codec
from worker import faults

MODES = ("dense", "sparse", "colbert")
"""The three BGE-M3 outputs a job may ask for."""


class TooLong(ValueError):
    """A text exceeds max_length and the job asked not to truncate."""

    def __init__(self, index: int, tokens: int, max_length: int):
        super().__init__(f"texts[{index}] has {tokens} tokens, more than max_length {max_length} "
                         "(send truncate=true to cut it)")
        self.index, self.tokens = index, tokens


@dataclass
class Row:
    """One text's slice of a batch output (numpy views, float32)."""
    dense: Any = None
    weights: Any = None   # the token weights (relu of the sparse head), one per token
    sparse: Any = None    # (ids ascending, largest weight of each): the lexical weights
    colbert: Any = None

    def clear(self) -> None:
        """Drop the views once the item is serialised: a batch's output arrays are freed when
        the last of its rows lets go, not when the job's last future does."""
        self.dense = self.weights = self.sparse = self.colbert = None


def truncate_ids(ids: list[int], max_length: int) -> list[int]:
    """What the HF tokenizer's ``truncation=True`` does for one XLM-R sequence: keep the head, keep EOS."""
    if len(ids) <= max_length:
        return ids
    if max_length < 2:
        return ids[:max_length]
    return ids[:max_length - 1] + ids[-1:]


class Encoder:
    def __init__(self, model: Any, colbert_dtype: str = "float16"):
        self.model = model
        self.colbert_dtype = colbert_dtype
        self._colbert_code = np.dtype("<f2" if colbert_dtype == "float16" else "<f4")
        # A lookup table over the vocabulary beats np.isin (one gather instead of a sort).
        self._special = np.zeros(max(model.vocab, max(model.special_ids) + 1), dtype=bool)
        self._special[sorted(model.special_ids)] = True
        # Past the model's position table a pass would index out of range (on CUDA, an assert
        # that poisons the device for every later job): its length is the hard limit.
        self.max_positions: int | None = getattr(model, "max_positions", None)

    @property
    def dimension(self) -> int:
        return self.model.hidden

    @property
    def colbert_itemsize(self) -> int:
        """Bytes of one ColBERT value as stored (``BGE_M3_COLBERT_DTYPE``)."""
        return self._colbert_code.itemsize

    def tokenize(self, texts: Sequence[str], max_length: int, truncate: bool) -> list[list[int]]:
        max_length = min(max_length, self.max_positions or max_length)
        rows = self.model.tokenize(texts)
        for i, ids in enumerate(rows):
            if len(ids) > max_length:
                if not truncate:
                    raise TooLong(i, len(ids), max_length)
                rows[i] = truncate_ids(ids, max_length)
        return rows

    @property
    def asynchronous(self) -> bool:
        """Whether ``start_batch`` returns before the pass is done (CUDA), so the batcher may queue
        the next pass before taking this one's rows."""
        return bool(getattr(self.model, "asynchronous", False))

    def run_batch(self, rows: Sequence[Sequence[int]], wants: Sequence[frozenset[str]]) -> list[Row]:
        """One forward pass for every row; each row gets only the outputs it asked for."""
        return self.start_batch(rows, wants)()

    def start_batch(self, rows: Sequence[Sequence[int]],
                    wants: Sequence[frozenset[str]]) -> Callable[[], list[Row]]:
        """``run_batch`` in two steps: queue the pass now, and return the call that waits for its
        outputs and cuts them into rows (the lexical weights, on the host, happen there)."""
        need = frozenset().union(*wants)
        faults.check_device()  # test-only; a no-op unless the device fault fired
        launched = self.model.launch(rows, "dense" in need, "sparse" in need, "colbert" in need)

        def finish() -> list[Row]:
            out = launched.wait()
            lexical = self.lexical_rows(out.ids, out.weights) if "sparse" in need else None
            result = []
            for i, (ids, want) in enumerate(zip(rows, wants)):
                n = len(ids)
                result.append(Row(
                    dense=out.dense[i] if "dense" in want else None,
                    weights=out.weights[i, :n] if "sparse" in want else None,
                    sparse=lexical[i] if "sparse" in want else None,
                    colbert=out.colbert[i, :n - 1] if "colbert" in want else None))
            return result
        return finish

    def item(self, ids: Sequence[int], row: Row) -> dict[str, Any]:
        """The stored JSON form of one text's outputs, as an object (tests and references)."""
        return json.loads(codec.json_text(self.item_json(ids, row)))

    def item_json(self, ids: Sequence[int], row: Row) -> list[Any]:
        """The stored JSON text of one text's outputs, in pieces (what the worker writes): the
        vectors as ``codec.Base64`` over the arrays themselves, never encoded nor joined here."""
        parts = [b'{"tokens":%d' % len(ids)]
        if row.dense is not None:
            dense = np.ascontiguousarray(row.dense, dtype="<f4")
            parts += [b',"dense":', *codec.pack_json_parts(dense, [int(dense.shape[0])], "float32")]
        if row.sparse is not None:
            indices, values = row.sparse
            parts += [b',"sparse":', json.dumps({"indices": indices.tolist(), "values": values.tolist()},
                                                separators=(",", ":")).encode()]
        if row.colbert is not None:
            vecs = np.ascontiguousarray(row.colbert, dtype=self._colbert_code)
            shape = [int(n) for n in row.colbert.shape]
            parts += [b',"colbert":', *codec.pack_json_parts(vecs, shape, self.colbert_dtype)]
        parts.append(b"}")
        return parts

    def lexical_rows(self, ids: Any, weights: Any) -> list[tuple[Any, Any]]:
        """Per row of a batch: its token ids ascending and the largest positive weight of each,
        special tokens dropped (FlagEmbedding's lexical weights), in a few numpy calls for the
        whole batch rather than a ``np.unique`` per text. Padding is the pad id: special."""
        keep = (weights > 0) & ~self._special[ids]
        rows, cols = np.nonzero(keep)
        key = rows * self._special.size + ids[rows, cols]
        value = weights[rows, cols].astype(np.float32)
        order = np.lexsort((value, key))  # by key, and within a key by weight: the last is the max
        key, value = key[order], value[order]
        last = np.ones(len(key), dtype=bool)
        last[:-1] = key[1:] != key[:-1]
        key, value = key[last], value[last]
        bounds = np.searchsorted(key // self._special.size, np.arange(len(ids) + 1))
        token = key % self._special.size
        return [(token[a:b], value[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
