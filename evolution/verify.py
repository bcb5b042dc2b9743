"""Re-measuring a template's fitness claim, so peers trust numbers they can check.

`verify_claim(template)` rebuilds the template's task (by name), refuses a task version it does
not have, checks the genome against the task's input/output widths and `GenomeLimits` *from
its declared shape* (nothing is allocated for an over-limit genome; `Template.from_bytes` has
already done the same when the bytes arrived), and returns the fitness measured on the
validation split through exactly the code path the engine uses for its own claims
(`Task.fitness`, a batch of one; evaluate.py explains why batch size does not change the bits).

Tolerance (`claim_tolerance`, `claim_holds`):
- data tasks: `CLAIM_TOLERANCE` = 1e-6 absolute. On one machine the re-measured value is
  bit-identical. Across machines BLAS kernels may round differently; that moves the
  cross-entropy tie-breaker (weight 1e-4) by far less than 1e-6, while one sample of accuracy
  is >= 1e-3 on every built-in split, so a lie about accuracy is always caught. A net whose logits
  sit within rounding of a tie could flip one prediction on another machine: such a claim fails
  verification there, which costs an honest peer one attestation, not safety.
- control (cartpole): `CONTROL_CLAIM_TOLERANCE` = 5.0 (return units, of 0..500): an episode is
  500 chaotic steps, so a last-bit difference in a libm `sin`/`cos` on another machine can end
  an episode a few steps earlier or later.
  The same 5.0 applies to every gym:ENV_ID task (returns of hundreds to thousands of units);
  their task version already differs between gymnasium releases (evolution/control.py).
"""

from __future__ import annotations

from typing import Protocol

from qudag.evolution.evaluate import NONFINITE_FITNESS
from qudag.evolution.genome import Genome, GenomeError
from qudag.evolution.holdout import Holdout, PrivateScore, measure_holdout, private_score
from qudag.evolution.published import private_rows
from qudag.evolution.tasks import Task, TaskError, get_task

CLAIM_TOLERANCE = 1e-6
CONTROL_CLAIM_TOLERANCE = 5.0


class Claim(Protocol):
    """What verification reads from a template (see evolution/template.py `Template`)."""

    task: str
    task_version: int
    genome: Genome
    fitness: float


def claim_tolerance(task: Task) -> float:
    return CONTROL_CLAIM_TOLERANCE if task.kind == "control" else CLAIM_TOLERANCE


def _task_of(template: Claim) -> Task:
    task = get_task(template.task)
    if task.version != template.task_version:
        raise TaskError(
            f"template is for {template.task} v{template.task_version}, "
            f"this peer has v{task.version}"
        )
    return task


def verify_claim(template: Claim) -> float:
    """Re-measured validation fitness of the template's genome on its task.

    Raises `TaskError` for an unknown task or task version, `GenomeError` for a genome that
    does not fit the task or the limits (both are `ValueError`).
    """
    return _validation_fitness(_task_of(template), template.genome)


def _validation_fitness(task: Task, genome: Genome) -> float:
    task.check(genome)
    return float(task.fitness([genome], "val")[0])


def remeasure(template: Claim) -> tuple[str, float | None]:
    """(status, fitness) of a re-measurement, as both drivers turn it into a verdict.

    A task or task version we do not have: ("unknown task: ...", None), we cannot judge and
    nobody's reputation moves. A genome that does not fit its own task: ("measured",
    NONFINITE_FITNESS), the claim is false. Otherwise ("measured", the fitness).
    """
    status, measured, _ = _remeasured(template)
    return status, measured


def _remeasured(template: Claim) -> tuple[str, float | None, Task | None]:
    """`remeasure`'s (status, fitness), and the task when the genome fits it: the task is
    resolved once for everything measured after the claim (`remeasure_with_holdout`)."""
    try:
        task = _task_of(template)
    except TaskError as exc:
        return f"unknown task: {exc}", None, None
    # `get_task` raised every TaskError this task can: measuring a net on a task it returned
    # raises only GenomeError (a net of another shape), which is a false claim.
    try:
        return "measured", _validation_fitness(task, template.genome), task
    except GenomeError:
        return "measured", float(NONFINITE_FITNESS), None


def claim_holds(template: Claim) -> tuple[bool, float]:
    """(claim within tolerance, measured fitness). Over-claiming and under-claiming both fail."""
    measured = verify_claim(template)
    return within_tolerance(template, measured), measured


def within_tolerance(template: Claim, measured: float) -> bool:
    """Whether `measured` confirms the template's claim (the task's claim tolerance)."""
    return claim_within(float(template.fitness), measured, claim_tolerance(_task_of(template)))


def claim_within(claimed: float, measured: float, tolerance: float) -> bool:
    """The rule a claim is judged by: it holds if our measurement is within `tolerance` of
    it. The one definition; the peer core's trust decision (`TrustPolicy.claim_valid`)
    applies it too, so evolution and the node cannot disagree on a verdict."""
    return abs(measured - claimed) <= tolerance


def remeasure_with_holdout(
    template: Claim, seed: bytes
) -> tuple[str, float | None, Holdout | None]:
    """`remeasure`, and the held-out score for the draw `seed` only when the claim holds: a
    false claim is refused on its own, so its held-out score would be paid for and unread
    (a flood of lies would cost ~2.35x the checks it needs)."""
    status, measured, task = _remeasured(template)
    claimed = float(template.fitness)
    if (
        task is None
        or measured is None
        or not claim_within(claimed, measured, claim_tolerance(task))
    ):
        return status, measured, None
    return status, measured, measure_holdout(task, template.genome, claimed, seed)


def remeasure_holdout(template: Claim, seed: bytes) -> Holdout | None:
    """The held-out score of the template for the draw `seed` (evolution/holdout.py), or None
    when we cannot judge it (a task or task version we do not have, a genome that does not fit
    its task: `remeasure` already says why)."""
    task = _judgeable(template)
    return (
        None
        if task is None
        else measure_holdout(task, template.genome, float(template.fitness), seed)
    )


def remeasure_designated(template: Claim) -> PrivateScore | None:
    """The template's score on its task's private held-out rows, if this node holds them:
    it published the task with them, so it is the task's designated verifier
    (evolution/published.py `private_rows`). None for any other task, or when we cannot
    judge the template. The driver asks it only for a claim that holds, as the held-out
    score (`remeasure_with_holdout`)."""
    task = _judgeable(template)
    if task is None:
        return None
    try:
        rows = private_rows(template.task)
    except TaskError:  # private rows that do not read as the task commits to them
        return None
    return None if rows is None else private_score(task, template.genome, *rows)


def _judgeable(template: Claim) -> Task | None:
    """The template's task when we have it and the genome fits it, else None."""
    try:
        task = _task_of(template)
        task.check(template.genome)
    except (TaskError, GenomeError):
        return None
    return task
