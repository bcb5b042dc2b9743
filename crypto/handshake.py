"""Sans-IO post-quantum handshake and encrypted framing for the node's direct sync streams.

Why: libp2p's Noise channel underneath is X25519, which a future quantum adversary that records
traffic today can break. Sync streams carry ledger data a peer may not want to expose, so we run
an ML-KEM-768 (FIPS 203) exchange inside the stream, bound to both peers' ML-DSA-65 (FIPS 204)
identities, and encrypt every frame with keys derived from it. Nothing here touches sockets or
clocks: the transport moves the bytes, these classes decide what the bytes mean.

Protocol (one round trip; all maps are canonical msgpack, see `qudag.crypto.canonical`)::

    I -> R  hello  = {v, suite, kem_pk, nonce, id_pk, sig}
            sig    = ML-DSA_I( pack([binding, v, suite, kem_pk, nonce, id_pk]) ), ctx INIT_CONTEXT
    R -> I  accept = {v, ct, nonce, id_pk, sig}
            (ss, ct) = ML-KEM.Encaps(kem_pk)
            sig    = ML-DSA_R( pack([binding, hello, v, ct, nonce, id_pk]) ), ctx RESP_CONTEXT
    both    th     = SHA-256( pack([binding, hello, accept]) )
            k_i2r || k_r2i = HKDF-SHA256(ikm=ss, salt=th, info=KEY_INFO, 64 bytes)

`binding` is a caller-supplied channel binding; the transport passes both libp2p peer ids
(initiator first), so a hello replayed on another connection fails its signature check. The
responder's signature covers the initiator's whole hello, so the initiator knows the responder
answered *its* ephemeral key; the initiator's signature binds its ephemeral key to its identity,
and only the holder of the KEM secret key can produce a frame the responder can open (key
confirmation happens with the first frame). The KEM key pair is ephemeral: forward secrecy.

Frames: ``len (4 bytes, big-endian) || ChaCha20-Poly1305(key_dir, nonce=0^4||counter_be64,
plaintext, aad=len)``. Each direction has its own key and its own counter starting at 0; the
receiver uses its expected counter, so a replayed, reordered, dropped or forged frame fails
authentication and the session is dead (`HandshakeError("decrypt")`). Every failure on hostile
bytes raises `HandshakeError` and nothing else.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qudag.crypto.canonical import DecodeError, fields, pack, unpack
from qudag.crypto.signing import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, key_id, verify

VERSION = 1
SUITE = "mlkem768+mldsa65+hkdf-sha256+chacha20poly1305"
INIT_CONTEXT = b"qudag-evo/sync-handshake/init/v1"
RESP_CONTEXT = b"qudag-evo/sync-handshake/resp/v1"
KEY_INFO = b"qudag-evo/sync-handshake/v1 directional keys"

KEM_PUBLIC_KEY_SIZE = 1184
KEM_CIPHERTEXT_SIZE = 1088
NONCE_SIZE = 32
TAG_SIZE = 16
HEADER_SIZE = 4
# A hello is ~6.5 KB (KEM key 1184 + ML-DSA key 1952 + signature 3309 + framing): 16 KiB is ample.
MAX_HANDSHAKE_MESSAGE = 16 * 1024
DEFAULT_MAX_PLAINTEXT = 4 * 1024 * 1024
_MAX_COUNTER = 2**64 - 1


class HandshakeError(Exception):
    """The handshake or a frame failed. `reason` is a short machine-readable word for metrics.

    Reasons: malformed, version, oversize, signature, identity, kem, decrypt, counter, state.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_HELLO_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "v": int,
    "suite": str,
    "kem_pk": bytes,
    "nonce": bytes,
    "id_pk": bytes,
    "sig": bytes,
}
_ACCEPT_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "v": int,
    "ct": bytes,
    "nonce": bytes,
    "id_pk": bytes,
    "sig": bytes,
}


def _decode(data: bytes, schema: dict[str, type | tuple[type, ...]], what: str) -> dict[str, Any]:
    try:
        return fields(unpack(data, MAX_HANDSHAKE_MESSAGE), schema, what)
    except DecodeError as exc:
        reason = "oversize" if exc.reason == "oversize" else "malformed"
        raise HandshakeError(reason, f"{what}: {exc}") from None


def _check_sizes(msg: dict[str, Any], sizes: dict[str, int], what: str) -> None:
    if msg["v"] != VERSION:
        raise HandshakeError("version", f"{what}: version {msg['v']} (we speak {VERSION})")
    for name, size in sizes.items():
        if len(msg[name]) != size:
            raise HandshakeError("malformed", f"{what}.{name} must be {size} bytes")


def _check_binding(binding: bytes) -> bytes:
    if not isinstance(binding, bytes):
        raise TypeError("binding must be bytes")
    return binding


def _derive(shared: bytes, th: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=th, info=KEY_INFO).derive(shared)
    return okm[:32], okm[32:]


def transcript_hash(binding: bytes, hello: bytes, accept: bytes) -> bytes:
    """The session's transcript hash: also a session id both sides agree on."""
    return hashlib.sha256(pack([binding, hello, accept])).digest()


class FrameSealer:
    """Encrypts outgoing frames of one direction: a counter nonce that never repeats."""

    def __init__(self, key: bytes, max_plaintext: int) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0
        self.max_plaintext = max_plaintext

    def seal(self, plaintext: bytes) -> bytes:
        """Return the wire frame (length header included) for `plaintext`."""
        if len(plaintext) > self.max_plaintext:
            raise HandshakeError(
                "oversize", f"frame of {len(plaintext)} bytes > limit {self.max_plaintext}"
            )
        if self._counter >= _MAX_COUNTER:
            raise HandshakeError("counter", "frame counter exhausted; open a new session")
        header = struct.pack(">I", len(plaintext) + TAG_SIZE)
        nonce = b"\x00\x00\x00\x00" + struct.pack(">Q", self._counter)
        self._counter += 1
        return header + self._aead.encrypt(nonce, bytes(plaintext), header)


class FrameOpener:
    """Decrypts incoming frames of one direction, strictly in order."""

    def __init__(self, key: bytes, max_plaintext: int) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0
        self.max_plaintext = max_plaintext
        self._dead = False

    def body_length(self, header: bytes) -> int:
        """Validate a 4-byte frame header and return the body length to read next."""
        if len(header) != HEADER_SIZE:
            raise HandshakeError("malformed", "frame header must be 4 bytes")
        length = struct.unpack(">I", header)[0]
        if length < TAG_SIZE:
            raise HandshakeError("malformed", "frame shorter than its tag")
        if length - TAG_SIZE > self.max_plaintext:
            raise HandshakeError("oversize", f"frame of {length} bytes > limit")
        return int(length)

    def open(self, header: bytes, body: bytes) -> bytes:
        """Authenticate and decrypt one frame. Any failure kills this opener for good."""
        if self._dead:
            raise HandshakeError("state", "session already failed")
        try:
            if self.body_length(header) != len(body):
                raise HandshakeError("malformed", "frame body length does not match header")
            if self._counter >= _MAX_COUNTER:
                raise HandshakeError("counter", "frame counter exhausted")
            nonce = b"\x00\x00\x00\x00" + struct.pack(">Q", self._counter)
            try:
                plaintext = self._aead.decrypt(nonce, bytes(body), bytes(header))
            except InvalidTag:
                raise HandshakeError("decrypt", "frame failed authentication") from None
        except HandshakeError:
            self._dead = True
            raise
        self._counter += 1
        return plaintext


class FrameDecoder:
    """Sans-IO stream reassembly: feed received bytes, get whole decrypted frames back."""

    def __init__(self, opener: FrameOpener) -> None:
        self._opener = opener
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out: list[bytes] = []
        while len(self._buffer) >= HEADER_SIZE:
            header = bytes(self._buffer[:HEADER_SIZE])
            length = self._opener.body_length(header)
            if len(self._buffer) < HEADER_SIZE + length:
                break
            body = bytes(self._buffer[HEADER_SIZE : HEADER_SIZE + length])
            del self._buffer[: HEADER_SIZE + length]
            out.append(self._opener.open(header, body))
        return out

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a whole frame (non-zero at EOF = truncated)."""
        return len(self._buffer)


@dataclass
class Session:
    """An established secure session: who the peer is, and the two directional ciphers."""

    peer_public_key: bytes = field(repr=False)
    transcript_hash: bytes
    sealer: FrameSealer = field(repr=False)
    opener: FrameOpener = field(repr=False)

    @property
    def peer_key_id(self) -> bytes:
        return key_id(self.peer_public_key)

    def seal(self, plaintext: bytes) -> bytes:
        return self.sealer.seal(plaintext)

    def open(self, header: bytes, body: bytes) -> bytes:
        return self.opener.open(header, body)

    def decoder(self) -> FrameDecoder:
        return FrameDecoder(self.opener)


def _check_peer(own: Identity, peer_pk: bytes, expected_key_id: bytes | None, what: str) -> None:
    if peer_pk == own.public_key:
        raise HandshakeError("identity", f"{what}: peer presents our own identity")
    if expected_key_id is not None and key_id(peer_pk) != expected_key_id:
        raise HandshakeError("identity", f"{what}: peer is not the expected identity")


class _Party:
    """What both sides hold: an identity, the channel binding, whom they expect, frame limits."""

    def __init__(
        self,
        identity: Identity,
        binding: bytes = b"",
        expected_peer_key_id: bytes | None = None,
        max_plaintext: int = DEFAULT_MAX_PLAINTEXT,
    ) -> None:
        self._identity = identity
        self._binding = _check_binding(binding)
        self._expected = expected_peer_key_id
        self._max_plaintext = max_plaintext
        self._done = False


class Initiator(_Party):
    """The side that opens the stream. `hello()` once, then `finish(accept)` once."""

    # Set by hello(); the ephemeral KEM secret is dropped again by finish().
    _kem: mlkem.MLKEM768PrivateKey | None = None
    _hello: bytes | None = None

    def hello(self) -> bytes:
        if self._hello is not None:
            raise HandshakeError("state", "hello already sent")
        self._kem = mlkem.MLKEM768PrivateKey.generate()
        kem_pk = self._kem.public_key().public_bytes_raw()
        nonce = os.urandom(NONCE_SIZE)
        pk = self._identity.public_key
        signed = pack([self._binding, VERSION, SUITE, kem_pk, nonce, pk])
        sig = self._identity.sign(signed, INIT_CONTEXT)
        self._hello = pack(
            {
                "v": VERSION,
                "suite": SUITE,
                "kem_pk": kem_pk,
                "nonce": nonce,
                "id_pk": pk,
                "sig": sig,
            }
        )
        return self._hello

    def finish(self, accept: bytes) -> Session:
        if self._hello is None or self._kem is None or self._done:
            raise HandshakeError("state", "finish() needs exactly one hello() before it")
        self._done = True  # one attempt only, whatever happens
        kem, self._kem = self._kem, None  # forget the ephemeral secret after use
        msg = _decode(accept, _ACCEPT_SCHEMA, "accept")
        _check_sizes(
            msg,
            {
                "ct": KEM_CIPHERTEXT_SIZE,
                "nonce": NONCE_SIZE,
                "id_pk": PUBLIC_KEY_SIZE,
                "sig": SIGNATURE_SIZE,
            },
            "accept",
        )
        _check_peer(self._identity, msg["id_pk"], self._expected, "accept")
        signed = pack([self._binding, self._hello, msg["v"], msg["ct"], msg["nonce"], msg["id_pk"]])
        if not verify(msg["id_pk"], signed, msg["sig"], RESP_CONTEXT):
            raise HandshakeError("signature", "responder signature does not verify")
        try:
            shared = kem.decapsulate(msg["ct"])
        except (ValueError, UnsupportedAlgorithm):
            raise HandshakeError("kem", "ciphertext rejected") from None
        th = transcript_hash(self._binding, self._hello, accept)
        k_i2r, k_r2i = _derive(shared, th)
        return Session(
            peer_public_key=msg["id_pk"],
            transcript_hash=th,
            sealer=FrameSealer(k_i2r, self._max_plaintext),
            opener=FrameOpener(k_r2i, self._max_plaintext),
        )


class Responder(_Party):
    """The side that accepts the stream: `accept(hello)` once returns (reply, session)."""

    def accept(self, hello: bytes) -> tuple[bytes, Session]:
        if self._done:
            raise HandshakeError("state", "accept() may be called once")
        self._done = True
        msg = _decode(hello, _HELLO_SCHEMA, "hello")
        _check_sizes(
            msg,
            {
                "kem_pk": KEM_PUBLIC_KEY_SIZE,
                "nonce": NONCE_SIZE,
                "id_pk": PUBLIC_KEY_SIZE,
                "sig": SIGNATURE_SIZE,
            },
            "hello",
        )
        if msg["suite"] != SUITE:
            raise HandshakeError("version", f"hello: unsupported suite {msg['suite']!r}")
        _check_peer(self._identity, msg["id_pk"], self._expected, "hello")
        signed = pack(
            [self._binding, msg["v"], msg["suite"], msg["kem_pk"], msg["nonce"], msg["id_pk"]]
        )
        if not verify(msg["id_pk"], signed, msg["sig"], INIT_CONTEXT):
            raise HandshakeError("signature", "initiator signature does not verify")
        try:
            shared, ct = mlkem.MLKEM768PublicKey.from_public_bytes(msg["kem_pk"]).encapsulate()
        except (ValueError, UnsupportedAlgorithm):
            raise HandshakeError("kem", "KEM public key rejected") from None
        nonce = os.urandom(NONCE_SIZE)
        pk = self._identity.public_key
        signed_r = pack([self._binding, hello, VERSION, ct, nonce, pk])
        sig = self._identity.sign(signed_r, RESP_CONTEXT)
        accept = pack({"v": VERSION, "ct": ct, "nonce": nonce, "id_pk": pk, "sig": sig})
        th = transcript_hash(self._binding, hello, accept)
        k_i2r, k_r2i = _derive(shared, th)
        session = Session(
            peer_public_key=msg["id_pk"],
            transcript_hash=th,
            sealer=FrameSealer(k_r2i, self._max_plaintext),
            opener=FrameOpener(k_i2r, self._max_plaintext),
        )
        return accept, session


def encode_handshake_message(message: bytes) -> bytes:
    """Length-prefix a handshake message for a byte stream (same 4-byte header as frames)."""
    if len(message) > MAX_HANDSHAKE_MESSAGE:
        raise HandshakeError("oversize", "handshake message too large")
    return struct.pack(">I", len(message)) + message


def handshake_message_length(header: bytes) -> int:
    """Validate the 4-byte header of a handshake message and return its length."""
    if len(header) != HEADER_SIZE:
        raise HandshakeError("malformed", "handshake header must be 4 bytes")
    length = int(struct.unpack(">I", header)[0])
    if length == 0 or length > MAX_HANDSHAKE_MESSAGE:
        raise HandshakeError("oversize", f"handshake message of {length} bytes")
    return length
