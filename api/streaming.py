"""Vectors written as JSON numbers while the response is sent, one row at a time.

A stored ColBERT result is compact (2 bytes a value at rest), but as Python floats in a response
dict each value costs ~50 bytes before the JSON text is even built: one 8,192-token text asked
for with ``"encoding": "float"`` grew the API by 400 MiB, and a job at the ColBERT budget would
have needed some 13 GB, per request. Here the packed bytes stay packed until each row is written,
so a response costs its stored size plus one row, whatever its length.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from typing import Any, Iterator

from flask import Response

from bge_m3 import heap
from bge_m3.codec import DTYPE_CODES

EAGER_VALUES = 65_536
"""Most vector values a response is built whole for, as Python floats in Flask's own JSON with a
Content-Length (a few MB at most): a few vectors streamed cost a sequential ``/embed`` more in
Python and chunk framing than they saved. Above it the response streams."""

CHUNK_BYTES = 64 * 1024
"""Bytes of JSON text gathered before one write to the client: rows are a few KB each, and a
write per row would be a syscall per row."""

_SEPARATORS = (",", ":")

_LEAVES = frozenset((str, int, float, bool, type(None)))
"""Types that hold no ``FloatArray``: the walks below step over them without a call."""


class Numbers(list):
    """A list of plain numbers (a sparse result's ids or weights), marked so the walks below skip
    it whole: stepping through 10,000 texts' weights one value at a time took 300 ms a response."""
    __slots__ = ()


class FloatArray:
    """A packed array (``bge_m3.codec``) that becomes JSON numbers only when it is written: a flat
    list, or with ``rows`` a list of lists of ``shape[1]`` values. Its bytes are decoded and
    checked here, before any of the response is sent, so damaged data is still a JSON error."""
    __slots__ = ("raw", "code", "rows", "count")

    def __init__(self, packed: dict[str, Any], rows: bool):
        try:
            self.code = DTYPE_CODES[packed["dtype"]]
            self.raw = base64.b64decode(packed["data"], validate=True)
            shape = [int(n) for n in packed["shape"]]
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ValueError(f"a stored array cannot be read ({type(exc).__name__})") from None
        # Every way the bytes could fail to unpack is caught here: once the 200 and the first
        # rows are sent, a failure can only cut the body short.
        count, odd = divmod(len(self.raw), struct.calcsize(self.code))
        if odd or not shape or any(n < 0 for n in shape) or math.prod(shape) != count:
            raise ValueError(f"a stored array of shape {shape} holds {len(self.raw)} bytes of "
                             f"{packed['dtype']}")
        self.count = count
        self.rows: tuple[int, int] | None = None
        if rows:
            self.rows = (shape[0], shape[1]) if len(shape) == 2 else (1, count)

    def _rows(self) -> Iterator[list[float]]:
        n, width = self.rows or (1, self.count)
        if not width:
            yield from ([] for _ in range(n))
        else:
            yield from (list(row) for row in struct.iter_unpack(f"<{width}{self.code}", self.raw))

    def chunks(self) -> Iterator[str]:
        if self.rows is None:
            yield json.dumps(next(self._rows(), []), separators=_SEPARATORS)
            return
        yield "["
        for i, row in enumerate(self._rows()):
            yield ("," if i else "") + json.dumps(row, separators=_SEPARATORS)
        yield "]"

    def tolist(self) -> list[Any]:
        """The values as Python floats: a flat list, or a list of rows."""
        if self.rows is None:
            return next(self._rows(), [])
        return list(self._rows())


def holds_arrays(obj: Any) -> bool:
    """Whether ``obj`` has a ``FloatArray`` anywhere."""
    return array_values(obj, stop_at=1) > 0


def array_values(obj: Any, stop_at: int | None = None) -> int:
    """The values of the ``FloatArray``s in ``obj`` (counting stops once past ``stop_at``)."""
    if isinstance(obj, FloatArray):
        return obj.count or 1  # an empty one still makes the body need writing
    if isinstance(obj, Numbers):
        return 0
    children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    total = 0
    for child in children:
        if type(child) in _LEAVES:
            continue
        total += array_values(child, stop_at)
        if stop_at is not None and total >= stop_at:
            break
    return total


def plain(obj: Any) -> Any:
    """``obj`` with each ``FloatArray`` as Python floats (for a body small enough to build)."""
    if isinstance(obj, FloatArray):
        return obj.tolist()
    if isinstance(obj, Numbers) or type(obj) in _LEAVES:
        return obj
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def iter_json(obj: Any) -> Iterator[str]:
    """The JSON text of ``obj`` in pieces, ``FloatArray`` rows written as they come."""
    if isinstance(obj, FloatArray):
        yield from obj.chunks()
    elif isinstance(obj, dict) and holds_arrays(obj):
        yield "{"
        for i, (key, value) in enumerate(obj.items()):
            yield ("," if i else "") + json.dumps(str(key)) + ":"
            yield from iter_json(value)
        yield "}"
    elif isinstance(obj, (list, tuple)) and holds_arrays(obj):
        yield "["
        for i, value in enumerate(obj):
            if i:
                yield ","
            yield from iter_json(value)
        yield "]"
    else:
        yield json.dumps(obj, separators=_SEPARATORS)


def gathered(pieces: Iterator[str]) -> Iterator[bytes]:
    buffer: list[str] = []
    size = sent = 0
    try:
        for piece in pieces:
            buffer.append(piece)
            size += len(piece)
            if size >= CHUNK_BYTES:
                sent += size
                yield "".join(buffer).encode()
                buffer, size = [], 0
        if buffer:
            yield "".join(buffer).encode()
    finally:  # also when the client went away mid-body
        buffer = []
        if sent >= heap.TRIM_AFTER_BYTES:
            heap.trim()


def respond(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Any:
    """What a route returns: Flask's own JSON for a body of plain values, the body written whole
    for a few vectors, else the body streamed."""
    values = array_values(body, stop_at=EAGER_VALUES + 1)
    if values <= EAGER_VALUES:
        return (plain(body) if values else body), status, headers or {}
    return Response(gathered(iter_json(body)), status=status, headers=headers,
                    mimetype="application/json")
