"""ML-DSA-65 (FIPS 204) signing behind one small interface, with two interchangeable backends.

Why two: `pqcrypto` is the library the user named; pyca `cryptography` (already pulled in by
libp2p) signs about ten times faster here. Public keys and signatures are standard FIPS 204
byte strings, so a signature made by either verifies under the other (tests check this). Secret
keys are *not* interchangeable: pyca keeps the 32-byte seed, pqcrypto the 4032-byte expanded
key and cannot derive it from a seed, so an identity remembers which backend made it.

Domain separation: pqcrypto 1.0.0 exposes only the empty FIPS 204 context, so both backends sign
with the empty context and we separate domains in the message itself:
`signed_message = context || 0x00 || message`, where `context` is an ASCII string naming the
format and version (e.g. ``b"qudag-evo/vertex/v1"``) and contains no NUL byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import blake3
import pqcrypto.sign.ml_dsa_65 as pq_mldsa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa as pyca_mldsa

PUBLIC_KEY_SIZE = 1952
SIGNATURE_SIZE = 3309
KEY_ID_SIZE = 32


class SignatureError(Exception):
    """A key or signature is malformed (wrong size, undecodable)."""


def key_id(public_key: bytes) -> bytes:
    """The 32-byte identifier of a public key: BLAKE3(public_key). Shown as hex to users."""
    return blake3.blake3(public_key).digest()


def domain_message(context: bytes, message: bytes) -> bytes:
    """The exact bytes that are signed for `message` in the domain named by `context`."""
    if not context or b"\x00" in context:
        raise ValueError("a signing context is a non-empty byte string without NUL bytes")
    return context + b"\x00" + message


class SigningBackend(Protocol):
    """What a signing library must offer: key generation and signing with its own secret form."""

    name: str

    def keygen(self) -> tuple[bytes, bytes]:
        """Return (public_key, secret) where `secret` is this backend's secret-key form."""
        ...

    def sign(self, secret: bytes, message: bytes) -> bytes: ...

    def public_from_secret(self, secret: bytes) -> bytes | None:
        """The public key for `secret`, or None when the backend cannot derive it."""
        ...

    def pair_matches(self, public_key: bytes, secret: bytes) -> bool:
        """True iff `secret` is this backend's secret for `public_key` (used when loading keys)."""
        ...

    def signer(self, secret: bytes) -> Callable[[bytes], bytes]:
        """A function that signs with `secret`, with any parsing of the secret done once."""
        ...


class PyCryptographyBackend:
    """pyca/cryptography: secret = 32-byte FIPS 204 seed; fast signing (~1 ms here)."""

    name = "cryptography"

    def keygen(self) -> tuple[bytes, bytes]:
        private = pyca_mldsa.MLDSA65PrivateKey.generate()
        return private.public_key().public_bytes_raw(), private.private_bytes_raw()

    def sign(self, secret: bytes, message: bytes) -> bytes:
        return self._load(secret).sign(message)

    def public_from_secret(self, secret: bytes) -> bytes | None:
        return self._load(secret).public_key().public_bytes_raw()

    def pair_matches(self, public_key: bytes, secret: bytes) -> bool:
        # The seed determines the whole key pair, so re-deriving is an exact check.
        return len(secret) == 32 and self.public_from_secret(secret) == public_key

    def signer(self, secret: bytes) -> Callable[[bytes], bytes]:
        # Expanding the seed costs ~150 us, ~15 % of a signature: do it once per identity.
        return self._load(secret).sign

    @staticmethod
    def _load(secret: bytes) -> pyca_mldsa.MLDSA65PrivateKey:
        if len(secret) != 32:
            raise SignatureError("a cryptography ML-DSA-65 secret is a 32-byte seed")
        return pyca_mldsa.MLDSA65PrivateKey.from_seed_bytes(secret)


class PqcryptoBackend:
    """pqcrypto 1.0.0 (PQClean): secret = 4032-byte expanded key; slower signing (~7-11 ms)."""

    name = "pqcrypto"

    def keygen(self) -> tuple[bytes, bytes]:
        public, secret = pq_mldsa.keygen()
        return bytes(public), bytes(secret)

    def sign(self, secret: bytes, message: bytes) -> bytes:
        if len(secret) != pq_mldsa.SECRET_KEY_SIZE:
            raise SignatureError(f"a pqcrypto ML-DSA-65 secret is {pq_mldsa.SECRET_KEY_SIZE} bytes")
        return bytes(pq_mldsa.sign(secret, message))

    def public_from_secret(self, secret: bytes) -> bytes | None:
        # FIPS 204's expanded secret key holds rho and t0 but not t1, so no cheap derivation.
        return None

    def pair_matches(self, public_key: bytes, secret: bytes) -> bool:
        """Check the two public-key fingerprints that FIPS 204 stores inside the secret key.

        sk = rho (32) || K (32) || tr (64) || s1 || s2 || t0 and pk = rho || t1, with
        tr = SHAKE256(pk, 64 bytes): a secret made for another public key fails this check.
        """
        return (
            len(secret) == pq_mldsa.SECRET_KEY_SIZE
            and len(public_key) == PUBLIC_KEY_SIZE
            and secret[:32] == public_key[:32]
            and secret[64:128] == hashlib.shake_256(public_key).digest(64)
        )

    def signer(self, secret: bytes) -> Callable[[bytes], bytes]:
        return lambda message: self.sign(secret, message)


BACKENDS: dict[str, SigningBackend] = {
    PyCryptographyBackend.name: PyCryptographyBackend(),
    PqcryptoBackend.name: PqcryptoBackend(),
}
# Chosen by benchmarks/bench_crypto.py (docs/benchmarks.md): signing is ~10x faster, verifying
# is the same speed, and the signatures are interchangeable.
DEFAULT_BACKEND = PyCryptographyBackend.name


def get_backend(name: str) -> SigningBackend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise SignatureError(
            f"unknown signing backend {name!r} (choose from {', '.join(sorted(BACKENDS))})"
        ) from None


@dataclass(frozen=True)
class Identity:
    """An ML-DSA-65 key pair. The secret never appears in repr, str or exceptions."""

    public_key: bytes = field(repr=False)
    backend: str
    _secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        get_backend(self.backend)  # unknown backend names fail here, not at the first sign
        if len(self.public_key) != PUBLIC_KEY_SIZE:
            raise SignatureError(f"an ML-DSA-65 public key is {PUBLIC_KEY_SIZE} bytes")

    @classmethod
    def generate(cls, backend: str = DEFAULT_BACKEND) -> Identity:
        public, secret = get_backend(backend).keygen()
        return cls(public_key=public, backend=backend, _secret=secret)

    @property
    def key_id(self) -> bytes:
        return key_id(self.public_key)

    def sign(self, message: bytes, context: bytes) -> bytes:
        return self._signer(domain_message(context, message))

    @cached_property
    def _signer(self) -> Callable[[bytes], bytes]:
        return get_backend(self.backend).signer(self._secret)

    def secret_bytes(self) -> bytes:
        """The raw secret, for the keystore only."""
        return self._secret

    def __repr__(self) -> str:
        return f"Identity(key_id={self.key_id.hex()}, backend={self.backend})"

    __str__ = __repr__


def verify(public_key: bytes, message: bytes, signature: bytes, context: bytes) -> bool:
    """True iff `signature` is a valid ML-DSA-65 signature of `message` in domain `context`.

    Never raises for hostile input: wrong sizes and garbage are simply invalid. Uses pyca
    (verification speed is the same with either backend, and pyca accepts both's signatures).
    A malformed `context` is the caller's bug, not hostile input, so it raises ValueError.
    """
    signed = domain_message(context, message)
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        pyca_mldsa.MLDSA65PublicKey.from_public_bytes(public_key).verify(signature, signed)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_with_pqcrypto(
    public_key: bytes, message: bytes, signature: bytes, context: bytes
) -> bool:
    """Same as `verify` through pqcrypto: used to cross-check the backends."""
    signed = domain_message(context, message)
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        pq_mldsa.verify(public_key, signed, signature)
    except Exception:  # pqcrypto raises its own InvalidSignatureError (and ValueError on sizes)
        return False
    return True
