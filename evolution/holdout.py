"""Held-out verification: a score a template's author could not tune to (issue 17, section 3).

A fitness claim is re-measured on the task's public validation split, so a net fitted to that
split (or selected on it by a long search) passes the claim check and does not generalise.
A verifier therefore also measures a *held-out* score on data chosen by randomness fixed only
after the template was published: the verifier takes it from ledger vertex ids it holds once
the template has arrived (node/protocol/core.py: the ids its attestation references), and the
attestation records those ids, so anyone can recompute the draw and the score.

- `holdout_seed(template_id, beacon)`: 32 bytes of randomness, BLAKE3 over the template id and
  the beacon ids (length-prefixed, sorted).
- Data tasks: a subset of `HOLDOUT_FRACTION` of the test split, the indices with the smallest
  8-byte keys read from BLAKE3's extendable output of the seed (not a seeded NumPy generator,
  whose streams are not guaranteed stable across NumPy releases: every verifier must draw the
  same subset).
- Control tasks: `CONTROL_EPISODES` fresh episode seeds, 31-bit words of the same output.

The overfit test (`Holdout.overfit`, docs/reliability.md): the claim and the held-out score
estimate the same quantity if the net generalises, from n_val and n samples. With s the
per-sample standard deviation (classification: sqrt(p (1 - p)) at the pooled accuracy;
regression: of the per-sample terms whose mean is R^2; control: of the episode returns),
stderr = s * sqrt(1/n_val + 1/n); the template is flagged when
claim - held-out > `OVERFIT_Z` * stderr + the task's claim tolerance. Under the null (val and
the subset exchangeable, the net not selected on val) a flag happens with probability
<= 0.5 % (one-sided normal tail at z = 2.58). Selection on val by an honest search moves an
honest claim up, on average by less than the margin but not always: docs/reliability.md
gives the measured rates (none on digits, 1.75 % of checks on mnist1d).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import blake3
import numpy as np

from qudag.evolution import evaluate as ev
from qudag.evolution import tasks
from qudag.evolution.genome import Genome
from qudag.evolution.tasks import CARTPOLE_SEEDS, Task

HOLDOUT_LABEL = b"qudag/holdout/1"
HOLDOUT_FRACTION = 0.9  # of the test split, at least `MIN_HOLDOUT` samples
MIN_HOLDOUT = 30
CONTROL_EPISODES = 20
# One-sided normal quantile of 0.995: a 0.5 % false-flag rate under the null. Why not 3.09
# (0.1 %): it lets through a third to a half of the nets refitted on digits' validation split
# (claim 1.0, held-out ~0.975). The price: honest bests selected on val are flagged in 1.75 %
# of checks on mnist1d, none on digits (docs/reliability.md).
OVERFIT_Z = 2.58


@dataclass(frozen=True)
class Holdout:
    """A held-out measurement of one template: what an attestation records (dag/payloads.py
    `holdout` field) and the overfit test on it."""

    n: int  # samples (data) or episodes (control) measured
    fitness: float  # the task's fitness on them: comparable to the claim
    stderr: float  # standard error of (claim - fitness) if the net generalises

    def overfit(self, claimed: float, tolerance: float, z: float = OVERFIT_Z) -> bool:
        """The claim stands above the held-out score by more than sampling explains (`z`:
        the test's quantile; other values only for the study that chose it)."""
        return claimed - self.fitness > z * self.stderr + tolerance


@dataclass(frozen=True)
class PrivateScore:
    """A template's fitness on a task author's private held-out rows (the designated
    verifier's score, evolution/published.py `private_rows`): nobody else can recompute it."""

    n: int  # rows
    fitness: float  # the task's fitness on them: comparable to the claim


def private_score(task: Task, genome: Genome, x: np.ndarray, y: np.ndarray) -> PrivateScore:
    """The task's fitness of `genome` (already checked against `task`) on rows `x` (already
    standardised as the task's splits are) and labels `y`."""
    out = ev.forward_many([genome], x)[0]
    return PrivateScore(int(y.shape[0]), float(task.output_fitness(out[None], y)[0]))


def holdout_seed(template_id: bytes, beacon: Sequence[bytes]) -> bytes:
    """The randomness of a held-out draw: fixed by the template and the beacon ids (vertices
    the verifier held after the template, recorded in its attestation)."""
    hasher = blake3.blake3(HOLDOUT_LABEL)
    for part in (template_id, *sorted(beacon)):
        hasher.update(len(part).to_bytes(4, "big"))
        hasher.update(part)
    return hasher.digest()


def _ranked(seed: bytes, count: int) -> np.ndarray:
    """0..count-1 ordered by their 8-byte keys, key i = bytes 8i..8i+7 (big-endian) of the
    BLAKE3 extendable output of `seed`, ties by index: a permutation anyone can recompute."""
    keys = np.frombuffer(blake3.blake3(seed).digest(length=8 * count), dtype=">u8")
    return np.argsort(keys, kind="stable")


def holdout_indices(seed: bytes, test_size: int, fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """The test-split rows of a draw, ascending (`fraction`: other values only for the study
    that chose it)."""
    n = min(test_size, max(MIN_HOLDOUT, math.ceil(fraction * test_size)))
    return np.sort(_ranked(seed, test_size)[:n]).astype(np.int64)


def episode_seeds(seed: bytes, count: int = CONTROL_EPISODES) -> list[int]:
    """Fresh episode seeds of a draw: 4-byte big-endian words of the BLAKE3 extendable output
    of `seed` shifted right by one bit (31-bit, as `reset(seed=...)` takes them)."""
    words = np.frombuffer(blake3.blake3(seed).digest(length=4 * count), dtype=">u4")
    return [int(w) >> 1 for w in words]


def _val_size(task: Task) -> int:
    if task.kind != "control":
        return int(task.split("val")[1].shape[0])
    from qudag.evolution import control

    if isinstance(task.episodes, control.GymSpec):
        return len(task.episodes.seeds("val"))
    return len(CARTPOLE_SEEDS["val"])


def episode_returns(task: Task, genome: Genome, seeds: Sequence[int]) -> np.ndarray:
    """Return of `genome` on each episode of `seeds`, all stepped together, through the
    task's own episode code."""
    from qudag.evolution import control

    if task.episodes is None:
        per = tasks.cartpole_episode_returns([genome], seeds, task)
    elif isinstance(task.episodes, control.GymSpec):
        per = control.episode_returns(task.episodes, [genome], seeds, task.standardize)
    else:
        raise ValueError(f"task {task.name}: its episodes cannot run on fresh seeds")
    return np.asarray(per[0], dtype=np.float64)


def measure_holdout(
    task: Task,
    genome: Genome,
    claimed: float,
    seed: bytes,
    fraction: float = HOLDOUT_FRACTION,
) -> Holdout:
    """The held-out score of `genome` (already checked against `task`) for the draw `seed`.

    `claimed` is the validation claim; it enters only the pooled standard deviation of a
    classification task (so a perfect net on both sides still has a nonzero stderr).
    `fraction`: of the test split drawn (data tasks; `HOLDOUT_FRACTION` for every verdict)."""
    n_val = _val_size(task)
    if task.kind == "control":
        returns = episode_returns(task, genome, episode_seeds(seed))
        sd = float(np.std(returns, ddof=1)) if len(returns) > 1 else 0.0
        n = len(returns)
        return Holdout(n, float(np.mean(returns)), sd * math.sqrt(1 / n_val + 1 / n))
    x, y = task.split("test")
    rows = holdout_indices(seed, int(y.shape[0]), fraction)
    xs, ys = x[rows], y[rows]
    n = len(rows)
    out = ev.forward_many([genome], xs)[0]
    fitness = float(task.output_fitness(out[None], ys)[0])
    if task.kind == "classification":
        accuracy = ev.classification_metrics(out, ys)[0] if np.all(np.isfinite(out)) else 0.0
        pooled = (min(max(claimed, 0.0), 1.0) * n_val + accuracy * n) / (n_val + n)
        floor = 0.5 / (n_val + n)  # a continuity floor: never a zero stderr
        p = min(max(pooled, floor), 1.0 - floor)
        sd = math.sqrt(p * (1.0 - p))
    elif not np.all(np.isfinite(out)):
        return Holdout(n, fitness, 0.0)
    else:
        t = ys.astype(np.float64)
        var = float(np.var(t))
        terms = 1.0 - (t - out[:, 0].astype(np.float64)) ** 2 / var if var > 0 else np.zeros(n)
        sd = float(np.std(terms, ddof=1)) if n > 1 else 0.0
    return Holdout(n, fitness, sd * math.sqrt(1 / n_val + 1 / n))
