"""Node benchmark: a new daemon catching up in bulk over the sync protocol, against bare verify.

Run: `python benchmarks/bench_catchup.py` (several minutes) or `--quick`. Every figure is printed
beside a baseline measured in the same run, and one JSON object with everything is the last
stdout line (benchmarks/node_harness.py).

A ledger of N vertices (20 authors, template vertices with a real xor template as
payload, each linked to its author's previous vertex and another author's tip) is served by a
real `qudag-node run` daemon; a second, empty daemon bootstraps from it and catches up through
heads gossip and cursor-paged `since/2` requests (pipelined; pages verified in a worker
thread) over the PQ-encrypted `/qudag/sync/1.0.0` stream. Rate = N / (time from its first
synced vertex to the last), median of `--runs`. Baseline, measured before each run: bare
decode + ML-DSA-65 verify of the same N vertices on one thread in this process; also the
CPU-time ratio (client CPU on all threads per vertex vs the bare loop's), which load does not
move. Breakdown: the server building all pages (`Store.since_page`), and the client's ingest
of all N vertices in-process, one thread (`PeerCore.on_sync_response`, no network).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from node_harness import run_benchmark

from qudag.node.ops.cpu import children_cpu, main_thread_cpu, process_cpu


def build_ledger(path: Path, n: int, authors: int = 20) -> list[bytes]:
    """N template vertices by `authors` identities (plus their identity vertices)."""
    import numpy as np

    from qudag.crypto.signing import Identity
    from qudag.dag.payloads import KIND_TEMPLATE
    from qudag.dag.store import Store
    from qudag.dag.vertex import decode_vertex, make_identity_vertex, make_vertex
    from qudag.evolution.genome import Genome
    from qudag.evolution.tasks import get_task
    from qudag.evolution.template import from_genome
    from qudag.node.protocol.core import NODE_DECODERS

    task = get_task("xor")
    genome = Genome.random(np.random.default_rng(1), task.n_inputs, [4], task.n_outputs)
    base = from_genome(genome, task, 0.5, latency_repeats=3).to_dict()
    rng = random.Random(7)
    now = time.time_ns() // 1_000_000 - 3_600_000
    ids = [Identity.generate() for _ in range(authors)]
    raws: list[bytes] = []
    last: list[bytes] = []
    seqs = [0] * authors
    for ident in ids:
        raw = make_identity_vertex(ident, now)
        raws.append(raw)
        last.append(decode_vertex(raw).id)
    for i in range(n - authors):
        a = i % authors
        other = rng.randrange(authors)
        parents = sorted({last[a], last[other]})
        seqs[a] += 1
        payload = {**base, "generation": seqs[a]}
        payload["objectives"] = {**base["objectives"], "fitness": rng.random()}
        raw = make_vertex(ids[a], seqs[a], now + i, parents, KIND_TEMPLATE, payload)
        last[a] = decode_vertex(raw).id
        raws.append(raw)
    with Store.open(path, decoders=NODE_DECODERS) as store:
        store.ingest_many(raws, now + n + 1000)
        assert store.count() == n
    return raws


def bare_verify(raws: list[bytes]) -> tuple[float, float]:
    """Decode + ML-DSA-65 verify of `raws` in a plain loop on one thread: (vertices per
    second of wall time, vertices per CPU-second)."""
    from qudag.dag.validate import check_signature, load_public_key
    from qudag.dag.vertex import decode_vertex
    from qudag.node.protocol.core import NODE_DECODERS

    keys: dict[bytes, Any] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for raw in raws:
        v = decode_vertex(raw, decoders=NODE_DECODERS)  # what a node's ingest decodes too
        if v.kind == "identity":
            keys[v.author] = load_public_key(v.payload["public_key"])
        check_signature(v, keys[v.author])
    return len(raws) / (time.perf_counter() - t0), len(raws) / (time.process_time() - c0)


def ingest_breakdown(path: Path, n: int, page: int) -> dict[str, float]:
    """Server page building and client-side ingest of the same pages, in process, one thread
    (the daemon pipelines these and verifies in a worker thread; this is the sequential sum)."""
    from qudag.crypto.signing import Identity
    from qudag.dag.store import Store
    from qudag.node.protocol import messages
    from qudag.node.protocol.core import NODE_DECODERS, CoreConfig, PeerCore, task_tolerances

    with Store.open(path) as server:
        pages: list[bytes] = []
        t0 = time.perf_counter()
        after: tuple[int, bytes] | None = None
        while True:
            rows, more = server.since_page({}, page, after)
            after = rows[-1][0] if more else None
            pages.append(messages.encode(messages.Page(tuple(raw for _, raw in rows), after)))
            if not more:
                break
        since_s = time.perf_counter() - t0
    tmp = path.with_name("client-breakdown.sqlite3")
    tmp.unlink(missing_ok=True)
    with Store.open(tmp, decoders=NODE_DECODERS) as store:
        core = PeerCore(
            Identity.generate(),
            store,
            CoreConfig(tasks=("xor",), tolerances=task_tolerances(("xor",))),
            random.Random(0),
        )
        t0 = time.perf_counter()
        for data in pages:
            core.on_sync_response("server", data, time.time_ns() // 1_000_000)
        ingest_s = time.perf_counter() - t0
        assert store.count() >= n, store.count()
    tmp.unlink(missing_ok=True)
    return {"pages": len(pages), "since_all_pages_s": since_s, "client_ingest_s": ingest_s}


def _ledger_size(http: str) -> int:
    """The `qudag_vertices` gauge of a daemon's /metrics (updated every 0.2 s tick), -1 if it
    does not answer. Not /status: that hashes every stored id (O(N) SQL per call), and polling
    it at 10 Hz cost the syncing client a visible share of its CPU."""
    from qudag.node.commands.status import http_get, status_url
    from qudag.node.errors import UserError

    try:
        _, body = http_get(status_url(http).removesuffix("/status") + "/metrics", 5, 1 << 20)
    except UserError:
        return -1
    text = body.decode("utf-8", "replace")
    match = re.search(r"^qudag_vertices (\S+)$", text, re.MULTILINE)
    return int(float(match.group(1))) if match else -1


SIGNATURE_WORKER = "qudag.node.workers.signature_worker"


def catchup_run(quick: bool, keep: Path, n: int) -> dict[str, float]:
    """One catch-up of a new daemon from the server daemon holding `keep`/server's ledger."""
    from qudag.node.ops.cluster import start_node, stop_all

    args = [
        "--task", "xor", "--generations", "1", "--population", "8", "--migrants", "0",
        "--reeval-budget-ms", "0", "--heads-interval", "1", "--log-level", "WARNING",
        "--when-done", "serve",
    ]  # fmt: skip
    client_dir = keep / "client"
    shutil.rmtree(client_dir, ignore_errors=True)  # a new, empty node each run
    nodes = []
    try:
        server = start_node("server", keep / "server", args)
        nodes.append(server)
        # The server's ledger: the N vertices, and whatever the daemons of earlier runs published
        # (a daemon publishes its identity only with its first vertex: CoreConfig.eager_identity).
        served = int((server.status(timeout=10) or {}).get("vertices", 0))
        if served < n:
            raise RuntimeError(f"server holds {served} vertices, expected >= {n}")
        client = start_node("client", client_dir, args, bootstrap=[server.addr])
        nodes.append(client)
        pid = client.process.pid
        target = served  # the client may hold its own vertices on top (then it stops earlier)
        first: float | None = None
        cpu_first = server_cpu_first = trio_first = sig_first = 0.0
        deadline = time.monotonic() + (60 if quick else 600)
        count = 0
        while time.monotonic() < deadline:
            count = _ledger_size(client.http)
            now = time.monotonic()
            if first is None and count > 2:
                first, cpu_first, trio_first = now, process_cpu(pid), main_thread_cpu(pid)
                sig_first = children_cpu(pid, SIGNATURE_WORKER)
                server_cpu_first = process_cpu(server.process.pid)
            if count >= target:
                break
            time.sleep(0.1)
        done = time.monotonic()
        client_sig_cpu = children_cpu(pid, SIGNATURE_WORKER) - sig_first
        client_cpu = process_cpu(pid) - cpu_first + client_sig_cpu
        client_trio_cpu = main_thread_cpu(pid) - trio_first  # the rest: the verify thread(s)
        server_cpu = process_cpu(server.process.pid) - server_cpu_first
        client_status = client.status() or {}
    finally:
        stop_all(nodes)
    if count < target or first is None:
        raise RuntimeError(f"catch-up incomplete: {count}/{target} vertices")
    return {
        "sync_seconds": done - first,
        "sync_rate": n / (done - first),
        "client_cpu_s": client_cpu,
        "client_trio_cpu_s": client_trio_cpu,
        "client_signature_cpu_s": client_sig_cpu,
        "server_cpu_s": server_cpu,
        "client_rejected": float(sum((client_status.get("rejected") or {}).values())),
    }


def bench_catchup(quick: bool, keep: Path, runs: int) -> dict[str, Any]:
    n = 2_000 if quick else 20_000
    print(f"catch-up: a new daemon syncing {n} vertices from one daemon, {runs} runs", flush=True)
    server_dir = keep / "server"
    server_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    raws = build_ledger(server_dir / "ledger.sqlite3", n)
    print(f"  built the ledger in {time.perf_counter() - t0:.1f} s", flush=True)
    load = os.getloadavg()[0]
    records = []
    for i in range(runs):
        # The baseline is measured beside each run (the machine's load drifts between runs).
        verify_rate, verify_cpu_rate = bare_verify(raws)
        record = catchup_run(quick, keep, n)
        record["verify_rate"] = verify_rate
        record["verify_cpu_rate"] = verify_cpu_rate
        record["ratio"] = record["sync_rate"] / verify_rate
        # Single-threaded equivalent: the client's CPU time on all its threads, per vertex,
        # against the bare loop's CPU time per vertex (load-independent, unlike wall time).
        record["cpu_ratio"] = n / record["client_cpu_s"] / verify_cpu_rate
        records.append(record)
        threads_cpu = (
            record["client_cpu_s"] - record["client_trio_cpu_s"] - record["client_signature_cpu_s"]
        )
        print(
            f"  run {i + 1}: synced in {record['sync_seconds']:.2f} s = "
            f"{record['sync_rate']:,.0f} vertices/s; bare verify {verify_rate:,.0f}/s; "
            f"ratio {record['ratio']:.2f}x; client CPU {record['client_cpu_s']:.1f} s = "
            f"{n / record['client_cpu_s']:,.0f} vertices per CPU-second vs bare "
            f"{verify_cpu_rate:,.0f} ({record['cpu_ratio']:.2f}x); server CPU "
            f"{record['server_cpu_s']:.1f} s; client trio thread "
            f"{record['client_trio_cpu_s']:.1f} s, other threads "
            f"{threads_cpu:.1f} s, signature process {record['client_signature_cpu_s']:.1f} s; "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    load = max(load, os.getloadavg()[0])
    median = {k: statistics.median(r[k] for r in records) for k in records[0]}
    breakdown = ingest_breakdown(server_dir / "ledger.sqlite3", n, 256)
    print(
        f"  median of {runs}: {median['sync_rate']:,.0f} vertices/s, bare verify "
        f"{median['verify_rate']:,.0f}/s, ratio {median['ratio']:.2f}x (goal >= 0.8x); "
        f"per client CPU-second {median['cpu_ratio']:.2f}x; load average up to {load:.1f}"
    )
    print(
        f"  in process, one thread, same pages: server Store.since_page for all "
        f"{breakdown['pages']} pages {breakdown['since_all_pages_s']:.2f} s; client ingest "
        f"(PeerCore.on_sync_response) {breakdown['client_ingest_s']:.2f} s = "
        f"{n / breakdown['client_ingest_s']:,.0f} vertices/s",
        flush=True,
    )
    return {"vertices": n, "runs": records, "median": median, "load": load, **breakdown}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=3, help="catch-up runs (medians printed)")


def body(args: argparse.Namespace, keep: Path) -> dict[str, Any]:
    return bench_catchup(args.quick, keep, args.runs)


if __name__ == "__main__":
    run_benchmark("catchup", __doc__.splitlines()[0], body, add_arguments)
