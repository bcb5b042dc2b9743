"""Shared evolution strategies: peers pool perturbation seeds and returns, not weights.

Why this and not only migrants: in an island model a migrant helps a peer only when it beats
what the peer has, so N islands are mostly N independent searches, and a network of N peers
reaches a target little sooner than the best of N isolated peers (docs/studies.md). An
evolution strategy estimates a search gradient from many perturbations of one centre; a
perturbation is fixed by a 63-bit seed (its noise vector is regenerated from the seed), so a
peer's whole generation travels as (seed, return+, return-) triples of 24 bytes each, and
every peer that receives the results of N peers updates from N times as many samples as it
evaluated itself. This is the scheme with which OpenAI-ES scaled to 1,440 CPUs (Salimans et
al. 2017, "Evolution Strategies as a Scalable Alternative to Reinforcement Learning"), here
over the signed ledger instead of a broadcast between workers of one job.

The algorithm, one generation of one peer:

1. draw `pairs` seeds from the peer's own generator; evaluate the antithetic pairs
   centre +- sigma * eps(seed) on the task's fitness (validation split / episodes), so a
   perturbation's fitness is a claim any peer can re-measure bit for bit;
2. pool the peer's own results with the result sets of other peers received since the last
   update (the newest `max_sets` of them, at most one per author), rank the returns within
   each set (centred ranks in [-0.5, 0.5]: a set computed at an older or better centre keeps
   its own contrasts, and one liar's inflated returns weigh no more than an honest set), and
   take the gradient estimate
   g = sum_k (u+_k - u-_k) eps_k / (2 * n * sigma) over the n pairs of the pool;
3. a step of fixed length along the momentum of that estimate (or Adam: `optimizer`).

All peers of a task start from the same centre (a function of `start_seed` only), so while
every peer receives every result set they all hold the same centre and the network is one
large-population ES; late or lost result sets make the centres drift apart a little, and a
result set computed at another centre still estimates a nearby gradient. A result set
carries the BLAKE3 of the centre it was computed at, so a peer can count how many of the
sets it used were in step with it (`in_step` in the logbook).

The best perturbation ever evaluated is the peer's best individual: what it publishes as a
template, with its measured fitness as the claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import blake3
import numpy as np

from qudag.crypto.canonical import DecodeError, fields
from qudag.evolution.genome import ACTIVATIONS, DEFAULT_LIMITS, Genome, GenomeLimits
from qudag.evolution.tasks import Task, TaskError
from qudag.evolution.toolbox import Individual, latency_proxy

# Bounds of a result set as it crosses the network (checked before anything is allocated).
MAX_PAIRS = 256
CENTER_DIGEST_BYTES = 16
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class ESConfig:
    """Search settings of the shared ES. The defaults are the measured ones (docs/studies.md)."""

    pairs: int = 8  # antithetic pairs a peer evaluates per generation (2 * pairs evaluations)
    sigma: float = 0.1  # perturbation scale
    # `normalized` (the default): momentum (`beta1`) of the pooled gradient, and a step of
    # fixed length `step` * sqrt(n_params) along it; a larger pool buys a better direction,
    # not a longer step (longer steps were slower on mnist1d at 8 peers: docs/studies.md).
    # `adam`: Adam with step `lr` (per coordinate, normalised by the gradient's noise too).
    # `additive`: every set, ours or another peer's, adds lr * its own gradient estimate to
    # the centre, once, whenever it arrives; no momentum, no normalisation. Addition commutes,
    # so the centre is a function of *which* sets a peer has pooled, not of when they came:
    # peers that pooled the same sets hold the same centre whatever the network's delays, as
    # peers that hold the same vertices hold the same ledger.
    optimizer: str = "normalized"
    step: float = 0.01
    lr: float = 0.2  # adam and additive
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    hidden: tuple[int, ...] = ()  # () = the task's default hidden layers
    activation: str = "tanh"
    max_sets: int = 32  # foreign result sets pooled per update: bounds a peer's work per gen
    # 0: pool our fresh set with whatever arrived since the last update. D > 0: the update
    # after generation g pools exactly the sets of generation g - D (ours included), in a
    # canonical order, so every peer that received the same sets holds the same centre, bit
    # for bit: D generations must outlast the gossip of a set to every peer.
    delay: int = 0
    # > 0: pool only sets within this many generations of ours (a set from a peer far ahead
    # or behind was computed at a far-away centre); 0: any
    max_lag: int = 0
    start_seed: int = 0  # the shared starting centre
    # A migrant becomes our centre only if it beats our best by this fraction of |our best|.
    # A peer in step with the network gains nothing from one (its centre sums the same sets as
    # the migrant's author's), and each adoption moves its centre by the migrant's whole
    # perturbation, for good: on real daemons, runs where in-step peers kept adopting each
    # other's bests needed ~1.7x the generations (docs/studies.md, study 6). A peer that fell
    # behind (joined late, was cut off) sees migrants far better than its best and adopts.
    adopt_margin: float = 0.02

    def __post_init__(self) -> None:
        if not 1 <= self.pairs <= MAX_PAIRS:
            raise ValueError(f"pairs must be in 1..{MAX_PAIRS}")
        if not (self.sigma > 0 and self.lr > 0):
            raise ValueError("sigma and lr must be positive")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")
        if self.max_sets < 0:
            raise ValueError("max_sets must be >= 0")
        if not 0 <= self.delay <= 64:
            raise ValueError("delay must be in 0..64")
        if self.optimizer not in ("adam", "normalized", "additive"):
            raise ValueError("optimizer is normalized, additive or adam")
        if not self.step > 0:
            raise ValueError("step must be positive")
        if not self.adopt_margin >= 0:
            raise ValueError("adopt_margin must be >= 0")


@dataclass(frozen=True)
class ResultSet:
    """One peer's evaluated perturbations of one generation (the payload of an `es` vertex)."""

    task: str
    task_version: int
    generation: int
    n_params: int
    sigma: float
    center: bytes  # BLAKE3-128 of the centre's float32 bytes
    seeds: tuple[int, ...]
    returns: tuple[tuple[float, float], ...]  # (fitness of centre + sigma*eps, of centre - ...)

    def to_dict(self) -> dict[str, Any]:
        """The canonical map (key order is part of the format, docs/vertex-format.md)."""
        return {
            "task": self.task,
            "task_version": self.task_version,
            "generation": self.generation,
            "n_params": self.n_params,
            "sigma": self.sigma,
            "center": self.center,
            "seeds": list(self.seeds),
            "returns": [list(r) for r in self.returns],
        }

    @classmethod
    def from_dict(cls, value: Any) -> ResultSet:
        """Strict decode: exact keys and order, types, bounds, finite numbers."""
        v = fields(
            value,
            {
                "task": str,
                "task_version": int,
                "generation": int,
                "n_params": int,
                "sigma": float,
                "center": bytes,
                "seeds": list,
                "returns": list,
            },
            "es",
        )
        if not 0 < len(v["task"]) <= 256:
            raise DecodeError("range", "es.task length")
        for key in ("task_version", "generation"):
            if not 0 <= v[key] <= MAX_SEED:
                raise DecodeError("range", f"es.{key}")
        if not 1 <= v["n_params"] <= DEFAULT_LIMITS.max_params:
            raise DecodeError("range", "es.n_params")
        if not (np.isfinite(v["sigma"]) and 0.0 < v["sigma"] <= 10.0):
            raise DecodeError("range", "es.sigma")
        if len(v["center"]) != CENTER_DIGEST_BYTES:
            raise DecodeError("range", "es.center")
        seeds, returns = v["seeds"], v["returns"]
        if not 1 <= len(seeds) <= MAX_PAIRS or len(returns) != len(seeds):
            raise DecodeError("range", "es.seeds and es.returns: 1..256 of each, equal counts")
        for s in seeds:
            if type(s) is not int or not 0 <= s <= MAX_SEED:
                raise DecodeError("type", "es.seeds are ints in 0..2**63-1")
        pairs: list[tuple[float, float]] = []
        for r in returns:
            if (
                not isinstance(r, list)
                or len(r) != 2
                or not all(type(x) is float and np.isfinite(x) for x in r)
            ):
                raise DecodeError("type", "es.returns are [float, float], finite")
            pairs.append((r[0], r[1]))
        return cls(
            v["task"],
            v["task_version"],
            v["generation"],
            v["n_params"],
            v["sigma"],
            bytes(v["center"]),
            tuple(seeds),
            tuple(pairs),
        )


# Per-task settings, picked by single-peer runs (docs/studies.md, study 6); other tasks use
# ESConfig's defaults. The one place both the daemon and the simulator read them.
TASK_SETTINGS: dict[str, dict[str, Any]] = {
    "mnist1d": {"hidden": (32,), "sigma": 0.05, "optimizer": "additive", "lr": 0.01, "pairs": 8},
    "gym:Pendulum-v1": {"hidden": (16,), "sigma": 0.1, "optimizer": "adam", "lr": 0.2},
    "gym:MountainCarContinuous-v0": {"hidden": (8,), "sigma": 0.1, "optimizer": "adam", "lr": 0.1},
}


def shared_start_seed(task: str) -> int:
    """The start centre every peer of a network uses for `task` when nobody chose one: a
    function of the task's name only."""
    return int.from_bytes(blake3.blake3(b"qudag-es-start/" + task.encode()).digest(4), "big")


def task_config(task: str, start_seed: int | None = None, **overrides: Any) -> ESConfig:
    """The ES settings of `task` (TASK_SETTINGS), starting from `start_seed` (default: the
    shared start of the task)."""
    seed = shared_start_seed(task) if start_seed is None else start_seed
    return ESConfig(start_seed=seed, **(TASK_SETTINGS.get(task, {}) | overrides))


def noise(seed: int, n_params: int) -> np.ndarray:
    """The perturbation direction of a seed: standard normal float32 (PCG64, numpy pinned)."""
    return np.random.default_rng(seed).standard_normal(n_params, dtype=np.float32)


def center_digest(theta: np.ndarray) -> bytes:
    return blake3.blake3(np.ascontiguousarray(theta, dtype=np.float32).tobytes()).digest(
        CENTER_DIGEST_BYTES
    )


def centred_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks mapped to [-0.5, 0.5]; ties get the mean of their ranks (order-independent)."""
    flat = values.ravel()
    if flat.size < 2:
        return np.zeros_like(values, dtype=np.float64)
    order = np.argsort(flat, kind="stable")
    ranks = np.empty(flat.size, dtype=np.float64)
    ranks[order] = np.arange(flat.size, dtype=np.float64)
    # Equal returns (plateaus are common in control tasks) share one rank.
    uniq, inverse = np.unique(flat, return_inverse=True)
    if uniq.size < flat.size:
        sums = np.bincount(inverse, weights=ranks)
        counts = np.bincount(inverse)
        ranks = (sums / counts)[inverse]
    return (ranks / (flat.size - 1) - 0.5).reshape(values.shape)


class SharedES:
    """One peer's shared-ES search on one task. See the module doc.

    `step(foreign)` runs one generation and returns (logbook row, this generation's result
    set for the network). It has the attributes the node's `Breeder` reads of an engine:
    `generation`, `evaluations`, `best`, `population`, `hall_of_fame`, `solved_at`.
    """

    def __init__(
        self,
        task: Task,
        config: ESConfig | None = None,
        seed: int = 0,
        limits: GenomeLimits | None = None,
    ) -> None:
        self.task = task
        self.config = config or ESConfig()
        self.seed = int(seed)
        self.limits = limits or task.limits  # a published task may bound genomes tighter
        self.rng = np.random.default_rng(self.seed)
        hidden = self.config.hidden or task.default_hidden
        acts = self.config.activation
        start = Genome.random(
            np.random.default_rng(self.config.start_seed),
            task.n_inputs,
            hidden,
            task.n_outputs,
            acts,
        )
        self.task.check(start, limits)
        self._shape = (start.n_inputs, start.layer_sizes, start.activations)
        self.theta = start.flat_params().astype(np.float32)
        self.n_params = int(self.theta.size)
        self._m = np.zeros(self.n_params, dtype=np.float64)
        self._v = np.zeros(self.n_params, dtype=np.float64)
        # additive: the centre is start + the sum of every pooled set's step (float64)
        self._start = self.theta.astype(np.float64)
        self._sum = np.zeros(self.n_params, dtype=np.float64)
        self._t = 0
        self.generation = 0
        self.evaluations = 0
        self.late_sets = 0  # sets that arrived after their generation's update (delay > 0)
        self._slots: dict[int, dict[tuple[int, ...], ResultSet]] = {}  # generation -> sets
        self._centers: dict[int, bytes] = {}  # our centre's digest at each pending generation
        self.solved_at: int | None = None
        self.logbook: list[dict[str, float | int]] = []
        self.best = self._individual(start, "init")
        self._evaluate([self.best])
        self.population: list[Individual] = [self.best]
        self.hall_of_fame: list[Individual] = [self.best]

    # --- one generation ----------------------------------------------------------------
    def step(self, foreign: Sequence[ResultSet] = ()) -> tuple[dict[str, float | int], ResultSet]:
        cfg = self.config
        center = center_digest(self.theta)
        seeds = [int(s) for s in self.rng.integers(0, MAX_SEED, size=cfg.pairs)]
        children: list[Individual] = []
        for s in seeds:
            eps = noise(s, self.n_params) * np.float32(cfg.sigma)
            children.append(self._individual(self._genome(self.theta + eps), "es+"))
            children.append(self._individual(self._genome(self.theta - eps), "es-"))
        self._evaluate(children)
        returns = tuple(
            (children[2 * i].task_fitness, children[2 * i + 1].task_fitness)
            for i in range(cfg.pairs)
        )
        own = ResultSet(
            self.task.name,
            self.task.version,
            self.generation,
            self.n_params,
            float(cfg.sigma),
            center,
            tuple(seeds),
            returns,
        )
        pool, in_step = self._pool(own, self.usable(foreign))
        if pool:
            self._update(pool)
        self.generation += 1
        self.population = children
        for child in children:
            if child.task_fitness > self.best.task_fitness:
                self.best = child
        self.hall_of_fame = [self.best]
        row: dict[str, float | int] = {
            "gen": self.generation,
            "evals": self.evaluations,
            "best": self.best.task_fitness,
            "mean": float(np.mean([c.task_fitness for c in children])),
            "sets": len(pool),
            "in_step": in_step,
            "best_params": self.best.genome.n_params,
        }
        self.logbook.append(row)
        return row, own

    def usable(self, foreign: Sequence[ResultSet]) -> list[ResultSet]:
        """Result sets of this task and shape, newest first, at most `max_sets`, one per
        (generation, centre, seeds) so a replayed set counts once."""
        seen: set[tuple[int, bytes, tuple[int, ...]]] = set()
        out: list[ResultSet] = []
        for r in reversed(foreign):
            key = (r.generation, r.center, r.seeds)
            if (
                r.task != self.task.name
                or r.task_version != self.task.version
                or r.n_params != self.n_params
                or r.sigma != self.config.sigma
                or (
                    self.config.max_lag
                    and abs(self.generation - r.generation) > self.config.max_lag
                )
                or key in seen
            ):
                continue
            seen.add(key)
            out.append(r)
            if len(out) >= self.config.max_sets:
                break
        return out

    def _pool(self, own: ResultSet, usable: list[ResultSet]) -> tuple[list[ResultSet], int]:
        """(the sets this generation's update pools, how many foreign ones were computed at
        the same centre as ours)."""
        delay = self.config.delay
        if delay == 0:
            return [own, *usable], sum(1 for r in usable if r.center == own.center)
        g = self.generation
        self._centers[g] = own.center
        for r in (own, *usable):
            if r.generation < g - delay:
                self.late_sets += 1
                continue
            if r.generation > g + delay:  # from a peer far ahead of us: no slot for it
                continue
            slot = self._slots.setdefault(r.generation, {})
            if len(slot) <= self.config.max_sets:
                slot.setdefault(r.seeds, r)
        due = self._slots.pop(g - delay, {})
        center = self._centers.pop(g - delay, b"")
        pool = [due[k] for k in sorted(due)]
        return pool, sum(1 for r in pool if r.center == center) - (1 if pool else 0)

    def _update(self, pool: Sequence[ResultSet]) -> None:
        cfg = self.config
        # Ranks within each set: sets computed at other (older, better or worse) centres
        # have other baselines, and ranking the pool as one would squash their differences.
        weights = np.concatenate(
            [
                np.diff(-centred_ranks(np.array(r.returns, dtype=np.float64)), axis=1)[:, 0]
                for r in pool
            ]
        )
        additive = cfg.optimizer == "additive"
        grad = np.zeros(self.n_params, dtype=np.float64)
        i = 0
        for r in pool:
            # additive: each set's estimate is the mean over its own pairs (sets add up)
            scale = 1.0 / len(r.seeds) if additive else 1.0
            for s in r.seeds:
                if weights[i] != 0.0:
                    grad += (weights[i] * scale) * noise(s, self.n_params)
                i += 1
        if additive:
            grad /= 2.0 * cfg.sigma
            self._sum += cfg.lr * grad
            self.theta = (self._start + self._sum).astype(np.float32)
            return
        grad /= 2.0 * len(weights) * cfg.sigma
        grad -= cfg.weight_decay * self.theta
        if cfg.optimizer == "normalized":
            self._m = cfg.beta1 * self._m + grad
            norm = float(np.linalg.norm(self._m))
            step = self._m * (cfg.step * np.sqrt(self.n_params) / norm) if norm > 0 else self._m
        else:
            self._t += 1
            self._m = cfg.beta1 * self._m + (1 - cfg.beta1) * grad
            self._v = cfg.beta2 * self._v + (1 - cfg.beta2) * grad * grad
            m_hat = self._m / (1 - cfg.beta1**self._t)
            v_hat = self._v / (1 - cfg.beta2**self._t)
            step = cfg.lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        self.theta = (self.theta + step).astype(np.float32)

    # --- bookkeeping -------------------------------------------------------------------
    def _genome(self, flat: np.ndarray) -> Genome:
        n_in, sizes, acts = self._shape
        return Genome.from_flat(n_in, sizes, acts, np.asarray(flat, dtype=np.float32))

    def _individual(self, genome: Genome, operator: str) -> Individual:
        return Individual(genome, self.config.sigma, (), operator, self.generation + 1)

    def _evaluate(self, individuals: Sequence[Individual]) -> None:
        fit = self.task.fitness([i.genome for i in individuals], "val", self.limits)
        for ind, f in zip(individuals, fit, strict=True):
            g = ind.genome
            ind.fitness.values = (float(f), float(g.n_bytes), float(latency_proxy(g)))
        self.evaluations += len(individuals)
        if self.solved_at is None and any(self.task.solved(i.task_fitness) for i in individuals):
            self.solved_at = self.evaluations

    def inject(self, genomes: Sequence[Genome], operator: str = "migrant") -> int:
        """A migrant of this net's shape that beats our best becomes our best; if it beats it by
        `adopt_margin`, also our centre (a peer that fell behind catches up)."""
        taken = 0
        for g in genomes:
            try:
                self.task.check(g, self.limits)
            except (TaskError, ValueError):
                continue
            if (g.n_inputs, g.layer_sizes, g.activations) != self._shape:
                continue
            ind = self._individual(g, operator)
            self._evaluate([ind])
            taken += 1
            previous_best = self.best.task_fitness
            if ind.task_fitness <= previous_best:
                continue
            self.best = ind
            if ind.task_fitness > previous_best + self.config.adopt_margin * abs(previous_best):
                self.theta = g.flat_params().astype(np.float32)
                # the additive centre is start + sum: move the sum with it
                self._sum = self.theta.astype(np.float64) - self._start
        return taken


# --- checkpoints -----------------------------------------------------------------------------
ES_STATE_FORMAT = "qudag-es-state"
ES_STATE_VERSION = 1
MAX_ES_STATE_BYTES = 64 * 2**20


def _u128(value: int) -> bytes:
    return int(value).to_bytes(16, "big")


def save_state(es: SharedES) -> bytes:
    """Everything a restarted peer needs to continue exactly (canonical msgpack, no pickle):
    the centre, the optimizer's moments, the generator, the counters, the best individual and
    any result sets held for a synchronous update."""
    from qudag.crypto.canonical import pack

    rng = es.rng.bit_generator.state
    return pack(
        {
            "format": ES_STATE_FORMAT,
            "v": ES_STATE_VERSION,
            "task": es.task.name,
            "task_version": es.task.version,
            "config": _config_dict(es.config),
            "seed": es.seed,
            "theta": es.theta.astype("<f4").tobytes(),
            "m": es._m.astype("<f8").tobytes(),
            "v2": es._v.astype("<f8").tobytes(),
            "sum": es._sum.astype("<f8").tobytes(),
            "t": es._t,
            "rng": [
                _u128(rng["state"]["state"]),
                _u128(rng["state"]["inc"]),
                int(rng["has_uint32"]),
                int(rng["uinteger"]),
            ],  # fmt: skip
            "generation": es.generation,
            "evaluations": es.evaluations,
            "late_sets": es.late_sets,
            "best": es.best.genome.to_bytes(),
            "best_fitness": es.best.task_fitness,
            "slots": [
                [g, [r.to_dict() for r in slot.values()]] for g, slot in sorted(es._slots.items())
            ],
            "centers": [[g, c] for g, c in sorted(es._centers.items())],
        }
    )


def _config_dict(config: ESConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def load_state(task: Task, data: bytes, limits: GenomeLimits | None = None) -> SharedES:
    """The peer that `save_state` wrote; `DecodeError` for anything else (another task or
    version, a malformed or truncated file)."""
    from qudag.crypto.canonical import unpack

    value = unpack(data, MAX_ES_STATE_BYTES)
    d = fields(
        value,
        {
            "format": str, "v": int, "task": str, "task_version": int, "config": dict,
            "seed": int, "theta": bytes, "m": bytes, "v2": bytes, "sum": bytes, "t": int,
            "rng": list,
            "generation": int, "evaluations": int, "late_sets": int, "best": bytes,
            "best_fitness": float, "slots": list, "centers": list,
        },
        "es state",
    )  # fmt: skip
    if d["format"] != ES_STATE_FORMAT or d["v"] != ES_STATE_VERSION:
        raise DecodeError("version", "es state: unknown format or version")
    if d["task"] != task.name or d["task_version"] != task.version:
        raise DecodeError("mismatch", f"es state is of task {d['task']!r}, not {task.name!r}")
    try:
        raw = dict(d["config"])
        raw["hidden"] = tuple(raw["hidden"])
        config = ESConfig(**raw)
        es = SharedES(task, config, d["seed"], limits)
        n = es.n_params
        if len(d["theta"]) != 4 * n or any(len(d[k]) != 8 * n for k in ("m", "v2", "sum")):
            raise DecodeError("range", "es state: parameter vectors do not fit the net")
        es.theta = np.frombuffer(d["theta"], dtype="<f4").astype(np.float32)
        es._m = np.frombuffer(d["m"], dtype="<f8").astype(np.float64)
        es._v = np.frombuffer(d["v2"], dtype="<f8").astype(np.float64)
        es._sum = np.frombuffer(d["sum"], dtype="<f8").astype(np.float64)
        es._t = int(d["t"])
        state, inc, has32, uint = d["rng"]
        es.rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": int.from_bytes(state, "big"), "inc": int.from_bytes(inc, "big")},
            "has_uint32": int(has32),
            "uinteger": int(uint),
        }
        es.generation = int(d["generation"])
        es.evaluations = int(d["evaluations"])
        es.late_sets = int(d["late_sets"])
        best = es._individual(Genome.from_bytes(d["best"], es.limits), "restored")
        g = best.genome
        best.fitness.values = (float(d["best_fitness"]), float(g.n_bytes), float(latency_proxy(g)))
        es.best = best
        es.population = [best]
        es.hall_of_fame = [best]
        es._slots = {
            int(gen): {r.seeds: r for r in (ResultSet.from_dict(x) for x in sets)}
            for gen, sets in d["slots"]
        }
        es._centers = {int(gen): bytes(c) for gen, c in d["centers"]}
    except (TypeError, ValueError, KeyError) as exc:
        raise DecodeError("malformed", f"es state: {exc}") from None
    return es
