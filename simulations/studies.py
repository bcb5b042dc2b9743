"""The five convergence studies. Each writes `<name>.csv`, `<name>.png` and `<name>.md` to `out`.

Run from the command line: `qudag-node simulate STUDY [--quick] [--peers N] [--seeds K]
[--generations G] [--out DIR]` (or `python -m qudag.simulations STUDY ...`). `--quick` settings
finish in well under a minute and are what the tests run; the defaults are the full studies
documented in docs/studies.md.

1. sharing     sharing vs isolation vs one panmictic population, equal evaluation budgets
2. topology    topology x migration rate (publish every K generations, migrants per generation)
3. byzantine   Byzantine fraction 0-50 % per strategy
4. partition   partitions that heal, and churn: time until honest peers hold the same vertices
5. scale       10, 100, 1,000 peers: convergence, vertices/bytes/messages per peer, speed
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qudag.evolution.engine import Evolution, default_config
from qudag.evolution.tasks import get_task
from qudag.simulations.config import ChurnSpec, PartitionSpec, SimConfig
from qudag.simulations.identity import derive_seed
from qudag.simulations.report import (
    command_line,
    markdown_table,
    new_figure,
    save_figure,
    write_csv,
    write_report,
)
from qudag.simulations.sim import run
from qudag.simulations.stats import mean_ci95


@dataclass(frozen=True)
class StudyArgs:
    out: Path
    quick: bool = False
    peers: int | None = None
    seeds: int | None = None
    generations: int | None = None
    tasks: tuple[str, ...] = ()
    store: str = "memory"
    first_seed: int = 0
    workers: int = 1  # processes per run (scale study)
    peer_list: tuple[int, ...] = ()  # numbers of peers to compare (collective study)
    search: str = "es"  # the peers' search (collective study: es or islands)
    latency_ms: float | None = None  # median link latency (collective study)
    target: float | None = None  # the fitness that counts as reached (collective, byzantine)
    msg_cpu_ms: float = 0.0  # CPU per gossip message, charged to generations (collective)
    es_group_size: int = 0  # shared-ES groups of about this many peers; 0: one (collective)
    strategies: tuple[str, ...] = ()  # Byzantine strategies to run (byzantine; default all)
    fractions: tuple[float, ...] = ()  # Byzantine fractions to run (byzantine; default per study)
    holdout: bool = True  # verifiers measure held-out scores (byzantine; False: claims only)
    # Peers cut off by a Disconnect dial new ones (byzantine; False: the fixed graph).
    rediscover: bool = True


@dataclass
class StudyResult:
    name: str
    rows: list[dict[str, Any]]  # one per run (the CSV)
    summary: list[dict[str, Any]]  # aggregated (the report's table)
    report: Path
    wall_s: float


# Default targets for tasks without a "solved" threshold (fitness ~ validation accuracy).
TARGETS = {"digits": 0.95, "iris": 0.95, "wine": 0.95, "breast-cancer": 0.95}


def _target(task: str) -> float:
    t = get_task(task)
    if t.solved_fitness is not None:
        return t.solved_fitness
    return TARGETS.get(task, 0.9)


def study_outputs(study: str) -> list[str]:
    """The files a study writes into its --out directory (`Setup.finish`; the collective study
    adds its summary table): what `simulate` checks before it runs."""
    names = [f"{study}.{ext}" for ext in ("csv", "png", "md")]
    return names + (["collective-summary.csv"] if study == "collective" else [])


def _run_one(config: SimConfig, extra: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    sim = run(config)
    try:
        summary = {**extra, "seed": config.seed, **sim.summary()}
        return summary, sim.rows
    finally:
        sim.close()


def _agg(
    rows: list[dict[str, Any]], keys: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Mean and 95 % CI of `metrics` over the runs sharing the same `keys`."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, members in groups.items():
        agg: dict[str, Any] = dict(zip(keys, key, strict=True))
        agg["runs"] = len(members)
        for m in metrics:
            values = [r.get(m) for r in members]
            numeric = [float(v) for v in values if v is not None]
            agg[m + "_n"] = len(numeric)
            mean, ci = mean_ci95(numeric)
            agg[m] = mean
            agg[m + "_ci95"] = ci
        out.append(agg)
    return out


def _with_ci(rows: list[dict[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Table rows where each metric reads 'mean ± ci (n)'."""
    out = []
    for row in rows:
        r = {k: v for k, v in row.items() if not any(k.startswith(m) for m in metrics)}
        for m in metrics:
            mean, ci, n = row.get(m), row.get(m + "_ci95"), row.get(m + "_n")
            if mean is None or (isinstance(mean, float) and np.isnan(mean)):
                r[m] = f"- ({n})"
            elif ci is None or np.isnan(ci):
                r[m] = f"{mean:.4g} ({n})"
            else:
                r[m] = f"{mean:.4g} ± {ci:.2g} ({n})"
        out.append(r)
    return out


@dataclass(frozen=True)
class Setup:
    """One study run's argument handling and output, the same for every study: an option given
    on the command line wins, else the study's `--quick` or full default; the files are
    `<name>.csv`, `<name>.png` and `<name>.md` in `args.out`, the report headed by the command
    line, the parameters, the seeds and the wall time since `setup` was called."""

    args: StudyArgs
    seeds: list[int]
    t0: float

    def task(self, default: str) -> str:
        """The study's one task: the first of `--task`, else `default`."""
        return self.args.tasks[0] if self.args.tasks else default

    def pick(self, value: int | None, quick: int, full: int) -> int:
        if value is not None:
            return value
        return quick if self.args.quick else full

    def peers(self, quick: int, full: int) -> int:
        return self.pick(self.args.peers, quick, full)

    def generations(self, quick: int, full: int) -> int:
        return self.pick(self.args.generations, quick, full)

    def finish(
        self,
        name: str,
        title: str,
        rows: list[dict[str, Any]],
        summary: list[dict[str, Any]],
        params: dict[str, Any],
        sections: list[tuple[str, str]],
        plot: Callable[[Path], None],
    ) -> StudyResult:
        """Write the CSV of `rows`, the figure and the report; the study's result."""
        args = self.args
        args.out.mkdir(parents=True, exist_ok=True)
        write_csv(args.out / f"{name}.csv", rows)
        plot(args.out / f"{name}.png")
        wall = time.perf_counter() - self.t0
        report = write_report(
            args.out,
            name,
            title,
            command=command_line(),
            params={**params, "quick": args.quick, "store": args.store},
            seeds=self.seeds,
            wall_s=wall,
            sections=sections,
            figures=[f"{name}.png"],
        )
        return StudyResult(name, rows, summary, report, wall)

    def finish_table(
        self,
        name: str,
        title: str,
        rows: list[dict[str, Any]],
        summary: list[dict[str, Any]],
        keys: Sequence[str],
        metrics: Sequence[str],
        params: dict[str, Any],
        plot: Callable[[Path], None],
        notes: str = "",
    ) -> StudyResult:
        """`finish` with one "Results" section: `notes`, then the table of `summary` (its `keys`,
        the number of runs, and each metric as mean ± 95 % CI)."""
        table = markdown_table(_with_ci(summary, metrics), [*keys, "runs", *metrics])
        body = f"{notes}\n\n{table}" if notes else table
        return self.finish(name, title, rows, summary, params, [("Results", body)], plot)


def setup(args: StudyArgs, seeds: tuple[int, int]) -> Setup:
    """Start a study: its seeds (`--seeds` from `--first-seed`, else the `(quick, full)`
    number) and the clock of its wall time."""
    t0 = time.perf_counter()
    k = args.seeds if args.seeds is not None else (seeds[0] if args.quick else seeds[1])
    return Setup(args, list(range(args.first_seed, args.first_seed + k)), t0)


# --- 1. sharing vs isolation vs panmictic ---------------------------------------------------
def study_sharing(args: StudyArgs) -> StudyResult:
    study = setup(args, (2, 10))
    seeds = study.seeds
    tasks = args.tasks or ("xor", "two-spirals", "digits")
    peers = study.peers(3, 8)
    full_gens = {"xor": 20, "two-spirals": 40, "digits": 12}
    quick_gens = {"xor": 4, "two-spirals": 5, "digits": 2}
    population = 4 if args.quick else 6
    rows: list[dict[str, Any]] = []
    series: list[dict[str, Any]] = []
    for task in tasks:
        gens = args.generations or (quick_gens if args.quick else full_gens).get(task, 20)
        target = _target(task)
        lamarck = 5 if args.quick else None
        base = SimConfig(
            peers=peers,
            task=task,
            generations=gens,
            population=population,
            lamarck_steps=lamarck,
            publish_every=2,
            migrants=2,
            reevals_per_gen=1.0,
            target=target,
            store=args.store,
            drain_ms=0,
            degree=min(4, peers - 1),
        )
        for seed in seeds:
            for mode in ("sharing", "isolation"):
                run_row, ts = _run_one(
                    replace(base, seed=seed, mode=mode), {"task": task, "mode": mode}
                )
                rows.append(run_row)
                series += [{"task": task, "mode": mode, "seed": seed, **r} for r in ts]
            row, ts = _panmictic(task, peers, population, lamarck, gens, seed, target, base.gen_ms)
            rows.append(row)
            series += ts
    budget: dict[tuple[str, int], int] = {}
    for r in rows:
        if r["mode"] == "isolation":
            budget[(r["task"], r["seed"])] = r["evaluations"]
    for r in rows:  # best fitness once the isolation run's budget is spent
        b = budget[(r["task"], r["seed"])]
        eligible = [
            s["best_max"]
            for s in series
            if s["task"] == r["task"]
            and s["mode"] == r["mode"]
            and s["seed"] == r["seed"]
            and s["evaluations"] <= b
        ]
        r["budget"] = b
        r["best_at_budget"] = max(eligible) if eligible else float("nan")
    metrics = ["best_at_budget", "best_mean", "reached_evals", "reached_t_ms"]
    summary = _agg(rows, ["task", "mode"], metrics)

    def plot(path: Path) -> None:
        fig, axes = new_figure(len(tasks))
        for ax, task in zip(axes, tasks, strict=True):
            for mode in ("sharing", "isolation", "panmictic"):
                runs = [
                    [
                        s
                        for s in series
                        if s["task"] == task and s["mode"] == mode and s["seed"] == seed
                    ]
                    for seed in seeds
                ]
                n = min(len(r) for r in runs)
                if n == 0:
                    continue
                x = np.mean([[s["evaluations"] for s in r[:n]] for r in runs], axis=0)
                y = np.array([[s["best_max"] for s in r[:n]] for r in runs])
                ax.plot(x, y.mean(axis=0), label=mode)
                if len(runs) > 1:
                    half = 1.96 * y.std(axis=0, ddof=1) / np.sqrt(len(runs))
                    ax.fill_between(x, y.mean(axis=0) - half, y.mean(axis=0) + half, alpha=0.2)
            ax.set_title(f"{task} ({peers} peers)")
            ax.set_xlabel("evaluations (all peers)")
            ax.set_ylabel("best fitness (max over peers)")
            ax.legend()
        save_figure(fig, path)

    notes = (
        "Mean ± 95 % CI half-width (number of runs with a value). `best_at_budget`: best "
        "fitness over peers once the evaluations of the isolation run of the same seed are "
        "spent (sharing also spends evaluations on migrants and re-evaluations, so it gets "
        "fewer generations for that budget). `reached_*`: evaluations / simulated ms until "
        "the first peer reached the target (runs that never reached it have no value). "
        "Panmictic = one population of peers x population individuals on one machine: its "
        "generation takes peers x gen_ms of simulated time."
    )
    params = {
        "tasks": ", ".join(tasks),
        "targets": ", ".join(f"{t}: {_target(t):.6g}" for t in tasks),
        "peers": peers,
        "population per peer": population,
        "generations": {
            t: args.generations or (quick_gens if args.quick else full_gens).get(t, 20)
            for t in tasks
        },
        "publish_every / migrants / reevals_per_gen": "2 / 2 / 1",
        "topology": "random-regular, degree min(4, peers-1)",
    }
    return study.finish_table(
        "sharing",
        "Study 1: sharing vs isolation vs panmictic",
        rows,
        summary,
        ["task", "mode"],
        metrics,
        params,
        plot,
        notes,
    )


def _panmictic(
    task: str,
    peers: int,
    population: int,
    lamarck: int | None,
    gens: int,
    seed: int,
    target: float,
    gen_ms: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    overrides: dict[str, Any] = {"population": peers * population}
    if lamarck is not None:
        overrides["lamarck_steps"] = lamarck
    t = get_task(task)
    t0 = time.perf_counter()
    evo = Evolution(t, default_config(t, **overrides), derive_seed(seed, "panmictic") % 2**31)
    series: list[dict[str, Any]] = []
    reached_evals = None
    reached_t = None

    def record(g: int) -> None:
        nonlocal reached_evals, reached_t
        best = evo.best.task_fitness
        if reached_evals is None and best >= target:
            reached_evals, reached_t = evo.evaluations, g * gen_ms * peers
        series.append(
            {
                "task": task,
                "mode": "panmictic",
                "seed": seed,
                "t_ms": g * gen_ms * peers,
                "generation": g,
                "evaluations": evo.evaluations,
                "best_max": best,
                "best_mean": best,
            }
        )

    record(0)
    for g in range(1, gens + 1):
        evo.step()
        record(g)
    row = {
        "task": task,
        "mode": "panmictic",
        "seed": seed,
        "peers": 1,
        "generations": gens,
        "evaluations": evo.evaluations,
        "best_max": evo.best.task_fitness,
        "best_mean": evo.best.task_fitness,
        "reached_evals": reached_evals,
        "reached_t_ms": reached_t,
        "wall_s": time.perf_counter() - t0,
    }
    return row, series


# --- 2. topology and migration rate ---------------------------------------------------------
def study_topology(args: StudyArgs) -> StudyResult:
    study = setup(args, (1, 3))
    seeds = study.seeds
    task = study.task("two-spirals")
    peers = study.peers(8, 16)
    gens = study.generations(5, 30)
    topologies = (
        ("ring", "random-regular")
        if args.quick
        else ("ring", "small-world", "scale-free", "random-regular", "complete")
    )
    rates = ((1, 1), (5, 2)) if args.quick else ((1, 1), (2, 2), (5, 2), (10, 4))
    rows = []
    series: list[dict[str, Any]] = []
    for topo in topologies:
        for publish_every, migrants in rates:
            for seed in seeds:
                cfg = SimConfig(
                    peers=peers,
                    task=task,
                    generations=gens,
                    seed=seed,
                    topology=topo,
                    degree=4,
                    population=4 if args.quick else 6,
                    lamarck_steps=5 if args.quick else None,
                    publish_every=publish_every,
                    migrants=migrants,
                    store=args.store,
                    target=_target(task),
                    drain_ms=5_000,
                )
                extra = {
                    "topology": topo,
                    "publish_every": publish_every,
                    "migrants_per_gen": migrants,
                }
                run_row, ts = _run_one(cfg, extra)
                rows.append(run_row)
                series += [{**extra, "seed": seed, **r} for r in ts]
    metrics = ["best_mean", "best_max", "reached_evals", "messages_per_peer", "vertices_mean"]
    summary = _agg(rows, ["topology", "publish_every", "migrants_per_gen"], metrics)

    def plot(path: Path) -> None:
        fig, axes = new_figure(2)
        for topo in topologies:
            for publish_every, migrants in rates:
                sel = [
                    r
                    for r in summary
                    if r["topology"] == topo
                    and r["publish_every"] == publish_every
                    and r["migrants_per_gen"] == migrants
                ]
                if sel:
                    axes[0].scatter(
                        sel[0]["messages_per_peer"],
                        sel[0]["best_mean"],
                        label=f"{topo} K={publish_every} m={migrants}",
                    )
            runs = [
                s
                for s in series
                if s["topology"] == topo
                and s["publish_every"] == rates[-1][0]
                and s["migrants_per_gen"] == rates[-1][1]
                and s["seed"] == seeds[0]
            ]
            axes[1].plot(
                [s["t_ms"] / 1000 for s in runs], [s["best_mean"] for s in runs], label=topo
            )
        axes[0].set_xlabel("messages per peer")
        axes[0].set_ylabel("mean best fitness at the end")
        axes[0].legend(fontsize=6)
        axes[1].set_xlabel("simulated s")
        axes[1].set_ylabel(f"mean best fitness (K={rates[-1][0]}, m={rates[-1][1]})")
        axes[1].legend(fontsize=7)
        save_figure(fig, path)

    params = {
        "task": task,
        "peers": peers,
        "generations": gens,
        "degree": 4,
        "topologies": ", ".join(topologies),
        "(publish_every, migrants)": rates,
    }
    return study.finish_table(
        "topology",
        "Study 2: topology and migration rate",
        rows,
        summary,
        ["topology", "publish_every", "migrants_per_gen"],
        metrics,
        params,
        plot,
        "Mean ± 95 % CI (runs with a value).",
    )


# --- 4. partitions and churn ----------------------------------------------------------------
def study_partition(args: StudyArgs) -> StudyResult:
    study = setup(args, (1, 3))
    seeds = study.seeds
    task = study.task("xor")
    peers = study.peers(8, 24)
    gens = study.generations(10, 30)
    gen_ms = 1_000
    split_at, heal_at = int(gens * 0.25) * gen_ms, int(gens * 0.6) * gen_ms
    scenarios: dict[str, dict[str, Any]] = {
        "partition-2": {"partitions": (PartitionSpec(split_at, heal_at, 2),)},
        "partition-3": {"partitions": (PartitionSpec(split_at, heal_at, 3),)},
        "churn-keep-state": {
            "churn": ChurnSpec(interval_ms=2_000, downtime_ms=4_000, keep_state=True)
        },
        "churn-fresh-node": {
            "churn": ChurnSpec(interval_ms=2_000, downtime_ms=4_000, keep_state=False)
        },
    }
    if args.quick:
        scenarios.pop("partition-3")
    rows = []
    series: list[dict[str, Any]] = []
    for name, fault in scenarios.items():
        for seed in seeds:
            churn = fault.get("churn")
            cfg = SimConfig(
                peers=peers,
                task=task,
                generations=gens,
                seed=seed,
                degree=4,
                population=4,
                lamarck_steps=5,
                publish_every=2,
                migrants=2,
                store=args.store,
                target=_target(task),
                drain_ms=20_000,
                gen_ms=gen_ms,
                partitions=fault.get("partitions", ()),
                churn=churn,
            )
            run_row, ts = _run_one(cfg, {"scenario": name})
            rows.append(run_row)
            series += [{"scenario": name, "seed": seed, **r} for r in ts]
    metrics = [
        "covered_after_heal_ms",
        "identical_honest_sets",
        "identical_t_ms",
        "best_mean",
        "sync_requests",
        "messages_per_peer",
    ]
    summary = _agg(rows, ["scenario"], metrics)

    def plot(path: Path) -> None:
        fig, axes = new_figure(2)
        for name in scenarios:
            runs = [s for s in series if s["scenario"] == name and s["seed"] == seeds[0]]
            xs = [s["t_ms"] / 1000 for s in runs]
            axes[0].plot(xs, [s["vertices_max"] - s["vertices_min"] for s in runs], label=name)
            axes[1].plot(xs, [s["identical"] for s in runs], label=name, drawstyle="steps-post")
        for ax in axes:
            ax.axvline(split_at / 1000, color="grey", ls=":")
            ax.axvline(heal_at / 1000, color="grey", ls="--")
            ax.set_xlabel("simulated s (dotted: split, dashed: heal)")
            ax.legend(fontsize=7)
        axes[0].set_ylabel("max - min vertices held by honest peers")
        axes[1].set_ylabel("all honest vertex sets identical (0/1)")
        save_figure(fig, path)

    notes = (
        "`covered_after_heal_ms`: simulated ms from the heal until every honest peer holds every "
        "vertex any honest peer held at the heal (publication continues meanwhile). "
        "`identical_t_ms`: first sample (every 1 s) after the last generation at which all "
        "online honest peers hold identical vertex sets; `identical_honest_sets`: they do at the "
        "end (after 20 s of network-only drain). Churn (until the last generation): every 2 s "
        "one random honest peer leaves for 4 s; "
        "keep-state restarts its core over the same ledger; fresh-node replaces it by a new key "
        "with an empty ledger."
    )
    params = {
        "task": task,
        "peers": peers,
        "generations": gens,
        "gen_ms": gen_ms,
        "split_at_ms": split_at,
        "heal_at_ms": heal_at,
        "scenarios": ", ".join(scenarios),
    }
    return study.finish_table(
        "partition",
        "Study 4: partition and heal, churn",
        rows,
        summary,
        ["scenario"],
        metrics,
        params,
        plot,
        notes,
    )


# --- 5. scale -------------------------------------------------------------------------------
def scale_config(
    peers: int,
    generations: int,
    seed: int,
    store: str = "memory",
    workers: int = 1,
    replication: str = "quorum",
) -> SimConfig:
    """The small-task configuration used to scale (what each knob costs: docs/studies.md).

    Every peer holds every vertex it receives, so a peer's ledger is the sum of the network's
    publications. With `replication="full"` (the design before issue 14) every peer writes
    its identity, and every improvement and re-measurement, so each may publish at most 2
    templates and re-measure 1 claim per run, and heads are gossiped every 30 s. With
    "quorum" (the daemon's rules, node/protocol/quorum.py) the ledger grows with what is
    found, so a peer re-measures up to one claim per generation.
    """
    return SimConfig(
        replication=replication,
        peers=peers,
        task="xor",
        generations=generations,
        seed=seed,
        degree=6,
        population=4,
        lamarck_steps=2,
        publish_every=max(1, generations // 2),
        migrants=1,
        reevals_per_gen=1.0 if replication == "quorum" else 1.0 / max(1, generations),
        tick_ms=2_000,
        heads_interval_ms=30_000,
        store=store,
        drain_ms=15_000,
        sample_ms=1_000,  # a generation: the time every peer reached the target, to 1 s
        max_orphans=500,
        meta_cache=20_000,
        workers=min(workers, peers),
    )


# The full-replication design is run up to this size: beyond it a run needs hours and more
# memory than this machine has (1,000 peers x 50 generations: 9.2 GB, study 5 before issue 14).
FULL_DESIGN_MAX_PEERS = 1_000


def study_scale(args: StudyArgs) -> StudyResult:
    """Study 5: what one peer stores, sends and computes as the network grows, under the
    replication rules the daemon follows ("quorum") and the design before them ("full",
    up to `FULL_DESIGN_MAX_PEERS`), and whether convergence is the same."""
    study = setup(args, (1, 3))
    seeds = study.seeds
    if args.peer_list:
        sizes = args.peer_list
    elif args.peers:
        sizes = (args.peers,)
    else:
        # Small by default: issue 14's study (100, 1,000 and 10,000 peers, docs/studies.md)
        # took 40 minutes and ~9 GB here, so a user asks for it with --peers.
        sizes = (10, 30) if args.quick else (30, 100, 300)
    gens = study.generations(10, 20)
    rows = []
    for n in sizes:
        designs = ("quorum", "full") if n <= FULL_DESIGN_MAX_PEERS else ("quorum",)
        # One seed above 1,000 peers: a run is ~10 minutes there.
        for seed in seeds if n <= FULL_DESIGN_MAX_PEERS else seeds[:1]:
            for design in designs:
                # Below 1,000 peers a second process costs more than it saves.
                workers = args.workers if n >= 1_000 else 1
                cfg = scale_config(n, gens, seed, args.store, workers, design)
                run_row, samples = _run_one(cfg, {"size": n, "design": design})
                every = next((r["t_ms"] for r in samples if r["reached_frac"] == 1.0), None)
                run_row["all_reached_s"] = None if every is None else every / 1000.0
                first = run_row["reached_t_ms"]
                run_row["first_reached_s"] = None if first is None else first / 1000.0
                run_row["converged"] = int(
                    run_row["reached_frac"] == 1.0 and run_row["identical_honest_sets"] == 1
                )
                run_row["messages_per_peer_gen"] = run_row["messages_per_peer"] / gens
                run_row["bytes_per_peer_gen"] = run_row["bytes_per_peer"] / gens
                run_row["cpu_ms_per_peer_gen"] = 1000.0 * run_row["cpu_s"] / (n * gens)
                run_row["rss_mb_per_peer"] = run_row["rss_mb"] / n
                rows.append(run_row)
    metrics = [
        "converged",
        "first_reached_s",
        "all_reached_s",
        "vertices_mean",
        "ledger_bytes_mean",
        "messages_per_peer_gen",
        "bytes_per_peer_gen",
        "cpu_ms_per_peer_gen",
        "wall_s",
        "rss_mb",
    ]
    summary = sorted(
        _agg(rows, ["design", "size"], metrics), key=lambda r: (r["design"], r["size"])
    )

    def plot(path: Path) -> None:
        fig, axes = new_figure(2)
        for design, style in (("full", "--"), ("quorum", "-")):
            part = [r for r in summary if r["design"] == design]
            xs = [r["size"] for r in part]
            for key, label in (
                ("vertices_mean", "vertices / peer"),
                ("messages_per_peer_gen", "messages / peer / gen"),
            ):
                axes[0].loglog(
                    xs, [r[key] for r in part], style, marker="o", label=f"{label} ({design})"
                )
            axes[1].semilogx(
                xs, [r["cpu_ms_per_peer_gen"] for r in part], style, marker="o", label=design
            )
        axes[0].set_xlabel("peers")
        axes[0].legend(fontsize=6)
        axes[1].set_xlabel("peers")
        axes[1].set_ylabel("CPU ms / peer / generation")
        axes[1].legend(fontsize=7)
        save_figure(fig, path)

    cfg = scale_config(sizes[0], gens, 0)
    params = {
        "sizes": sizes,
        "generations": gens,
        "task": cfg.task,
        "population": cfg.population,
        "lamarck_steps": cfg.lamarck_steps,
        "publish_every": cfg.publish_every,
        "migrants": cfg.migrants,
        "reevals_per_gen (quorum; full: 1 per run)": cfg.reevals_per_gen,
        "publish_quorum": cfg.publish_quorum,
        "attest_quorum": cfg.attest_quorum,
        "heads_interval_ms": cfg.heads_interval_ms,
        "tick_ms": cfg.tick_ms,
        "degree": cfg.degree,
        "workers": args.workers,
    }
    return study.finish_table(
        "scale", "Study 5: scale", rows, summary, ["design", "size"], metrics, params, plot
    )


def study_collective(args: StudyArgs) -> StudyResult:
    """Study 6 (simulations/collective.py; imported late: it builds on this module)."""
    from qudag.simulations.collective import study_collective as collective

    return collective(args)


def study_byzantine(args: StudyArgs) -> StudyResult:
    """Study 3 (simulations/byzantine_study.py; imported late: it builds on this module)."""
    from qudag.simulations.byzantine_study import study_byzantine as byzantine

    return byzantine(args)


STUDIES: dict[str, Callable[[StudyArgs], StudyResult]] = {
    "collective": study_collective,
    "sharing": study_sharing,
    "topology": study_topology,
    "byzantine": study_byzantine,
    "partition": study_partition,
    "scale": study_scale,
}

# What each study compares and what the shared options mean for it, defaults as
# "full (--quick)"; `qudag-node simulate STUDY --help` prints it. Keep in step with the
# study functions above (tests/test_cli_help.py checks every study has an entry).
STUDY_HELP: dict[str, str] = {
    "sharing": "sharing vs isolated peers vs one panmictic population, per task. "
    "--task: xor, two-spirals, digits; --peers 8 (3); --seeds 10 (2); --generations per "
    "task: xor 20 (4), two-spirals 40 (5), digits 12 (2).",
    "topology": "migration over network topologies and publish/migrant rates. "
    "--task two-spirals (first only); --peers 16 (8); --seeds 3 (1); --generations 30 (5).",
    "byzantine": "lying peers (each strategy, fractions 0.1, 0.25, 0.5 (0.25)) against "
    "honest verification, beside honest-only runs (all peers, and only each fraction's "
    "honest peers) and isolated peers, once for every strategy. --task xor (first only); "
    "--strategy a list; --target (default per task); --peers 20 (8); --seeds 3 (1); "
    "--generations 20 (8); --no-holdout: claim checks only.",
    "partition": "a network split at 25% of the run and healed at 60%: do the ledgers "
    "converge again? --task xor (first only); --peers 24 (8); --seeds 3 (1); "
    "--generations 30 (10).",
    "collective": "time to target of N sharing peers against the same N isolated and one peer "
    "(the shared evolution strategy; time charged per evaluation), and one machine's CMA-ES "
    "and NEAT with the same evaluations. --task mnist1d, "
    "gym:Pendulum-v1, gym:MountainCarContinuous-v0 (mnist1d, target 0.2); --peers 1,2,4,8,16,32 "
    "(1,2,4); --seeds 10 (2); --generations 200 (40); --latency-ms 1; --search es|islands.",
    "scale": "cost per peer as the network grows: --peers N runs one size, else 10, 30, 100 "
    "(10, 30); --generations 50 (10); --seeds 1; --workers splits each run over processes.",
}
