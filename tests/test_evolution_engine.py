"""The loop: seeded determinism, resume == continue, batch == single bits, migrants, claims."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from qudag.evolution import checkpoint as ckpt
from qudag.evolution.engine import Evolution, EvolutionConfig, default_config
from qudag.evolution.genome import Genome
from qudag.evolution.tasks import get_task
from qudag.evolution.verify import CLAIM_TOLERANCE, claim_holds, verify_claim


def _small(task: str, **kw: object) -> EvolutionConfig:
    t = get_task(task)
    base = {"population": 8, "lamarck_steps": 5, "structure_rate": 0.6, "crossover_rate": 0.5}
    base.update(kw)
    return default_config(t, **base)


def _population_bytes(evo: Evolution) -> list[bytes]:
    return [ind.genome.to_bytes() for ind in evo.population]


def _fitness_bits(evo: Evolution) -> bytes:
    return np.array([ind.fitness.values for ind in evo.population]).tobytes()


def test_seeded_runs_are_bit_identical_and_leave_random_alone() -> None:
    a = Evolution("iris", _small("iris"), seed=7)
    random.seed(123)
    before = random.getstate()
    a.run(4)
    assert random.getstate() == before  # DEAP's global stream is saved and restored
    b = Evolution("iris", _small("iris"), seed=7)
    b.run(4)
    assert _population_bytes(a) == _population_bytes(b)
    assert _fitness_bits(a) == _fitness_bits(b)
    assert a.logbook == b.logbook
    c = Evolution("iris", _small("iris"), seed=8)
    c.run(4)
    assert _population_bytes(a) != _population_bytes(c)


@pytest.mark.parametrize("task", ["wine", "parity-3"])
def test_resume_equals_continue(task: str, tmp_path: Path) -> None:
    n = 6
    straight = Evolution(task, _small(task), seed=3)
    straight.run(n)

    first = Evolution(task, _small(task), seed=3)
    first.run(n // 2)
    path = ckpt.save_checkpoint(first, tmp_path)
    del first
    resumed = ckpt.load_checkpoint(path)  # fresh objects, as in a new process
    assert resumed.generation == n // 2
    resumed.run(n - n // 2)

    assert resumed.generation == straight.generation
    assert resumed.evaluations == straight.evaluations
    assert _population_bytes(resumed) == _population_bytes(straight)
    assert _fitness_bits(resumed) == _fitness_bits(straight)
    assert resumed.best.fitness.values == straight.best.fitness.values
    assert resumed.logbook == straight.logbook
    assert ckpt.to_bytes(resumed) == ckpt.to_bytes(straight)


def test_checkpoint_rejects_garbage_and_truncation(tmp_path: Path) -> None:
    evo = Evolution("xor", _small("xor"), seed=0)
    data = ckpt.to_bytes(evo)
    for bad in (b"", b"\x00" * 10, data[:-1], data + b"\x00"):
        with pytest.raises(ckpt.CheckpointError):
            ckpt.from_bytes(bad)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path / "missing")


def test_batch_and_single_fitness_bits_are_equal() -> None:
    rng = np.random.default_rng(11)
    for name in ("digits", "breast-cancer", "two-spirals"):
        t = get_task(name)
        shapes = [(16,), (16,), (7, 5), (16,), (), (7, 5)]
        gs = [
            Genome.random(rng, t.n_inputs, shapes[i % len(shapes)], t.n_outputs, act)
            for i, act in enumerate(["tanh", "relu", "sin", "sigmoid"] * 10)
        ]
        batch = t.fitness(gs)
        single = np.array([t.fitness([g])[0] for g in gs])
        assert batch.tobytes() == single.tobytes(), name
        reordered = t.fitness(gs[::-1])[::-1]
        assert reordered.tobytes() == batch.tobytes(), name


def test_inject_accepts_other_shapes_and_rejects_misfits() -> None:
    evo = Evolution("iris", _small("iris"), seed=1)
    rng = np.random.default_rng(0)
    migrants = [
        Genome.random(rng, 4, (3, 3), 3),  # other shape, same task: accepted
        Genome.random(rng, 5, (3,), 3),  # wrong input width
        Genome.random(rng, 4, (200, 60), 3),  # over the parameter limit
    ]
    evals = evo.evaluations
    assert evo.inject(migrants) == 1
    assert evo.evaluations == evals + 1
    assert len(evo.population) == 9
    assert any(ind.operator == "migrant" for ind in evo.population)
    evo.step()  # crossover with the odd-shaped migrant must work
    assert len(evo.population) == 8


def test_verify_claim_matches_the_engine() -> None:
    evo = Evolution("breast-cancer", _small("breast-cancer"), seed=2)
    evo.run(2)

    class Claim:
        task = "breast-cancer"
        task_version = 1
        genome = evo.best.genome
        fitness = evo.best.task_fitness

    assert verify_claim(Claim()) == evo.best.task_fitness
    ok, measured = claim_holds(Claim())
    assert ok and measured == Claim.fitness

    class Liar(Claim):
        fitness = evo.best.task_fitness + 10 * CLAIM_TOLERANCE + 0.01

    assert claim_holds(Liar())[0] is False

    class WrongVersion(Claim):
        task_version = 99

    with pytest.raises(ValueError, match="v99"):
        verify_claim(WrongVersion())


def test_hard_constraints_hold_for_every_individual() -> None:
    cfg = _small("digits", max_bytes=8_000, hidden=(16,), lamarck_steps=0, structure_rate=1.0)
    evo = Evolution("digits", cfg, seed=0)
    evo.run(3)
    assert all(ind.genome.n_bytes <= 8_000 for ind in evo.population + evo.hall_of_fame)


def test_xor_is_solved_quickly() -> None:
    evals = []
    for seed in range(5):
        evo = Evolution("xor", seed=seed)
        evo.run(100, stop_when_solved=True)
        assert evo.solved
        assert get_task("xor").score(evo.best.genome) == 1.0
        evals.append(evo.solved_at)
    assert float(np.median(evals)) <= 2000


def test_control_and_regression_tasks_run(tmp_path: Path) -> None:
    cp = Evolution("cartpole", default_config(get_task("cartpole"), population=4), seed=0)
    cp.step()
    assert cp.generation == 1 and 1.0 <= cp.best.task_fitness <= 500.0
    assert "adam" not in "".join(ind.operator for ind in cp.population)  # no gradients here

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    lines = ["a,b,y"] + [f"{a:.4f},{b:.4f},{3 * a - b + 0.5:.4f}" for a, b in x]
    path = tmp_path / "reg.csv"
    path.write_text("\n".join(lines) + "\n")
    task = get_task(f"csv:{path}")
    evo = Evolution(task, default_config(task, population=6), seed=0)
    evo.run(5)
    assert task.kind == "regression"
    assert evo.best.task_fitness > 0.9  # R^2 on validation
    # A csv run checkpoints and resumes like any other.
    again = ckpt.from_bytes(ckpt.to_bytes(evo))
    assert _population_bytes(again) == _population_bytes(evo)


def test_checkpoint_refuses_changed_task_data(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    rows = ["a,b,c"] + [f"{i % 7},{i % 5},{i % 2}" for i in range(30)]
    path.write_text("\n".join(rows) + "\n")
    evo = Evolution(f"csv:{path}", _small("iris", population=4, lamarck_steps=0), seed=0)
    data = ckpt.to_bytes(evo)
    assert ckpt.from_bytes(data).generation == 0
    rows[1] = "6,4,1"
    path.write_text("\n".join(rows) + "\n")  # same name, other data
    with pytest.raises(ckpt.CheckpointError, match="differ"):
        ckpt.from_bytes(data)
