"""The collective study's NEAT baseline: neat-python's nets, our fitness, an evaluation budget."""

from __future__ import annotations

import random
from typing import Any

import neat
import numpy as np
import pytest

from qudag.evolution.genome import Genome
from qudag.evolution.tasks import get_task
from qudag.simulations.neat_baseline import (
    ACTIVATIONS,
    NeatNet,
    _scorer,
    neat_baseline,
    neat_config,
    neat_run,
)


def test_activations_are_neats_definitions() -> None:
    z = np.concatenate([np.linspace(-30.0, 30.0, 601), [-1e-3, 0.0, 1e-3, 13.0, -13.0]])
    for name, fn in ACTIVATIONS.items():
        want = np.array([neat.activations.ActivationFunctionSet().get(name)(float(v)) for v in z])
        np.testing.assert_allclose(fn(z), want, rtol=1e-12, atol=1e-15, err_msg=name)


def mutated_genomes(config: Any, mutations: int, seed: int) -> list[Any]:
    saved = random.getstate()
    try:
        population = neat.Population(config, seed=seed)
        genomes = list(population.population.values())
        for g in genomes:
            for _ in range(mutations):
                g.mutate(config.genome_config)
    finally:
        random.setstate(saved)
    return genomes


def test_vectorised_outputs_equal_neats_activate() -> None:
    config = neat_config(5, 3, 30)
    genomes = mutated_genomes(config, 40, seed=7)
    hidden = [len(g.nodes) - 3 for g in genomes]
    assert sum(h > 0 for h in hidden) >= 10  # many nets with hidden nodes
    assert len({n.activation for g in genomes for n in g.nodes.values()}) >= 3
    assert any(not c.enabled for g in genomes for c in g.connections.values())
    # nodes without incoming links (neat's "bias neurons") are covered too
    assert any(n.sources.size == 0 for g in genomes for n in NeatNet(g, config).nodes)
    x = np.random.default_rng(1).standard_normal((6, 5)) * 2.0
    for g in genomes:
        net = neat.nn.FeedForwardNetwork.create(g, config)
        want = np.array([net.activate(row.tolist()) for row in x])
        got = NeatNet(g, config)(x)
        assert got.shape == (6, 3)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def linear_pair(task_name: str, seed: int) -> tuple[Any, Any, Genome]:
    """A NEAT genome with identity outputs and no hidden nodes, and the same net as ours."""
    task = get_task(task_name)
    config = neat_config(task.n_inputs, task.n_outputs, 2)
    (g, *_) = mutated_genomes(config, 0, seed)
    rng = np.random.default_rng(seed)
    weights = np.zeros((task.n_inputs, task.n_outputs), dtype=np.float32)
    biases = (rng.standard_normal(task.n_outputs) * 0.5).astype(np.float32)
    for (i, o), cg in g.connections.items():
        cg.weight = float(np.float32(rng.standard_normal() * 0.5))
        weights[-i - 1, o] = cg.weight
    for o in range(task.n_outputs):
        g.nodes[o].activation = "identity"
        g.nodes[o].bias = float(biases[o])
    ours = Genome(task.n_inputs, (task.n_outputs,), ("identity",), (weights,), (biases,))
    return g, config, ours


@pytest.mark.parametrize("task_name", ["iris", "gym:Pendulum-v1"])
def test_neat_nets_get_the_tasks_own_fitness(task_name: str) -> None:
    # A linear net written as a NEAT genome and as our genome: same validation fitness (ours
    # computes in float32, NEAT in float64).
    task = get_task(task_name)
    for seed in range(3):
        g, config, ours = linear_pair(task_name, seed)
        theirs = _scorer(task)([NeatNet(g, config)])[0]
        assert theirs == pytest.approx(task.fitness([ours], "val")[0], rel=1e-4, abs=1e-5)


def test_reaches_an_easy_target_within_the_budget_as_a_function_of_the_seed() -> None:
    state = random.getstate()
    got = neat_baseline("iris", 16, 400, 0, 0.9)
    # an evaluation count, past the first generation (evolution found it), within the budget
    assert got is not None and got == int(got) and 16 < got <= 400
    assert random.getstate() == state  # the caller's random state is left alone
    assert neat_baseline("iris", 16, 400, 0, 0.9) == got
    runs = [neat_run("iris", 16, 400, s, 0.9) for s in range(3)]
    assert all(r.evaluations == r.evaluations_to_target and r.best_fitness >= 0.9 for r in runs)
    assert len({r.evaluations for r in runs}) > 1  # the seed matters


def test_an_unreachable_target_uses_exactly_the_budget() -> None:
    # 100 is not a multiple of the population: the last generation is cut short.
    run = neat_run("xor", 16, 100, 3, 1.01)
    assert run.evaluations_to_target is None
    assert run.evaluations == 100
    assert run.generations == 7 and 0.0 < run.best_fitness <= 1.0
    assert neat_baseline("xor", 16, 100, 3, 1.01) is None
    assert neat_run("xor", 16, 0, 3, 1.01).evaluations == 0
