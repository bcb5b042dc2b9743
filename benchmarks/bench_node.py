"""Node benchmarks: gossip propagation, bulk catch-up over the sync protocol, and the loop itself.

Run: `python benchmarks/bench_node.py` (several minutes) or `--quick` (about a minute);
`--only propagation|catchup|loop` runs one part. Every figure is printed beside a baseline
measured in the same run, and one JSON object with everything is the last stdout line.

1. propagation: 8 `P2PNode` processes on 127.0.0.1 (this file in `--worker` mode: the project's
   real transport with the daemon's gossip settings; every received vertex goes through the real
   ledger ingest, signature check included, inside the gossip validator as in the daemon). All
   bootstrap from the first and find the rest through Kademlia. One node publishes signed
   ~5 KB template vertices at a fixed rate; latency = receive time on a node minus publish time
   (one clock: one machine). "All" = the slowest of the 7 receivers for each vertex. Baseline:
   the same load between 2 processes, one direct hop.
2. catch-up: a ledger of N vertices (20 authors, template vertices with a real xor template as
   payload, each linked to its author's previous vertex and another author's tip) is served by a
   real `qudag-node run` daemon; a second, empty daemon bootstraps from it and catches up through
   heads gossip and `Since` pages over the PQ-encrypted `/qudag/sync/1.0.0` stream. Rate =
   N / (time from its first synced vertex to the last). Baseline: bare signature verification of
   the same N vertices (decode + ML-DSA-65 verify, one core) in this process. Breakdown of where
   the time goes: the server building all pages (`Store.since`), and the client's ingest of all
   N vertices in-process (`PeerCore.on_sync_response` on the same pages, no network).
3. the loop: 4 `qudag-node run` daemons on a task where evolution is not trivial (digits),
   sharing (bootstrapped, migrants on) vs isolated (no network, no migrants), same seeds and
   generations: median over nodes of the best verified fitness at each generation.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
TOPIC = "qudag/1/task/digits"


# ------------------------------------------------------------------ worker process (propagation)
def worker_main(bootstrap: list[str], degree: int | None) -> None:
    """A P2PNode whose gossip validator ingests vertices into a ledger, driven by JSON lines."""
    import trio

    from qudag.crypto.signing import Identity
    from qudag.dag.store import Store
    from qudag.node.core import install_template_decoder
    from qudag.node.transport import NetConfig, P2PNode, quiet_libp2p_logging

    quiet_libp2p_logging()
    install_template_decoder()
    store = Store.open(":memory:")
    received: dict[str, int] = {}  # vertex id hex -> receive time (ns, wall clock)
    rejected: list[str] = []

    def validate(peer: str, data: bytes) -> bool:
        t = time.time_ns()
        result = store.ingest(data, t // 1_000_000)
        if result.status.value == "rejected":
            rejected.append(str(result.reason))
            return False
        for vid in (result.id, *result.released):
            if vid is not None:
                received.setdefault(vid.hex(), t)
        return True

    async def main() -> None:
        config = NetConfig()
        if degree is not None:  # gossipsub mesh degree D (D_low = D - 1, D_high = 2 D)
            config = NetConfig(degree=degree, degree_low=max(1, degree - 1), degree_high=2 * degree)
        node = P2PNode(
            Identity.generate(), bootstrap=bootstrap, topics={TOPIC: validate}, config=config
        )
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async with node:
            _emit({"event": "ready", "peer_id": node.peer_id, "addrs": node.addrs})
            buf = b""
            while True:
                chunk = await stdin.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    cmd = json.loads(line)
                    op = cmd["cmd"]
                    if op == "quit":
                        return
                    if op == "status":
                        _emit(
                            {
                                "peers": node.peers(),
                                "topic_peers": node.topic_peers(TOPIC),
                                "received": len(received),
                                "rejected": len(rejected),
                            }
                        )
                    elif op == "times":
                        _emit({"received": received})
                    elif op == "publish":
                        sent: dict[str, int] = {}
                        raws = [bytes.fromhex(h) for h in cmd["vertices"]]
                        interval = 1.0 / float(cmd["rate"]) if cmd["rate"] else 0.0
                        start = trio.current_time()
                        for i, raw in enumerate(raws):
                            await trio.sleep_until(start + i * interval)
                            store.ingest(raw, time.time_ns() // 1_000_000)
                            sent[_vid(raw).hex()] = time.time_ns()
                            await node.publish(TOPIC, raw)
                        _emit({"sent": sent})

    trio.run(main)


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _vid(raw: bytes) -> bytes:
    from qudag.dag.vertex import decode_vertex

    return decode_vertex(raw).id


class Worker:
    """Test side of one worker process: JSON commands with bounded waits."""

    def __init__(self, bootstrap: list[str], degree: int | None = None) -> None:
        argv = [sys.executable, str(HERE), "--worker"]
        if degree is not None:
            argv += ["--degree", str(degree)]
        for b in bootstrap:
            argv += ["--bootstrap", b]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:
                self.lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        self.peer_id = ""
        self.addrs: list[str] = []

    def read(self, timeout: float) -> dict[str, Any]:
        try:
            return dict(json.loads(self.lines.get(timeout=timeout)))
        except queue.Empty:
            raise RuntimeError(f"worker gave no answer within {timeout} s") from None

    def ready(self, timeout: float = 60.0) -> Worker:
        info = self.read(timeout)
        self.peer_id, self.addrs = info["peer_id"], info["addrs"]
        return self

    def call(self, timeout: float = 30.0, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except Exception:
                self.proc.kill()
                self.proc.wait(timeout=5)


def make_publisher_vertices(count: int) -> list[bytes]:
    """An identity vertex then `count` signed template vertices (~5 KB each), chained."""
    import numpy as np

    from qudag.crypto.signing import Identity
    from qudag.dag.payloads import KIND_TEMPLATE
    from qudag.dag.vertex import decode_vertex, make_identity_vertex, make_vertex
    from qudag.evolution.genome import Genome
    from qudag.evolution.tasks import get_task
    from qudag.evolution.template import from_genome

    task = get_task("digits")
    genome = Genome.random(np.random.default_rng(0), task.n_inputs, [8], task.n_outputs)
    payload = from_genome(genome, task, 0.5, latency_repeats=3).to_dict()
    ident = Identity.generate()
    now = time.time_ns() // 1_000_000
    raws = [make_identity_vertex(ident, now)]
    previous = decode_vertex(raws[0]).id
    for i in range(count):
        payload = {**payload, "generation": i + 1}
        raw = make_vertex(ident, i + 1, now, [previous], KIND_TEMPLATE, payload)
        previous = decode_vertex(raw).id
        raws.append(raw)
    return raws


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), 0 if unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def propagation_run(
    n_nodes: int, rate: float, count: int, degree: int | None = None
) -> dict[str, Any]:
    """Publisher = the last node (not the bootstrap seed); latencies to every other node."""
    workers: list[Worker] = []
    try:
        seed = Worker([], degree).ready()
        workers.append(seed)
        others = [Worker(seed.addrs, degree) for _ in range(n_nodes - 1)]
        workers += others
        for w in others:
            w.ready()
        publisher, receivers = workers[-1], workers[:-1]
        raws = make_publisher_vertices(count)
        # Warm-up: the identity vertex reaches everyone (meshes formed), then one heartbeat.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(len(w.call(cmd="status")["topic_peers"]) >= 1 for w in workers) and all(
                publisher.peer_id in w.call(cmd="status")["peers"] or n_nodes > 2 for w in receivers
            ):
                break
            time.sleep(0.5)
        publisher.call(cmd="publish", vertices=[raws[0].hex()], rate=0)
        while time.monotonic() < deadline:
            if all(w.call(cmd="status")["received"] >= 1 for w in receivers):
                break
            time.sleep(0.2)
        time.sleep(1.5)
        cpu_before = sum(_cpu_seconds(w.proc.pid) for w in workers)
        sent = publisher.call(
            timeout=count / rate + 60,
            cmd="publish",
            vertices=[r.hex() for r in raws[1:]],
            rate=rate,
        )["sent"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(w.call(cmd="status")["received"] >= count + 1 for w in receivers):
                break
            time.sleep(0.5)
        cpu = sum(_cpu_seconds(w.proc.pid) for w in workers) - cpu_before
        times = [w.call(cmd="times")["received"] for w in receivers]
        rejected = sum(w.call(cmd="status")["rejected"] for w in receivers)
    finally:
        for w in workers:
            w.close()
    per_vertex_all: list[float] = []
    per_receive: list[float] = []
    missing = 0
    for vid, t_sent in sent.items():
        arrivals = [t[vid] for t in times if vid in t]
        missing += len(times) - len(arrivals)
        per_receive += [(a - t_sent) / 1e6 for a in arrivals]
        if len(arrivals) == len(times):
            per_vertex_all.append((max(arrivals) - t_sent) / 1e6)
    return {
        "nodes": n_nodes,
        "degree": degree,
        "rate_per_s": rate,
        "vertices": count,
        "vertex_bytes": len(raws[1]),
        "delivered_fraction": 1 - missing / max(1, len(sent) * len(times)),
        "rejected": rejected,
        "cpu_ms_per_vertex_all_nodes": 1000 * cpu / max(1, count),
        "all_p50_ms": _percentile(per_vertex_all, 50),
        "all_p99_ms": _percentile(per_vertex_all, 99),
        "each_p50_ms": _percentile(per_receive, 50),
        "each_p99_ms": _percentile(per_receive, 99),
    }


def bench_propagation(quick: bool, degree: int | None) -> dict[str, Any]:
    rate, count = (2.0, 30) if quick else (2.0, 120)
    print(
        f"propagation: 8 nodes and 2 nodes, {rate:g} vertices/s, {count} vertices each, "
        f"gossipsub D={degree or 6}",
        flush=True,
    )
    direct = propagation_run(2, rate, count, degree)
    eight = propagation_run(8, rate, count, degree)
    for name, r in (("1 direct hop (2 nodes)", direct), ("8-node testnet, to all", eight)):
        print(
            f"  {name:26s} p50 {r['all_p50_ms']:6.2f} ms  p99 {r['all_p99_ms']:6.2f} ms  "
            f"(per receiver p50 {r['each_p50_ms']:.2f} / p99 {r['each_p99_ms']:.2f}; "
            f"delivered {100 * r['delivered_fraction']:.1f} %, {r['vertex_bytes']} B vertices; "
            f"CPU of all nodes {r['cpu_ms_per_vertex_all_nodes']:.0f} ms per vertex)",
            flush=True,
        )
    ratio = eight["all_p99_ms"] / direct["all_p99_ms"]
    verdict = "met" if eight["all_p99_ms"] <= 50 else "NOT met"
    print(f"  8-node p99 / direct-hop p99 = {ratio:.2f}x; goal p99 <= 50 ms: {verdict}")
    return {"direct": direct, "eight": eight, "p99_ratio": ratio}


# ------------------------------------------------------------------ catch-up
def build_ledger(path: Path, n: int, authors: int = 20) -> list[bytes]:
    """N template vertices by `authors` identities (plus their identity vertices)."""
    from qudag.crypto.signing import Identity
    from qudag.dag.payloads import KIND_TEMPLATE
    from qudag.dag.store import Store
    from qudag.dag.vertex import decode_vertex, make_identity_vertex, make_vertex
    from qudag.node.core import install_template_decoder

    install_template_decoder()
    import numpy as np

    from qudag.evolution.genome import Genome
    from qudag.evolution.tasks import get_task
    from qudag.evolution.template import from_genome

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
    with Store.open(path) as store:
        store.ingest_many(raws, now + n + 1000)
        assert store.count() == n
    return raws


def bare_verify(raws: list[bytes]) -> tuple[float, float]:
    """Decode + ML-DSA-65 verify of `raws` in a plain loop on one thread: (vertices per
    second of wall time, vertices per CPU-second)."""
    from qudag.dag.validate import check_signature, load_public_key
    from qudag.dag.vertex import decode_vertex

    keys: dict[bytes, Any] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for raw in raws:
        v = decode_vertex(raw)
        if v.kind == "identity":
            keys[v.author] = load_public_key(v.payload["public_key"])
        check_signature(v, keys[v.author])
    return len(raws) / (time.perf_counter() - t0), len(raws) / (time.process_time() - c0)


def ingest_breakdown(path: Path, n: int, page: int) -> dict[str, float]:
    """Server page building and client-side ingest of the same pages, in process, one thread
    (the daemon pipelines these and verifies in a worker thread; this is the sequential sum)."""
    from qudag.crypto.signing import Identity
    from qudag.dag.store import Store
    from qudag.node import messages
    from qudag.node.core import CoreConfig, PeerCore

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
    with Store.open(tmp) as store:
        core = PeerCore(Identity.generate(), store, CoreConfig(tasks=("xor",)), random.Random(0))
        t0 = time.perf_counter()
        for data in pages:
            core.on_sync_response("server", data, time.time_ns() // 1_000_000)
        ingest_s = time.perf_counter() - t0
        assert store.count() >= n, store.count()
    tmp.unlink(missing_ok=True)
    return {"pages": len(pages), "since_all_pages_s": since_s, "client_ingest_s": ingest_s}


def catchup_run(quick: bool, keep: Path, n: int) -> dict[str, float]:
    """One catch-up of a new daemon from the server daemon holding `keep`/server's ledger."""
    from qudag.node.cluster import start_node, stop_all

    args = [
        "--task", "xor", "--generations", "1", "--population", "8", "--migrants", "0",
        "--reeval-budget-ms", "0", "--heads-interval", "1", "--log-level", "WARNING",
    ]  # fmt: skip
    client_dir = keep / "client"
    shutil.rmtree(client_dir, ignore_errors=True)  # a new, empty node each run
    nodes = []
    try:
        server = start_node("server", keep / "server", args)
        nodes.append(server)
        # The server's ledger: the N vertices, its identity and earlier runs' client identities.
        served = int((server.status(timeout=10) or {}).get("vertices", 0))
        if served < n + 1:
            raise RuntimeError(f"server holds {served} vertices, expected >= {n + 1}")
        client = start_node("client", client_dir, args, bootstrap=[server.addr])
        nodes.append(client)
        pid = client.process.pid
        target = served + 1  # + the client's own identity vertex
        first: float | None = None
        cpu_first = 0.0
        deadline = time.monotonic() + (60 if quick else 600)
        count = 0
        while time.monotonic() < deadline:
            st = client.status(timeout=5) or {}
            count = int(st.get("vertices", 0))
            now = time.monotonic()
            if first is None and count > 2:
                first, cpu_first = now, _cpu_seconds(pid)
            if count >= target:
                break
            time.sleep(0.1)
        done = time.monotonic()
        client_cpu = _cpu_seconds(pid) - cpu_first
        client_status = client.status() or {}
    finally:
        stop_all(nodes)
    if count < target or first is None:
        raise RuntimeError(f"catch-up incomplete: {count}/{target} vertices")
    return {
        "sync_seconds": done - first,
        "sync_rate": n / (done - first),
        "client_cpu_s": client_cpu,
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
        print(
            f"  run {i + 1}: synced in {record['sync_seconds']:.2f} s = "
            f"{record['sync_rate']:,.0f} vertices/s; bare verify {verify_rate:,.0f}/s; "
            f"ratio {record['ratio']:.2f}x; client CPU {record['client_cpu_s']:.1f} s = "
            f"{n / record['client_cpu_s']:,.0f} vertices per CPU-second vs bare "
            f"{verify_cpu_rate:,.0f} ({record['cpu_ratio']:.2f}x); load {os.getloadavg()[0]:.1f}",
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


# ------------------------------------------------------------------ the loop
METRICS = ("best_verified_fitness", "best_fitness")


def loop_run(
    isolated: bool, task: str, generations: int, population: int, base_seed: int, out: Path
) -> dict[str, dict[int, list[float]]]:
    """Per metric, per generation: each node's value (the last seen at or before it).

    `best_verified_fitness`: the best the node can vouch for (its own, or a claim of another
    node it re-measured); `best_fitness`: its own population's best (did migrants help it?).
    """
    from qudag.node.cluster import start_node, start_nodes, stop_all

    def args(i: int) -> list[str]:
        return [
            "--task", task, "--generations", str(generations), "--population", str(population),
            "--publish-every", "2", "--migrants", "0" if isolated else "4",
            "--seed", str(base_seed + i), "--heads-interval", "1", "--reeval-budget-ms", "300",
            "--log-level", "WARNING",
        ]  # fmt: skip

    nodes = []
    curves: list[dict[str, dict[int, float]]] = [{m: {} for m in METRICS} for _ in range(4)]
    try:
        nodes.append(start_node("node0", out / "node0", args(0)))
        boot = [] if isolated else [nodes[0].addr]
        nodes += start_nodes([(f"node{i}", out / f"node{i}", args(i), boot) for i in range(1, 4)])
        deadline = time.monotonic() + 60 + generations * 30
        while time.monotonic() < deadline:
            statuses = [n.status(timeout=5) for n in nodes]
            for curve, st in zip(curves, statuses, strict=True):
                if st:
                    t = st["tasks"][task]
                    for m in METRICS:
                        curve[m][int(t["generation"])] = float(t[m])
            if all(st and st.get("done") for st in statuses):
                break
            time.sleep(0.5)
    finally:
        stop_all(nodes)
    table: dict[str, dict[int, list[float]]] = {m: {} for m in METRICS}
    for m in METRICS:
        for g in range(1, generations + 1):
            values = []
            for curve in curves:
                seen = [gen for gen in curve[m] if gen <= g]
                if seen:
                    values.append(curve[m][max(seen)])
            table[m][g] = values
    return table


def bench_loop(quick: bool, keep: Path) -> dict[str, Any]:
    task, generations, population = ("digits", 6, 16) if quick else ("digits", 20, 16)
    seed_sets = (1,) if quick else (1, 101)
    print(
        f"the loop: 4 daemons on {task}, population {population}, {generations} generations, "
        f"sharing vs isolated, same seeds (node i gets seed s+i, s in {list(seed_sets)})",
        flush=True,
    )
    # values[mode][metric][generation]: every node of every seed set
    values: dict[str, dict[str, dict[int, list[float]]]] = {}
    for base in seed_sets:
        for mode in ("isolated", "sharing"):
            t0 = time.perf_counter()
            run = loop_run(
                mode == "isolated", task, generations, population, base, keep / f"{mode}{base}"
            )
            print(f"  seeds {base}.., {mode}: {time.perf_counter() - t0:.0f} s", flush=True)
            for m in METRICS:
                for g, vs in run[m].items():
                    values.setdefault(mode, {}).setdefault(m, {}).setdefault(g, []).extend(vs)
    rows: list[dict[str, Any]] = []
    step = max(1, generations // 10)
    for m in METRICS:
        print(f"  {m}: median over {4 * len(seed_sets)} nodes (min..max)")
        print("  generation  isolated                   sharing")
        for g in range(step, generations + 1, step):
            iso, sha = values["isolated"][m].get(g, []), values["sharing"][m].get(g, [])
            if not iso or not sha:
                continue
            rows.append(
                {"metric": m, "generation": g, "isolated": statistics.median(iso),
                 "sharing": statistics.median(sha)}
            )  # fmt: skip
            print(
                f"  {g:10d}  {statistics.median(iso):.4f} ({min(iso):.4f}..{max(iso):.4f})  "
                f"{statistics.median(sha):.4f} ({min(sha):.4f}..{max(sha):.4f})"
            )
        last = [r for r in rows if r["metric"] == m]
        if last:
            f = last[-1]
            print(
                f"  final {m}: sharing {f['sharing']:.4f} vs isolated {f['isolated']:.4f} "
                f"(ratio {f['sharing'] / f['isolated']:.4f}x)"
            )
    return {
        "task": task,
        "generations": generations,
        "population": population,
        "seed_sets": list(seed_sets),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--only", choices=("propagation", "catchup", "loop"), default=None)
    parser.add_argument("--runs", type=int, default=3, help="catch-up runs (median is reported)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument(
        "--degree", type=int, default=None, help="propagation: gossipsub mesh degree D (default 6)"
    )
    args = parser.parse_args()
    if args.worker:
        worker_main(args.bootstrap, args.degree)
        return
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"bench_node ({'quick' if args.quick else 'full'}), {os.cpu_count()} CPUs, "
        f"load average at start {load}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench_node-"))
    results: dict[str, Any] = {"quick": args.quick, "loadavg_start": os.getloadavg()}
    try:
        if args.only in (None, "propagation"):
            results["propagation"] = bench_propagation(args.quick, args.degree)
        if args.only in (None, "catchup"):
            results["catchup"] = bench_catchup(args.quick, tmp / "catchup", args.runs)
        if args.only in (None, "loop"):
            results["loop"] = bench_loop(args.quick, tmp / "loop")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["loadavg_end"] = os.getloadavg()
    print(f"load average at end {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
