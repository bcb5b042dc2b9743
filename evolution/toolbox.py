"""The DEAP toolbox: operators, evaluation and selection registered by name.

The engine only calls `toolbox.<name>(...)`, so an experiment can swap any operator with
`toolbox.register(name, fn)` without touching the loop. Individuals are plain `Individual`
objects (a `Genome` plus a DEAP `Fitness`), never DEAP `creator` classes, and never pickled:
they cross boundaries only as `Genome.to_bytes()` (see `checkpoint.py`).

Objectives (NSGA-II weights (+1, -1, -1)):
1. task fitness on the validation split (maximise);
2. parameter bytes, `Genome.n_bytes` (minimise);
3. latency, as a deterministic proxy (minimise): multiply-adds per sample plus
   `LAYER_OVERHEAD_MACS` per layer. Measured wall-clock latency would make selection, and so
   seeded runs and resumes, non-reproducible; templates still carry a *measured* latency.

Selection: survival is NSGA-II (`deap.tools.selNSGA2`) over those objectives, which keeps a
spread of sizes; mating picks parents by binary tournament on the objectives compared
lexicographically (fitness first, then smaller bytes), which keeps the search moving on the task.
Hard constraints (max bytes, max parameters) are enforced by the `GenomeLimits` the operators
check, so no over-limit genome is ever created or evaluated.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import blake3
import numpy as np
from deap import base, tools

from qudag.evolution import operators as ops
from qudag.evolution.evaluate import flops
from qudag.evolution.genome import Genome, GenomeLimits
from qudag.evolution.tasks import Task

# One numpy call per layer costs roughly this many multiply-adds of BLAS time on tiny nets.
LAYER_OVERHEAD_MACS = 1000


class Objectives(base.Fitness):  # type: ignore[misc]  # DEAP ships no type hints
    """(fitness, bytes, latency proxy): maximise, minimise, minimise."""

    weights = (1.0, -1.0, -1.0)


def genome_id(genome: Genome) -> bytes:
    """BLAKE3 of the genome's canonical bytes: the id used for in-run genealogy."""
    return blake3.blake3(genome.to_bytes()).digest()


@dataclass(eq=False)
class Individual:
    """A genome with its search state: step size, objectives and where it came from."""

    genome: Genome
    sigma: float
    parents: tuple[bytes, ...] = ()
    operator: str = "init"
    born: int = 0
    fitness: Objectives = field(default_factory=Objectives)
    _id: bytes = b""

    @property
    def id(self) -> bytes:
        if not self._id:
            self._id = genome_id(self.genome)
        return self._id

    @property
    def task_fitness(self) -> float:
        return float(self.fitness.values[0])


def latency_proxy(genome: Genome) -> int:
    """Deterministic latency stand-in: MACs per sample + a fixed cost per layer."""
    return flops(genome) + LAYER_OVERHEAD_MACS * len(genome.layer_sizes)


def evaluate(
    task: Task, limits: GenomeLimits, genomes: Sequence[Genome]
) -> list[tuple[float, float, float]]:
    """Objective tuples for a batch of genomes (one batched fitness call)."""
    fit = task.fitness(genomes, "val", limits)
    return [
        (float(f), float(g.n_bytes), float(latency_proxy(g)))
        for f, g in zip(fit, genomes, strict=True)
    ]


def select_parents(
    rng: np.random.Generator, population: Sequence[Individual], k: int, tournsize: int = 2
) -> list[Individual]:
    """k tournament winners, objectives compared lexicographically (fitness first)."""
    n = len(population)
    picks = rng.integers(0, n, size=(k, tournsize))
    chosen = []
    for row in picks:
        best = population[int(row[0])]
        for i in row[1:]:
            cand = population[int(i)]
            if cand.fitness.wvalues > best.fitness.wvalues:
                best = cand
        chosen.append(best)
    return chosen


def make_toolbox(
    task: Task,
    limits: GenomeLimits,
    rng: np.random.Generator,
    *,
    lamarck_steps: int = 0,
    lamarck_lr: float = 0.01,
    lamarck_batch: int = 0,
    lamarck_weight_decay: float = 0.0,
    sigma_tau: float = 0.5,
) -> base.Toolbox:
    """A toolbox bound to one task, limits and random generator (see module doc)."""
    tb = base.Toolbox()
    tb.register("evaluate", evaluate, task, limits)
    tb.register("adapt_sigma", ops.adapt_sigma, rng=rng, tau=sigma_tau)
    tb.register("mutate_weights", ops.perturb_weights, rng=rng)
    tb.register("add_neuron", ops.add_neuron, rng=rng, limits=limits)
    tb.register("remove_neuron", ops.remove_neuron, rng=rng, limits=limits)
    tb.register("add_layer", ops.add_layer, rng=rng, limits=limits)
    tb.register("remove_layer", ops.remove_layer, rng=rng, limits=limits)
    tb.register("change_activation", ops.change_activation, rng=rng)
    tb.register("mate", ops.crossover, rng=rng)
    if lamarck_steps > 0 and task.kind != "control":
        x, y = task.split("train")
        # One set of learning settings for both forms, so single and batched steps agree.
        learning = dict(
            x=x,
            y=y,
            kind=task.kind,
            rng=rng,
            steps=lamarck_steps,
            lr=lamarck_lr,
            batch_size=lamarck_batch,
            weight_decay=lamarck_weight_decay,
        )
        tb.register("learn", ops.adam_steps, **learning)
        tb.register("learn_batch", ops.adam_steps_batch, **learning)
    tb.register("select_parents", select_parents, rng)
    tb.register("select", tools.selNSGA2)
    return tb


STRUCTURAL_OPERATORS: tuple[str, ...] = (
    "add_neuron",
    "remove_neuron",
    "add_layer",
    "remove_layer",
    "change_activation",
)


def has_learn(tb: base.Toolbox) -> bool:
    """Whether the Lamarckian operator is enabled (registered) in this toolbox."""
    return isinstance(getattr(tb, "learn_batch", None), functools.partial)
