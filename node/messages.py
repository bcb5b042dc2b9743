"""Messages between peers that are not ledger vertices: heads gossip and sync requests.

All are canonical msgpack maps decoded strictly (crypto.canonical), each with an `op` field.
They carry no signature: a heads message is only a hint (a lie costs the liar nothing but
costs us a bounded number of failed fetches), and sync messages travel on a stream that the
ML-KEM handshake has already bound to the remote peer's ML-DSA identity.

    heads      {"op": "heads", "tips": [id, ...<=16], "count": int}       (control topic)
    get        {"op": "get", "ids": [id, ...<=256]}                     -> vertices
    since      {"op": "since", "have": [[author, seq], ...], "limit": int}  -> vertices
    vertices   {"op": "vertices", "vertices": [raw, ...], "more": bool}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qudag.crypto.canonical import DecodeError, fields, pack, unpack

ID_SIZE = 32
MAX_HEADS = 16
MAX_GET_IDS = 256
MAX_HAVE_AUTHORS = 10_000
MAX_PAGE_VERTICES = 512
MAX_MESSAGE_SIZE = 4 * 1024 * 1024  # a page of vertices; the sync frame limit is above this


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


Message = Heads | GetVertices | Since | Vertices


def encode(message: Message) -> bytes:
    if isinstance(message, Heads):
        return pack({"op": "heads", "tips": list(message.tips), "count": message.count})
    if isinstance(message, GetVertices):
        return pack({"op": "get", "ids": list(message.ids)})
    if isinstance(message, Since):
        have = [[author, seq] for author, seq in message.have]
        return pack({"op": "since", "have": have, "limit": message.limit})
    return pack({"op": "vertices", "vertices": list(message.vertices), "more": message.more})


def _ids(items: list[Any], limit: int, what: str) -> tuple[bytes, ...]:
    if len(items) > limit:
        raise DecodeError("oversize", f"{what}: more than {limit} ids")
    for item in items:
        if not isinstance(item, bytes) or len(item) != ID_SIZE:
            raise DecodeError("type", f"{what}: ids are 32-byte strings")
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
        if len(d["have"]) > MAX_HAVE_AUTHORS:
            raise DecodeError("oversize", "since.have")
        have = []
        for pair in d["have"]:
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not isinstance(pair[0], bytes)
                or len(pair[0]) != ID_SIZE
                or not isinstance(pair[1], int)
                or isinstance(pair[1], bool)
                or pair[1] < 0
            ):
                raise DecodeError("type", "since.have is a list of [author, seq]")
            have.append((pair[0], pair[1]))
        return Since(tuple(have), d["limit"])
    if op == "vertices":
        d = fields(value, {"op": str, "vertices": list, "more": bool}, "vertices")
        if len(d["vertices"]) > MAX_PAGE_VERTICES:
            raise DecodeError("oversize", "vertices: page too long")
        if not all(isinstance(v, bytes) for v in d["vertices"]):
            raise DecodeError("type", "vertices are byte strings")
        return Vertices(tuple(d["vertices"]), d["more"])
    raise DecodeError("unknown-op", op[:32])
