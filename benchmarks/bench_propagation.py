"""Node benchmark: gossip propagation between real daemons under the loop's own load.

Run: `python benchmarks/bench_propagation.py` (several minutes) or `--quick`. Every figure is
printed beside a baseline measured in the same run, and one JSON object with everything is the
last stdout line (benchmarks/node_harness.py).

2 and then 8 real `qudag-node run` daemons on 127.0.0.1 (benchmarks/node_worker.py
runs the product's `Daemon` plus a command channel), all bootstrapped from the first and
meshed through Kademlia. Fixed load on every node: the daemon's own loop at full speed (task
digits, population 16, evolving without pause in its child process, which runs under
SCHED_IDLE + nice +10 (`--worker-sched nice|both`: nice only, the design before), publishing
its best template every 2 generations, 4 migrants per generation, re-evaluating others'
claims within 200 ms of CPU per second, heads gossip, sync). Probes: one non-seed node publishes
signed identity vertices of fresh ML-DSA-65 keys (5,385 bytes) on the control topic at
2 per second; every daemon ingests them in its gossip validator like any vertex. Latency =
first validator call at a receiver minus the publish call (one machine, one clock); "to
all" = the slowest receiver per probe. Baseline in the same run: the same load on 2 nodes
(one direct hop). `--runs N` repeats both (medians printed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from node_harness import run_benchmark
from node_worker import Worker


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
    out: Path,
    sched: str = "idle",
    warmup_s: float = 20.0,
    net: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Publisher = the last node (not the bootstrap seed); latencies to every other node.
    `net`: NetConfig overrides (`degree=4`, ...) for every daemon."""
    workers: list[Worker] = []
    try:
        seed = Worker(load_args(0, out), out / "node0.stderr", sched, net).ready()
        workers.append(seed)
        boot = ["--bootstrap", seed.addrs[0]]
        others = [
            Worker(load_args(i, out) + boot, out / f"node{i}.stderr", sched, net)
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
        "evolution": "process",
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
        f"child process scheduled as "
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
                r = propagation_run(n, rate, count, out, sched, net=net)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=3, help="runs of each size (medians printed)")
    parser.add_argument(
        "--worker-sched",
        choices=("idle", "nice", "both"),
        default="idle",
        help="evolution children under SCHED_IDLE + nice (idle, the default), nice only (the "
        "design before), or both in each run, to compare",
    )
    parser.add_argument(
        "--net",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a NetConfig field for every daemon (e.g. --net degree=4), to compare network "
        "parameters; repeatable",
    )


def body(args: argparse.Namespace, keep: Path) -> dict[str, Any]:
    return bench_propagation(
        args.quick,
        args.runs,
        keep,
        ("idle", "nice") if args.worker_sched == "both" else (args.worker_sched,),
        tuple(args.net),
    )


if __name__ == "__main__":
    run_benchmark("propagation", __doc__.splitlines()[0], body, add_arguments)
