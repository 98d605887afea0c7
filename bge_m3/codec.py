"""Compact, JSON-safe array encoding shared by workers (encode) and the API (decode).

At rest, dense and ColBERT vectors are little-endian binary inside base64 with
shape and dtype (float32 dense; float16 ColBERT by default: 2 bytes a value
before base64, so long float lists never hit Redis). Decoding uses only the
standard library so the API process needs no numpy.
"""
from __future__ import annotations

import base64
import json
import struct
import sys
from array import array
from typing import Any, Sequence

DTYPE_CODES = {"float32": "f", "float16": "e"}


def pack(data: bytes, shape: Sequence[int], dtype: str) -> dict[str, Any]:
    """Wrap already little-endian bytes as the at-rest object."""
    return json.loads(pack_json(data, shape, dtype))


def pack_json(data: bytes, shape: Sequence[int], dtype: str) -> bytes:
    """``pack``'s object as compact JSON text."""
    return json_text(pack_json_parts(data, shape, dtype))


class Base64:
    """Raw bytes standing in a JSON text for their base64. The stored form keeps them raw (2 bytes
    a float16 value, where base64 takes 2.67) and writes the base64 only when the text is read
    (``bge_m3.payload``); no worker thread spends time or the GIL encoding megabytes of it."""
    __slots__ = ("data",)

    def __init__(self, data: Any):
        view = memoryview(data)
        self.data = view.cast("B") if view.nbytes else b""  # cast refuses a 0 in the shape

    def __len__(self) -> int:
        return len(self.data)


def json_text(parts: Sequence[Any]) -> bytes:
    """The JSON text that ``parts`` (bytes and ``Base64``) stand for."""
    return b"".join(base64.b64encode(p.data) if isinstance(p, Base64) else p for p in parts)


def pack_json_parts(data: Any, shape: Sequence[int], dtype: str) -> list[Any]:
    """``pack_json`` in pieces, written directly, the data as ``Base64`` (any contiguous
    little-endian buffer; a numpy array is taken without a copy)."""
    if dtype not in DTYPE_CODES:
        raise ValueError(f"unsupported dtype {dtype}")
    dims = ",".join(str(int(n)) for n in shape)
    return [f'{{"shape":[{dims}],"dtype":"{dtype}","data":"'.encode(), Base64(data), b'"}']


def unpack_floats(obj: dict[str, Any]) -> list[float]:
    """The flat values of a packed array as Python floats."""
    raw = base64.b64decode(obj["data"])
    code = DTYPE_CODES[obj["dtype"]]
    if code == "f":
        values = array("f")
        values.frombytes(raw)
        if sys.byteorder != "little":
            values.byteswap()
        return values.tolist()
    return list(struct.unpack(f"<{len(raw) // 2}e", raw))


def unpack_rows(obj: dict[str, Any]) -> list[list[float]]:
    flat = unpack_floats(obj)
    shape = obj["shape"]
    if len(shape) == 1:
        return [flat]
    width = shape[1]
    return [flat[i:i + width] for i in range(0, len(flat), width)] if width else [[] for _ in range(shape[0])]


def float32_base64(values: Sequence[float]) -> str:
    """Raw little-endian float32, base64: the OpenAI ``encoding_format=base64`` form."""
    arr = array("f", values)
    if sys.byteorder != "little":
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode("ascii")
