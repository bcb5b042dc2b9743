"""Messages between peers that are not ledger vertices: heads gossip and sync requests.

All are canonical msgpack maps decoded strictly (crypto.canonical), each with an `op` field.
They carry no signature: a heads message is only a hint (a lie costs the liar nothing but
costs us a bounded number of failed fetches), and sync messages travel on a stream that the
ML-KEM handshake has already bound to the remote peer's ML-DSA identity.

    heads      {"op": "heads", "tips": [id, ...<=16], "count": int}       (control topic)
    get        {"op": "get", "ids": [id, ...<=256]}                     -> vertices
    since      {"op": "since", "have": [[author, seq], ...], "limit": int}  -> vertices
    vertices   {"op": "vertices", "vertices": [raw, ...], "more": bool}
    since/2    {"op": "since/2", "have": [[author, seq], ...], "limit": int,
                "after": [] | [depth, id]}                               -> page/2
    page/2     {"op": "page/2", "vertices": [raw, ...], "next": [] | [depth, id]}
    es         {"op": "es", "author": key id, "set": {...}}                (task topics)
    chunk/get  {"op": "chunk/get", "data": blake3, "index": int}          -> chunk
    chunk      {"op": "chunk", "data": blake3, "index": int, "have": bool, "bytes": bin}

`chunk/get` asks for one chunk of a published task's data by its content address (the
`task` vertex lists a BLAKE3 per chunk, evolution/taskspec.py); the answer carries the bytes
(`have` true) or says the server does not hold that file (`have` false, no bytes). The asker
checks the bytes against the chunk list (node/protocol/datafetch.py).

`es` carries one peer's evaluated perturbations of one generation of the shared evolution
strategy (evolution/es.py, `ResultSet`; format in docs/vertex-format.md). It is search
traffic, not history: a result set matters for the next update or two and nothing after, so
it is gossiped and pooled but never stored in the ledger (a vertex per peer per generation
would grow every ledger with the network and cost an ML-DSA signature each). `author` is the
sender's claimed key id, unauthenticated: it only keeps a peer from pooling two sets of one
author in one update and lets a banned author's sets be dropped; the rank-based update bounds
what one lying set can move (evolution/es.py).

Version 2 of bulk sync pages by cursor (keyset pagination over the server's (depth, id)
order): `next` is the position of the page's last vertex, `[]` when nothing follows; the asker
sends it back as `after`, with the same `have`. The server keeps no state, reads each row of a
paging session once, and the asker can request page k+1 as soon as page k arrives (before
ingesting it). Version 1 `since` is still answered (first page only, `more` flag).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qudag.crypto.canonical import DecodeError, fields, pack, unpack
from qudag.evolution.es import ResultSet
from qudag.evolution.taskspec import CHUNK_SIZE, MAX_CHUNKS

ID_SIZE = 32
MAX_HEADS = 16
MAX_GET_IDS = 256
MAX_HAVE_AUTHORS = 10_000
MAX_PAGE_VERTICES = 512
MAX_ES_SETS = 16  # result sets in one `es` message (a sender's batch, CoreConfig.es_batch_ms)
MAX_MESSAGE_SIZE = 4 * 1024 * 1024  # a page of vertices; the sync frame limit is above this
MAX_CHUNK_INDEX = MAX_CHUNKS - 1


@dataclass(frozen=True)
class Heads:
    tips: tuple[bytes, ...]
    count: int


@dataclass(frozen=True)
class GetVertices:
    ids: tuple[bytes, ...]


@dataclass(frozen=True)
class Since:
    """Ask for every vertex whose author's seq exceeds what we have (per-author chains)."""

    have: tuple[tuple[bytes, int], ...]
    limit: int


@dataclass(frozen=True)
class Vertices:
    vertices: tuple[bytes, ...]
    more: bool


Cursor = tuple[int, bytes]  # (depth, id) in the server's parents-first order


@dataclass(frozen=True)
class SinceAfter:
    """Version 2 of `Since`: the page after `after` (None: the first page)."""

    have: tuple[tuple[bytes, int], ...]
    limit: int
    after: Cursor | None


@dataclass(frozen=True)
class Page:
    """Answer to `SinceAfter`; `next` is None when the asker has been sent everything."""

    vertices: tuple[bytes, ...]
    next: Cursor | None


@dataclass(frozen=True)
class EsResults:
    """One author's result sets of one task, oldest first (1..MAX_ES_SETS)."""

    author: bytes
    sets: tuple[ResultSet, ...]


@dataclass(frozen=True)
class GetChunk:
    """Ask for chunk `index` of the data whose BLAKE3 is `data`."""

    data: bytes
    index: int


@dataclass(frozen=True)
class Chunk:
    """A chunk's bytes (`have`), or word that the server lacks the data (`bytes` empty)."""

    data: bytes
    index: int
    have: bool
    bytes: bytes


Message = Heads | GetVertices | Since | Vertices | SinceAfter | Page | EsResults | GetChunk | Chunk


def _cursor_out(cursor: Cursor | None) -> list[Any]:
    return [] if cursor is None else [cursor[0], cursor[1]]


def encode(message: Message) -> bytes:
    if isinstance(message, GetChunk):
        return pack({"op": "chunk/get", "data": message.data, "index": message.index})
    if isinstance(message, Chunk):
        return pack(
            {
                "op": "chunk",
                "data": message.data,
                "index": message.index,
                "have": message.have,
                "bytes": message.bytes,
            }
        )
    if isinstance(message, EsResults):
        sets = [r.to_dict() for r in message.sets]
        return pack({"op": "es", "author": message.author, "sets": sets})
    if isinstance(message, Heads):
        return pack({"op": "heads", "tips": list(message.tips), "count": message.count})
    if isinstance(message, GetVertices):
        return pack({"op": "get", "ids": list(message.ids)})
    if isinstance(message, Since):
        have = [[author, seq] for author, seq in message.have]
        return pack({"op": "since", "have": have, "limit": message.limit})
    if isinstance(message, SinceAfter):
        have = [[author, seq] for author, seq in message.have]
        after = _cursor_out(message.after)
        return pack({"op": "since/2", "have": have, "limit": message.limit, "after": after})
    if isinstance(message, Page):
        return pack(
            {"op": "page/2", "vertices": list(message.vertices), "next": _cursor_out(message.next)}
        )
    return pack({"op": "vertices", "vertices": list(message.vertices), "more": message.more})


def _ids(items: list[Any], limit: int, what: str) -> tuple[bytes, ...]:
    if len(items) > limit:
        raise DecodeError("oversize", f"{what}: more than {limit} ids")
    for item in items:
        if not isinstance(item, bytes) or len(item) != ID_SIZE:
            raise DecodeError("type", f"{what}: ids are 32-byte strings")
    return tuple(items)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _have(items: list[Any], what: str) -> tuple[tuple[bytes, int], ...]:
    if len(items) > MAX_HAVE_AUTHORS:
        raise DecodeError("oversize", f"{what}.have")
    have = []
    for pair in items:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not isinstance(pair[0], bytes)
            or len(pair[0]) != ID_SIZE
            or not _count(pair[1])
        ):
            raise DecodeError("type", f"{what}.have is a list of [author, seq]")
        have.append((pair[0], pair[1]))
    return tuple(have)


def _cursor(value: list[Any], what: str) -> Cursor | None:
    if not value:
        return None
    if (
        len(value) != 2
        or not _count(value[0])
        or not isinstance(value[1], bytes)
        or len(value[1]) != ID_SIZE
    ):
        raise DecodeError("type", f"{what} is [] or [depth, id]")
    return (value[0], value[1])


def _raws(items: list[Any], what: str) -> tuple[bytes, ...]:
    if len(items) > MAX_PAGE_VERTICES:
        raise DecodeError("oversize", f"{what}: page too long")
    if not all(isinstance(v, bytes) for v in items):
        raise DecodeError("type", f"{what} are byte strings")
    return tuple(items)


def decode(data: bytes) -> Message:
    """Strictly decode one message; raise `DecodeError` for anything else."""
    value = unpack(data, MAX_MESSAGE_SIZE)
    if not isinstance(value, dict) or not isinstance(value.get("op"), str):
        raise DecodeError("type", "a message is a map with an 'op'")
    op = value["op"]
    if op == "heads":
        d = fields(value, {"op": str, "tips": list, "count": int}, "heads")
        if d["count"] < 0:
            raise DecodeError("range", "heads.count")
        return Heads(_ids(d["tips"], MAX_HEADS, "heads.tips"), d["count"])
    if op == "get":
        d = fields(value, {"op": str, "ids": list}, "get")
        return GetVertices(_ids(d["ids"], MAX_GET_IDS, "get.ids"))
    if op == "since":
        d = fields(value, {"op": str, "have": list, "limit": int}, "since")
        if not 1 <= d["limit"] <= MAX_PAGE_VERTICES:
            raise DecodeError("range", "since.limit")
        return Since(_have(d["have"], "since"), d["limit"])
    if op == "since/2":
        d = fields(value, {"op": str, "have": list, "limit": int, "after": list}, "since/2")
        if not 1 <= d["limit"] <= MAX_PAGE_VERTICES:
            raise DecodeError("range", "since/2.limit")
        have = _have(d["have"], "since/2")
        return SinceAfter(have, d["limit"], _cursor(d["after"], "since/2.after"))
    if op == "vertices":
        d = fields(value, {"op": str, "vertices": list, "more": bool}, "vertices")
        return Vertices(_raws(d["vertices"], "vertices"), d["more"])
    if op == "page/2":
        d = fields(value, {"op": str, "vertices": list, "next": list}, "page/2")
        return Page(_raws(d["vertices"], "page/2.vertices"), _cursor(d["next"], "page/2.next"))
    if op == "es":
        d = fields(value, {"op": str, "author": bytes, "sets": list}, "es")
        if len(d["author"]) != ID_SIZE:
            raise DecodeError("type", "es.author is a 32-byte key id")
        if not 1 <= len(d["sets"]) <= MAX_ES_SETS:
            raise DecodeError("range", f"es.sets: 1..{MAX_ES_SETS}")
        sets = tuple(ResultSet.from_dict(r) for r in d["sets"])
        if len({(r.task, r.task_version) for r in sets}) != 1:
            raise DecodeError("range", "es.sets are of one task and version")
        return EsResults(bytes(d["author"]), sets)
    if op == "chunk/get":
        d = fields(value, {"op": str, "data": bytes, "index": int}, "chunk/get")
        return GetChunk(*_chunk_address(d, "chunk/get"))
    if op == "chunk":
        d = fields(
            value,
            {"op": str, "data": bytes, "index": int, "have": bool, "bytes": bytes},
            "chunk",
        )
        data, index = _chunk_address(d, "chunk")
        if len(d["bytes"]) > CHUNK_SIZE or (not d["have"] and d["bytes"]):
            raise DecodeError("oversize", f"chunk: at most {CHUNK_SIZE} bytes, none if not held")
        return Chunk(data, index, d["have"], d["bytes"])
    raise DecodeError("unknown-op", op[:32])


def _chunk_address(d: dict[str, Any], what: str) -> tuple[bytes, int]:
    if len(d["data"]) != ID_SIZE:
        raise DecodeError("type", f"{what}.data is a 32-byte BLAKE3")
    if not 0 <= d["index"] <= MAX_CHUNK_INDEX:
        raise DecodeError("range", f"{what}.index: 0..{MAX_CHUNK_INDEX}")
    return bytes(d["data"]), d["index"]
