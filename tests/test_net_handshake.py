"""PQ handshake and frames: the happy path; any tampering is a HandshakeError and nothing else."""

from __future__ import annotations

import pqcrypto.kem.ml_kem_768 as pq_kem
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag.crypto.canonical import pack, unpack
from qudag.crypto.handshake import (
    HEADER_SIZE,
    MAX_HANDSHAKE_MESSAGE,
    FrameDecoder,
    FrameOpener,
    FrameSealer,
    HandshakeError,
    Initiator,
    Responder,
    encode_handshake_message,
    handshake_message_length,
)
from qudag.crypto.signing import Identity

ALICE = Identity.generate()
BOB = Identity.generate()
MALLORY = Identity.generate()
BINDING = pack([b"peer-a", b"peer-b"])


def run(
    initiator: Initiator | None = None, responder: Responder | None = None
) -> tuple[object, object]:
    i = initiator or Initiator(ALICE, BINDING)
    r = responder or Responder(BOB, BINDING)
    accept, r_session = r.accept(i.hello())
    return i.finish(accept), r_session


def test_happy_path_keys_agree_and_frames_flow_both_ways() -> None:
    i_session, r_session = run()
    assert i_session.transcript_hash == r_session.transcript_hash
    assert i_session.peer_key_id == BOB.key_id
    assert r_session.peer_key_id == ALICE.key_id
    dec_r, dec_i = r_session.decoder(), i_session.decoder()
    for n in range(5):
        msg = bytes([n]) * (n * 1000)
        assert dec_r.feed(i_session.seal(msg)) == [msg]
        assert dec_i.feed(r_session.seal(msg[::-1])) == [msg[::-1]]
    # byte-at-a-time reassembly
    wire = i_session.seal(b"hello") + i_session.seal(b"")
    out: list[bytes] = []
    for b in wire:
        out += dec_r.feed(bytes([b]))
    assert out == [b"hello", b""] and dec_r.pending == 0


def test_expected_identity_is_enforced() -> None:
    run(Initiator(ALICE, BINDING, expected_peer_key_id=BOB.key_id))
    with pytest.raises(HandshakeError) as e:
        run(Initiator(ALICE, BINDING, expected_peer_key_id=MALLORY.key_id))
    assert e.value.reason == "identity"
    with pytest.raises(HandshakeError) as e:
        run(responder=Responder(BOB, BINDING, expected_peer_key_id=MALLORY.key_id))
    assert e.value.reason == "identity"


def test_binding_mismatch_fails() -> None:
    with pytest.raises(HandshakeError) as e:
        run(responder=Responder(BOB, pack([b"peer-x", b"peer-b"])))
    assert e.value.reason == "signature"


def test_substituted_identity_fails() -> None:
    """Mallory swaps her public key into Alice's hello: the signature no longer verifies."""
    i = Initiator(ALICE, BINDING)
    hello = unpack(i.hello(), MAX_HANDSHAKE_MESSAGE)
    hello["id_pk"] = MALLORY.public_key
    with pytest.raises(HandshakeError) as e:
        Responder(BOB, BINDING).accept(pack(hello))
    assert e.value.reason == "signature"


def test_mitm_reencapsulation_fails() -> None:
    """A responder signing a different hello (a relay's) is refused by the initiator."""
    i = Initiator(ALICE, BINDING)
    i.hello()
    other = Initiator(MALLORY, BINDING)
    accept, _ = Responder(BOB, BINDING).accept(other.hello())
    with pytest.raises(HandshakeError) as e:
        i.finish(accept)
    assert e.value.reason == "signature"


def test_reflection_of_own_identity_is_refused() -> None:
    with pytest.raises(HandshakeError) as e:
        Responder(ALICE, BINDING).accept(Initiator(ALICE, BINDING).hello())
    assert e.value.reason == "identity"


def test_replay_reorder_and_truncation_of_frames_fail() -> None:
    i_session, r_session = run()
    f0, f1 = i_session.seal(b"zero"), i_session.seal(b"one")
    dec = r_session.decoder()
    with pytest.raises(HandshakeError) as e:
        dec.feed(f1)  # reordered
    assert e.value.reason == "decrypt"
    with pytest.raises(HandshakeError):
        dec.feed(f0)  # the session is dead after one failure
    i2, r2 = run()
    dec2 = r2.decoder()
    g0 = i2.seal(b"zero")
    assert dec2.feed(g0) == [b"zero"]
    with pytest.raises(HandshakeError):
        dec2.feed(g0)  # replayed


def test_frame_limits() -> None:
    i_session, r_session = run(
        Initiator(ALICE, BINDING, max_plaintext=100), Responder(BOB, BINDING, max_plaintext=100)
    )
    i_session.seal(b"x" * 100)
    with pytest.raises(HandshakeError) as e:
        i_session.seal(b"x" * 101)
    assert e.value.reason == "oversize"
    with pytest.raises(HandshakeError) as e:
        r_session.decoder().feed((10**6).to_bytes(4, "big"))
    assert e.value.reason == "oversize"
    with pytest.raises(HandshakeError):
        r_session.decoder().feed((3).to_bytes(4, "big"))


def test_state_machine_misuse() -> None:
    i = Initiator(ALICE, BINDING)
    with pytest.raises(HandshakeError):
        i.finish(b"")
    hello = i.hello()
    with pytest.raises(HandshakeError):
        i.hello()
    r = Responder(BOB, BINDING)
    accept, _ = r.accept(hello)
    with pytest.raises(HandshakeError):
        r.accept(hello)
    i.finish(accept)
    with pytest.raises(HandshakeError):
        i.finish(accept)


def test_pqcrypto_interoperates_with_the_kem_on_the_wire() -> None:
    """The hello's KEM key is a standard FIPS 203 key: pqcrypto can encapsulate to it."""
    hello = unpack(Initiator(ALICE, BINDING).hello(), MAX_HANDSHAKE_MESSAGE)
    ct, ss = pq_kem.encaps(hello["kem_pk"])
    assert len(ct) == 1088 and len(ss) == 32


def test_handshake_message_framing() -> None:
    wire = encode_handshake_message(b"abc")
    assert handshake_message_length(wire[:HEADER_SIZE]) == 3
    for bad in (b"\x00\x00\x00\x00", (MAX_HANDSHAKE_MESSAGE + 1).to_bytes(4, "big"), b"\x00"):
        with pytest.raises(HandshakeError):
            handshake_message_length(bad)


def _flip(data: bytes, index: int, mask: int) -> bytes:
    index %= len(data)
    return data[:index] + bytes([data[index] ^ (mask or 1)]) + data[index + 1 :]


def test_every_single_bit_flip_region_of_hello_and_accept_fails() -> None:
    """Flip a bit at many offsets across both messages (deterministic sweep)."""
    i = Initiator(ALICE, BINDING)
    hello = i.hello()
    for offset in range(0, len(hello), 97):
        with pytest.raises(HandshakeError):
            Responder(BOB, BINDING).accept(_flip(hello, offset, 0x01))
    accept, _ = Responder(BOB, BINDING).accept(hello)
    for offset in range(0, len(accept), 97):
        i2 = Initiator(ALICE, BINDING)
        i2._hello, i2._kem = i._hello, i._kem  # same state, fresh attempt
        with pytest.raises(HandshakeError):
            i2.finish(_flip(accept, offset, 0x80))


HELLO = Initiator(ALICE, BINDING).hello()
_I_FOR_ACCEPT = Initiator(ALICE, BINDING)
ACCEPT, _ = Responder(BOB, BINDING).accept(_I_FOR_ACCEPT.hello())


def _mutations() -> st.SearchStrategy[tuple[str, int, int, bytes]]:
    return st.tuples(
        st.sampled_from(["flip", "truncate", "insert", "replace"]),
        st.integers(min_value=0, max_value=20_000),
        st.integers(min_value=0, max_value=255),
        st.binary(max_size=40),
    )


def _mutate(data: bytes, op: str, index: int, mask: int, extra: bytes) -> bytes:
    index %= len(data) + 1
    if op == "flip":
        return _flip(data, index, mask)
    if op == "truncate":
        return data[:index]
    if op == "insert":
        return data[:index] + (extra or b"\x00") + data[index:]
    return data[:index] + extra + data[index + len(extra) :]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_random_corruption_of_hello_raises_only_handshake_error(m: tuple) -> None:
    bad = _mutate(HELLO, *m)
    if bad == HELLO:
        return
    with pytest.raises(HandshakeError):
        Responder(BOB, BINDING).accept(bad)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_random_corruption_of_accept_raises_only_handshake_error(m: tuple) -> None:
    bad = _mutate(ACCEPT, *m)
    if bad == ACCEPT:
        return
    i = Initiator(ALICE, BINDING)
    i._hello, i._kem = _I_FOR_ACCEPT._hello, _I_FOR_ACCEPT._kem
    with pytest.raises(HandshakeError):
        i.finish(bad)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_handshake_messages_raise_only_handshake_error(data: bytes) -> None:
    with pytest.raises(HandshakeError):
        Responder(BOB, BINDING).accept(data)
    i = Initiator(ALICE, BINDING)
    i.hello()
    with pytest.raises(HandshakeError):
        i.finish(data)


@settings(max_examples=100, deadline=None)
@given(_mutations(), st.binary(max_size=200))
def test_random_corruption_of_frames_raises_only_handshake_error(m: tuple, payload: bytes) -> None:
    key = b"k" * 32
    frame = FrameSealer(key, 1000).seal(payload)
    bad = _mutate(frame, *m)
    dec = FrameDecoder(FrameOpener(key, 1000))
    if bad == frame:
        assert dec.feed(bad) == [payload]
        return
    try:
        out = dec.feed(bad)
    except HandshakeError:
        return
    # without an error, either nothing was opened yet (a truncated or lengthened frame waits for
    # more bytes) or the genuine frame came out and appended bytes wait: a forgery never comes out
    assert out == [] or (out == [payload] and bad.startswith(frame))
