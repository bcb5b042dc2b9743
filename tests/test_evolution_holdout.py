"""The held-out measurement (evolution/holdout.py) measures what the task's own code measures:
its episodes are the task's episodes on fresh seeds, its data score the task's fitness on the
drawn rows, and it runs in one batch."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from qudag.evolution import tasks, verify
from qudag.evolution.evaluate import NONFINITE_FITNESS
from qudag.evolution.genome import Genome
from qudag.evolution.holdout import (
    episode_returns,
    episode_seeds,
    holdout_indices,
    holdout_seed,
    measure_holdout,
    private_score,
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


def _regression_task(tmp_path: Path) -> tasks.Task:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3))
    rows = [",".join(f"{v:.5f}" for v in (*r, r[0] - 2 * r[1] + 0.3 * r[2])) for r in x]
    path = tmp_path / "reg.csv"
    path.write_text("a,b,c,y\n" + "\n".join(rows) + "\n")
    return get_task(f"csv:{path}:target=y:kind=regression")


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_the_whole_test_split_drawn_or_held_privately_scores_the_claim_codes_bits(
    kind: str, tmp_path: Path
) -> None:
    """One per-kind fitness step (`Task.output_fitness`): a held-out draw of every test row,
    and the same rows as a task author's private rows, score exactly what `Task.fitness`
    (the claim's code) scores on the test split."""
    task = get_task("digits") if kind == "classification" else _regression_task(tmp_path)
    for s in range(3):
        rng = np.random.default_rng(s)
        genome = Genome.random(rng, task.n_inputs, list(task.default_hidden), task.n_outputs)
        claim = float(task.fitness([genome], "test")[0])
        held = measure_holdout(task, genome, claim, holdout_seed(bytes([s]) * 32, []), 1.0)
        assert held.n == task.split("test")[1].shape[0]
        assert held.fitness.hex() == claim.hex()
        private = private_score(task, genome, *task.split("test"))
        assert private.fitness.hex() == claim.hex()


def test_a_control_task_has_no_data_rows_to_score() -> None:
    task = get_task("cartpole")
    with pytest.raises(tasks.TaskError, match="control task"):
        task.output_fitness(np.zeros((1, 4, 2), dtype=np.float32), np.zeros(4, dtype=np.int64))


@dataclass(frozen=True)
class _Claim:
    task: str
    task_version: int
    genome: Genome
    fitness: float


def test_remeasure_with_holdout_resolves_the_task_once_per_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The claim check and the held-out score of one template share one task lookup, and
    each outcome is what the separate steps give."""
    task = get_task("digits")
    genome = random_genome("digits")
    claim = float(task.fitness([genome], "val")[0])
    seed = holdout_seed(b"\x01" * 32, [b"\x02" * 32])
    looked_up: list[str] = []
    real = verify.get_task

    def counting(name: str) -> tasks.Task:
        looked_up.append(name)
        return real(name)

    monkeypatch.setattr(verify, "get_task", counting)
    honest = _Claim("digits", task.version, genome, claim)
    assert verify.remeasure_with_holdout(honest, seed) == (
        "measured",
        claim,
        measure_holdout(task, genome, claim, seed),
    )
    assert looked_up == ["digits"]
    # A false claim is refused on its own; what we cannot judge has no score at all.
    assert verify.remeasure_with_holdout(replace(honest, fitness=claim + 0.01), seed) == (
        "measured",
        claim,
        None,
    )
    status, measured, held = verify.remeasure_with_holdout(
        replace(honest, task_version=task.version + 1), seed
    )
    assert status.startswith("unknown task:") and measured is None and held is None
    misfit = _Claim("digits", task.version, random_genome("iris"), NONFINITE_FITNESS)
    assert verify.remeasure_with_holdout(misfit, seed) == ("measured", NONFINITE_FITNESS, None)
