"""The held-out test's error rates, measured (docs/reliability.md, "Overfitting").

- False flags: honest evolution runs (`evolution.engine.Evolution` with the task's defaults;
  it selects on the validation split, as every honest peer does) publish their best every
  `publish_every` generations; each publication is checked on `draws` held-out draws (random
  beacons), and a flag is a false positive.
- Detection: nets fitted on the validation split (random tanh features, output layer by least
  squares on the validation data: they classify every validation sample) on as many draws,
  and each honest publication refitted on the validation split (the simulator's `overfit`
  strategy); a draw that does not flag one is a miss.

`python -m qudag.simulations.holdout_study --task digits --seeds 3 --generations 60` prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence

import numpy as np

from qudag.evolution.engine import Evolution
from qudag.evolution.genome import Genome
from qudag.evolution.holdout import holdout_seed, measure_holdout
from qudag.evolution.tasks import Task, TaskError, get_task
from qudag.evolution.verify import claim_tolerance
from qudag.simulations.byzantine import random_features, refit_on_validation


def flags(task: Task, genome: Genome, claimed: float, draws: int) -> int:
    tolerance = claim_tolerance(task)
    return sum(
        measure_holdout(task, genome, claimed, holdout_seed(os.urandom(32), [])).overfit(
            claimed, tolerance
        )
        for _ in range(draws)
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--generations", type=int, default=60)
    parser.add_argument("--publish-every", type=int, default=5)
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args(argv)
    for flag in ("seeds", "generations", "publish_every", "draws"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    try:
        task = get_task(args.task)
    except TaskError as exc:
        parser.error(str(exc))
    t0 = time.perf_counter()
    honest_checks = honest_flags = refit_checks = refit_flags = 0
    gaps: list[float] = []
    for seed in range(args.seeds):
        evo = Evolution(task, seed=seed)
        for gen in range(1, args.generations + 1):
            evo.step()
            if gen % args.publish_every == 0:
                best = evo.best
                claimed = float(best.task_fitness)
                honest_flags += flags(task, best.genome, claimed, args.draws)
                honest_checks += args.draws
                gaps.append(claimed - task.score(best.genome, "test"))
                if task.kind == "classification":
                    # The simulator's `overfit` strategy: this best, refitted on val.
                    refit = refit_on_validation(task, best.genome)
                    refit_claim = float(task.fitness([refit], "val")[0])
                    refit_flags += flags(task, refit, refit_claim, args.draws)
                    refit_checks += args.draws
    cheat_checks = cheat_flags = 0
    if task.kind == "classification":
        for seed in range(args.seeds):
            genome = refit_on_validation(task, random_features(task, seed))
            claimed = float(task.fitness([genome], "val")[0])
            cheat_flags += flags(task, genome, claimed, args.draws)
            cheat_checks += args.draws
    print(
        json.dumps(
            {
                "task": task.name,
                "honest_publications": len(gaps),
                "honest_checks": honest_checks,
                "false_flags": honest_flags,
                "false_flag_rate": honest_flags / max(1, honest_checks),
                "honest_val_minus_test_mean": float(np.mean(gaps)) if gaps else None,
                "honest_val_minus_test_max": float(np.max(gaps)) if gaps else None,
                "overfit_checks": cheat_checks,
                "overfit_flagged": cheat_flags,
                "detection_rate": cheat_flags / max(1, cheat_checks),
                "refit_checks": refit_checks,
                "refit_flagged": refit_flags,
                "refit_detection_rate": refit_flags / max(1, refit_checks),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
