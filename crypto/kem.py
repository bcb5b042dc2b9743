"""ML-KEM-768 (FIPS 203) key pairs and HPKE-like sealing of bytes to one recipient.

Why: templates can be private, and Noise's X25519 is not post-quantum; sealing to an ML-KEM
public key gives confidentiality that survives a quantum adversary recording traffic today.

Format (version 1), byte-exact, see also docs/keystore-format.md ("Sealed boxes")::

    sealed = kem_ciphertext (1088 bytes) || ChaCha20-Poly1305(key, nonce, plaintext, aad)
    (shared_secret, kem_ciphertext) = ML-KEM-768.Encaps(recipient_public_key)
    key (32) || nonce (12) = HKDF-SHA256(ikm=shared_secret, salt=b"",
                                         info=SEAL_CONTEXT || 0x00 || kem_ciphertext
                                              || recipient_public_key, length=44)

The key is bound to the KEM ciphertext and to the recipient's public key (as HPKE binds its
"enc" and the recipient key) and to a context string naming the format version, so a box cannot
be re-targeted or re-interpreted under another format. Each box uses a fresh encapsulation, so
the derived key is used exactly once and a derived nonce is safe. ML-KEM decapsulation never
fails (implicit rejection: a tampered ciphertext yields an unrelated secret), so every tampering
surfaces as an AEAD authentication failure: `SealError`, never garbage.

Two backends, like signing: pyca `cryptography` (secret = 64-byte FIPS 203 seed d || z) and
`pqcrypto` (secret = 2400-byte expanded decapsulation key). Public keys and ciphertexts are the
same FIPS 203 bytes, so either can seal to a key made by the other (tests check it); the secret's
length says which backend opens it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import pqcrypto.kem.ml_kem_768 as pq_mlkem
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem as pyca_mlkem
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PUBLIC_KEY_SIZE = 1184
CIPHERTEXT_SIZE = 1088
SHARED_SECRET_SIZE = 32
PYCA_SECRET_SIZE = 64
PQCRYPTO_SECRET_SIZE = 2400
TAG_SIZE = 16
SEAL_OVERHEAD = CIPHERTEXT_SIZE + TAG_SIZE
SEAL_CONTEXT = b"qudag-evo/seal/v1/ml-kem-768/hkdf-sha256/chacha20-poly1305"

_KEY_SIZE = 32
_NONCE_SIZE = 12

KEM_BACKENDS = ("cryptography", "pqcrypto")
# Chosen by benchmarks/bench_crypto.py (docs/benchmarks.md "## Crypto"): pyca encapsulates
# about twice as fast, and decapsulates fastest once a key pair is loaded (the seed is expanded
# once per KemKeyPair); its 64-byte seed is also the storage form FIPS 203 recommends.
DEFAULT_KEM_BACKEND = "cryptography"


class SealError(Exception):
    """A key, ciphertext or sealed box is malformed, or a box failed authentication.

    The message never contains key material.
    """


def _check_public_key(public_key: bytes) -> None:
    if not isinstance(public_key, bytes | bytearray) or len(public_key) != PUBLIC_KEY_SIZE:
        raise SealError(f"an ML-KEM-768 public key is {PUBLIC_KEY_SIZE} bytes")


def _pyca_private(secret: bytes) -> pyca_mlkem.MLKEM768PrivateKey:
    try:
        return pyca_mlkem.MLKEM768PrivateKey.from_seed_bytes(secret)
    except ValueError:
        raise SealError("malformed ML-KEM-768 secret seed") from None


def _pqcrypto_public(secret: bytes) -> bytes:
    """The public key stored inside an expanded FIPS 203 decapsulation key.

    dk = dk_PKE (1152) || ek (1184) || SHA3-256(ek) (32) || z (32); the hash lets us notice a
    damaged secret before using it.
    """
    public = secret[1152 : 1152 + PUBLIC_KEY_SIZE]
    if hashlib.sha3_256(public).digest() != secret[2336:2368]:
        raise SealError("malformed ML-KEM-768 secret key (embedded public key hash mismatch)")
    return bytes(public)


def _encapsulate(public_key: bytes, backend: str) -> tuple[bytes, bytes]:
    """(shared_secret, kem_ciphertext) for `public_key`; SealError if the key is invalid.

    Both backends run the FIPS 203 encapsulation-key check (coefficients reduced mod q).
    """
    try:
        if backend == "cryptography":
            pub = pyca_mlkem.MLKEM768PublicKey.from_public_bytes(public_key)
            shared, ciphertext = pub.encapsulate()
            return shared, ciphertext
        if backend == "pqcrypto":
            ciphertext, shared = pq_mlkem.encaps(public_key)
            return bytes(shared), bytes(ciphertext)
    except ValueError:
        raise SealError("invalid ML-KEM-768 public key") from None
    raise SealError(f"unknown KEM backend {backend!r} (choose from {', '.join(KEM_BACKENDS)})")


def _decapsulator(secret: bytes) -> tuple[bytes, Callable[[bytes], bytes]]:
    """(public_key, decapsulate) for a secret of either backend, recognised by its length."""
    if not isinstance(secret, bytes | bytearray):
        raise SealError("an ML-KEM-768 secret key is bytes")
    secret = bytes(secret)
    if len(secret) == PYCA_SECRET_SIZE:
        private = _pyca_private(secret)
        return private.public_key().public_bytes_raw(), private.decapsulate
    if len(secret) == PQCRYPTO_SECRET_SIZE:
        public = _pqcrypto_public(secret)
        return public, lambda ciphertext: bytes(pq_mlkem.decaps(secret, ciphertext))
    raise SealError(
        f"an ML-KEM-768 secret key is a {PYCA_SECRET_SIZE}-byte seed or a "
        f"{PQCRYPTO_SECRET_SIZE}-byte expanded key"
    )


def _derive(shared: bytes, kem_ciphertext: bytes, public_key: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=_KEY_SIZE + _NONCE_SIZE,
        salt=None,
        info=SEAL_CONTEXT + b"\x00" + kem_ciphertext + public_key,
    ).derive(shared)
    return okm[:_KEY_SIZE], okm[_KEY_SIZE:]


def seal(
    recipient_public_key: bytes,
    plaintext: bytes,
    aad: bytes = b"",
    *,
    backend: str = DEFAULT_KEM_BACKEND,
) -> bytes:
    """Encrypt `plaintext` so that only the holder of the matching secret key can read it.

    `aad` is authenticated but not encrypted; the same bytes must be given to `open_sealed`.
    The result is `SEAL_OVERHEAD` (1104) bytes longer than `plaintext`.
    """
    _check_public_key(recipient_public_key)
    public_key = bytes(recipient_public_key)
    shared, kem_ciphertext = _encapsulate(public_key, backend)
    key, nonce = _derive(shared, kem_ciphertext, public_key)
    return kem_ciphertext + ChaCha20Poly1305(key).encrypt(nonce, bytes(plaintext), bytes(aad))


def _open_with(
    public_key: bytes, decapsulate: Callable[[bytes], bytes], sealed: bytes, aad: bytes
) -> bytes:
    if not isinstance(sealed, bytes | bytearray | memoryview):
        raise SealError("a sealed box is bytes")
    sealed = bytes(sealed)
    if len(sealed) < SEAL_OVERHEAD:
        raise SealError(f"a sealed box is at least {SEAL_OVERHEAD} bytes, got {len(sealed)}")
    kem_ciphertext, body = sealed[:CIPHERTEXT_SIZE], sealed[CIPHERTEXT_SIZE:]
    try:
        shared = decapsulate(kem_ciphertext)
    except ValueError:
        raise SealError("malformed ML-KEM-768 ciphertext") from None
    key, nonce = _derive(shared, kem_ciphertext, public_key)
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, body, bytes(aad))
    except InvalidTag:
        raise SealError(
            "sealed box failed authentication (tampered, wrong recipient key or wrong aad)"
        ) from None


def open_sealed(recipient_secret_key: bytes, sealed: bytes, aad: bytes = b"") -> bytes:
    """The plaintext of a box made by `seal`, or SealError; never unauthenticated bytes.

    `recipient_secret_key` is either backend's secret form (64-byte seed or 2400-byte key).
    To open many boxes with one key, `KemKeyPair.open` avoids re-parsing the secret each time.
    """
    public_key, decapsulate = _decapsulator(recipient_secret_key)
    return _open_with(public_key, decapsulate, sealed, aad)


@dataclass(frozen=True)
class KemKeyPair:
    """An ML-KEM-768 key pair. The secret never appears in repr, str or exceptions."""

    public_key: bytes = field(repr=False)
    backend: str
    _secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if self.backend not in KEM_BACKENDS:
            raise SealError(
                f"unknown KEM backend {self.backend!r} (choose from {', '.join(KEM_BACKENDS)})"
            )
        expected = PYCA_SECRET_SIZE if self.backend == "cryptography" else PQCRYPTO_SECRET_SIZE
        if len(self._secret) != expected:
            raise SealError(f"a {self.backend} ML-KEM-768 secret key is {expected} bytes")
        _check_public_key(self.public_key)
        if self._loaded[0] != self.public_key:
            raise SealError("ML-KEM-768 public key does not match the secret key")

    @classmethod
    def generate(cls, backend: str = DEFAULT_KEM_BACKEND) -> KemKeyPair:
        if backend == "cryptography":
            private = pyca_mlkem.MLKEM768PrivateKey.generate()
            public, secret = private.public_key().public_bytes_raw(), private.private_bytes_raw()
        elif backend == "pqcrypto":
            pq_public, pq_secret = pq_mlkem.keygen()
            public, secret = bytes(pq_public), bytes(pq_secret)
        else:
            raise SealError(
                f"unknown KEM backend {backend!r} (choose from {', '.join(KEM_BACKENDS)})"
            )
        return cls(public_key=public, backend=backend, _secret=secret)

    @classmethod
    def from_secret(cls, secret: bytes) -> KemKeyPair:
        """Rebuild a key pair from either backend's secret form (both embed the public key)."""
        public, _ = _decapsulator(secret)
        backend = "cryptography" if len(secret) == PYCA_SECRET_SIZE else "pqcrypto"
        return cls(public_key=public, backend=backend, _secret=bytes(secret))

    @cached_property
    def _loaded(self) -> tuple[bytes, Callable[[bytes], bytes]]:
        return _decapsulator(self._secret)

    def secret_bytes(self) -> bytes:
        """The raw secret, for storage only."""
        return self._secret

    def open(self, sealed: bytes, aad: bytes = b"") -> bytes:
        """Same as `open_sealed(self.secret_bytes(), sealed, aad)`, without re-parsing the key."""
        public_key, decapsulate = self._loaded
        return _open_with(public_key, decapsulate, sealed, aad)

    def __repr__(self) -> str:
        digest = hashlib.sha256(self.public_key).hexdigest()[:16]
        return f"KemKeyPair(public_key_sha256={digest}..., backend={self.backend})"

    __str__ = __repr__
