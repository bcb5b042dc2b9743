"""What the held-out check adds to a verifier's re-measurement (issue 17, section 3).

Run: `python benchmarks/bench_holdout.py [--quick]`. For each task, the median time of the claim
check (`evolution.verify.remeasure`: the validation split or val episodes) is the baseline, and
the held-out measurement for one draw (`remeasure_holdout`: the hash-ranked test subset or 20
fresh episodes) is printed beside it with its ratio. The nets are the engine's initial
population shapes for the task (a random genome of the task's default hidden sizes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from qudag.evolution.genome import Genome
from qudag.evolution.holdout import holdout_seed
from qudag.evolution.tasks import get_task
from qudag.evolution.template import from_genome
from qudag.evolution.verify import remeasure, remeasure_holdout


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats = 3 if args.quick else 11
    tasks = ("digits", "cartpole") if args.quick else ("digits", "mnist1d", "cartpole")
    print(f"{'task':<10} {'claim check ms':>15} {'held-out ms':>12} {'ratio':>6}")
    for name in tasks:
        task = get_task(name)
        rng = np.random.default_rng(0)
        genome = Genome.random(rng, task.n_inputs, list(task.default_hidden), task.n_outputs)
        template = from_genome(genome, task, 0.5, latency_repeats=1)
        seed = holdout_seed(os.urandom(32), [])
        remeasure_holdout(template, seed)  # warm-up (task data, episode code)
        claim = median_ms(partial(remeasure, template), repeats)
        held = median_ms(partial(remeasure_holdout, template, seed), repeats)
        print(f"{name:<10} {claim:>15.2f} {held:>12.2f} {held / claim:>6.2f}")


if __name__ == "__main__":
    main()
