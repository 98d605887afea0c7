"""A job result's stored form: its JSON text as a list of elements (Redis list values).

A worker builds the result out of order (texts finish in length-sorted batches, not
in job order), so each item is packed on its own as soon as it is serialised. The items are
stored in job order when the whole result is stored at once (``ItemsResult.chunks``); a
worker streaming its result (``bge_m3.staging``) sends each item as soon as it is packed
(``ItemsResult.take_ready``) and ends with an ``INDEX`` element, from which the reader puts
them back in order (``in_job_order``): waiting for the job order would hold back a window of
items (half the result of a 2,000-text job) until the window's last pass. One Redis value
per item also keeps a result of gigabytes (10,000 ColBERT texts) far below Redis' 512 MB limit
on one value.

A chunk is ``SEGMENTED`` followed by segments: ``L`` + 4-byte little-endian length +
literal JSON text, or ``B`` + length + raw bytes that stand in the text for their
base64 (``bge_m3.codec.Base64``). The vectors' base64 is thus never computed by a
worker, and at rest a float16 ColBERT value costs its 2 bytes; the reader writes the
base64 back (C speed) when it turns the chunks into JSON. A chunk that does not start
with ``SEGMENTED`` is a zlib stream, as an earlier version stored it, and still reads.

Raw bytes of RAW_ELEMENT_BYTES or more (an item's ColBERT vectors) are not copied into their
item's chunk: the chunk ends with ``N`` + length, and the next list element *is* those bytes,
sent to Redis straight from the forward pass's output array (``pack_item``). An item is then
one to three elements; the reader takes them in order either way.
"""
from __future__ import annotations

import base64
import json
import sys
import zlib
from array import array
from typing import Any, Iterable, Iterator, Sequence

from bge_m3.codec import Base64

SEGMENTED = b"\x00"
"""First byte of a segmented chunk (a zlib stream starts with 0x78)."""

INDEX = b"\x01"
"""First byte of the last element of a result whose items were stored out of job order
(``ItemsResult.take_ready``): little-endian uint32 pairs (item's place in the job, its element
count), one pair per item in stored order."""

RAW_ELEMENT_BYTES = 64 * 1024
"""Raw vector bytes from this size on travel as a list element of their own, without the copy
a join into the item's chunk would make (279 MB for the bench's 2,000 ColBERT texts on the real
model); smaller ones (a 4 KB dense vector) stay in the chunk, so small items stay one element."""

_LITERAL, _BASE64, _NEXT = b"L", b"B", b"N"


def pack_item(*parts: Any) -> list[Any]:
    """``pack``, with every ``Base64`` part of RAW_ELEMENT_BYTES or more as an element of its own
    (the part's buffer itself, not a copy) after a chunk ending in ``N``; returns the elements."""
    elements: list[Any] = []
    pending: list[Any] = []
    for part in parts:
        if isinstance(part, Base64) and len(part) >= RAW_ELEMENT_BYTES:
            elements += [pack(*pending, _Next(len(part))), part.data]
            pending = []
        else:
            pending.append(part)
    if pending or not elements:
        elements.append(pack(*pending))
    return elements


class _Next:
    """The ``N`` segment: the next element holds ``size`` raw bytes for the text's base64."""
    __slots__ = ("size",)

    def __init__(self, size: int):
        self.size = size


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
        elif isinstance(part, _Next):
            flush()
            out.extend((_NEXT, part.size.to_bytes(4, "little")))
        else:
            literal.append(part)
    flush()
    return b"".join(out)


def unpack(chunk: bytes) -> bytes:
    """The JSON text of one chunk (which does not end in ``N``: see ``texts``)."""
    text, size = _unpack(chunk)
    if size is not None:
        raise ValueError("the chunk continues in the next element; read the elements with texts()")
    return text


def _unpack(chunk: bytes) -> tuple[bytes, int | None]:
    """The chunk's text, and the size of the raw element it says comes next (or None)."""
    if chunk[:1] != SEGMENTED:
        return zlib.decompress(chunk), None
    view, out, at = memoryview(chunk), [], 1
    while at < len(chunk):
        kind, size = chunk[at:at + 1], int.from_bytes(chunk[at + 1:at + 5], "little")
        if kind == _NEXT:
            if at + 5 != len(chunk):
                raise ValueError("corrupt result chunk: N is not its last segment")
            return b"".join(out), size
        data = view[at + 5:at + 5 + size]
        out.append(base64.b64encode(data) if kind == _BASE64 else data)
        at += 5 + size
    return b"".join(out), None


def texts(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The JSON text of a stored result's elements, in pieces."""
    raw: int | None = None
    for chunk in chunks:
        if raw is not None:
            if len(chunk) != raw:
                raise ValueError(f"corrupt result: a raw element of {len(chunk)} bytes, {raw} expected")
            yield base64.b64encode(chunk)
            raw = None
            continue
        text, raw = _unpack(chunk)
        yield text
    if raw is not None:
        raise ValueError("corrupt result: its last chunk announces a raw element")


def encode(result: Any) -> list[bytes]:
    """The stored form of a JSON-able result: one chunk."""
    return [pack(json.dumps(result, separators=(",", ":")).encode())]


def decode(chunks: Sequence[bytes]) -> Any:
    return json.loads(b"".join(texts(in_job_order(chunks))))


class ItemsResult:
    """``{**header, "items": [...]}`` built from items serialised in any order.

    ``add(i, parts)`` packs item ``i``'s JSON text (in pieces) at once; ``chunks()`` returns the
    stored form in job order, or ``take_ready()`` hands out each item as soon as it is added,
    in the order added, and at the end the tail and, when that order was not the job's, an
    ``INDEX`` element that lets the reader put the items back in job order (``in_job_order``).
    """

    def __init__(self, header: dict[str, Any], count: int):
        head = json.dumps(header, separators=(",", ":")).encode()
        self._head = head[:-1] + (b"," if header else b"") + b'"items":['
        self._items: list[list[Any] | None] = [None] * count  # each item's elements
        self._fresh: list[int] = []  # items added since the last take_ready
        self._order: list[tuple[int, int]] = []  # (item, its element count) as handed out
        self._added = 0
        self._stage = 0  # take_ready: 0 before the head, 1 streaming items, 2 after the tail

    def add(self, index: int, parts: Sequence[Any]) -> None:
        if self._items[index] is not None:
            raise ValueError(f"item {index} was added already")
        self._items[index] = pack_item(b"," if index else b"", *parts)
        self._fresh.append(index)
        self._added += 1

    def chunks(self) -> list[Any]:
        if self._stage:
            raise ValueError("chunks were already taken")
        if self._added < len(self._items):
            raise ValueError("not every item was added")
        return [pack(self._head), *(e for item in self._items for e in item), pack(b"]}")]

    def take_ready(self) -> list[Any]:
        """What has not been handed out yet: the head first, then the items added since, in the
        order added; after the last, the tail (and the index if they came out of order). Each
        is handed out once and dropped here, so a streamed result is not held twice."""
        out: list[Any] = []
        if self._stage == 0:
            out.append(pack(self._head))
            self._stage = 1
        for index in self._fresh:
            elements = self._items[index]
            out += elements
            self._order.append((index, len(elements)))
            self._items[index] = _TAKEN
        self._fresh = []
        if self._stage == 1 and self._added == len(self._items):
            out.append(pack(b"]}"))
            if any(index != at for at, (index, _) in enumerate(self._order)):
                out.append(pack_index(self._order))
            self._stage = 2
        return out


_TAKEN: list[Any] = []
"""What ``take_ready`` leaves in an item's place (not None: the item was added)."""


def pack_index(order: Sequence[tuple[int, int]]) -> bytes:
    """The ``INDEX`` element: per item as stored, its place in the job and its element count."""
    values = array("I", (n for pair in order for n in pair))
    if sys.byteorder != "little":
        values.byteswap()
    return INDEX + values.tobytes()


def in_job_order(chunks: Sequence[bytes]) -> Sequence[bytes]:
    """The stored elements with their items in job order: as they are unless the last element
    is an ``INDEX`` (a result streamed as its items finished)."""
    if not chunks or chunks[-1][:1] != INDEX:
        return chunks
    values = array("I")
    values.frombytes(chunks[-1][1:])
    if sys.byteorder != "little":
        values.byteswap()
    body = chunks[:-1]
    if len(body) < 2:
        raise ValueError("corrupt result: an index without head and tail")
    items: list[Sequence[bytes] | None] = [None] * (len(values) // 2)
    at = 1
    for index, count in zip(values[::2], values[1::2]):
        if index >= len(items) or items[index] is not None:
            raise ValueError(f"corrupt result index: item {index}")
        items[index] = body[at:at + count]
        at += count
    if at != len(body) - 1 or any(item is None for item in items):
        raise ValueError("corrupt result index: it does not cover the stored items")
    return [body[0], *(e for item in items for e in item), body[-1]]
