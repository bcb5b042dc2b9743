"""DAG vertices: the byte format, its strict decoder, ids, and a helper that makes signed ones.

Wire form (docs/vertex-format.md is the normative description)::

    vertex = canonical msgpack array [body: bin, signature: bin(3309)]
    body   = canonical msgpack map {"version", "author", "seq", "ts_ms", "parents", "kind",
                                    "payload"} (keys in exactly that order)
    id     = BLAKE3(body || signature)                       (32 bytes)
    signed = b"qudag-evo/vertex/v1" || 0x00 || body          (ML-DSA-65, empty FIPS 204 ctx)

Why the body travels as an opaque byte string inside the outer array: the signature covers
exactly those bytes, so a verifier never has to re-encode anything to check it, and the id is
a hash of bytes that are on the wire. The strict decoder still re-encodes the body to prove
it is canonical (crypto.canonical.unpack), so two encodings of one value cannot both exist.

`decode_vertex` checks everything that can be checked from the bytes alone (structure, types,
limits, per-kind payload shape, identity self-consistency). Signature and context checks
(parents present, seq chain, timestamp) need a key and the store's knowledge and live in
`qudag.dag.validate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, NamedTuple

import blake3

from qudag.crypto.canonical import DecodeError, fields, pack, unpack
from qudag.crypto.signing import SIGNATURE_SIZE, Identity
from qudag.dag.errors import VertexError
from qudag.dag.payloads import (
    ID_SIZE,
    KIND_ATTESTATION,
    KIND_IDENTITY,
    KIND_TEMPLATE,
    KINDS,
    MAX_PARENTS,
    NO_DECODERS,
    PayloadDecoders,
    check_payload,
    identity_payload,
)

VERTEX_FORMAT_VERSION = 1
SIGNING_CONTEXT = b"qudag-evo/vertex/v1"
MAX_VERTEX_SIZE = 256 * 1024  # whole wire form; a maximal template (~52 KB of weights) fits 4x
MAX_INT = 2**63 - 1  # seq and ts_ms fit a signed 64-bit integer (SQLite INTEGER)

__all__ = [
    "ID_SIZE",
    "KINDS",
    "KIND_ATTESTATION",
    "KIND_IDENTITY",
    "KIND_TEMPLATE",
    "MAX_PARENTS",
    "MAX_VERTEX_SIZE",
    "SIGNING_CONTEXT",
    "VERTEX_FORMAT_VERSION",
    "Vertex",
    "VertexError",
    "decode_vertex",
    "encode_body",
    "iter_vertex_stream",
    "make_identity_vertex",
    "make_vertex",
    "vertex_id",
]

_BODY_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "version": int,
    "author": bytes,
    "seq": int,
    "ts_ms": int,
    "parents": list,
    "kind": str,
    "payload": dict,
}


class Vertex(NamedTuple):
    """A structurally valid vertex (its signature is NOT yet checked; see dag.validate).

    A NamedTuple rather than a frozen dataclass: equally immutable, and cheaper to build (a
    tuple, no `object.__setattr__` per field), which matters on the bulk-ingest path.
    """

    id: bytes
    author: bytes
    seq: int
    ts_ms: int
    parents: tuple[bytes, ...]
    kind: str
    payload: dict[str, Any]
    body: bytes
    signature: bytes
    raw: bytes

    def __repr__(self) -> str:
        return (
            f"Vertex(id={self.id.hex()[:16]}, author={self.author.hex()[:16]}, seq={self.seq}, "
            f"kind={self.kind}, parents={len(self.parents)})"
        )


def vertex_id(body: bytes, signature: bytes) -> bytes:
    """BLAKE3(body || signature): the vertex's 32-byte id."""
    # One call on the concatenation is faster here than a hasher plus update().
    return blake3.blake3(body + signature).digest()


class DecodedVertices:
    """Opt-in, process-wide memory of decoded vertices keyed by their exact wire bytes.

    Why: the simulator runs hundreds of stores in one process, and each decodes the same bytes
    several times (ingest, then the core reads the vertex back), and a template payload runs
    evolution's strict template decoder. Sound because decoding is a pure function of the
    bytes and of the payload decoders: an entry remembers the decoders that checked it, and
    serves a call only with those same decoders or with none (a call that asks for fewer
    checks). Callers must treat a decoded `Vertex` (its payload dict included) as read-only, as they
    already do. Bounded: cleared when full. Only successful decodes are kept.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: dict[bytes, tuple[Vertex, PayloadDecoders]] = {}
        self.hits = 0
        self.misses = 0


_decoded: DecodedVertices | None = None


def enable_decode_cache(capacity: int = 50_000) -> DecodedVertices:
    """Turn on the process-wide decode cache (see `DecodedVertices`); returns it."""
    global _decoded
    _decoded = DecodedVertices(capacity)
    return _decoded


def disable_decode_cache() -> None:
    global _decoded
    _decoded = None


def decode_vertex(raw: bytes, *, decoders: PayloadDecoders = NO_DECODERS) -> Vertex:
    """Decode and structurally check wire bytes, running `decoders` on the payload (see
    `dag.payloads.PayloadDecoder`); raise `VertexError` (never anything else).

    Bytes from outside are decoded with the decoders their store was opened with
    (`Store.decoders`); without them only dag's own checks run: enough for re-reading bytes a
    store already validated, where evolution's template decoder (`Template.from_bytes` in
    `benchmarks/bench_evolution.py --only synth`) would run for nothing.
    """
    cache = _decoded
    if cache is not None and type(raw) is bytes:
        hit = cache.entries.get(raw)
        if hit is not None and (not decoders or hit[1] is decoders):
            cache.hits += 1
            return hit[0]
        cache.misses += 1
    try:
        vertex = _decode(raw, decoders)
    except VertexError:
        raise
    except DecodeError as exc:
        raise VertexError(exc.reason, str(exc)) from None
    if cache is not None and type(raw) is bytes:
        if len(cache.entries) >= cache.capacity:
            cache.entries.clear()
        cache.entries[raw] = (vertex, decoders)
    return vertex


def _decode(raw: bytes, decoders: PayloadDecoders) -> Vertex:
    if isinstance(raw, bytearray | memoryview):
        raw = bytes(raw)
    split = split_outer(raw)
    if split is None:
        body, signature = _outer_slow(raw)
    else:
        body, signature = split
    value = _body_fields(unpack(body, MAX_VERTEX_SIZE))
    if value["version"] != VERTEX_FORMAT_VERSION:
        raise VertexError("bad-version", str(value["version"]))
    author: bytes = value["author"]
    if len(author) != ID_SIZE:
        raise VertexError("type", "author is a 32-byte key id")
    seq: int = value["seq"]
    ts_ms: int = value["ts_ms"]
    if not 0 <= seq <= MAX_INT or not 0 <= ts_ms <= MAX_INT:
        raise VertexError("range", "seq and ts_ms are in 0..2**63-1")
    parents = _parents(value["parents"])
    kind: str = value["kind"]
    if kind not in KINDS:
        raise VertexError("unknown-kind", kind[:32])
    # An author's seq 0 is its identity vertex and nothing else is (docs/vertex-format.md).
    if (kind == KIND_IDENTITY) != (seq == 0):
        raise VertexError("bad-seq", "seq 0 is exactly the author's identity vertex")
    if not parents and kind != KIND_IDENTITY:
        raise VertexError("no-parents", "only an identity vertex may have no parents")
    payload: dict[str, Any] = value["payload"]
    check_payload(kind, payload, author, parents, decoders=decoders)
    return Vertex(
        id=vertex_id(body, signature),
        author=author,
        seq=seq,
        ts_ms=ts_ms,
        parents=parents,
        kind=kind,
        payload=payload,
        body=body,
        signature=signature,
        raw=raw,
    )


# The signature item's header: bin 16 (0xc5) with a 2-byte length, the canonical form of
# SIGNATURE_SIZE (3309) bytes; `split_outer` checks it is that.
_SIGNATURE_HEADER = b"\xc5" + SIGNATURE_SIZE.to_bytes(2, "big")


def split_outer(raw: bytes) -> tuple[bytes, bytes] | None:
    """(body, signature) of a canonical outer array, found by reading its few header bytes;
    None for anything else (then `_outer_slow` finds the precise error).

    Why: the outer array is always [bin body, bin(3309) signature], and the generic strict
    decode of it (msgpack decode, re-encode, compare) costs more on the bulk ingest path than
    reading three headers that describe the shape (`benchmarks/bench_ingest.py
    --split-outer` measures both). It accepts exactly the bytes that decode
    canonically to that shape (each length in its shortest form, nothing after the
    signature): tests/test_dag_vertex.py checks it against the generic decode.
    """
    if len(raw) > MAX_VERTEX_SIZE or raw[:1] != b"\x92":
        return None
    marker = raw[1:2]
    if marker == b"\xc4":
        start, size = 3, raw[2] if len(raw) > 2 else -1
        shortest = True
    elif marker == b"\xc5":
        start, size = 4, int.from_bytes(raw[2:4], "big")
        shortest = size > 0xFF
    elif marker == b"\xc6":
        start, size = 6, int.from_bytes(raw[2:6], "big")
        shortest = size > 0xFFFF
    else:
        return None
    end = start + size
    if (
        not shortest
        or size < 0
        or len(raw) != end + 3 + SIGNATURE_SIZE
        or raw[end : end + 3] != _SIGNATURE_HEADER
    ):
        return None
    return raw[start:end], raw[end + 3 :]


def _outer_slow(raw: bytes) -> tuple[bytes, bytes]:
    """The outer array through the generic strict decoder: the precise error for bytes that
    `split_outer` refused (or the same result, for bytes it would accept)."""
    outer = unpack(raw, MAX_VERTEX_SIZE)
    if not isinstance(outer, list):
        raise VertexError("type", "a vertex is an array [body, signature]")
    if len(outer) != 2:
        raise VertexError("malformed", "a vertex is an array of exactly 2 items")
    body, signature = outer
    if not isinstance(body, bytes) or not isinstance(signature, bytes):
        raise VertexError("type", "body and signature are byte strings")
    if len(signature) != SIGNATURE_SIZE:
        raise VertexError("bad-signature", f"signature is {len(signature)} bytes")
    return body, signature


_BODY_KEYS = tuple(_BODY_SCHEMA)


def _body_fields(value: Any) -> dict[str, Any]:
    """`fields(value, _BODY_SCHEMA)` with a fast path for the valid case (bulk ingest).

    msgpack yields exact built-in types (bool is its own type), so `type(x) is T` accepts
    exactly what `fields` accepts; anything else goes through `fields` for the precise error.
    """
    if (
        type(value) is dict
        and tuple(value) == _BODY_KEYS
        and type(value["version"]) is int
        and type(value["author"]) is bytes
        and type(value["seq"]) is int
        and type(value["ts_ms"]) is int
        and type(value["parents"]) is list
        and type(value["kind"]) is str
        and type(value["payload"]) is dict
    ):
        return value
    return fields(value, _BODY_SCHEMA, "vertex")


def _parents(items: list[Any]) -> tuple[bytes, ...]:
    if len(items) > MAX_PARENTS:
        raise VertexError("too-many-parents", f"{len(items)} > {MAX_PARENTS}")
    previous = b""
    for item in items:
        if not isinstance(item, bytes) or len(item) != ID_SIZE:
            raise VertexError("type", "a parent is a 32-byte vertex id")
        if item <= previous:
            raise VertexError("unsorted-parents", "parents are sorted and unique")
        previous = item
    return tuple(items)


_BIN_HEADERS = {0xC4: 1, 0xC5: 2, 0xC6: 4}


def iter_vertex_stream(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Split a stream of concatenated vertex wire forms into (offset, raw) records.

    Each wire form is self-delimiting (msgpack array header 0x92, then two bin items), so an
    export file is just the vertices back to back. Only the framing is parsed here, and a
    record's size is checked against MAX_VERTEX_SIZE *before* it is read; each record still
    goes through `decode_vertex`. Raises `VertexError` ("malformed", "oversize") on bad framing.
    """
    offset = 0
    while True:
        first = stream.read(1)
        if not first:
            return
        if first != b"\x92":
            raise VertexError("malformed", f"offset {offset}: not a vertex (array of 2)")
        record = bytearray(first)
        for _item in range(2):
            marker = _read_exact(stream, 1, offset)
            width = _BIN_HEADERS.get(marker[0])
            if width is None:
                raise VertexError("malformed", f"offset {offset}: vertex items are byte strings")
            size_bytes = _read_exact(stream, width, offset)
            size = int.from_bytes(size_bytes, "big")
            if len(record) + 1 + width + size > MAX_VERTEX_SIZE:
                raise VertexError("oversize", f"offset {offset}: record over {MAX_VERTEX_SIZE}")
            record += marker + size_bytes + _read_exact(stream, size, offset)
        yield offset, bytes(record)
        offset += len(record)


def _read_exact(stream: BinaryIO, size: int, offset: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise VertexError("malformed", f"offset {offset}: truncated record")
    return data


def encode_body(
    author: bytes,
    seq: int,
    ts_ms: int,
    parents: Iterable[bytes],
    kind: str,
    payload: dict[str, Any],
) -> bytes:
    """The canonical body bytes (parents are sorted and de-duplicated here)."""
    return pack(
        {
            "version": VERTEX_FORMAT_VERSION,
            "author": author,
            "seq": seq,
            "ts_ms": ts_ms,
            "parents": sorted(set(parents)),
            "kind": kind,
            "payload": payload,
        }
    )


def make_vertex(
    identity: Identity,
    seq: int,
    ts_ms: int,
    parents: Iterable[bytes],
    kind: str,
    payload: dict[str, Any],
    *,
    decoders: PayloadDecoders = NO_DECODERS,
) -> bytes:
    """Sign and encode a vertex; return its wire bytes.

    The result is decoded again (with `decoders`, those of the store it is meant for) before it
    is returned, so this never hands out bytes that the author's own ledger would refuse (a bad
    payload raises `VertexError` here, at the author).
    """
    body = encode_body(identity.key_id, seq, ts_ms, parents, kind, payload)
    signature = identity.sign(body, SIGNING_CONTEXT)
    raw = pack([body, signature])
    decode_vertex(raw, decoders=decoders)
    return raw


def make_identity_vertex(identity: Identity, ts_ms: int, parents: Iterable[bytes] = ()) -> bytes:
    """The author's seq-0 vertex that publishes its public key (may attach to current tips)."""
    return make_vertex(identity, 0, ts_ms, parents, KIND_IDENTITY, identity_payload(identity))
