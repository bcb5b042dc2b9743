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

Each flag below replaces the main comparison with the measurement behind one design choice of
the ingest path (docs/benchmarks.md, "DAG ingest"), interleaved with the bare verify loop in
every round and printed as medians with their ratio to a baseline of the same run:

    --precheck-ab    signatures checked in one tight loop per batch (`precheck`, what
                     `ingest_many` does) against checked inside each vertex's own work
    --rows-ab        bulk ingest with the vertex bytes in the segment file against in SQLite rows
    --split-outer    `dag.vertex.split_outer` against the generic strict decode of the outer array
    --single         one `Store.ingest` (a transaction) per vertex, and one `fdatasync` of a
                     vertex appended to a file beside the ledger
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
from qudag.dag import store as store_module
from qudag.dag.payloads import attestation_payload
from qudag.dag.records import IngestStatus
from qudag.dag.segment import segment_path
from qudag.dag.store import Store
from qudag.dag.store_base import DEFAULT_BATCH
from qudag.dag.validate import PublicKey, load_public_key
from qudag.dag.vertex import (
    SIGNING_CONTEXT,
    _outer_slow,
    decode_vertex,
    make_identity_vertex,
    make_vertex,
    split_outer,
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


def _fresh(path: Path) -> None:
    for stale in path.parent.glob(path.name + "*"):
        stale.unlink()


def _disk_size(path: Path) -> int:
    """The ledger file plus its segment file, after the final checkpoint."""
    segment = segment_path(path)
    return path.stat().st_size + (segment.stat().st_size if segment.exists() else 0)


def ingest(
    raws: list[bytes], path: Path, workers: int = 1, *, per_vertex: bool = False, rows: bool = False
) -> tuple[Timer, int]:
    """Ingest into a new store; the time includes the final WAL checkpoint (its cost is real).
    `workers` > 1: decode and verify each batch on that many threads first (`precheck`).

    The two alternatives the flags compare against reach into the store on purpose, to run
    the same code with one choice undone: `per_vertex` offers the raw bytes to the batch loop,
    so each vertex is decoded and its signature checked inside its own rules (no `precheck`);
    `rows` opens the store as if it had no segment file (as an in-memory ledger is opened), so
    the vertex bytes go into the `raw` column as they do for a single `ingest`."""
    _fresh(path)
    if rows:
        real = store_module._open_segment
        store_module._open_segment = lambda db, path: None
        try:
            store = Store.open(path)
        finally:
            store_module._open_segment = real
    else:
        store = Store.open(path)
    with Timer() as timer:
        if per_vertex:
            results = store._ingest_items(raws, NOW_MS, DEFAULT_BATCH, False)
        else:
            results = store.ingest_many(raws, NOW_MS, workers=workers)
        store.checkpoint()
    if any(r.status is not IngestStatus.ACCEPTED for r in results):
        raise AssertionError("every generated vertex must be accepted")
    store.close()
    return timer, _disk_size(path)


def ingest_single(raws: list[bytes], path: Path) -> Timer:
    """One `Store.ingest` per vertex (its own transaction and commit), as gossip arrives."""
    _fresh(path)
    store = Store.open(path)
    with Timer() as timer:
        for raw in raws:
            if store.ingest(raw, NOW_MS).status is not IngestStatus.ACCEPTED:
                raise AssertionError("every generated vertex must be accepted")
    store.close()
    return timer


def append_and_sync(raws: list[bytes], path: Path) -> Timer:
    """Append each vertex to a file beside the ledger and `fdatasync` it: what a single ingest
    would pay if its bytes went to the segment file (which is synced before each commit)."""
    _fresh(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        with Timer() as timer:
            for raw in raws:
                os.write(fd, raw)
                os.fdatasync(fd)
    finally:
        os.close(fd)
    return timer


def decode_loop(raws: list[bytes]) -> Timer:
    """The strict decode alone (outer array, canonical body round trip, BLAKE3 id, payload
    checks): the part of ingest that is neither the signature nor the store."""
    with Timer() as timer:
        for raw in raws:
            decode_vertex(raw)
    return timer


def outer_loop(raws: list[bytes], split: bool, repeat: int) -> Timer:
    """`repeat` passes of the outer array's split: the header reader or the generic decoder."""
    with Timer() as timer:
        for _ in range(repeat):
            if split:
                for raw in raws:
                    split_outer(raw)
            else:
                for raw in raws:
                    _outer_slow(raw)
    return timer


def _us(n: int, timers: list[Timer], clock: str = "cpu") -> float:
    """Median microseconds per item."""
    return 1e6 * statistics.median(getattr(t, clock) for t in timers) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 vertices instead of 20,000")
    parser.add_argument("--vertices", type=int, default=None)
    parser.add_argument("--authors", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    flags = parser.add_mutually_exclusive_group()
    flags.add_argument("--precheck-ab", action="store_true", help="precheck vs per-vertex check")
    flags.add_argument("--rows-ab", action="store_true", help="segment file vs bytes in rows")
    flags.add_argument("--split-outer", action="store_true", help="split_outer vs generic")
    flags.add_argument(
        "--single", action="store_true", help="Store.ingest per vertex, and one fdatasync"
    )
    parser.add_argument(
        "--syncs",
        type=int,
        default=None,
        help="fdatasyncs per round with --single (200 or --vertices)",
    )
    args = parser.parse_args()
    n = (2_000 if args.quick else 20_000) if args.vertices is None else args.vertices
    for flag, value in (("--vertices", n), ("--authors", args.authors), ("--rounds", args.rounds)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    if args.syncs is not None and not args.single:
        parser.error("--syncs applies only with --single")
    args.syncs = min(200, n) if args.syncs is None else args.syncs
    if not 1 <= args.syncs <= n:
        parser.error(f"--syncs must be between 1 and the vertex count ({n}), got {args.syncs}")

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
    header = (
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.rounds} rounds, medians, "
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.sqlite3"
        if args.precheck_ab:
            labels = ("ingest_many: batch precheck, then per vertex", "check in each vertex's work")
            ingest_ab(
                raws,
                prepared,
                path,
                args.rounds,
                header,
                labels,
                "the batch precheck",
                per_vertex=True,
            )
        elif args.rows_ab:
            labels = ("ingest_many, bytes in the segment file", "ingest_many, bytes in SQLite rows")
            ingest_ab(
                raws, prepared, path, args.rounds, header, labels, "the segment file", rows=True
            )
        elif args.split_outer:
            split_ab(raws, args.rounds, header)
        elif args.single:
            single(raws, prepared, path, args.rounds, args.syncs, header)
        else:
            compare(raws, prepared, triples, path, args.rounds, header)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


def compare(
    raws: list[bytes],
    prepared: list[tuple[PublicKey, bytes, bytes]],
    triples: list[tuple[bytes, bytes, bytes]],
    path: Path,
    rounds: int,
    header: str,
) -> None:
    """The main figure: bulk ingest against the bare verify loop."""
    n = len(raws)
    runs: dict[str, list[Timer]] = {
        "bare": [],
        "signing": [],
        "ingest": [],
        "ingest2": [],
        "decode": [],
    }
    size = 0
    for _ in range(rounds):  # interleaved, so machine noise hits all alike
        runs["bare"].append(bare_verify(prepared))
        timer, size = ingest(raws, path)
        runs["ingest"].append(timer)
        runs["signing"].append(signing_verify(triples))
        runs["ingest2"].append(ingest(raws, path, workers=2)[0])
        runs["decode"].append(decode_loop(raws))

    def rate(name: str, clock: str) -> float:
        return n / statistics.median(getattr(t, clock) for t in runs[name])

    print(header)
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
    beyond = _us(n, runs["ingest"]) - _us(n, runs["bare"])
    decode = _us(n, runs["decode"])
    print(f"ingest cost beyond the signature check:      {beyond:.1f} us CPU per vertex")
    print(f"  of which the strict decode (decode loop):  {decode:.1f} us CPU per vertex")
    print(f"  the rest (rules, caches, rows, segment):   {beyond - decode:.1f} us CPU per vertex")
    print(f"mean vertex size:                            {raw_bytes(raws) / n:.0f} bytes")
    print(
        f"bytes on disk per vertex (after checkpoint): {size / n:.0f} "
        f"({size / raw_bytes(raws):.2f}x raw)"
    )


def raw_bytes(raws: list[bytes]) -> int:
    return sum(map(len, raws))


def _row(label: str, cpu: float, wall: float, bare: float | None, extra: str = "") -> None:
    """One line of a flag's table: CPU, CPU beyond the bare verify, bare / this, wall."""
    beyond = f"{cpu - bare:7.1f} {bare / cpu:6.3f}" if bare is not None else f"{'':7s} {'':6s}"
    print(f"{label:44s} {cpu:8.1f} {beyond} {wall:8.1f}{extra}")


_HEAD = f"{'us per vertex':44s} {'CPU':>8s} {'beyond':>7s} {'/bare':>6s} {'wall':>8s}"


def ingest_ab(
    raws: list[bytes],
    prepared: list[tuple[PublicKey, bytes, bytes]],
    path: Path,
    rounds: int,
    header: str,
    labels: tuple[str, str],
    choice: str,
    **undone: bool,
) -> None:
    """Bulk ingest as it is against the same ingest with one `choice` undone (`undone`: the
    keyword of `ingest` that undoes it), both against the bare verify loop."""
    n = len(raws)
    runs: dict[str, list[Timer]] = {"bare": [], "as is": [], "undone": []}
    sizes: dict[str, int] = {}
    for _ in range(rounds):
        runs["bare"].append(bare_verify(prepared))
        timer, sizes["as is"] = ingest(raws, path)
        runs["as is"].append(timer)
        timer, sizes["undone"] = ingest(raws, path, **undone)
        runs["undone"].append(timer)
    bare = _us(n, runs["bare"])
    print(header)
    print(f"{_HEAD} {'disk B':>7s}")
    _row("bare verify loop (baseline)", bare, _us(n, runs["bare"], "wall"), None)
    for label, name in zip(labels, ("as is", "undone"), strict=True):
        cpu, wall = _us(n, runs[name]), _us(n, runs[name], "wall")
        _row(label, cpu, wall, bare, f" {sizes[name] / n:7.0f}")
    saved = _us(n, runs["undone"]) - _us(n, runs["as is"])
    print(f"{choice} saves {saved:.1f} us CPU per vertex ({saved / bare:.3f}x a verify)")


def split_ab(raws: list[bytes], rounds: int, header: str) -> None:
    """Why the outer array is split by reading its headers."""
    n = len(raws)
    repeat = max(1, 200_000 // n)  # microseconds per call: enough calls to time
    runs: dict[str, list[Timer]] = {"split": [], "generic": []}
    for _ in range(rounds):
        runs["generic"].append(outer_loop(raws, split=False, repeat=repeat))
        runs["split"].append(outer_loop(raws, split=True, repeat=repeat))
    calls = n * repeat
    generic, split = _us(calls, runs["generic"]), _us(calls, runs["split"])
    print(header)
    print(f"outer array of {calls} vertices per round, us CPU per vertex")
    print(f"{'generic strict decode (_outer_slow, baseline)':48s} {generic:6.2f}")
    print(f"{'split_outer (three headers)':48s} {split:6.2f}   ratio {split / generic:.3f}")
    print(f"split_outer saves {generic - split:.2f} us CPU per vertex")


def single(
    raws: list[bytes],
    prepared: list[tuple[PublicKey, bytes, bytes]],
    path: Path,
    rounds: int,
    syncs: int,
    header: str,
) -> None:
    """What one gossiped vertex costs (`Store.ingest`, a transaction each), and what an
    `fdatasync` of its bytes would add to it."""
    n = len(raws)
    runs: dict[str, list[Timer]] = {"bare": [], "single": [], "bulk": [], "sync": []}
    sync_path = path.with_name("sync-probe")
    for _ in range(rounds):
        runs["bare"].append(bare_verify(prepared))
        runs["single"].append(ingest_single(raws, path))
        runs["bulk"].append(ingest(raws, path)[0])
        runs["sync"].append(append_and_sync(raws[:syncs], sync_path))
    bare = _us(n, runs["bare"])
    print(header)
    print(_HEAD)
    _row("bare verify loop (baseline)", bare, _us(n, runs["bare"], "wall"), None)
    for label, name in (
        ("Store.ingest, one transaction per vertex", "single"),
        ("ingest_many, 1,000 per transaction", "bulk"),
    ):
        _row(label, _us(n, runs[name]), _us(n, runs[name], "wall"), bare)
    sync_cpu, sync_wall = _us(syncs, runs["sync"]), _us(syncs, runs["sync"], "wall")
    single_cpu, single_wall = _us(n, runs["single"]), _us(n, runs["single"], "wall")
    _row(f"append + fdatasync ({syncs} per round)", sync_cpu, sync_wall, None)
    print(
        f"an fdatasync per single ingest would add {sync_wall / single_wall:.2f}x its wall time "
        f"and {sync_cpu / single_cpu:.2f}x its CPU time"
    )


if __name__ == "__main__":
    sys.exit(main())
