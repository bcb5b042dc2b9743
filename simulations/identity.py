"""Deterministic identities: keys and signatures that are a function of the run seed.

Why: a simulated run must be bit-identical for a given seed (tests/test_simulations_core.py
compares every vertex id of two runs), so simulated peers derive their keys from labels and sign
with FIPS 204's deterministic variant; the daemon keeps hedged signatures.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import blake3
from Crypto.PublicKey import MLDSA
from Crypto.Signature import mldsa as mldsa_scheme

from qudag.crypto.signing import Identity, get_backend


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the run seed and labels (stable across runs and machines)."""
    h = blake3.blake3(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


class DeterministicIdentity(Identity):
    """An identity that signs with FIPS 204's *deterministic* ML-DSA-65 variant (rnd = 0).

    Simulator only: the daemon keeps the hedged default (`Identity`), which FIPS 204
    recommends against fault and side-channel attacks on a signer that an adversary can
    observe; a simulated peer has no such adversary. Neither `cryptography` nor `pqcrypto`
    exposes the variant; pycryptodome (installed with libp2p) does, from the same 32-byte
    seed, so the key pair is identical (`public_key` is still derived by pyca) and every
    signature is a standard ML-DSA-65 signature the ledger verifies with pyca as usual. With
    it, a vertex's bytes, and so its id, are a function of the seed: a run is bit-identical.
    """

    @cached_property
    def _signer(self) -> Callable[[bytes], bytes]:
        key = MLDSA.MLDSAKey(param_set=MLDSA.ML_DSA_65, seed=self.secret_bytes())
        sign: Callable[[bytes], bytes] = mldsa_scheme.new(key, deterministic=True).sign
        return sign


def derive_identity(*parts: object) -> Identity:
    """A deterministic ML-DSA-65 key: the FIPS 204 seed is derived from the labels."""
    secret = blake3.blake3(b"qudag-sim/key/v1" + repr(parts).encode()).digest()
    backend = get_backend("cryptography")
    public = backend.public_from_secret(secret)
    assert public is not None
    return DeterministicIdentity(public_key=public, backend="cryptography", _secret=secret)
