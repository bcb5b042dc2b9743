"""The vertex byte format: round trips, the strict decoder's refusals, and hostile mutations."""

from __future__ import annotations

import io
import math

import blake3
import msgpack
import pytest
from dag_helpers import NOW_MS, identities, random_dag, template_payload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag.crypto.canonical import DecodeError, pack, unpack
from qudag.crypto.signing import SIGNATURE_SIZE, verify, verify_with_pqcrypto
from qudag.dag.errors import VertexError
from qudag.dag.payloads import attestation_payload, payload_decoders
from qudag.dag.validate import check_signature, load_public_key
from qudag.dag.vertex import (
    MAX_VERTEX_SIZE,
    SIGNING_CONTEXT,
    decode_vertex,
    disable_decode_cache,
    enable_decode_cache,
    iter_vertex_stream,
    make_identity_vertex,
    make_vertex,
    split_outer,
)

FAKE_SIG = bytes(SIGNATURE_SIZE)


AUTHOR = bytes(range(32))
P1, P2 = b"\x01" * 32, b"\x02" * 32


def body(**changes: object) -> dict[str, object]:
    value: dict[str, object] = {
        "version": 1,
        "author": AUTHOR,
        "seq": 1,
        "ts_ms": 5,
        "parents": [P1, P2],
        "kind": "template",
        "payload": template_payload(),
    }
    value.update(changes)
    return value


def wire(value: object, signature: bytes = FAKE_SIG) -> bytes:
    return pack([pack(value), signature])


def reason(raw: bytes) -> str:
    with pytest.raises(VertexError) as info:
        decode_vertex(raw)
    assert isinstance(info.value, DecodeError)
    return info.value.reason


def test_round_trip_and_independent_signature_check() -> None:
    identity = identities()[0]
    raw = make_vertex(identity, 1, 123, [P2, P1, P2], "template", template_payload())
    vertex = decode_vertex(raw)
    assert vertex.parents == (P1, P2)  # sorted and de-duplicated by make_vertex
    assert (vertex.author, vertex.seq, vertex.ts_ms, vertex.kind) == (
        identity.key_id,
        1,
        123,
        "template",
    )
    # The format as documented: [body, sig], id = BLAKE3(body || sig), signed with context.
    body_bytes, signature = msgpack.unpackb(raw)
    assert vertex.id == blake3.blake3(body_bytes + signature).digest()
    assert verify(identity.public_key, body_bytes, signature, SIGNING_CONTEXT)
    assert verify_with_pqcrypto(identity.public_key, body_bytes, signature, SIGNING_CONTEXT)
    assert not verify(identity.public_key, body_bytes, signature, b"qudag-evo/other/v1")


def test_identity_vertex_is_self_consistent() -> None:
    identity = identities()[1]
    vertex = decode_vertex(make_identity_vertex(identity, 7))
    assert vertex.seq == 0 and vertex.parents == ()
    assert vertex.payload == {"public_key": identity.public_key}
    check_signature(vertex, load_public_key(identity.public_key))
    other = identities()[2].public_key
    bad = body(author=AUTHOR, seq=0, kind="identity", parents=[], payload={"public_key": other})
    assert reason(wire(bad)) == "author-mismatch"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"version": 2}, "bad-version"),
        ({"seq": True}, "type"),
        ({"seq": -1}, "range"),
        ({"ts_ms": 2**63}, "range"),
        ({"author": b"short"}, "type"),
        ({"parents": [P2, P1]}, "unsorted-parents"),
        ({"parents": [P1, P1]}, "unsorted-parents"),
        ({"parents": [bytes([i]) * 32 for i in range(9)]}, "too-many-parents"),
        ({"parents": [b"x" * 31]}, "type"),
        ({"parents": []}, "no-parents"),
        ({"kind": "heads"}, "unknown-kind"),
        ({"seq": 0}, "bad-seq"),
        ({"kind": "identity", "payload": {"public_key": bytes(1952)}}, "bad-seq"),
        ({"payload": "not a map"}, "type"),
        ({"payload": {**template_payload(), "task": 3}}, "type"),
        ({"payload": {"task": "xor"}}, "missing-field"),
        ({"payload": template_payload(fitness=math.nan)}, "bad-payload"),
        ({"payload": {**template_payload(), "objectives": {"fitness": 1}}}, "type"),
        (
            {"payload": template_payload(genetic=tuple(bytes([i]) * 32 for i in range(9)))},
            "too-many-parents",
        ),
        (
            {"kind": "attestation", "payload": attestation_payload(b"\x09" * 32, 1.0, "valid")},
            "bad-attestation",
        ),
        ({"kind": "attestation", "payload": attestation_payload(P1, 1.0, "maybe")}, "bad-payload"),
        ({"kind": "attestation", "payload": {"template": P1, "fitness": 1.0}}, "missing-field"),
    ],
)
def test_decoder_refuses_with_a_stable_reason(changes: dict[str, object], expected: str) -> None:
    assert reason(wire(body(**changes))) == expected


def test_decoder_refuses_layout_errors() -> None:
    good = body()
    assert reason(wire({**good, "extra": 1})) == "unknown-field"
    missing = dict(good)
    del missing["ts_ms"]
    assert reason(wire(missing)) == "missing-field"
    reordered = {"author": good["author"], **{k: v for k, v in good.items() if k != "author"}}
    assert reason(wire(reordered)) == "non-canonical"
    assert reason(wire(good) + b"\x00") == "trailing-bytes"
    assert reason(wire(good, FAKE_SIG[:-1])) == "bad-signature"
    assert reason(pack([pack(good)])) == "malformed"
    assert reason(pack({"body": 1})) == "type"
    assert reason(b"") == "malformed"
    # A non-minimal integer (seq 1 as uint16) inside the body: same value, other bytes.
    body_bytes = pack(good).replace(b"\xa3seq\x01", b"\xa3seq\xcd\x00\x01")
    assert reason(pack([body_bytes, FAKE_SIG])) == "non-canonical"
    assert reason(b"\x00" * (MAX_VERTEX_SIZE + 1)) == "oversize"


def test_plugged_payload_decoder_is_enforced() -> None:
    def strict(payload: object) -> None:
        if payload["operator"] != "init":  # type: ignore[index]
            raise DecodeError("bad-genome", "operator")

    def buggy(payload: object) -> None:
        raise KeyError("oops")

    good = wire(body())
    bad = wire(body(payload={**template_payload(), "operator": "mutate"}))
    decode_vertex(good, decoders=payload_decoders({"template": strict}))
    with pytest.raises(VertexError) as refused:
        decode_vertex(bad, decoders=payload_decoders({"template": strict}))
    assert refused.value.reason == "bad-genome"
    with pytest.raises(VertexError) as refused:
        decode_vertex(good, decoders=payload_decoders({"template": buggy}))
    assert refused.value.reason == "bad-payload"
    decode_vertex(bad)  # without decoders: dag's own rules only
    with pytest.raises(ValueError):
        payload_decoders({"heads": strict})


def test_the_decode_cache_does_not_serve_a_decode_checked_by_other_decoders() -> None:
    """A vertex remembered from a decode without (or with other) decoders must still meet the
    decoders of the next call: two stores in one process may be opened with different ones."""
    bad = wire(body(payload={**template_payload(), "operator": "mutate"}))

    def strict(payload: object) -> None:
        if payload["operator"] != "init":  # type: ignore[index]
            raise DecodeError("bad-genome", "operator")

    enable_decode_cache()
    try:
        decode_vertex(bad)  # remembered, checked by dag's rules only
        with pytest.raises(VertexError):
            decode_vertex(bad, decoders=payload_decoders({"template": strict}))
    finally:
        disable_decode_cache()


@settings(max_examples=60, deadline=None)
@given(
    seq=st.integers(1, 2**63 - 1),
    ts_ms=st.integers(0, 2**63 - 1),
    parents=st.sets(st.binary(min_size=32, max_size=32), min_size=1, max_size=8),
    task=st.text(min_size=1, max_size=40),
    fitness=st.floats(allow_nan=False, allow_infinity=False),
    signature=st.binary(min_size=SIGNATURE_SIZE, max_size=SIGNATURE_SIZE),
)
def test_decoder_round_trip(
    seq: int, ts_ms: int, parents: set[bytes], task: str, fitness: float, signature: bytes
) -> None:
    value = body(
        seq=seq,
        ts_ms=ts_ms,
        parents=sorted(parents),
        payload=template_payload(task=task, fitness=fitness),
    )
    raw = wire(value, signature)
    vertex = decode_vertex(raw)
    assert (vertex.seq, vertex.ts_ms, vertex.parents) == (seq, ts_ms, tuple(sorted(parents)))
    assert vertex.payload == value["payload"]
    assert wire(msgpack.unpackb(vertex.body), vertex.signature) == raw


def _mutations() -> st.SearchStrategy[tuple[str, int, int]]:
    return st.tuples(
        st.sampled_from(["flip", "truncate", "append", "insert", "delete", "set"]),
        st.integers(0, 10**6),
        st.integers(0, 255),
    )


def _mutate(raw: bytes, op: str, where: int, byte: int) -> bytes:
    if not raw:
        return bytes([byte])
    i = where % len(raw)
    if op == "flip":
        return raw[:i] + bytes([raw[i] ^ (1 << (byte % 8))]) + raw[i + 1 :]
    if op == "truncate":
        return raw[:i]
    if op == "append":
        return raw + bytes([byte]) * (1 + where % 3)
    if op == "insert":
        return raw[:i] + bytes([byte]) + raw[i:]
    if op == "delete":
        return raw[:i] + raw[i + 1 :]
    return raw[:i] + bytes([byte]) + raw[i + 1 :]


def _outer_generic(raw: bytes) -> tuple[bytes, bytes] | None:
    """The outer [body, signature] as the generic strict decoder reads it, or None."""
    try:
        outer = unpack(raw, MAX_VERTEX_SIZE)
    except DecodeError:
        return None
    if (
        isinstance(outer, list)
        and len(outer) == 2
        and all(isinstance(item, bytes) for item in outer)
        and len(outer[1]) == SIGNATURE_SIZE
    ):
        return outer[0], outer[1]
    return None


def _outer_forms() -> st.SearchStrategy[bytes]:
    """Outer arrays near the canonical shape: bodies at each header width's edges, other
    signature sizes, non-shortest headers, other array lengths, then a few mutations."""
    sizes = st.sampled_from([0, 1, 255, 256, 65535, 65536, 70000]) | st.integers(0, 300)
    sig_sizes = st.sampled_from([SIGNATURE_SIZE, SIGNATURE_SIZE - 1, SIGNATURE_SIZE + 1, 0])

    def build(size: int, sig_size: int, header: int, extra: int) -> bytes:
        body_item = pack(b"\x07" * size)
        if header == 1 and size <= 0xFFFF:  # a longer header than needed: not canonical
            body_item = b"\xc6" + size.to_bytes(4, "big") + b"\x07" * size
        items = [body_item, pack(b"\x09" * sig_size)]
        if extra == 1:
            items.append(pack(b""))
        elif extra == 2:
            items = items[:1]
        return bytes([0x90 + len(items)]) + b"".join(items)

    forms = st.builds(build, sizes, sig_sizes, st.integers(0, 3), st.integers(0, 5))
    return st.one_of(
        forms,
        st.tuples(forms, st.lists(_mutations(), max_size=2)).map(lambda fm: _mutated(fm[0], fm[1])),
        st.binary(max_size=64),
    )


def _mutated(raw: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    for op, where, byte in mutations:
        raw = _mutate(raw, op, where, byte)
    return raw


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_outer_forms())
def test_outer_fast_split_is_the_generic_strict_decode(raw: bytes) -> None:
    """The header-reading split accepts exactly what the generic decoder reads as a canonical
    [body, signature] of the signature's size, and yields the same items."""
    assert split_outer(raw) == _outer_generic(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, 10**6), mutations=st.lists(_mutations(), min_size=1, max_size=3))
def test_mutations_never_crash_and_never_verify(
    index: int, mutations: list[tuple[str, int, int]]
) -> None:
    dag = random_dag()
    raw = dag.raws[index % len(dag.raws)]
    original = decode_vertex(raw)
    keys = {i.key_id: load_public_key(i.public_key) for i in dag.identities}
    mutated = raw
    for op, where, byte in mutations:
        mutated = _mutate(mutated, op, where, byte)
    if mutated == raw:
        return
    try:
        vertex = decode_vertex(mutated)
    except VertexError as exc:
        assert exc.reason  # a typed refusal with a label, nothing else escapes
        return
    # It decoded: then it is a different vertex, and its signature cannot hold.
    assert vertex.id != original.id
    key = keys.get(vertex.author)
    if key is not None:
        with pytest.raises(VertexError, match="bad-signature"):
            check_signature(vertex, key)


def test_stream_framing() -> None:
    dag = random_dag()
    data = b"".join(dag.raws)
    records = list(iter_vertex_stream(io.BytesIO(data)))
    assert [raw for _, raw in records] == list(dag.raws)
    assert records[1][0] == len(dag.raws[0])
    with pytest.raises(VertexError, match="truncated"):
        list(iter_vertex_stream(io.BytesIO(data[:-5])))
    with pytest.raises(VertexError, match="not a vertex"):
        list(iter_vertex_stream(io.BytesIO(b"hello world")))
    huge = b"\x92\xc6" + (MAX_VERTEX_SIZE).to_bytes(4, "big")
    with pytest.raises(VertexError) as info:
        list(iter_vertex_stream(io.BytesIO(huge)))
    assert info.value.reason == "oversize"
    assert NOW_MS > 0


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what msgpack can encode
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(list(body()) + ["x"]), inner, max_size=8)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=_values, fields_=st.dictionaries(st.sampled_from(list(body())), _values))
def test_structured_garbage_is_refused_with_a_reason(
    value: object, fields_: dict[str, object]
) -> None:
    """Random well-formed msgpack, and valid bodies with random field values, never crash."""
    for candidate in (pack([pack(value), FAKE_SIG]), pack(value), wire(body(**fields_))):
        try:
            decode_vertex(candidate)
        except VertexError as exc:
            assert exc.reason
