"""ML-KEM-768 sealing: both backends interoperate; any tampering is a clean SealError."""

from __future__ import annotations

import hashlib

import pqcrypto.kem.ml_kem_768 as pq_mlkem
import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem as pyca_mlkem
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag.crypto.kem import (
    CIPHERTEXT_SIZE,
    DEFAULT_KEM_BACKEND,
    KEM_BACKENDS,
    PUBLIC_KEY_SIZE,
    SEAL_OVERHEAD,
    KemKeyPair,
    SealError,
    open_sealed,
    seal,
)

PAIRS = {name: KemKeyPair.generate(name) for name in KEM_BACKENDS}
PLAINTEXT = b"a private template: " + bytes(range(256))
AAD = b"template-id:1234"
# One box per (key backend, sealing backend): tampering tests flip bits of these.
BOXES = {
    (key, sealer): seal(PAIRS[key].public_key, PLAINTEXT, AAD, backend=sealer)
    for key in KEM_BACKENDS
    for sealer in KEM_BACKENDS
}


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_default_backend_is_known() -> None:
    assert DEFAULT_KEM_BACKEND in KEM_BACKENDS


@pytest.mark.parametrize("key_backend", KEM_BACKENDS)
@pytest.mark.parametrize("seal_backend", KEM_BACKENDS)
def test_round_trip_across_backends(key_backend: str, seal_backend: str) -> None:
    pair = PAIRS[key_backend]
    box = BOXES[(key_backend, seal_backend)]
    assert len(box) == len(PLAINTEXT) + SEAL_OVERHEAD
    assert open_sealed(pair.secret_bytes(), box, AAD) == PLAINTEXT
    assert pair.open(box, AAD) == PLAINTEXT


def test_raw_kem_interop_between_pyca_and_pqcrypto() -> None:
    """The libraries agree on FIPS 203 bytes: each decapsulates what the other encapsulated."""
    pyca_private = pyca_mlkem.MLKEM768PrivateKey.generate()
    ciphertext, shared = pq_mlkem.encaps(pyca_private.public_key().public_bytes_raw())
    assert pyca_private.decapsulate(bytes(ciphertext)) == bytes(shared)
    pq_public, pq_secret = pq_mlkem.keygen()
    shared2, ciphertext2 = pyca_mlkem.MLKEM768PublicKey.from_public_bytes(
        bytes(pq_public)
    ).encapsulate()
    assert bytes(pq_mlkem.decaps(pq_secret, ciphertext2)) == shared2


def test_empty_plaintext_and_default_aad() -> None:
    pair = PAIRS[DEFAULT_KEM_BACKEND]
    box = seal(pair.public_key, b"")
    assert len(box) == SEAL_OVERHEAD
    assert open_sealed(pair.secret_bytes(), box) == b""


def test_every_box_is_fresh() -> None:
    pair = PAIRS[DEFAULT_KEM_BACKEND]
    assert seal(pair.public_key, PLAINTEXT) != seal(pair.public_key, PLAINTEXT)


@settings(max_examples=80, deadline=None)
@given(
    which=st.sampled_from(sorted(BOXES)),
    position=st.floats(0, 1, exclude_max=True),
    low_bit=st.integers(0, 7),
    use_pair=st.booleans(),
)
def test_any_flipped_bit_is_a_clean_error(
    which: tuple[str, str], position: float, low_bit: int, use_pair: bool
) -> None:
    box = BOXES[which]
    # Spread positions over the whole box, KEM ciphertext and AEAD part alike.
    bit = int(position * len(box)) * 8 + low_bit
    tampered = flip(box, bit)
    pair = PAIRS[which[0]]
    with pytest.raises(SealError):
        if use_pair:
            pair.open(tampered, AAD)
        else:
            open_sealed(pair.secret_bytes(), tampered, AAD)


@pytest.mark.parametrize("bit", [0, CIPHERTEXT_SIZE * 8 - 1, CIPHERTEXT_SIZE * 8, -1])
def test_flips_at_the_boundaries(bit: int) -> None:
    box = BOXES[(DEFAULT_KEM_BACKEND, DEFAULT_KEM_BACKEND)]
    bit = bit % (len(box) * 8)
    with pytest.raises(SealError):
        PAIRS[DEFAULT_KEM_BACKEND].open(flip(box, bit), AAD)


@settings(max_examples=40, deadline=None)
@given(length=st.integers(0, len(PLAINTEXT) + SEAL_OVERHEAD - 1))
def test_truncated_boxes_are_clean_errors(length: int) -> None:
    box = BOXES[(DEFAULT_KEM_BACKEND, DEFAULT_KEM_BACKEND)]
    with pytest.raises(SealError):
        PAIRS[DEFAULT_KEM_BACKEND].open(box[:length], AAD)


def test_wrong_aad_wrong_recipient_and_appended_bytes_fail() -> None:
    box = BOXES[("cryptography", "cryptography")]
    with pytest.raises(SealError):
        PAIRS["cryptography"].open(box, AAD + b"x")
    with pytest.raises(SealError):
        PAIRS["cryptography"].open(box)
    with pytest.raises(SealError):
        PAIRS["pqcrypto"].open(box, AAD)
    with pytest.raises(SealError):
        PAIRS["cryptography"].open(box + b"\x00", AAD)


def test_box_is_bound_to_the_recipient_public_key() -> None:
    """Re-deriving with another public key (same shared secret) must not open the box.

    This is what the HKDF binding buys: a box cannot be re-labelled for a different recipient.
    """
    from qudag.crypto import kem

    pair = PAIRS["cryptography"]
    box = seal(pair.public_key, PLAINTEXT)
    public, decapsulate = kem._decapsulator(pair.secret_bytes())
    assert kem._open_with(public, decapsulate, box, b"") == PLAINTEXT
    other_public = PAIRS["pqcrypto"].public_key
    with pytest.raises(SealError):
        kem._open_with(other_public, decapsulate, box, b"")


@pytest.mark.parametrize("backend", KEM_BACKENDS)
def test_bad_public_keys_are_seal_errors(backend: str) -> None:
    for bad in (b"", b"\x00" * (PUBLIC_KEY_SIZE - 1), b"\x00" * (PUBLIC_KEY_SIZE + 1)):
        with pytest.raises(SealError, match="1184 bytes"):
            seal(bad, b"x", backend=backend)
    # Right size, but coefficients >= q: FIPS 203's encapsulation-key check must refuse it.
    with pytest.raises(SealError, match="invalid"):
        seal(b"\xff" * PUBLIC_KEY_SIZE, b"x", backend=backend)
    with pytest.raises(SealError, match="unknown KEM backend"):
        seal(PAIRS["cryptography"].public_key, b"x", backend="nope")


def test_bad_secret_keys_are_seal_errors() -> None:
    box = BOXES[("pqcrypto", "pqcrypto")]
    for bad in (b"", b"\x00" * 63, b"\x00" * 65, b"\x00" * 2399):
        with pytest.raises(SealError, match="secret key"):
            open_sealed(bad, box)
    secret = PAIRS["pqcrypto"].secret_bytes()
    damaged = flip(secret, (1152 + 10) * 8)  # inside the embedded public key
    with pytest.raises(SealError, match="hash mismatch"):
        open_sealed(damaged, box)


def test_key_pair_checks_and_rebuilds() -> None:
    for name, pair in PAIRS.items():
        assert KemKeyPair.from_secret(pair.secret_bytes()) == pair
        assert pair.backend == name
    with pytest.raises(SealError, match="does not match"):
        KemKeyPair(
            public_key=PAIRS["pqcrypto"].public_key,
            backend="cryptography",
            _secret=PAIRS["cryptography"].secret_bytes(),
        )
    with pytest.raises(SealError):
        KemKeyPair(public_key=PAIRS["cryptography"].public_key, backend="cryptography", _secret=b"")
    with pytest.raises(SealError):
        KemKeyPair.generate("nope")


@pytest.mark.parametrize("backend", KEM_BACKENDS)
def test_secret_never_in_repr_str_or_errors(backend: str) -> None:
    pair = PAIRS[backend]
    secret = pair.secret_bytes()
    texts = [repr(pair), str(pair), f"{pair}"]
    attempts = [
        (pair.open, (b"\x00" * 10,)),
        (pair.open, (flip(BOXES[(backend, backend)], 5), AAD)),
        (open_sealed, (secret[:-1], b"\x00" * SEAL_OVERHEAD)),
        (open_sealed, (flip(secret, 7), BOXES[(backend, backend)])),
    ]
    for function, args in attempts:
        with pytest.raises(SealError) as info:
            function(*args)  # type: ignore[operator]
        texts.append(str(info.value))
        texts.append(repr(info.value))
        assert info.value.__cause__ is None
    for text in texts:
        assert secret.hex() not in text
        assert secret[:16].hex() not in text
        assert repr(secret[:16])[2:-1] not in text
    assert hashlib.sha256(pair.public_key).hexdigest()[:16] in repr(pair)
