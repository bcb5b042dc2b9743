"""Study 6: does a network of sharing peers reach a target sooner than the same peers alone?

For each task, each number of peers N and each seed, the same simulated network runs twice:
**sharing** (the full peer core: gossip, ledger, re-measurement, attestations, and the search's
sharing channel: result sets for `es`, migrants for `islands`) and **isolated** (the same peers,
the same seeds, no network at all). Time is charged per evaluation (`SimConfig.eval_ms`): a
generation lasts as many time units as the evaluations the peer made in it (offspring,
migrants, re-measured claims), so sharing cannot buy speed with compute isolated peers are not
given; a time unit is one evaluation of one genome on the task, and the report also gives
evaluations.

Figures per (task, N), over seeds (mean and 95 % CI over the runs that reached the target;
runs that did not are counted in `success`):

- time to target: when the first peer's best reached the task's target;
- speedup S(N) = mean time to target of 1 peer / that of N sharing peers;
- cooperation gain G(N) = time of N sharing peers / time of the same N peers isolated (the
  best of N independent searches);
- baselines, one machine, the same budget of evaluations as one peer (generations x the
  evaluations one peer makes per generation), population = the evaluations one peer makes
  per generation: CMA-ES (pycma) on the same net and fitness, and NEAT (neat-python, topology
  and weights, the same fitness; simulations/neat_baseline.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from qudag.evolution.es import TASK_SETTINGS, ESConfig, task_config
from qudag.evolution.genome import Genome
from qudag.evolution.tasks import get_task
from qudag.simulations.config import SimConfig
from qudag.simulations.identity import derive_seed
from qudag.simulations.neat_baseline import neat_run
from qudag.simulations.network import LinkModel
from qudag.simulations.report import markdown_table, new_figure, save_figure, write_csv
from qudag.simulations.stats import mean_ci95
from qudag.simulations.studies import StudyArgs, StudyResult, _run_one, setup

# Targets of the hard tasks: the environment's own "solved" threshold where it has one,
# otherwise a level one peer reaches in most runs of the study's budget (measured).
COLLECTIVE_TARGETS = {
    "gym:Pendulum-v1": -400.0,
    "gym:MountainCarContinuous-v0": 90.0,
    "cartpole": 475.0,
    "mnist1d": 0.35,
    "digits": 0.9,
    "two-spirals": 0.9,
}
DEFAULT_TASKS = ("mnist1d", "gym:Pendulum-v1", "gym:MountainCarContinuous-v0")
QUICK_TARGETS = {"mnist1d": 0.2}  # reached within --quick's 40 generations
DEFAULT_PEERS = (1, 2, 4, 8, 16, 32)
QUICK_PEERS = (1, 2, 4)
# Simulated cost of one evaluation (ms): one peer's generation of 16 evaluations, batched,
# timed on a 2-core development machine (load 2.4; median of 5): mnist1d
# 7.7 ms, Pendulum 22.0 ms, MountainCarContinuous 80.5 ms. Other tasks: 1 ms.
# LunarLander-v3: 706 ms for a batch of 40 random nets (docs/tasks.md), ~18 ms each.
EVAL_MS = {
    "mnist1d": 0.48,
    "gym:Pendulum-v1": 1.38,
    "gym:MountainCarContinuous-v0": 5.0,
    "gym:LunarLander-v3": 18.0,
}
DEFAULT_EVAL_MS = 1.0
# Median one-way link latency (lognormal, sigma 0.3): a LAN or one data centre. The WAN
# figure of the other studies (20 ms) is a `--latency-ms` away (docs/studies.md, study 6).
DEFAULT_LATENCY_MS = 1.0


def target_of(task: str, quick: bool = False) -> float:
    if quick and task in QUICK_TARGETS:
        return QUICK_TARGETS[task]
    if task in COLLECTIVE_TARGETS:
        return COLLECTIVE_TARGETS[task]
    solved = get_task(task).solved_fitness
    if solved is None:
        raise ValueError(f"task {task} has no target for the collective study")
    return solved


def _row_of(
    summary: dict[str, Any], task: str, mode: str, peers: int, search: str, eval_ms: float
) -> dict[str, Any]:
    reached = summary["reached_t_ms"]
    return {
        "task": task,
        "search": search,
        "mode": mode,
        "peers": peers,
        "seed": summary["seed"],
        "target": summary["target"],
        "reached": int(reached is not None),
        "time_to_target": None if reached is None else reached / eval_ms,
        "evals_to_target": summary["reached_evals"],
        "best_max": summary["best_max"],
        "evaluations": summary["evaluations"],
        "es_sets_pooled": summary["es_sets_pooled"],
        "es_mean_lag": summary["es_mean_lag"],
        "migrants": summary["migrants"],
        "messages_per_peer": summary["messages_per_peer"],
        "bytes_per_peer": summary["bytes_per_peer"],
        "wall_s": summary["wall_s"],
    }


def cma_baseline(
    task_name: str, es: ESConfig, popsize: int, budget: int, seed: int, target: float
) -> float | None:
    """Evaluations CMA-ES needs to reach the target on one machine (None: not in budget).

    Same net (the ES's architecture and start), same fitness (validation split/episodes),
    `popsize` evaluations per iteration: what one peer evaluates per generation.
    """
    import cma

    task = get_task(task_name)
    hidden = es.hidden or task.default_hidden
    start = Genome.random(
        np.random.default_rng(es.start_seed), task.n_inputs, hidden, task.n_outputs, es.activation
    )
    shape = (start.n_inputs, start.layer_sizes, start.activations)
    x0 = start.flat_params().astype(np.float64)
    opts = {"popsize": popsize, "seed": seed + 1, "verbose": -9, "maxfevals": budget}
    strategy = cma.CMAEvolutionStrategy(x0, es.sigma, opts)
    used = 0
    while not strategy.stop() and used < budget:
        xs = strategy.ask()
        genomes = [Genome.from_flat(*shape, np.asarray(x, dtype=np.float32)) for x in xs]
        fit = task.fitness(genomes, "val")
        for i, f in enumerate(fit):
            if f >= target:
                return float(used + i + 1)
        used += len(xs)
        strategy.tell(xs, [-float(f) for f in fit])
    return None


def _mean(values: Sequence[float | None]) -> tuple[float | None, float, int]:
    got = [float(v) for v in values if v is not None]
    if not got:
        return None, float("nan"), 0
    mean, ci = mean_ci95(got)
    return mean, ci, len(got)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def summarise(rows: list[dict[str, Any]], peers: Sequence[int], seeds: int) -> list[dict[str, Any]]:
    """One object per task in the issue's JSON form, computed from the run rows only."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        times: dict[str, dict[str, float | None]] = {"sharing": {}, "isolated": {}}
        cis: dict[str, dict[str, float]] = {"sharing": {}, "isolated": {}}
        success: dict[str, dict[str, int]] = {"sharing": {}, "isolated": {}}
        for mode in ("sharing", "isolated"):
            for n in peers:
                runs = [r for r in mine if r["mode"] == mode and r["peers"] == n]
                mean, ci, _ = _mean([r["time_to_target"] for r in runs])
                times[mode][str(n)] = mean
                cis[mode][str(n)] = ci
                success[mode][str(n)] = sum(r["reached"] for r in runs)
        base = times["sharing"].get("1")
        speedup = {str(n): _ratio(base, times["sharing"][str(n)]) for n in peers}
        gain = {str(n): _ratio(times["sharing"][str(n)], times["isolated"][str(n)]) for n in peers}
        baselines = [r for r in mine if r["mode"] == "cma-es"]
        neat = [r for r in mine if r["mode"] == "neat"]
        out.append(
            {
                "task": task,
                "peers": list(peers),
                "seeds": seeds,
                "target": mine[0]["target"],
                "time_to_target_s": times,
                "time_to_target_ci95": cis,
                "success": success,
                "speedup": speedup,
                "cooperation_gain": gain,
                "cma_es_time": _mean([r["time_to_target"] for r in baselines])[0],
                "cma_es_success": sum(r["reached"] for r in baselines),
                "neat_time": _mean([r["time_to_target"] for r in neat])[0],
                "neat_success": sum(r["reached"] for r in neat),
                "neat_pop_size": neat[0]["pop_size"] if neat else None,
                "baseline_budget": baselines[0].get("budget") if baselines else None,
            }
        )
    return out


def study_collective(args: StudyArgs) -> StudyResult:
    study = setup(args, (2, 10))
    seeds = study.seeds
    tasks = args.tasks or (("mnist1d",) if args.quick else DEFAULT_TASKS)
    peer_counts = args.peer_list or (QUICK_PEERS if args.quick else DEFAULT_PEERS)
    generations = args.generations or (40 if args.quick else 200)
    search = args.search
    latency = args.latency_ms if args.latency_ms is not None else DEFAULT_LATENCY_MS
    rows: list[dict[str, Any]] = []
    for task in tasks:
        target = args.target if args.target is not None else target_of(task, args.quick)
        eval_ms = EVAL_MS.get(task, DEFAULT_EVAL_MS)
        for seed in seeds:
            es = task_config(task, derive_seed(seed, "es") % 2**31)
            for n in peer_counts:
                config = SimConfig(
                    peers=n,
                    task=task,
                    generations=generations,
                    seed=seed,
                    mode="sharing",
                    search=search,
                    es=es,
                    eval_ms=eval_ms,
                    msg_cpu_ms=args.msg_cpu_ms,
                    es_group_size=args.es_group_size,
                    link=LinkModel(latency_ms=latency),
                    target=target,
                    degree=max(1, min(6, n - 1)),
                    topology="random-regular" if n > 3 else "complete",
                    publish_every=5,
                    migrants=0 if search == "es" else 2,
                    reevals_per_gen=0.5,
                    store=args.store,
                    drain_ms=0,
                    stop_at_target=True,
                )
                for mode in ("sharing", "isolated") if n > 1 else ("sharing",):
                    # One peer has nobody to share with: its run is the isolated one.
                    alone = mode == "isolated" or n == 1
                    cfg = replace(config, mode="isolation") if alone else config
                    sim_summary, _ = _run_one(cfg, {"target": target})
                    rows.append(_row_of(sim_summary, task, mode, n, search, eval_ms))
                    if n == 1:  # one peer alone: sharing and isolated are the same run
                        rows.append({**rows[-1], "mode": "isolated"})
                    print(
                        f"collective {task} seed {seed} peers {n} {mode}: "
                        f"t={rows[-1]['time_to_target']} best={rows[-1]['best_max']:.4g}",
                        flush=True,
                    )
            budget = generations * 2 * es.pairs
            t_cma = cma_baseline(task, es, 2 * es.pairs, budget, seed, target)
            rows.append(
                {
                    "task": task,
                    "search": "cma-es",
                    "mode": "cma-es",
                    "peers": 1,
                    "seed": seed,
                    "target": target,
                    "reached": int(t_cma is not None),
                    "time_to_target": t_cma,
                    "evals_to_target": t_cma,
                    "budget": budget,
                    "pop_size": 2 * es.pairs,
                }
            )
            t1 = time.perf_counter()
            neat = neat_run(task, 2 * es.pairs, budget, seed, target)
            t_neat = neat.evaluations_to_target
            rows.append(
                {
                    "task": task,
                    "search": "neat",
                    "mode": "neat",
                    "peers": 1,
                    "seed": seed,
                    "target": target,
                    "reached": int(t_neat is not None),
                    "time_to_target": None if t_neat is None else float(t_neat),
                    "evals_to_target": t_neat,
                    "best_max": neat.best_fitness,
                    "evaluations": neat.evaluations,
                    "budget": budget,
                    "pop_size": 2 * es.pairs,
                    "wall_s": time.perf_counter() - t1,
                }
            )
            print(
                f"collective {task} seed {seed} neat: t={rows[-1]['time_to_target']} "
                f"best={neat.best_fitness:.4g}",
                flush=True,
            )
    summary = summarise(rows, peer_counts, len(seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "collective-summary.csv", _flat(summary))
    table = markdown_table(
        _flat(summary),
        ["task", "peers", "sharing_time", "sharing_success", "isolated_time",
         "isolated_success", "speedup", "cooperation_gain"],
    )  # fmt: skip
    cma_table = markdown_table(
        [
            {
                "task": s["task"],
                "cma_es_time": s["cma_es_time"],
                "cma_es_success": s["cma_es_success"],
            }
            for s in summary
        ],  # fmt: skip
        ["task", "cma_es_time", "cma_es_success"],
    )
    neat_table = markdown_table(
        [
            {
                "task": s["task"],
                "budget": s["baseline_budget"],
                "neat_pop_size": s["neat_pop_size"],
                "neat_time": s["neat_time"],
                "neat_success": s["neat_success"],
            }
            for s in summary
        ],  # fmt: skip
        ["task", "budget", "neat_pop_size", "neat_time", "neat_success"],
    )

    def plot(path: Any) -> None:
        fig, axes = new_figure(ncols=len(summary), width=5.0)
        for ax, s in zip(axes, summary, strict=True):
            for mode, style in (("sharing", "o-"), ("isolated", "s--")):
                xs = [n for n in s["peers"] if s["time_to_target_s"][mode][str(n)]]
                ys = [s["time_to_target_s"][mode][str(n)] for n in xs]
                if xs:
                    ax.plot(xs, ys, style, label=mode)
            base = s["time_to_target_s"]["sharing"].get("1")
            if base:
                ax.plot(s["peers"], [base / n for n in s["peers"]], ":", color="grey",
                        label="linear speedup")  # fmt: skip
            if len(s["peers"]) > 1:
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
            ax.set_xlabel("peers")
            ax.set_ylabel("time to target (evaluations of one peer)")
            ax.set_title(f"{s['task']} (target {s['target']:g})")
            ax.legend(fontsize=7)
        save_figure(fig, path)

    params = {
        "tasks": list(tasks),
        "peers": list(peer_counts),
        "generations": generations,
        "search": search,
        "es": {t: TASK_SETTINGS.get(t, {}) for t in tasks} | {"start_seed": "from the seed"},
        "eval_ms": {t: EVAL_MS.get(t, DEFAULT_EVAL_MS) for t in tasks},
        "latency_ms": latency,
        "msg_cpu_ms": args.msg_cpu_ms,
        "es_group_size": args.es_group_size,
        "baselines": "CMA-ES and NEAT on one machine: generations x 2 x pairs evaluations, "
        "population 2 x pairs",
        "neat": "neat-python 2.0.0, its XOR example config with the changes listed in "
        "simulations/neat_baseline.py",
    }
    sections = [
        (
            "Results (time in evaluations of one peer; mean over the runs that reached the target)",
            table,
        ),  # fmt: skip
        ("One machine: CMA-ES, population = one peer's evaluations per generation", cma_table),
        (
            "One machine: NEAT (neat-python 2.0.0), the same budget of evaluations as one peer "
            "and CMA-ES, population = one peer's evaluations per generation",
            neat_table,
        ),
    ]
    result = study.finish(
        "collective", "Study 6: collective evolution", rows, summary, params, sections, plot
    )
    return result


def _flat(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for s in summary:
        for n in s["peers"]:
            k = str(n)
            out.append(
                {
                    "task": s["task"],
                    "peers": n,
                    "sharing_time": _with_ci(s, "sharing", k),
                    "sharing_success": f"{s['success']['sharing'][k]}/{s['seeds']}",
                    "isolated_time": _with_ci(s, "isolated", k),
                    "isolated_success": f"{s['success']['isolated'][k]}/{s['seeds']}",
                    "speedup": s["speedup"][k],
                    "cooperation_gain": s["cooperation_gain"][k],
                    "cma_es_time": s["cma_es_time"],
                    "cma_es_success": f"{s['cma_es_success']}/{s['seeds']}",
                    "neat_time": s["neat_time"],
                    "neat_success": f"{s['neat_success']}/{s['seeds']}",
                }
            )
    return out


def _with_ci(summary: dict[str, Any], mode: str, k: str) -> str:
    mean = summary["time_to_target_s"][mode][k]
    if mean is None:
        return "-"
    ci = summary["time_to_target_ci95"][mode][k]
    return f"{mean:.0f}" if np.isnan(ci) else f"{mean:.0f} ± {ci:.0f}"
