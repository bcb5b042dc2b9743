"""Simulator throughput: simulated peer-generations per wall second, and where the time goes.

Goal (issue 5): 1,000 peers x 50 generations of a small task within 10 minutes on this machine.
Baseline, measured in the same run: the same peers' evolution alone (mode "isolation": the
same Breeder generations with no network and no ledger), so the ratio is what the ledger,
gossip, sync and signatures cost on top of the evolution itself.

    python benchmarks/bench_simulation.py                 # 1,000 peers x 50 generations
    python benchmarks/bench_simulation.py --quick         # 50 peers x 10 generations
    python benchmarks/bench_simulation.py --peers 300 --generations 20 --store disk

Rates are per second of CPU time, summed over the processes of a run (the machine is shared:
wall time depends on the other jobs; the wall time is printed too, and the goal is in wall
time). `--workers 2` runs the simulation in two processes (simulations/parallel.py), one per
core of this machine; the isolation baseline always runs in one. Prints the simulated
peer-generations per CPU second of both, their ratio, ledger and memory figures, and where
the time went: by default a statistical profile (the main thread's stack every 10 ms of CPU
time, from a SIGPROF timer: ~1 % overhead, so the timed run is the profiled run); `--cprofile`
for cProfile's exact counts instead (it slows this code ~1.5x, so its run's rate is not the
figure to quote).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import signal
import sys
import time
from collections import Counter
from dataclasses import replace
from types import FrameType
from typing import Any

from qudag.simulations.config import REPLICATIONS
from qudag.simulations.sim import Simulation, run
from qudag.simulations.studies import scale_config


class StackSampler:
    """A sampling profiler driven by CPU time: every `interval` s of this process's CPU time
    (`ITIMER_PROF`) a SIGPROF handler counts which function is running (self) and which
    functions are on the stack (inclusive).

    Time in C (SQLite, numpy, ML-DSA) counts for the Python function that called it: the
    signal is handled when the C call returns. An earlier version sampled from a thread every
    10 ms of wall time; a thread can only take its sample when the main thread releases the
    GIL, which `sqlite3` does around every statement and pure Python does only every 5 ms, so
    it overcounted SQLite calls several times over (41 % "_flush" where cProfile measured 22 %).
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.samples = 0
        self.own: Counter[str] = Counter()
        self.inclusive: Counter[str] = Counter()
        self._previous: Any = None

    def __enter__(self) -> StackSampler:
        self._previous = signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0.0, 0.0)
        signal.signal(signal.SIGPROF, self._previous or signal.SIG_DFL)

    def _sample(self, signum: int, frame: FrameType | None) -> None:
        if frame is None:
            return
        self.samples += 1
        self.own[self._label(frame)] += 1
        seen: set[str] = set()
        while frame is not None:
            label = self._label(frame)
            if label not in seen:
                seen.add(label)
                self.inclusive[label] += 1
            frame = frame.f_back

    @staticmethod
    def _label(frame: FrameType) -> str:
        code = frame.f_code
        path = code.co_filename
        for root in ("/site-packages/", "/simscale/", "/lib/python3"):
            if root in path:
                path = path.split(root, 1)[1]
                break
        return f"{path}:{code.co_firstlineno}({code.co_qualname})"

    def report(self, top: int) -> str:
        n = max(1, self.samples)
        lines = [
            f"sampled profile: {self.samples} samples, one per {self.interval * 1000:.0f} ms of CPU"
        ]
        for title, counter in (("self", self.own), ("inclusive", self.inclusive)):
            lines.append(f"  {title} (share of samples):")
            for label, count in counter.most_common(top):
                lines.append(f"    {100 * count / n:5.1f} %  {label}")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 peers x 10 generations")
    parser.add_argument("--peers", type=int)
    parser.add_argument("--generations", type=int)
    parser.add_argument("--store", choices=("memory", "disk"), default=None)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--cprofile", action="store_true", help="cProfile instead of sampling")
    parser.add_argument("--no-baseline", action="store_true", help="skip the isolation run")
    parser.add_argument("--top", type=int, default=25, help="profile lines to print")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes for the simulation (default 1)"
    )
    parser.add_argument(
        "--replication",
        choices=REPLICATIONS,
        default="quorum",
        help="the peers' replication rules: quorum (the daemon's) or full (every improvement "
        "published, every re-measurement attested: the design before issue 14)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json",
        action="store_true",
        help="end with one JSON line: peers, generations, wall_s, cpu_s, peak_rss_mb, "
        "per_peer (vertices and bytes_stored held at the end; messages, bytes_sent and cpu_ms "
        "per generation), converged",
    )
    args = parser.parse_args(argv)
    peers = args.peers or (50 if args.quick else 1000)
    gens = args.generations or (10 if args.quick else 50)
    if peers < 1 or gens < 1 or not 1 <= args.workers <= peers:
        parser.error("--peers and --generations must be >= 1, --workers between 1 and --peers")
    store = args.store or "memory"  # vertex bytes are shared (SharedBlobs): memory fits 1,000
    config = scale_config(
        peers, gens, seed=args.seed, store=store, workers=args.workers, replication=args.replication
    )

    base_wall = base_cpu = float("nan")
    if not args.no_baseline:
        t0 = time.perf_counter()
        base = run(replace(config, mode="isolation", workers=1))
        base_wall = time.perf_counter() - t0
        base_cpu = base.cpu_s
        base.close()
    base_rate = peers * gens / base_cpu

    profiler = cProfile.Profile()
    sampler = StackSampler()
    t0 = time.perf_counter()
    if args.no_profile:
        sim = run(config)
    elif args.cprofile:
        profiler.enable()
        sim = run(config)
        profiler.disable()
    else:
        c0 = time.process_time()
        sim = Simulation(config)
        try:
            with sampler:
                sim.run()
        except KeyboardInterrupt:  # a run stopped unfinished (kill -INT) still reports its profile
            cpu = time.process_time() - c0
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            print(f"simulation: {peers} peers x {gens} generations STOPPED UNFINISHED")
            wall = time.perf_counter() - t0
            print(f"  wall {wall:.1f} s, CPU {cpu:.1f} s, peak RSS {rss:.0f} MiB")
            done = min((p.generation for p in sim.local_peers), default=0)
            print(f"  simulated time {sim.sched.now / 1000:.1f} s, slowest peer at gen {done}")
            print(f"  load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
            print(sampler.report(args.top))
            return 1
    wall = time.perf_counter() - t0
    summary = sim.summary()
    cpu = summary["cpu_s"]
    sim.close()
    rate = peers * gens / cpu
    rss = summary["peak_rss_mb"]  # summed over the processes of a parallel run

    print(
        f"simulation: {peers} peers x {gens} generations, task {config.task}, store {store}, "
        f"{args.workers} worker process(es)"
    )
    print(
        f"  wall {wall:.1f} s, CPU {cpu:.1f} s (all processes): {rate:.1f} simulated "
        f"peer-generations per CPU s, {peers * gens / wall:.1f} per wall s"
    )
    print(f"  baseline (evolution alone, isolation): wall {base_wall:.1f} s, CPU {base_cpu:.1f} s,")
    print(f"    {base_rate:.1f} peer-generations per CPU s")
    print(f"  ratio simulation / baseline CPU time: {cpu / base_cpu:.2f}x")
    print(f"  goal 1000 x 50 in 600 s needs {1000 * 50 / 600:.1f} peer-generations/s")
    for key in (
        "vertices_mean",
        "ledger_bytes_mean",
        "messages_per_peer",
        "duplicates_per_peer",
        "bytes_per_peer",
        "rss_mb",
        "sync_requests",
        "best_mean",
        "reached_frac",
        "identical_honest_sets",
        "wait_s",
        "events_executed",
        "signature_checks",
        "signature_cache_hits",
    ):
        print(f"  {key}: {summary[key]}")
    print(f"  peak RSS {rss:.0f} MiB ({rss / peers:.2f} MiB per peer, all processes)")
    print(f"  load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if not args.no_profile and not args.cprofile:
        if args.workers > 1:
            print("profile of worker 0 (this process) only:")
        print(sampler.report(args.top))
    elif args.cprofile:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
        print(out.getvalue())
    if args.json:
        print(json.dumps(scale_figures(summary, sim.rows, peers, gens, wall), sort_keys=True))
    return 0


def scale_figures(
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    peers: int,
    generations: int,
    wall_s: float,
) -> dict[str, Any]:
    """The issue-14 figures of a run. Converged: every honest peer reached the target and
    all honest peers hold the same ledger (so each holds the task's front). Times to target
    are simulated seconds: the first peer's, and the first sample (one per generation) at
    which every honest peer had reached it."""
    per_gen = max(1, generations)
    first = summary["reached_t_ms"]
    every = next((r["t_ms"] for r in rows if r["reached_frac"] == 1.0), None)
    return {
        "time_to_target_s": {
            "first": None if first is None else round(first / 1000.0, 3),
            "all": None if every is None else every / 1000.0,
        },
        "peers": peers,
        "generations": generations,
        "replication": summary.get("replication"),
        "wall_s": round(wall_s, 2),
        "cpu_s": round(summary["cpu_s"], 2),
        "peak_rss_mb": round(summary["peak_rss_mb"], 1),
        "per_peer": {
            "vertices": summary["vertices_mean"],
            "bytes_stored": summary["ledger_bytes_mean"],
            "messages": summary["messages_per_peer"] / per_gen,
            "bytes_sent": summary["bytes_per_peer"] / per_gen,
            "duplicates": summary["duplicates_per_peer"] / per_gen,
            "cpu_ms": 1000.0 * summary["cpu_s"] / peers / per_gen,
        },
        "converged": bool(summary["reached_frac"] == 1.0 and summary["identical_honest_sets"]),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


if __name__ == "__main__":
    sys.exit(main())
