"""Issue 17, section 3: the attestation's optional `holdout` field (docs/vertex-format.md).

Old attestations (three keys) still decode; new ones round-trip byte for byte; the decoder is
strict about the new map (closed, typed, finite, a sorted beacon of the attestation's own
parents); and the draw it records is the one the format spec describes."""

from __future__ import annotations

import math

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qudag.crypto.canonical import DecodeError, pack
from qudag.crypto.signing import SIGNATURE_SIZE
from qudag.dag.errors import VertexError
from qudag.dag.payloads import attestation_holdout, attestation_payload
from qudag.dag.vertex import decode_vertex
from qudag.evolution.holdout import episode_seeds, holdout_indices, holdout_seed

AUTHOR_ATT = bytes(range(32))
P1, P2, P3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def att_body(payload: object, parents: list[bytes] | None = None) -> dict[str, object]:
    return {
        "version": 1,
        "author": AUTHOR_ATT,
        "seq": 1,
        "ts_ms": 5,
        "parents": parents if parents is not None else [P1, P2],
        "kind": "attestation",
        "payload": payload,
    }


def wire(value: object) -> bytes:
    return pack([pack(value), bytes(SIGNATURE_SIZE)])


def reason(raw: bytes) -> str:
    with pytest.raises(VertexError) as info:
        decode_vertex(raw)
    assert isinstance(info.value, DecodeError)
    return info.value.reason


ids = st.binary(min_size=32, max_size=32)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


def test_attestation_without_holdout_still_decodes() -> None:
    vertex = decode_vertex(wire(att_body(attestation_payload(P1, 0.5, "valid"))))
    assert list(vertex.payload) == ["template", "fitness", "verdict"]


@given(
    beacon=st.lists(ids, max_size=6, unique=True),
    n=st.integers(1, 2**20),
    score=finite,
    stderr=st.floats(min_value=0.0, allow_infinity=False, allow_nan=False),
)
def test_holdout_round_trips_byte_for_byte(
    beacon: list[bytes], n: int, score: float, stderr: float
) -> None:
    payload = attestation_payload(P1, 0.5, "valid", (tuple(beacon), n, score, stderr))
    parents = sorted({P1, *beacon})
    raw = wire(att_body(payload, parents))
    vertex = decode_vertex(raw)
    assert attestation_holdout(vertex.payload) == (tuple(sorted(beacon)), n, score, stderr)
    assert wire(att_body(vertex.payload, parents)) == raw


def holdout_map(**changes: object) -> dict[str, object]:
    value: dict[str, object] = {"beacon": [P2], "n": 10, "fitness": 0.9, "stderr": 0.01}
    value.update(changes)
    return value


@pytest.mark.parametrize(
    ("holdout", "expected"),
    [
        (holdout_map(beacon=[P3]), "bad-attestation"),  # not a parent
        (holdout_map(beacon=[P3, P2]), "bad-attestation"),
        (holdout_map(beacon=[b"x" * 31]), "type"),
        (holdout_map(beacon=[P2, P2]), "non-canonical"),
        (holdout_map(n=0), "range"),
        (holdout_map(n=2**20 + 1), "range"),
        (holdout_map(n=True), "type"),
        (holdout_map(fitness=1), "type"),
        (holdout_map(fitness=math.inf), "bad-payload"),
        (holdout_map(stderr=-0.5), "bad-payload"),
        (holdout_map(stderr=math.nan), "bad-payload"),
        ({**holdout_map(), "extra": 1}, "unknown-field"),
        ({"n": 10, "beacon": [P2], "fitness": 0.9, "stderr": 0.01}, "non-canonical"),
        ({"beacon": [P2], "n": 10, "fitness": 0.9}, "missing-field"),
        ("not a map", "type"),
    ],
)
def test_holdout_decoder_is_strict(holdout: object, expected: str) -> None:
    payload = {"template": P1, "fitness": 0.5, "verdict": "valid", "holdout": holdout}
    assert reason(wire(att_body(payload, [P1, P2]))) == expected


def test_holdout_must_be_last_and_unknown_keys_are_refused() -> None:
    first = {"holdout": holdout_map(), "template": P1, "fitness": 0.5, "verdict": "valid"}
    assert reason(wire(att_body(first, [P1, P2]))) == "non-canonical"
    extra = {**attestation_payload(P1, 0.5, "valid"), "other": 1}
    assert reason(wire(att_body(extra, [P1, P2]))) == "unknown-field"
    assert pack(att_body(extra, [P1, P2]))  # the body itself encodes: the decoder refuses it


def _spec_seed(template_id: bytes, beacon: list[bytes]) -> bytes:
    """The seed exactly as docs/vertex-format.md words it."""
    data = b"qudag/holdout/1"
    for part in [template_id, *sorted(beacon)]:
        data += len(part).to_bytes(4, "big") + part
    return blake3.blake3(data).digest()


@given(template_id=ids, beacon=st.lists(ids, max_size=6, unique=True))
def test_the_draw_is_the_one_the_spec_describes(template_id: bytes, beacon: list[bytes]) -> None:
    seed = holdout_seed(template_id, beacon)
    assert seed == _spec_seed(template_id, beacon)
    stream = blake3.blake3(seed).digest(length=8 * 360)
    keys = [stream[8 * i : 8 * i + 8] for i in range(360)]
    expected = sorted(sorted(range(360), key=lambda i: (keys[i], i))[: math.ceil(360 * 0.9)])
    assert holdout_indices(seed, 360).tolist() == expected
    assert holdout_indices(seed, 20).tolist() == list(range(20))  # max(30, ...) capped
    words = blake3.blake3(seed).digest(length=80)
    assert episode_seeds(seed) == [
        int.from_bytes(words[4 * j : 4 * j + 4], "big") >> 1 for j in range(20)
    ]


def test_the_author_field_is_the_verifier() -> None:
    vertex = decode_vertex(wire(att_body(attestation_payload(P1, 0.5, "invalid"))))
    assert vertex.author == AUTHOR_ATT
