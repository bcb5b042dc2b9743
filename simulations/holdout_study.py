"""The held-out test's error rates, measured (docs/reliability.md, "Overfitting").

- False flags: honest evolution runs (`evolution.engine.Evolution` with the task's defaults;
  it selects on the validation split, as every honest peer does) publish their best every
  `publish_every` generations; each publication is checked on `draws` held-out draws, and a
  flag is a false positive (`false_flagged_publications`: publications flagged on any draw).
- Detection: nets fitted on the validation split (random tanh features, output layer by least
  squares on the validation data: they classify every validation sample) on as many draws,
  and each honest publication refitted on the validation split (the simulator's `overfit`
  strategy); a draw that does not flag one is a miss.
- The val - test gap of honest bests compares `Task.score` on both splits (accuracy, R^2 or
  mean return: the JSON's `score` names it), not the fitness claim with a test accuracy.

Reproducible: `--seed S` (default 0) fixes every random choice. Run k of `--seeds K` is
evolution seed S + k and random-feature seed S + k; draw d of the check of a template is
`holdout_seed` (the verifier's own derivation) over a name of that template (which kind, run
seed, generation) and d, so a check's draws depend on nothing else the study includes, and
the same arguments print the same JSON line byte for byte (the wall time goes to stderr).

`python -m qudag.simulations.holdout_study --task digits --seeds 3 --generations 60` prints one
JSON object. `--z` and `--fraction` take several values to sweep the test's threshold and the
share of the test split drawn (docs/reliability.md, "Why 2.58 and 90 %"): every draw is
measured once per fraction (the smaller share's rows are the first of the larger's, both
ranked by the same seed) and judged at every z, and `sweep` lists each pair's counts; the
other fields are those of the first pair.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence

import numpy as np

from qudag.evolution.engine import Evolution
from qudag.evolution.genome import Genome
from qudag.evolution.holdout import HOLDOUT_FRACTION, OVERFIT_Z, holdout_seed, measure_holdout
from qudag.evolution.tasks import SCORE_NAMES, Task, TaskError, get_task
from qudag.evolution.verify import claim_tolerance
from qudag.simulations.byzantine import random_features, refit_on_validation

Setting = tuple[float, float]  # (z, fraction of the test split)
DEFAULT_SEED = 0
COUNT_FLAGS = ("seeds", "generations", "publish_every", "draws")  # `study`'s sizes, each >= 1


def draw_seed(kind: str, run: int, generation: int, draw: int) -> bytes:
    """The randomness of draw `draw` of one checked template: `kind` (honest, refit, cheat),
    the run's seed and the generation it was published at name the template."""
    name = f"qudag/holdout_study/{kind}/{run}/{generation}".encode()
    return holdout_seed(name, [draw.to_bytes(4, "big")])


def flags(
    task: Task,
    genome: Genome,
    claimed: float,
    draws: Sequence[bytes],
    settings: Sequence[Setting],
) -> dict[Setting, int]:
    """Flags of the held-out draws `draws` (their seeds) under each (z, fraction) setting."""
    tolerance = claim_tolerance(task)
    out = dict.fromkeys(settings, 0)
    for seed in draws:
        for fraction in sorted({f for _, f in settings}):
            held = measure_holdout(task, genome, claimed, seed, fraction)
            for z, f in settings:
                if f == fraction:
                    out[(z, f)] += held.overfit(claimed, tolerance, z)
    return out


def _add(total: dict[Setting, int], more: dict[Setting, int]) -> None:
    for key, value in more.items():
        total[key] += value


def _rate(flagged: int, checks: int) -> float | None:
    """A share of checks, None when nothing of the kind was checked (not a 0 % rate)."""
    return flagged / checks if checks else None


def study(
    task: Task,
    *,
    seed: int = DEFAULT_SEED,
    seeds: int = 3,
    generations: int = 60,
    publish_every: int = 5,
    draws: int = 20,
    settings: Sequence[Setting] = ((OVERFIT_Z, HOLDOUT_FRACTION),),
) -> dict[str, object]:
    """The study's result (the JSON object `main` prints), a function of its arguments only."""
    # Each pair once: a repeated value would count its flags twice.
    settings = list(dict.fromkeys(settings))
    honest_checks = refit_checks = 0
    honest_flags, refit_flags, cheat_flags = (dict.fromkeys(settings, 0) for _ in range(3))
    # Draws of one template share most rows, so its flags are not independent: how many
    # honest publications drew any flag says how far the false flags spread.
    flagged_publications = dict.fromkeys(settings, 0)
    gaps: list[float] = []

    def seeds_of(kind: str, run: int, generation: int) -> list[bytes]:
        return [draw_seed(kind, run, generation, d) for d in range(draws)]

    runs = range(seed, seed + seeds)
    for run in runs:
        evo = Evolution(task, seed=run)
        for gen in range(1, generations + 1):
            evo.step()
            if gen % publish_every == 0:
                best = evo.best
                claimed = float(best.task_fitness)
                drawn = seeds_of("honest", run, gen)
                honest = flags(task, best.genome, claimed, drawn, settings)
                _add(honest_flags, honest)
                _add(flagged_publications, {key: int(n > 0) for key, n in honest.items()})
                honest_checks += draws
                gaps.append(task.score(best.genome, "val") - task.score(best.genome, "test"))
                if task.kind == "classification":
                    # The simulator's `overfit` strategy: this best, refitted on val.
                    refit = refit_on_validation(task, best.genome)
                    refit_claim = float(task.fitness([refit], "val")[0])
                    drawn = seeds_of("refit", run, gen)
                    _add(refit_flags, flags(task, refit, refit_claim, drawn, settings))
                    refit_checks += draws
    cheat_checks = 0
    if task.kind == "classification":
        for run in runs:
            genome = refit_on_validation(task, random_features(task, run))
            claimed = float(task.fitness([genome], "val")[0])
            _add(cheat_flags, flags(task, genome, claimed, seeds_of("cheat", run, 0), settings))
            cheat_checks += draws

    def counts(key: Setting) -> dict[str, float | int | None]:
        return {
            "z": key[0],
            "fraction": key[1],
            "false_flags": honest_flags[key],
            "false_flag_rate": _rate(honest_flags[key], honest_checks),
            "false_flagged_publications": flagged_publications[key],
            "overfit_flagged": cheat_flags[key],
            "detection_rate": _rate(cheat_flags[key], cheat_checks),
            "refit_flagged": refit_flags[key],
            "refit_detection_rate": _rate(refit_flags[key], refit_checks),
        }

    first = counts(settings[0])
    return {
        "task": task.name,
        "seed": seed,
        "seeds": seeds,
        "generations": generations,
        "publish_every": publish_every,
        "draws": draws,
        "honest_publications": len(gaps),
        "honest_checks": honest_checks,
        "false_flags": first["false_flags"],
        "false_flag_rate": first["false_flag_rate"],
        "false_flagged_publications": first["false_flagged_publications"],
        "score": SCORE_NAMES[task.kind],
        "honest_val_minus_test_mean": float(np.mean(gaps)) if gaps else None,
        "honest_val_minus_test_max": float(np.max(gaps)) if gaps else None,
        "overfit_checks": cheat_checks,
        "overfit_flagged": first["overfit_flagged"],
        "detection_rate": first["detection_rate"],
        "refit_checks": refit_checks,
        "refit_flagged": first["refit_flagged"],
        "refit_detection_rate": first["refit_detection_rate"],
        "sweep": [counts(key) for key in settings],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits", help="a data or control task (digits)")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED,
        help=f"the study's randomness: run k evolves with seed S+k (so --seed 0 and 1 share all "
        f"runs but one: not independent replicates), and the held-out draws "
        f"(default {DEFAULT_SEED})",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, default=3, help="evolution runs")
    parser.add_argument("--generations", type=int, default=60, help="generations per run (60)")
    parser.add_argument(
        "--publish-every", type=int, default=5,
        help="generations between two publications of a run's best, each checked (5)",
    )  # fmt: skip
    parser.add_argument(
        "--draws", type=int, default=20, help="held-out draws per check of a publication (20)"
    )
    parser.add_argument(
        "--z", type=float, nargs="+", default=[OVERFIT_Z], help=f"thresholds (default {OVERFIT_Z})"
    )
    parser.add_argument(
        "--fraction", type=float, nargs="+", default=[HOLDOUT_FRACTION],
        help=f"shares of the test split drawn (default {HOLDOUT_FRACTION})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for flag in COUNT_FLAGS:
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if any(not 0 < z < math.inf for z in args.z) or any(not 0 < f <= 1 for f in args.fraction):
        parser.error("--z must be finite and > 0, and --fraction in (0, 1]")
    if args.seed < 0:
        parser.error("--seed must be at least 0")
    settings = [(z, f) for f in args.fraction for z in args.z]
    try:
        task = get_task(args.task)
    except TaskError as exc:
        parser.error(str(exc))
    t0 = time.perf_counter()
    counts = {flag: getattr(args, flag) for flag in COUNT_FLAGS}
    result = study(task, seed=args.seed, settings=settings, **counts)
    print(json.dumps(result))
    print(f"holdout_study: {time.perf_counter() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
