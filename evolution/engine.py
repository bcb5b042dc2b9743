"""The generation loop: `Evolution.step()` runs one generation, `inject()` takes migrants.

A (mu + lambda) NSGA-II loop driven one generation at a time so the node can interleave it with
networking: each `step()` picks 2*lambda parents (`toolbox.select_parents`), makes lambda
children (crossover, one structural operator, self-adaptive Gaussian weight perturbation,
optional Lamarckian Adam steps, run stacked for all children of one shape; each with its
configured probability), evaluates all children in one batched call, and keeps mu survivors
with `toolbox.select` (NSGA-II). Migrants passed to `inject()` are evaluated and join the
population; the next survival step decides their fate.

Reproducibility: all randomness comes from one `numpy.random.Generator` (PCG64) owned by the
run. DEAP's own functions draw from Python's global `random` module; `step()` saves that
global state, re-seeds it from the run's generator and restores it afterwards, so whatever DEAP
draws is a function of the run's generator state alone (which the checkpoint stores), and the
host program's `random` stream is left untouched. Seeded runs are bit-identical on one machine,
and resuming a checkpoint continues exactly as if the run had not stopped.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
from deap import base

from qudag.evolution import toolbox as tbx
from qudag.evolution.genome import ACTIVATIONS, Genome, GenomeError, GenomeLimits
from qudag.evolution.tasks import Task, TaskError, get_task
from qudag.evolution.toolbox import Individual

LOGBOOK_FIELDS: tuple[str, ...] = (
    "gen",
    "evals",
    "best",
    "mean",
    "median",
    "best_params",
    "min_params",
    "max_params",
    "sigma",
)


@dataclass(frozen=True)
class EvolutionConfig:
    """Search settings. `default_config(task)` gives tuned defaults per task."""

    population: int = 24
    offspring: int = 0  # children per generation; 0 = same as population
    hidden: tuple[int, ...] = ()  # initial hidden layers; () = the task's default_hidden
    activation: str = "tanh"
    max_bytes: int = 51_200  # hard constraint: 50 KiB of float32 parameters
    max_params: int = 12_800  # hard constraint
    max_layers: int = 8
    max_width: int = 256
    crossover_rate: float = 0.2
    structure_rate: float = 0.2
    weight_rate: float = 0.5
    learn_rate: float = 1.0  # probability a child gets Lamarckian Adam steps (if enabled)
    lamarck_steps: int = 0
    lamarck_lr: float = 0.01
    lamarck_batch: int = 0
    lamarck_weight_decay: float = 0.0
    sigma_init: float = 0.1
    sigma_tau: float = 0.5
    # Relative odds of add_neuron, remove_neuron, add_layer, remove_layer, change_activation.
    structure_weights: tuple[float, ...] = (1.0, 1.0, 0.3, 0.3, 0.5)
    hof_size: int = 5

    def __post_init__(self) -> None:
        if self.population < 2:
            raise ValueError("population must be at least 2")
        if self.offspring < 0:
            raise ValueError("offspring must be >= 0")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")
        if len(self.structure_weights) != len(tbx.STRUCTURAL_OPERATORS):
            raise ValueError("one structure weight per structural operator")
        if self.max_bytes < 4 or self.max_params < 1:
            raise ValueError("max_bytes and max_params must be positive")
        for name in ("crossover_rate", "structure_rate", "weight_rate", "learn_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")

    @property
    def limits(self) -> GenomeLimits:
        return GenomeLimits(
            max_layers=self.max_layers,
            max_width=self.max_width,
            max_params=min(self.max_params, self.max_bytes // 4),
        )

    @property
    def n_offspring(self) -> int:
        return self.offspring or self.population

    def to_dict(self) -> dict[str, Any]:
        """Canonical map (field order = declaration order; tuples as lists)."""
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> EvolutionConfig:
        names = [f.name for f in fields(cls)]
        if list(value) != names:
            raise ValueError("config fields do not match this version")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            v = value[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**kwargs)


def default_config(task: Task, **overrides: Any) -> EvolutionConfig:
    """Defaults tuned per task family (measured; see docs/benchmarks.md)."""
    if task.kind == "control":
        base_cfg = EvolutionConfig(population=40, weight_rate=0.9, structure_rate=0.1)
    elif task.name == "digits":
        base_cfg = EvolutionConfig(
            population=12,
            hidden=(160,),
            activation="relu",
            lamarck_steps=50,
            lamarck_lr=0.003,
            lamarck_batch=64,
            lamarck_weight_decay=3e-3,
            weight_rate=0.1,
            sigma_init=0.01,
            structure_rate=0.1,
        )
    elif task.solved_fitness is not None:  # memorisation tasks: xor, parity-N, two-spirals
        base_cfg = EvolutionConfig(
            population=10, lamarck_steps=25, lamarck_lr=0.05, weight_rate=0.3
        )
    else:
        base_cfg = EvolutionConfig(
            population=20, lamarck_steps=20, lamarck_lr=0.01, lamarck_batch=32, weight_rate=0.2
        )
    # A published task may bound genomes tighter than the defaults: a net over its limits
    # would be a false claim to every peer that re-measures it.
    bounds = {
        "max_params": min(base_cfg.max_params, task.limits.max_params),
        "max_layers": min(base_cfg.max_layers, task.limits.max_layers),
        "max_width": min(base_cfg.max_width, task.limits.max_width),
    }
    return replace(base_cfg, **(bounds | overrides))


def _hof_key(ind: Individual) -> tuple[float, float, float, bytes]:
    f, nbytes, lat = ind.fitness.values
    return (-f, nbytes, lat, ind.id)


class Evolution:
    """One peer's evolving population for one task. See the module doc.

    `Evolution(task, config, seed)` builds and evaluates the first population (generation 0).
    """

    def __init__(
        self,
        task: Task | str,
        config: EvolutionConfig | None = None,
        seed: int = 0,
        *,
        _restore: dict[str, Any] | None = None,
    ) -> None:
        self.task: Task = get_task(task) if isinstance(task, str) else task
        self.config: EvolutionConfig = config or default_config(self.task)
        self.seed = int(seed)
        self.limits = self.config.limits
        self.rng = np.random.default_rng(self.seed)
        self.generation = 0
        self.evaluations = 0
        self.gradient_steps = 0
        self.solved_at: int | None = None  # evaluations when the task was first solved
        self.population: list[Individual] = []
        self.hall_of_fame: list[Individual] = []
        self.logbook: list[dict[str, float | int]] = []
        self.toolbox: base.Toolbox = self._make_toolbox()
        if _restore is not None:
            return  # checkpoint.py fills the state in
        hidden = self.config.hidden or self.task.default_hidden
        try:
            self.limits.check(self.task.n_inputs, (*hidden, self.task.n_outputs))
        except GenomeError as exc:
            raise TaskError(f"initial shape does not fit the limits: {exc}") from None
        genomes = [self._random_genome(hidden) for _ in range(self.config.population)]
        self.population = [Individual(g, self.config.sigma_init, (), "init", 0) for g in genomes]
        self._evaluate(self.population)
        self._update_hof(self.population)
        self._record()

    # --- construction ------------------------------------------------------------------
    def _make_toolbox(self) -> base.Toolbox:
        c = self.config
        return tbx.make_toolbox(
            self.task,
            self.limits,
            self.rng,
            lamarck_steps=c.lamarck_steps,
            lamarck_lr=c.lamarck_lr,
            lamarck_batch=c.lamarck_batch,
            lamarck_weight_decay=c.lamarck_weight_decay,
            sigma_tau=c.sigma_tau,
        )

    def _random_genome(self, hidden: Sequence[int]) -> Genome:
        g = Genome.random(
            self.rng, self.task.n_inputs, hidden, self.task.n_outputs, self.config.activation
        )
        if self.task.kind == "regression" and self.task.y_train is not None:
            # Start the output at the training mean: R^2 = 0 instead of hugely negative.
            biases = list(g.biases)
            biases[-1] = np.full(1, np.mean(self.task.y_train), dtype=np.float32)
            g = g.with_params(g.weights, biases)
        return g

    # --- one generation ----------------------------------------------------------------
    def step(self) -> dict[str, float | int]:
        """Run one generation; returns its logbook row."""
        saved = random.getstate()
        random.seed(int(self.rng.integers(0, 2**63)))
        try:
            n_children = self.config.n_offspring
            parents = self.toolbox.select_parents(self.population, 2 * n_children)
            made = [self._make_child(parents[2 * i], parents[2 * i + 1]) for i in range(n_children)]
            children = [child for child, _ in made]
            self._learn([child for child, learn in made if learn])
            self._evaluate(children)
            self.generation += 1
            self.population = list(
                self.toolbox.select(self.population + children, self.config.population)
            )
            self._update_hof(children)
            return self._record()
        finally:
            random.setstate(saved)

    def run(
        self,
        generations: int,
        callback: Callable[[Evolution, dict[str, float | int]], None] | None = None,
        stop_when_solved: bool = False,
    ) -> Individual:
        """`generations` steps (fewer if `stop_when_solved` and the task is solved)."""
        for _ in range(generations):
            if stop_when_solved and self.solved_at is not None:
                break
            row = self.step()
            if callback is not None:
                callback(self, row)
        return self.best

    def _learn(self, children: Sequence[Individual]) -> None:
        """Lamarckian Adam steps for the chosen children, one stacked call per shape."""
        groups: dict[tuple[object, ...], list[Individual]] = {}
        for child in children:
            groups.setdefault(child.genome.shape_key(), []).append(child)
        for members in groups.values():
            learned = self.toolbox.learn_batch([c.genome for c in members])
            for child, genome in zip(members, learned, strict=True):
                child.genome = genome
                child.operator = f"{child.operator}+adam" if child.operator != "copy" else "adam"
                self.gradient_steps += self.config.lamarck_steps

    def _make_child(self, p1: Individual, p2: Individual) -> tuple[Individual, bool]:
        """A varied child and whether it should get Lamarckian steps (see `_learn`)."""
        c = self.config
        tb = self.toolbox
        genome = p1.genome
        sigma = p1.sigma
        parents: tuple[bytes, ...] = (p1.id,)
        applied: list[str] = []
        if p2 is not p1 and self.rng.random() < c.crossover_rate:
            child = tb.mate(genome, p2.genome)
            if child is not genome:
                genome = child
                parents = (p1.id, p2.id) if p2.id != p1.id else (p1.id,)
                sigma = float(np.sqrt(p1.sigma * p2.sigma))
                applied.append("crossover")
        if self.rng.random() < c.structure_rate:
            w = np.asarray(c.structure_weights, dtype=np.float64)
            name = tbx.STRUCTURAL_OPERATORS[int(self.rng.choice(len(w), p=w / w.sum()))]
            child = getattr(tb, name)(genome)
            if child is not genome:
                genome = child
                applied.append(name)
        if self.rng.random() < c.weight_rate:
            sigma = tb.adapt_sigma(sigma)
            genome = tb.mutate_weights(genome, sigma=sigma)
            applied.append("mutate_weights")
        learn = tbx.has_learn(tb) and self.rng.random() < c.learn_rate
        child = Individual(genome, sigma, parents, "+".join(applied) or "copy", self.generation + 1)
        return child, learn

    # --- migrants ----------------------------------------------------------------------
    def inject(self, genomes: Sequence[Genome], operator: str = "migrant") -> int:
        """Evaluate foreign genomes and add those that fit the task and limits; returns count.

        Genomes of a different input/output width or over the limits are skipped (checked
        from their declared shape, before any evaluation). They compete in the next
        survival selection and can be crossover donors of any shape.
        """
        accepted: list[Individual] = []
        for g in genomes:
            try:
                self.task.check(g, self.limits)
            except GenomeError:
                continue
            accepted.append(Individual(g, self.config.sigma_init, (), operator, self.generation))
        if accepted:
            self._evaluate(accepted)
            self.population.extend(accepted)
            self._update_hof(accepted)
        return len(accepted)

    # --- bookkeeping -------------------------------------------------------------------
    def _evaluate(self, individuals: Sequence[Individual]) -> None:
        values = self.toolbox.evaluate([ind.genome for ind in individuals])
        for ind, v in zip(individuals, values, strict=True):
            ind.fitness.values = v
        self.evaluations += len(individuals)
        if self.solved_at is None and any(
            self.task.solved(ind.task_fitness) for ind in individuals
        ):
            self.solved_at = self.evaluations

    def _update_hof(self, candidates: Sequence[Individual]) -> None:
        merged: dict[bytes, Individual] = {ind.id: ind for ind in self.hall_of_fame}
        for ind in candidates:
            merged.setdefault(ind.id, ind)
        self.hall_of_fame = sorted(merged.values(), key=_hof_key)[: self.config.hof_size]

    def _record(self) -> dict[str, float | int]:
        fits = np.array([ind.task_fitness for ind in self.population], dtype=np.float64)
        params = [ind.genome.n_params for ind in self.population]
        best = self.best
        row: dict[str, float | int] = {
            "gen": self.generation,
            "evals": self.evaluations,
            "best": best.task_fitness,
            "mean": float(np.mean(fits)),
            "median": float(np.median(fits)),
            "best_params": best.genome.n_params,
            "min_params": min(params),
            "max_params": max(params),
            "sigma": float(np.median([ind.sigma for ind in self.population])),
        }
        self.logbook.append(row)
        return row

    @property
    def best(self) -> Individual:
        """Highest validation fitness seen so far (ties: fewer bytes, lower latency)."""
        return self.hall_of_fame[0]

    @property
    def solved(self) -> bool:
        return self.solved_at is not None
