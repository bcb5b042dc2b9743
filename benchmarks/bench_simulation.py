"""Simulator throughput: simulated peer-generations per wall second, and where the time goes.

Goal (issue 5): 1,000 peers x 50 generations of a small task within 10 minutes on this machine.
Baseline, measured in the same run: the same peers' evolution alone (mode "isolation": the
same Breeder generations with no network and no ledger), so the ratio is what the ledger,
gossip, sync and signatures cost on top of the evolution itself.

    python benchmarks/bench_simulation.py                 # 1,000 peers x 50 generations
    python benchmarks/bench_simulation.py --quick         # 50 peers x 10 generations
    python benchmarks/bench_simulation.py --peers 300 --generations 20 --store disk

Rates are per second of this process's CPU time (the machine is shared: wall time depends on
the other jobs; the wall time is printed too). Prints the simulated peer-generations per CPU
second of both, their ratio, ledger and memory figures, and the top of a cProfile of the full
simulation (internal time per function).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import sys
import time
from dataclasses import replace

from qudag.simulations.sim import run
from qudag.simulations.studies import scale_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 peers x 10 generations")
    parser.add_argument("--peers", type=int)
    parser.add_argument("--generations", type=int)
    parser.add_argument("--store", choices=("memory", "disk"), default=None)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--top", type=int, default=25, help="profile lines to print")
    args = parser.parse_args(argv)
    peers = args.peers or (50 if args.quick else 1000)
    gens = args.generations or (10 if args.quick else 50)
    store = args.store or ("disk" if peers >= 500 else "memory")
    config = scale_config(peers, gens, seed=0, store=store)

    t0 = time.perf_counter()
    base = run(replace(config, mode="isolation"))
    base_wall = time.perf_counter() - t0
    base_cpu = base.cpu_s
    base.close()
    base_rate = peers * gens / base_cpu

    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    if args.no_profile:
        sim = run(config)
    else:
        profiler.enable()
        sim = run(config)
        profiler.disable()
    wall = time.perf_counter() - t0
    summary = sim.summary()
    cpu = summary["cpu_s"]
    sim.close()
    rate = peers * gens / cpu
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    print(f"simulation: {peers} peers x {gens} generations, task {config.task}, store {store}")
    print(f"  wall {wall:.1f} s, CPU {cpu:.1f} s: {rate:.1f} simulated peer-generations per CPU s")
    print(f"  baseline (evolution alone, isolation): wall {base_wall:.1f} s, CPU {base_cpu:.1f} s,")
    print(f"    {base_rate:.1f} peer-generations per CPU s")
    print(f"  ratio simulation / baseline CPU time: {cpu / base_cpu:.2f}x")
    print(f"  goal 1000 x 50 in 600 s needs {1000 * 50 / 600:.1f} peer-generations/s")
    for key in (
        "vertices_mean",
        "ledger_bytes_mean",
        "messages_per_peer",
        "bytes_per_peer",
        "sync_requests",
        "best_mean",
        "reached_frac",
        "identical_honest_sets",
        "events_executed",
        "signature_checks",
        "signature_cache_hits",
    ):
        print(f"  {key}: {summary[key]}")
    print(f"  peak RSS {rss:.0f} MiB ({rss / peers:.2f} MiB per peer)")
    if not args.no_profile:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
