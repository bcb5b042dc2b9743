"""Node benchmarks: gossip propagation, bulk catch-up over the sync protocol, and the loop itself.

Run: `python benchmarks/bench_node.py` (several minutes) or `--quick` (about a minute);
`--only propagation|catchup|loop` runs one part. Every figure is printed beside a baseline
measured in the same run, and one JSON object with everything is the last stdout line.

1. propagation: 2 and then 8 real `qudag-node run` daemons on 127.0.0.1 (this file in `--worker`
   mode runs the product's `Daemon` plus a command channel), all bootstrapped from the first and
   meshed through Kademlia. Fixed load on every node: the daemon's own loop at full speed (task
   digits, population 16, evolving without pause in its child process, which runs under
   SCHED_IDLE + nice +10 (`--worker-sched nice|both`: nice only, the design before), publishing
   its best template every 2 generations, 4 migrants per generation, re-evaluating others'
   claims within 200 ms of CPU per second, heads gossip, sync). Probes: one non-seed node publishes
   signed identity vertices of fresh ML-DSA-65 keys (5,385 bytes) on the control topic at
   2 per second; every daemon ingests them in its gossip validator like any vertex. Latency =
   first validator call at a receiver minus the publish call (one machine, one clock); "to
   all" = the slowest receiver per probe. Baseline in the same run: the same load on 2 nodes
   (one direct hop). `--runs N` repeats both (medians printed); `--evolution thread` runs the
   previous design (the breeder in a worker thread of the daemon) for comparison.
2. catch-up: a ledger of N vertices (20 authors, template vertices with a real xor template as
   payload, each linked to its author's previous vertex and another author's tip) is served by a
   real `qudag-node run` daemon; a second, empty daemon bootstraps from it and catches up through
   heads gossip and cursor-paged `since/2` requests (pipelined; pages verified in a worker
   thread) over the PQ-encrypted `/qudag/sync/1.0.0` stream. Rate = N / (time from its first
   synced vertex to the last), median of `--runs`. Baseline, measured before each run: bare
   decode + ML-DSA-65 verify of the same N vertices on one thread in this process; also the
   CPU-time ratio (client CPU on all threads per vertex vs the bare loop's), which load does not
   move. Breakdown: the server building all pages (`Store.since_page`), and the client's ingest
   of all N vertices in-process, one thread (`PeerCore.on_sync_response`, no network).
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
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from qudag.node.ops.cpu import children_cpu, cpu_tree, main_thread_cpu, process_cpu

HERE = Path(__file__).resolve()
TOPIC = "qudag/1/task/digits"


# ------------------------------------------------------------------ worker process (propagation)
def net_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["degree=4", ...]` -> NetConfig field values of the right type (`--net`)."""
    import dataclasses

    from qudag.node.net.transport import NetConfig

    kinds = {f.name: type(getattr(NetConfig(), f.name)) for f in dataclasses.fields(NetConfig)}
    out: dict[str, Any] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in kinds:
            raise SystemExit(f"--net {pair}: NetConfig has no field {name!r}")
        kind = kinds[name]
        out[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


def daemon_worker_main(
    daemon_args: list[str], evolution: str, sched: str = "idle", net: tuple[str, ...] = ()
) -> None:
    """A real `qudag-node run` daemon (everything: PeerCore, ledger, evolution children,
    re-evaluation, sync, heads, HTTP) plus a JSON-lines command channel on stdin/stdout that
    publishes probes and reports when each gossiped message first reached the validator.

    `evolution="thread"` swaps the evolution children for the previous design (the same
    `Breeder` in a worker thread of this process), to measure what the child process buys.
    `sched="nice"` starts the children at nice +10 only (the design before SCHED_IDLE)."""
    import argparse as _argparse
    import logging

    import blake3
    import trio

    from qudag.node.daemon import Daemon
    from qudag.node.net.libp2p_patches import quiet_libp2p_logging
    from qudag.node.net.transport import NetConfig
    from qudag.node.ops.config import add_run_arguments, load_config
    from qudag.node.protocol.core import CONTROL_TOPIC
    from qudag.node.workers import evolution_worker

    evolution_worker.WORKER_SCHED = sched

    parser = _argparse.ArgumentParser()
    add_run_arguments(parser)
    config = load_config(parser.parse_args(daemon_args), {})
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    quiet_libp2p_logging()
    received: dict[str, int] = {}  # BLAKE3 of the message (hex) -> first validator call, ns

    class TimedDaemon(Daemon):
        def _validator(self, topic: str) -> Any:
            inner = super()._validator(topic)

            def validate(peer: str, data: bytes) -> bool:
                received.setdefault(blake3.blake3(data).hexdigest(), time.time_ns())
                return inner(peer, data)

            return validate

    ready: dict[str, Any] = {}
    daemon = TimedDaemon(
        config, on_ready=ready.update, net_config=NetConfig(**net_overrides(list(net)))
    )
    if evolution == "thread":
        for task, handle in list(daemon.breeders.items()):
            daemon.breeders[task] = ThreadEvolution(handle)  # type: ignore[assignment]

    async def commands() -> None:
        while not ready:
            await trio.sleep(0.05)
        _emit({"event": "ready", **ready})
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
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
                assert daemon.net is not None
                if op == "quit":
                    return
                if op == "status":
                    st = daemon.status()
                    _emit(
                        {
                            "peers": daemon.net.peers(),
                            "topic_peers": daemon.net.topic_peers(CONTROL_TOPIC),
                            "received": len(received),
                            "generation": sum(t["generation"] for t in st["tasks"].values()),
                            "vertices": st["vertices"],
                            "rejected": sum(st["rejected"].values()),
                            "cpu_s": cpu_tree(os.getpid()),
                        }
                    )
                elif op == "times":
                    wanted = set(cmd["ids"])
                    _emit({"received": {k: v for k, v in received.items() if k in wanted}})
                elif op == "publish":
                    sent: dict[str, int] = {}
                    interval = 1.0 / float(cmd["rate"])
                    start = trio.current_time()
                    for i, h in enumerate(cmd["vertices"]):
                        raw = bytes.fromhex(h)
                        await trio.sleep_until(start + i * interval)
                        sent[blake3.blake3(raw).hexdigest()] = time.time_ns()
                        await daemon.net.publish(CONTROL_TOPIC, raw)
                    _emit({"sent": sent})

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.run)
            await commands()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        daemon.close()


class ThreadEvolution:
    """The design before evolution moved to a child process: the task's `Breeder` in this
    process, a generation in a trio worker thread (same interface as `EvolutionProcess`)."""

    def __init__(self, handle: Any) -> None:
        from qudag.evolution.engine import default_config
        from qudag.evolution.tasks import get_task
        from qudag.node.protocol.breeder import Breeder

        task = get_task(handle.task)
        self.breeder = Breeder(
            task,
            handle.seed,
            config=default_config(task, population=handle.population),
            state_dir=handle.state_dir,
        )
        self.injected = self.breeder.injected

    @property
    def generation(self) -> int:
        return int(self.breeder.generation)

    @property
    def evaluations(self) -> int:
        return int(self.breeder.evolution.evaluations)

    @property
    def best_fitness(self) -> float:
        return float(self.breeder.best.task_fitness)

    @property
    def best_id(self) -> bytes:
        return bytes(self.breeder.best.id)

    async def start(self) -> None:
        pass

    async def advance(self, migrants: Any = (), results: Any = ()) -> Any:
        import trio

        report = await trio.to_thread.run_sync(self.breeder.advance, migrants, results)
        return report

    async def best_template(self) -> Any:
        import trio

        return await trio.to_thread.run_sync(self.breeder.best_template)

    async def mark_published(self, genome_id: bytes, vertex_id: bytes) -> bool:
        import trio

        best = self.breeder.best
        self.breeder.mark_published(best.id, vertex_id)
        await trio.to_thread.run_sync(self.breeder.save)
        return True

    async def aclose(self) -> None:
        pass


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


class Worker:
    """Test side of one worker process: JSON commands with bounded waits."""

    def __init__(
        self,
        daemon_args: list[str],
        evolution: str,
        stderr: Path,
        sched: str,
        net: tuple[str, ...] = (),
    ) -> None:
        argv = [
            sys.executable, str(HERE), "--worker", "--evolution", evolution,
            "--worker-sched", sched, *(f"--net={pair}" for pair in net), "--", *daemon_args,
        ]  # fmt: skip
        stderr.parent.mkdir(parents=True, exist_ok=True)
        self.stderr = stderr
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr.open("wb"),
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

    def ready(self, timeout: float = 300.0) -> Worker:  # 8 daemons starting at load 20: slow
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
                self.proc.wait(timeout=15)
            except Exception:
                self.proc.kill()
                self.proc.wait(timeout=5)


def make_probes(count: int) -> list[bytes]:
    """`count` identity vertices of fresh ML-DSA-65 keys (~5.3 KB each, signed): valid vertices
    every daemon ingests (decode, signature, SQLite) and relays, with no re-evaluation or
    reputation effects, so the probes measure the gossip path under the load, not add to it."""
    from qudag.crypto.signing import Identity
    from qudag.dag.vertex import make_identity_vertex

    now = time.time_ns() // 1_000_000
    return [make_identity_vertex(Identity.generate(), now) for _ in range(count)]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


LOAD_TASK = "digits"
LOAD_POPULATION = 16


def load_args(i: int, out: Path) -> list[str]:
    """The fixed load of every node: the daemon's own loop at full speed."""
    return [
        "--data-dir", str(out / f"node{i}"), "--listen", "/ip4/127.0.0.1/tcp/0",
        "--http", "127.0.0.1:0", "--task", LOAD_TASK, "--population", str(LOAD_POPULATION),
        "--publish-every", "2", "--migrants", "4", "--reeval-budget-ms", "200",
        "--seed", str(1000 + i), "--log-level", "WARNING",
    ]  # fmt: skip


def propagation_run(
    n_nodes: int,
    rate: float,
    count: int,
    evolution: str,
    out: Path,
    sched: str = "idle",
    warmup_s: float = 20.0,
    net: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Publisher = the last node (not the bootstrap seed); latencies to every other node.
    `net`: NetConfig overrides (`degree=4`, ...) for every daemon."""
    workers: list[Worker] = []
    try:
        seed = Worker(load_args(0, out), evolution, out / "node0.stderr", sched, net).ready()
        workers.append(seed)
        boot = ["--bootstrap", seed.addrs[0]]
        others = [
            Worker(load_args(i, out) + boot, evolution, out / f"node{i}.stderr", sched, net)
            for i in range(1, n_nodes)
        ]
        workers += others
        for w in others:
            w.ready()
        publisher, receivers = workers[-1], workers[:-1]
        probes = make_probes(count + 1)
        # Warm-up: every node sees all others on the control topic, one probe reaches everyone,
        # then `warmup_s` so discovery settles into its steady period and evolution is running.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(len(w.call(cmd="status")["topic_peers"]) >= n_nodes - 1 for w in workers):
                break
            time.sleep(0.5)
        publisher.call(cmd="publish", vertices=[probes[0].hex()], rate=1)
        time.sleep(warmup_s)
        before = [w.call(cmd="status") for w in workers]
        t0 = time.monotonic()
        sent = publisher.call(
            timeout=count / rate + 60,
            cmd="publish",
            vertices=[r.hex() for r in probes[1:]],
            rate=rate,
        )["sent"]
        ids = list(sent)
        deadline = time.monotonic() + 30
        times: list[dict[str, int]] = []
        while time.monotonic() < deadline:
            times = [w.call(cmd="times", ids=ids)["received"] for w in receivers]
            if all(len(t) >= count for t in times):
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        after = [w.call(cmd="status") for w in workers]
    except Exception:
        for w in workers:  # say why a daemon died, if one did
            if w.proc.poll() is not None:
                tail = w.stderr.read_text(errors="replace")[-3000:]
                print(f"worker {w.stderr.name} exited {w.proc.returncode}:\n{tail}", flush=True)
        raise
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
    net_cpu = sum(
        a["cpu_s"]["self"] - b["cpu_s"]["self"] for a, b in zip(after, before, strict=True)
    )
    evo_cpu = sum(
        a["cpu_s"]["children"] - b["cpu_s"]["children"] for a, b in zip(after, before, strict=True)
    )
    gens = [a["generation"] - b["generation"] for a, b in zip(after, before, strict=True)]
    return {
        "nodes": n_nodes,
        "evolution": evolution,
        "sched": sched,
        "rate_per_s": rate,
        "probes": count,
        "probe_bytes": len(probes[1]),
        "delivered_fraction": 1 - missing / max(1, len(sent) * len(times)),
        "generations_per_s_per_node": statistics.median(gens) / elapsed,
        "daemon_cpu_per_s_all_nodes": net_cpu / elapsed,
        "children_cpu_per_s_all_nodes": evo_cpu / elapsed,
        "rejected": sum(a["rejected"] for a in after),
        "all_p50_ms": _percentile(per_vertex_all, 50),
        "all_p99_ms": _percentile(per_vertex_all, 99),
        "each_p50_ms": _percentile(per_receive, 50),
        "each_p99_ms": _percentile(per_receive, 99),
        "loadavg": os.getloadavg()[0],
    }


def bench_propagation(
    quick: bool,
    runs: int,
    evolution: str,
    keep: Path,
    scheds: tuple[str, ...] = ("idle",),
    net: tuple[str, ...] = (),
) -> dict[str, Any]:
    """`scheds`: how the evolution children are scheduled ("idle": SCHED_IDLE + nice +10, the
    product's default; "nice": nice +10 only, the design before); with both, each run measures
    them one after the other, so the comparison is within the same run."""
    rate, count = (2.0, 40) if quick else (2.0, 120)
    print(
        f"propagation: {runs} run(s) of 2 then 8 `qudag-node run` daemons, evolution in a "
        f"{'child process' if evolution == 'process' else 'thread'} scheduled as "
        f"{' then '.join(scheds)}; load per node: {LOAD_TASK} "
        f"population {LOAD_POPULATION} evolving without pause, publish every 2 generations, "
        f"4 migrants, re-evaluation budget 200 ms/s; probes: {count} signed identity vertices at "
        f"{rate:g}/s from one node on the control topic"
        + (f"; network: {', '.join(net)}" if net else ""),
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {}
    for run in range(runs):
        for sched in scheds:
            for key, n in (("direct", 2), ("eight", 8)):
                label = key if len(scheds) == 1 else f"{key}-{sched}"
                out = keep / f"{label}{run}"
                r = propagation_run(n, rate, count, evolution, out, sched, net=net)
                shutil.rmtree(out, ignore_errors=True)
                results.setdefault(label, []).append(r)
                name = "1 direct hop (2 nodes)" if n == 2 else "8 nodes, received by all"
                print(
                    f"  run {run + 1} {sched:4s} {name:26s} p50 {r['all_p50_ms']:7.1f} ms  p99 "
                    f"{r['all_p99_ms']:7.1f} ms  (per receiver p50 {r['each_p50_ms']:.1f} / p99 "
                    f"{r['each_p99_ms']:.1f}; delivered {100 * r['delivered_fraction']:.1f} %; "
                    f"{r['generations_per_s_per_node']:.2f} generations/s per node; CPU/s of all "
                    f"daemons {r['daemon_cpu_per_s_all_nodes']:.2f}, of their children "
                    f"{r['children_cpu_per_s_all_nodes']:.2f}; load {r['loadavg']:.1f})",
                    flush=True,
                )
    metrics = (
        "all_p50_ms", "all_p99_ms", "each_p50_ms", "each_p99_ms", "loadavg",
        "generations_per_s_per_node", "daemon_cpu_per_s_all_nodes", "children_cpu_per_s_all_nodes",
    )  # fmt: skip
    summary = {
        label: {m: statistics.median(r[m] for r in rs) for m in metrics}
        for label, rs in results.items()
    }
    for sched in scheds:
        suffix = "" if len(scheds) == 1 else f"-{sched}"
        d, e = summary["direct" + suffix], summary["eight" + suffix]
        verdict = "met" if e["all_p99_ms"] <= 50 else "NOT met"
        print(
            f"  {sched}: median over {runs} run(s): direct hop p50 {d['all_p50_ms']:.1f} / p99 "
            f"{d['all_p99_ms']:.1f} ms; 8 nodes to all p50 {e['all_p50_ms']:.1f} / p99 "
            f"{e['all_p99_ms']:.1f} ms (ratio p99 {e['all_p99_ms'] / d['all_p99_ms']:.2f}x); "
            f"8 nodes {e['generations_per_s_per_node']:.2f} generations/s per node, CPU/s "
            f"daemons {e['daemon_cpu_per_s_all_nodes']:.2f}, children "
            f"{e['children_cpu_per_s_all_nodes']:.2f}; goal p99 <= 50 ms: {verdict}",
            flush=True,
        )
    return {"runs": results, "median": summary}


# ------------------------------------------------------------------ catch-up
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
        # The server's ledger: the N vertices, its identity and earlier runs' client identities.
        served = int((server.status(timeout=10) or {}).get("vertices", 0))
        if served < n + 1:
            raise RuntimeError(f"server holds {served} vertices, expected >= {n + 1}")
        client = start_node("client", client_dir, args, bootstrap=[server.addr])
        nodes.append(client)
        pid = client.process.pid
        target = served + 1  # + the client's own identity vertex
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


# ------------------------------------------------------------------ the loop
METRICS = ("best_verified_fitness", "best_fitness")


def loop_run(
    isolated: bool, task: str, generations: int, population: int, base_seed: int, out: Path
) -> dict[str, dict[int, list[float]]]:
    """Per metric, per generation: each node's value (the last seen at or before it).

    `best_verified_fitness`: the best the node can vouch for (its own, or a claim of another
    node it re-measured); `best_fitness`: its own population's best (did migrants help it?).
    """
    from qudag.node.ops.cluster import start_node, start_nodes, stop_all

    def args(i: int) -> list[str]:
        return [
            "--task", task, "--generations", str(generations), "--population", str(population),
            "--publish-every", "2", "--migrants", "0" if isolated else "4",
            "--seed", str(base_seed + i), "--heads-interval", "1", "--reeval-budget-ms", "300",
            "--when-done", "serve",
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
    parser.add_argument("--runs", type=int, default=3, help="runs of catchup, propagation")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--evolution",
        choices=("process", "thread"),
        default="process",
        help="propagation: where each daemon evolves (thread: the design before, to compare)",
    )
    parser.add_argument(
        "--worker-sched",
        choices=("idle", "nice", "both"),
        default="idle",
        help="propagation: evolution children under SCHED_IDLE + nice (idle, the default), nice "
        "only (the design before), or both in each run, to compare",
    )
    parser.add_argument(
        "--net",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="propagation: a NetConfig field for every daemon (e.g. --net degree=4), to compare "
        "network parameters; repeatable",
    )
    parser.add_argument("daemon_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        daemon_worker_main(args.daemon_args, args.evolution, args.worker_sched, tuple(args.net))
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
            results["propagation"] = bench_propagation(
                args.quick,
                args.runs,
                args.evolution,
                tmp / "propagation",
                ("idle", "nice") if args.worker_sched == "both" else (args.worker_sched,),
                tuple(args.net),
            )
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
