"""Bulk ingest of signed vertices into an empty ledger, against a bare verify loop.

A node catching up through sync ingests history in bulk; ML-DSA-65 verification (~150 us) is
the irreducible cost per vertex, so the goal is ingest >= 0.9 x the rate of a bare verify loop
over the same vertices (decode, hash, validation rules, SQLite writes all small beside it).

Baseline ("bare verify"): for each vertex, the pyca public-key object is already parsed and the
signed message already built; the loop only calls `verify`. This is the strictest baseline
(our ingest must also decode, hash, build the message and parse keys). The looser baseline,
`qudag.crypto.signing.verify` (parses the key on every call), is printed too.

Runs alternate (verify, ingest, verify, ...) so machine noise hits all alike; figures are
medians of wall-clock and of process CPU time (the latter is robust to other processes on a
shared machine). The ingest time includes the final WAL checkpoint (and the segment file's
`fdatasync` before each commit, which costs wall time, little CPU). Prints bytes on disk per
vertex after that checkpoint (the ledger file plus its segment file of vertex bytes).

    python benchmarks/bench_ingest.py            # 20,000 vertices, 3 rounds
    python benchmarks/bench_ingest.py --quick    # 2,000 vertices, 3 rounds
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from qudag.crypto.signing import Identity, domain_message, verify
from qudag.dag.payloads import attestation_payload
from qudag.dag.records import IngestStatus
from qudag.dag.segment import segment_path
from qudag.dag.store import Store
from qudag.dag.validate import PublicKey, load_public_key
from qudag.dag.vertex import (
    SIGNING_CONTEXT,
    decode_vertex,
    make_identity_vertex,
    make_vertex,
)

NOW_MS = 1_800_000_000_000


def generate(n: int, n_authors: int, seed: int) -> list[bytes]:
    """A random DAG of `n` signed vertices in a topological delivery order.

    Each author chains its own vertices (seq rule) and also points at 1-3 random recent
    vertices of others. 9 in 10 vertices are templates with a 0.3-3 KB weight blob (tiny nets),
    1 in 10 are attestations of a recent template.
    """
    rng = random.Random(seed)
    authors = [Identity.generate() for _ in range(n_authors)]
    raws: list[bytes] = []
    last: dict[bytes, bytes] = {}
    seq: dict[bytes, int] = {}
    recent: list[bytes] = []
    templates: list[bytes] = []
    for identity in authors:
        raw = make_identity_vertex(identity, NOW_MS - 10_000_000, recent[-2:])
        vid = decode_vertex(raw).id
        raws.append(raw)
        last[identity.key_id] = vid
        seq[identity.key_id] = 1
        recent.append(vid)
    while len(raws) < n:
        identity = rng.choice(authors)
        author = identity.key_id
        parents = {
            last[author],
            *rng.sample(recent[-50:], min(len(recent[-50:]), rng.randint(1, 3))),
        }
        ts = NOW_MS - 10_000_000 + len(raws)
        if templates and rng.random() < 0.1:
            target = rng.choice(templates[-50:])
            parents.add(target)
            payload = attestation_payload(target, rng.random(), "valid")
            kind = "attestation"
        else:
            payload = {
                "v": 1,
                "task": "xor",
                "task_version": 1,
                "genome": {"weights": rng.randbytes(rng.randint(300, 3000))},
                "objectives": {"fitness": rng.random()},
                "parents": sorted(rng.sample(templates[-20:], min(2, len(templates[-20:])))),
                "operator": "crossover",
                "generation": len(raws),
            }
            kind = "template"
        parents_list = sorted(parents)[:8]
        if last[author] not in parents_list:
            parents_list = sorted([last[author], *parents_list[:7]])
        raw = make_vertex(identity, seq[author], ts, parents_list, kind, payload)
        vid = decode_vertex(raw).id
        raws.append(raw)
        last[author] = vid
        seq[author] += 1
        recent.append(vid)
        if kind == "template":
            templates.append(vid)
    return raws


class Timer:
    """Wall-clock and process CPU time of a block (CPU time is robust to a shared machine)."""

    def __enter__(self) -> Timer:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def bare_verify(prepared: list[tuple[PublicKey, bytes, bytes]]) -> Timer:
    with Timer() as timer:
        for key, signature, message in prepared:
            key.verify(signature, message)
    return timer


def signing_verify(triples: list[tuple[bytes, bytes, bytes]]) -> Timer:
    with Timer() as timer:
        for public_key, body, signature in triples:
            if not verify(public_key, body, signature, SIGNING_CONTEXT):
                raise AssertionError("signature did not verify")
    return timer


def ingest(raws: list[bytes], path: Path, workers: int = 1) -> tuple[Timer, int]:
    """Ingest into a new store; the time includes the final WAL checkpoint (its cost is real).
    `workers` > 1: decode and verify each batch on that many threads first (`precheck`)."""
    for stale in path.parent.glob(path.name + "*"):
        stale.unlink()
    store = Store.open(path)
    with Timer() as timer:
        results = store.ingest_many(raws, NOW_MS, workers=workers)
        store.checkpoint()
    if any(r.status is not IngestStatus.ACCEPTED for r in results):
        raise AssertionError("every generated vertex must be accepted")
    store.close()
    return timer, path.stat().st_size + segment_path(path).stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 vertices instead of 20,000")
    parser.add_argument("--vertices", type=int, default=None)
    parser.add_argument("--authors", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.vertices or (2_000 if args.quick else 20_000)

    t0 = time.perf_counter()
    raws = generate(n, args.authors, seed=1)
    elapsed = time.perf_counter() - t0
    print(f"generated {n} signed vertices ({args.authors} authors) in {elapsed:.1f} s")
    decoded = [decode_vertex(raw) for raw in raws]
    public = {v.author: v.payload["public_key"] for v in decoded if v.kind == "identity"}
    keys = {author: load_public_key(pk) for author, pk in public.items()}
    prepared = [
        (keys[v.author], v.signature, domain_message(SIGNING_CONTEXT, v.body)) for v in decoded
    ]
    triples = [(public[v.author], v.body, v.signature) for v in decoded]
    raw_bytes = sum(len(r) for r in raws)

    runs: dict[str, list[Timer]] = {"bare": [], "signing": [], "ingest": [], "ingest2": []}
    size = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.sqlite3"
        for _ in range(args.rounds):  # interleaved, so machine noise hits all three alike
            runs["bare"].append(bare_verify(prepared))
            timer, size = ingest(raws, path)
            runs["ingest"].append(timer)
            runs["signing"].append(signing_verify(triples))
            runs["ingest2"].append(ingest(raws, path, workers=2)[0])

    def rate(name: str, clock: str) -> float:
        return n / statistics.median(getattr(t, clock) for t in runs[name])

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.rounds} rounds, medians")
    print(f"{'vertices/s':44s} {'wall':>9s} {'cpu':>9s}")
    rows = [
        ("bare verify loop (key parsed once)", "bare"),
        ("crypto.signing.verify loop", "signing"),
        ("ingest into an empty store (ingest_many)", "ingest"),
        ("the same, workers=2 (verify on 2 threads)", "ingest2"),
    ]
    for label, name in rows:
        print(f"{label:44s} {rate(name, 'wall'):9.0f} {rate(name, 'cpu'):9.0f}")
    for label, name in (("bare verify", "bare"), ("crypto.signing.verify", "signing")):
        wall = rate("ingest", "wall") / rate(name, "wall")
        cpu = rate("ingest", "cpu") / rate(name, "cpu")
        print(f"{'ratio ingest / ' + label:44s} {wall:9.3f} {cpu:9.3f}   (goal >= 0.9)")
    wall2 = rate("ingest2", "wall") / rate("bare", "wall")
    cpu2 = rate("ingest2", "cpu") / rate("bare", "cpu")
    print(f"{'ratio ingest workers=2 / bare verify':44s} {wall2:9.3f} {cpu2:9.3f}  (all threads)")
    per_vertex_us = 1e6 / rate("ingest", "cpu") - 1e6 / rate("bare", "cpu")
    print(f"ingest cost beyond the signature check:      {per_vertex_us:.1f} us CPU per vertex")
    print(f"mean vertex size:                            {raw_bytes / n:.0f} bytes")
    print(
        f"bytes on disk per vertex (after checkpoint): {size / n:.0f} ({size / raw_bytes:.2f}x raw)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
