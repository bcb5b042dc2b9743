"""ML-DSA-65 signing: both backends interoperate, and every kind of tampering is rejected."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag.crypto.signing import (
    BACKENDS,
    DEFAULT_BACKEND,
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    SignatureError,
    domain_message,
    key_id,
    verify,
    verify_with_pqcrypto,
)

CONTEXT = b"qudag-evo/test/v1"
MESSAGE = b"a template vertex body"
Verifier = Callable[[bytes, bytes, bytes, bytes], bool]
VERIFIERS: dict[str, Verifier] = {"pyca": verify, "pqcrypto": verify_with_pqcrypto}

# Keys and signatures are made once per module: pqcrypto signing costs ~7 ms.
IDENTITIES = {name: Identity.generate(name) for name in BACKENDS}
SIGNATURES = {name: ident.sign(MESSAGE, CONTEXT) for name, ident in IDENTITIES.items()}


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_default_backend_is_a_known_backend() -> None:
    assert DEFAULT_BACKEND in BACKENDS
    assert set(BACKENDS) == {"cryptography", "pqcrypto"}


@pytest.mark.parametrize("signer", sorted(BACKENDS))
@pytest.mark.parametrize("verifier", sorted(VERIFIERS))
def test_each_backend_verifies_under_each_verify_path(signer: str, verifier: str) -> None:
    ident = IDENTITIES[signer]
    signature = SIGNATURES[signer]
    assert len(signature) == SIGNATURE_SIZE
    assert len(ident.public_key) == PUBLIC_KEY_SIZE
    assert VERIFIERS[verifier](ident.public_key, MESSAGE, signature, CONTEXT)


@pytest.mark.parametrize("signer", sorted(BACKENDS))
@pytest.mark.parametrize("verifier", sorted(VERIFIERS))
def test_wrong_context_wrong_message_wrong_key_are_rejected(signer: str, verifier: str) -> None:
    check = VERIFIERS[verifier]
    ident, signature = IDENTITIES[signer], SIGNATURES[signer]
    other = IDENTITIES["pqcrypto" if signer == "cryptography" else "cryptography"]
    assert not check(ident.public_key, MESSAGE, signature, b"qudag-evo/test/v2")
    assert not check(ident.public_key, MESSAGE + b"!", signature, CONTEXT)
    assert not check(ident.public_key, MESSAGE[:-1], signature, CONTEXT)
    assert not check(other.public_key, MESSAGE, signature, CONTEXT)


def test_the_context_separates_domains_unambiguously() -> None:
    # "a" || 0 || "b\x00c" must not be confusable with another split; NUL is banned in contexts.
    ident = IDENTITIES["cryptography"]
    signature = ident.sign(b"x", b"ctx-a")
    assert verify(ident.public_key, b"x", signature, b"ctx-a")
    assert not verify(ident.public_key, b"x", signature, b"ctx-b")
    assert domain_message(b"ctx", b"m") == b"ctx\x00m"
    for bad in (b"", b"a\x00b"):
        with pytest.raises(ValueError):
            domain_message(bad, b"m")
        with pytest.raises(ValueError):  # a malformed context is a bug, not a silent False
            verify(ident.public_key, b"x", signature, bad)
        with pytest.raises(ValueError):
            verify_with_pqcrypto(ident.public_key, b"x", signature, bad)


@settings(max_examples=40, deadline=None)
@given(
    signer=st.sampled_from(sorted(BACKENDS)),
    verifier=st.sampled_from(sorted(VERIFIERS)),
    bit=st.integers(0, SIGNATURE_SIZE * 8 - 1),
)
def test_any_flipped_signature_bit_is_rejected(signer: str, verifier: str, bit: int) -> None:
    ident = IDENTITIES[signer]
    tampered = flip(SIGNATURES[signer], bit)
    assert not VERIFIERS[verifier](ident.public_key, MESSAGE, tampered, CONTEXT)


@settings(max_examples=30, deadline=None)
@given(verifier=st.sampled_from(sorted(VERIFIERS)), bit=st.integers(0, len(MESSAGE) * 8 - 1))
def test_any_flipped_message_bit_is_rejected(verifier: str, bit: int) -> None:
    ident = IDENTITIES["cryptography"]
    assert not VERIFIERS[verifier](
        ident.public_key, flip(MESSAGE, bit), SIGNATURES["cryptography"], CONTEXT
    )


@settings(max_examples=40, deadline=None)
@given(
    verifier=st.sampled_from(sorted(VERIFIERS)),
    public_key=st.one_of(
        st.binary(max_size=64),
        st.binary(min_size=PUBLIC_KEY_SIZE, max_size=PUBLIC_KEY_SIZE),
        st.binary(min_size=PUBLIC_KEY_SIZE - 1, max_size=PUBLIC_KEY_SIZE + 1),
    ),
    signature=st.one_of(
        st.just(SIGNATURES["cryptography"]),
        st.binary(max_size=64),
        st.binary(min_size=SIGNATURE_SIZE, max_size=SIGNATURE_SIZE),
    ),
)
def test_garbage_keys_and_signatures_are_invalid_not_errors(
    verifier: str, public_key: bytes, signature: bytes
) -> None:
    assert VERIFIERS[verifier](public_key, MESSAGE, signature, CONTEXT) is False


@pytest.mark.parametrize("verifier", sorted(VERIFIERS))
def test_extreme_public_keys_are_invalid_not_errors(verifier: str) -> None:
    signature = SIGNATURES["cryptography"]
    for filler in (b"\x00", b"\xff"):
        assert VERIFIERS[verifier](filler * PUBLIC_KEY_SIZE, MESSAGE, signature, CONTEXT) is False


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_pair_matches_accepts_own_pair_and_rejects_others(backend: str) -> None:
    ident = IDENTITIES[backend]
    impl = BACKENDS[backend]
    assert impl.pair_matches(ident.public_key, ident.secret_bytes())
    other = Identity.generate(backend)
    assert not impl.pair_matches(other.public_key, ident.secret_bytes())
    assert not impl.pair_matches(ident.public_key, other.secret_bytes())


def test_pqcrypto_pair_check_notices_a_damaged_fingerprint() -> None:
    ident = IDENTITIES["pqcrypto"]
    secret = ident.secret_bytes()
    for bit in (0, 31 * 8, 64 * 8, 127 * 8 + 7):  # inside rho and inside tr
        assert not BACKENDS["pqcrypto"].pair_matches(ident.public_key, flip(secret, bit))


def test_secret_never_appears_in_repr_or_str() -> None:
    for ident in IDENTITIES.values():
        secret = ident.secret_bytes()
        for text in (repr(ident), str(ident), f"{ident}", f"{ident!r}"):
            assert secret.hex() not in text
            assert repr(secret) not in text
            assert repr(secret[:16])[2:-1] not in text
            assert ident.key_id.hex() in text


def test_key_id_is_blake3_of_the_public_key() -> None:
    import blake3

    ident = IDENTITIES["cryptography"]
    assert ident.key_id == key_id(ident.public_key) == blake3.blake3(ident.public_key).digest()
    assert len(ident.key_id) == 32


def test_bad_identities_fail_at_construction() -> None:
    ident = IDENTITIES["cryptography"]
    with pytest.raises(SignatureError):
        Identity.generate("no-such-backend")
    with pytest.raises(SignatureError):
        Identity(public_key=ident.public_key[:-1], backend="cryptography", _secret=b"")
    with pytest.raises(SignatureError) as info:
        Identity(public_key=ident.public_key, backend="cryptography", _secret=os.urandom(31)).sign(
            b"m", CONTEXT
        )
    assert "seed" in str(info.value)
