"""Crypto costs: ML-DSA-65 keygen/sign/verify for both backends, ML-KEM-768 seal/open, key files.

Run: `python benchmarks/bench_crypto.py` (about a minute) or `--quick` (a few seconds).

Every figure is a median over rounds; in each round every case runs once, in turn, so a load
spike from another process hits all cases alike and the ratios stay fair. Each sample times a
small batch of calls (batch size picked so a sample lasts ~2 ms) and divides.
Ratios are printed against a baseline measured in the same run (pyca `cryptography` unless
said otherwise), which is what docs/benchmarks.md "## Crypto" records and the default backends
(signing.DEFAULT_BACKEND, kem.DEFAULT_KEM_BACKEND) are chosen from.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cryptography
import pqcrypto.kem.ml_kem_768 as pq_mlkem
from cryptography.hazmat.primitives.asymmetric import mldsa as pyca_mldsa
from cryptography.hazmat.primitives.asymmetric import mlkem as pyca_mlkem

from qudag.crypto import kem
from qudag.crypto.keystore import load_identity, save_identity
from qudag.crypto.signing import (
    BACKENDS,
    DEFAULT_BACKEND,
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    verify,
    verify_with_pqcrypto,
)

CONTEXT = b"qudag-evo/bench/v1"
MESSAGE = os.urandom(1024)  # a template vertex body is ~0.5-50 KB; signing hashes it first
PLAINTEXT = os.urandom(4096)  # a small template


def batch_size(fn: Callable[[], object], target_s: float = 0.002) -> int:
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, min(200, int(target_s / once)))


def run_cases(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each case, cases interleaved round by round."""
    for fn in cases.values():  # warm up (lazy imports, caches)
        fn()
    sizes = {name: batch_size(fn) for name, fn in cases.items()}
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            n = sizes[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return {name: statistics.median(values) for name, values in samples.items()}


def show(title: str, results: dict[str, float]) -> None:
    print(f"\n{title}")
    for name, seconds in results.items():
        print(f"  {name:<52} {seconds * 1e6:>10.1f} us")


def ratio(label: str, numerator: float, denominator: float) -> None:
    print(f"  ratio {label:<46} {numerator / denominator:>10.2f}x")


def bench_signing(rounds: int) -> dict[str, float]:
    identities = {name: Identity.generate(name) for name in BACKENDS}
    signatures = {name: ident.sign(MESSAGE, CONTEXT) for name, ident in identities.items()}
    seed = identities["cryptography"].secret_bytes()
    cases: dict[str, Callable[[], object]] = {}
    for name in BACKENDS:
        cases[f"keygen {name}"] = partial(Identity.generate, name)
    for name, ident in identities.items():
        cases[f"sign {name}"] = partial(ident.sign, MESSAGE, CONTEXT)
    # What Identity.sign cost before it cached the expanded pyca key (seed parsed per call).
    cases["sign cryptography, seed re-parsed per call"] = lambda: (
        pyca_mldsa.MLDSA65PrivateKey.from_seed_bytes(seed).sign(CONTEXT + b"\x00" + MESSAGE)
    )
    for signer, signature in signatures.items():
        public = identities[signer].public_key
        args = (public, MESSAGE, signature, CONTEXT)
        cases[f"verify (pyca path) sig by {signer}"] = partial(verify, *args)
        cases[f"verify (pqcrypto path) sig by {signer}"] = partial(verify_with_pqcrypto, *args)
    results = run_cases(cases, rounds)
    show(f"ML-DSA-65, {len(MESSAGE)}-byte message, median per call", results)
    ratio(
        "keygen pqcrypto / cryptography", results["keygen pqcrypto"], results["keygen cryptography"]
    )
    ratio("sign pqcrypto / cryptography", results["sign pqcrypto"], results["sign cryptography"])
    ratio(
        "sign seed-re-parsed / cached (cryptography)",
        results["sign cryptography, seed re-parsed per call"],
        results["sign cryptography"],
    )
    ratio(
        "verify pqcrypto path / pyca path",
        results["verify (pqcrypto path) sig by cryptography"],
        results["verify (pyca path) sig by cryptography"],
    )
    ratio(
        "sign / verify (default backend, pyca path)",
        results[f"sign {DEFAULT_BACKEND}"],
        results["verify (pyca path) sig by cryptography"],
    )
    for name, ident in identities.items():
        print(
            f"  bytes {name}: public key {len(ident.public_key)}, secret "
            f"{len(ident.secret_bytes())}, signature {len(signatures[name])}"
        )
    assert len(identities["cryptography"].public_key) == PUBLIC_KEY_SIZE
    assert all(len(s) == SIGNATURE_SIZE for s in signatures.values())
    return results


def bench_kem(rounds: int) -> dict[str, float]:
    pairs = {name: kem.KemKeyPair.generate(name) for name in kem.KEM_BACKENDS}
    pyca_private = pyca_mlkem.MLKEM768PrivateKey.from_seed_bytes(
        pairs["cryptography"].secret_bytes()
    )
    pq_secret = pairs["pqcrypto"].secret_bytes()
    public = pairs["cryptography"].public_key
    ct_pyca = pyca_mlkem.MLKEM768PublicKey.from_public_bytes(public).encapsulate()[1]
    ct_pq = bytes(pq_mlkem.encaps(pairs["pqcrypto"].public_key)[0])
    boxes = {name: kem.seal(pair.public_key, PLAINTEXT) for name, pair in pairs.items()}
    cases: dict[str, Callable[[], object]] = {
        "raw keygen cryptography": pyca_mlkem.MLKEM768PrivateKey.generate,
        "raw keygen pqcrypto": pq_mlkem.keygen,
        "raw encaps cryptography": lambda: pyca_mlkem.MLKEM768PublicKey.from_public_bytes(
            public
        ).encapsulate(),
        "raw encaps pqcrypto": lambda: pq_mlkem.encaps(public),
        "raw decaps cryptography (loaded key)": lambda: pyca_private.decapsulate(ct_pyca),
        "raw decaps cryptography (from 64-byte seed)": lambda: (
            pyca_mlkem.MLKEM768PrivateKey.from_seed_bytes(
                pairs["cryptography"].secret_bytes()
            ).decapsulate(ct_pyca)
        ),
        "raw decaps pqcrypto (2400-byte key)": lambda: pq_mlkem.decaps(pq_secret, ct_pq),
    }
    for name in kem.KEM_BACKENDS:
        cases[f"seal {len(PLAINTEXT)} B, encaps by {name}"] = partial(
            kem.seal, public, PLAINTEXT, backend=name
        )
    for name, pair in pairs.items():
        box, secret = boxes[name], pair.secret_bytes()
        cases[f"open_sealed {len(PLAINTEXT)} B, {name} secret bytes"] = partial(
            kem.open_sealed, secret, box
        )
        cases[f"KemKeyPair.open {len(PLAINTEXT)} B, {name}"] = partial(pair.open, box)
    results = run_cases(cases, rounds)
    show("ML-KEM-768, median per call", results)
    n = len(PLAINTEXT)
    ratio(
        "encaps pqcrypto / cryptography",
        results["raw encaps pqcrypto"],
        results["raw encaps cryptography"],
    )
    ratio(
        "decaps pqcrypto / cryptography (loaded)",
        results["raw decaps pqcrypto (2400-byte key)"],
        results["raw decaps cryptography (loaded key)"],
    )
    ratio(
        "seal by pqcrypto / by cryptography",
        results[f"seal {n} B, encaps by pqcrypto"],
        results[f"seal {n} B, encaps by cryptography"],
    )
    ratio(
        "seal (default) / raw encaps (default)",
        results[f"seal {n} B, encaps by {kem.DEFAULT_KEM_BACKEND}"],
        results[f"raw encaps {kem.DEFAULT_KEM_BACKEND}"],
    )
    ratio(
        "open_sealed pqcrypto / cryptography secret",
        results[f"open_sealed {n} B, pqcrypto secret bytes"],
        results[f"open_sealed {n} B, cryptography secret bytes"],
    )
    ratio(
        "KemKeyPair.open pqcrypto / cryptography",
        results[f"KemKeyPair.open {n} B, pqcrypto"],
        results[f"KemKeyPair.open {n} B, cryptography"],
    )
    print(
        f"  bytes: public key {kem.PUBLIC_KEY_SIZE}, KEM ciphertext {kem.CIPHERTEXT_SIZE}, "
        f"seal overhead {kem.SEAL_OVERHEAD} (box for {n} B = {len(boxes['cryptography'])} B), "
        f"secret cryptography {kem.PYCA_SECRET_SIZE} / pqcrypto {kem.PQCRYPTO_SECRET_SIZE}"
    )
    return results


def bench_keystore(rounds: int) -> None:
    """Key files are read once per process start: the KDF dominates, by design."""
    ident = {name: Identity.generate(name) for name in BACKENDS}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, identity in ident.items():
            for kind, passphrase in (("plain", None), ("argon2id", "bench passphrase")):
                path = Path(tmp) / f"{name}-{kind}.key"
                save_identity(identity, path, passphrase)
                paths[(name, kind, passphrase)] = path
        cases: dict[str, Callable[[], object]] = {
            f"load {kind} key file ({name})": partial(load_identity, path, pw)
            for (name, kind, pw), path in paths.items()
        }
        results = run_cases(cases, max(3, rounds // 10))
        show("Key files (Argon2id default: 64 MiB, 3 passes, 4 lanes), median per call", results)
        for (name, kind, _), path in paths.items():
            print(f"  bytes {name} {kind} key file: {path.stat().st_size}")
        ratio(
            "load encrypted / load plain (cryptography)",
            results["load argon2id key file (cryptography)"],
            results["load plain key file (cryptography)"],
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    parser.add_argument("--rounds", type=int, help="rounds per case (default 200, quick 15)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (15 if args.quick else 200)
    print(
        f"bench_crypto: rounds={rounds} python={platform.python_version()} "
        f"cryptography={cryptography.__version__} "
        f"pqcrypto={importlib.metadata.version('pqcrypto')} cpus={os.cpu_count()} "
        f"machine={platform.machine()}"
    )
    start = time.perf_counter()
    bench_signing(rounds)
    bench_kem(rounds)
    bench_keystore(rounds)
    print(
        f"\ndefault signing backend: {DEFAULT_BACKEND}; default KEM backend: "
        f"{kem.DEFAULT_KEM_BACKEND}; total {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
