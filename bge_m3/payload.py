"""A job result's stored form: its JSON text as a list of chunks, one per item.

A worker builds the result out of order (texts finish in length-sorted batches, not
in job order), so each item is packed on its own as soon as it is serialised, and the
chunks are put in job order: all at the end (``ItemsResult.chunks``), or stretch by stretch
as the order completes (``ItemsResult.take_ready``, streamed by ``bge_m3.staging``). One Redis value per item also keeps a result
of gigabytes (10,000 ColBERT texts) far below Redis' 512 MB limit on one value.

A chunk is ``SEGMENTED`` followed by segments: ``L`` + 4-byte little-endian length +
literal JSON text, or ``B`` + length + raw bytes that stand in the text for their
base64 (``bge_m3.codec.Base64``). The vectors' base64 is thus never computed by a
worker, and at rest a float16 ColBERT value costs its 2 bytes; the reader writes the
base64 back (C speed) when it turns the chunks into JSON. A chunk that does not start
with ``SEGMENTED`` is a zlib stream, as an earlier version stored it, and still reads.
"""
from __future__ import annotations

import base64
import json
import zlib
from typing import Any, Sequence

from bge_m3.codec import Base64

SEGMENTED = b"\x00"
"""First byte of a segmented chunk (a zlib stream starts with 0x78)."""

_LITERAL, _BASE64 = b"L", b"B"


def pack(*parts: Any) -> bytes:
    """One chunk holding the JSON text that ``parts`` (bytes and ``Base64``) stand for."""
    out: list[Any] = [SEGMENTED]
    literal: list[bytes] = []

    def flush() -> None:
        if literal:
            text = b"".join(literal)
            out.extend((_LITERAL, len(text).to_bytes(4, "little"), text))
            literal.clear()

    for part in parts:
        if isinstance(part, Base64):
            flush()
            out.extend((_BASE64, len(part).to_bytes(4, "little"), part.data))
        else:
            literal.append(part)
    flush()
    return b"".join(out)


def unpack(chunk: bytes) -> bytes:
    """The JSON text of one chunk."""
    if chunk[:1] != SEGMENTED:
        return zlib.decompress(chunk)
    view, out, at = memoryview(chunk), [], 1
    while at < len(chunk):
        kind, size = chunk[at:at + 1], int.from_bytes(chunk[at + 1:at + 5], "little")
        data = view[at + 5:at + 5 + size]
        out.append(base64.b64encode(data) if kind == _BASE64 else data)
        at += 5 + size
    return b"".join(out)


def encode(result: Any) -> list[bytes]:
    """The stored form of a JSON-able result: one chunk."""
    return [pack(json.dumps(result, separators=(",", ":")).encode())]


def decode(chunks: Sequence[bytes]) -> Any:
    return json.loads(b"".join(unpack(c) for c in chunks))


class ItemsResult:
    """``{**header, "items": [...]}`` built from items serialised in any order.

    ``add(i, parts)`` packs item ``i``'s JSON text (in pieces) at once; ``chunks()`` returns the
    stored form in job order, or ``take_ready()`` hands it out piece by piece as it completes.
    """

    def __init__(self, header: dict[str, Any], count: int):
        head = json.dumps(header, separators=(",", ":")).encode()
        self._head = head[:-1] + (b"," if header else b"") + b'"items":['
        self._items: list[bytes | None] = [None] * count
        self._next = -1  # take_ready: -1 before the head is taken, then the next item's index

    def add(self, index: int, parts: Sequence[Any]) -> None:
        self._items[index] = pack(b"," if index else b"", *parts)

    def chunks(self) -> list[bytes]:
        if self._next >= 0:
            raise ValueError("chunks were already taken")
        if any(item is None for item in self._items):
            raise ValueError("not every item was added")
        return [pack(self._head), *self._items, pack(b"]}")]

    def take_ready(self) -> list[bytes]:
        """The chunks that now continue, without a gap, those taken before: the head first,
        then items in job order as far as they are added, and the tail after the last. Each is
        handed out once and dropped here, so a streamed result is not held twice."""
        out: list[bytes] = []
        if self._next < 0:
            out.append(pack(self._head))
            self._next = 0
        count = len(self._items)
        while self._next < count and self._items[self._next] is not None:
            out.append(self._items[self._next])
            self._items[self._next] = _TAKEN
            self._next += 1
        if self._next == count:
            out.append(pack(b"]}"))
            self._next += 1
        return out


_TAKEN = b""
"""What ``take_ready`` leaves in an item's place (not None: the item was added)."""
