"""Node benchmark: the loop itself, daemons sharing migrants against isolated daemons.

Run: `python benchmarks/bench_loop.py` (several minutes) or `--quick`. One JSON object with
everything is the last stdout line (benchmarks/node_harness.py).

Four `qudag-node run` daemons on a task where evolution is not trivial (digits),
sharing (bootstrapped, migrants on) vs isolated (no network, no migrants), same seeds and
generations: median over nodes of the best verified fitness at each generation.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from node_harness import run_benchmark

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


def body(args: argparse.Namespace, keep: Path) -> dict[str, Any]:
    return bench_loop(args.quick, keep)


if __name__ == "__main__":
    run_benchmark("loop", __doc__.splitlines()[0], body)
