"""The held-out measurement (evolution/holdout.py) measures what the task's own code measures:
its episodes are the task's episodes on fresh seeds, its data score the task's fitness on the
drawn rows, and it runs in one batch."""

from __future__ import annotations

import os

import numpy as np

from qudag.evolution import tasks
from qudag.evolution.genome import Genome
from qudag.evolution.holdout import (
    episode_returns,
    episode_seeds,
    holdout_indices,
    holdout_seed,
    measure_holdout,
)
from qudag.evolution.tasks import get_task


def random_genome(name: str, seed: int = 0) -> Genome:
    task = get_task(name)
    rng = np.random.default_rng(seed)
    return Genome.random(rng, task.n_inputs, list(task.default_hidden), task.n_outputs)


def test_control_held_out_score_is_the_tasks_mean_return_on_fresh_seeds() -> None:
    task = get_task("cartpole")
    genome = random_genome("cartpole")
    seed = holdout_seed(os.urandom(32), [])
    seeds = episode_seeds(seed)
    assert not set(seeds) & {s for split in tasks.CARTPOLE_SEEDS.values() for s in split}
    held = measure_holdout(task, genome, 500.0, seed)
    assert held.n == 20
    assert held.fitness == tasks._cartpole_returns([genome], seeds, task)[0]
    per = episode_returns(task, genome, seeds)
    assert [tasks._cartpole_returns([genome], [s], task)[0] for s in seeds] == per.tolist()


def test_data_held_out_score_is_the_tasks_fitness_on_the_drawn_rows() -> None:
    task = get_task("digits")
    genome = random_genome("digits")
    seed = holdout_seed(b"\x05" * 32, [b"\x06" * 32])
    rows = holdout_indices(seed, 360)
    assert len(rows) == 324 and len(set(rows.tolist())) == 324
    held = measure_holdout(task, genome, 0.1, seed)
    x, y = task.split("test")
    from qudag.evolution import evaluate as ev

    out = ev.forward_many([genome], x[rows])[0]
    assert held.fitness == ev.classification_fitness_stack(out[None], y[rows])[0]
    assert held.stderr > 0
    # Another beacon, another draw.
    other = holdout_indices(holdout_seed(b"\x05" * 32, [b"\x07" * 32]), 360)
    assert other.tolist() != rows.tolist()
