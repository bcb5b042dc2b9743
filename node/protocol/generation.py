"""What a peer does each generation, written once for both drivers.

Why a generator: the daemon's breeder lives in a child process (every call is awaited), the
simulator's is an object called inline, and the decisions in between (which migrants and
result sets go in, whether the new best is published, what the breeder records of it) must be
the same in both, so that a simulated result is a result about the daemon. So the step is a
sans-IO coroutine in the style of h11: it yields what it needs the breeder to do (`Advance`,
`BestTemplate`, `MarkPublished`), the driver does it however it does things and sends the
answer back, and the step returns a `GenerationOutcome`. `drive` runs it inline; the daemon
runs the same generator with awaits.

The clock is passed in (`clock()`, milliseconds), as everywhere in the core.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from qudag.evolution.es import ResultSet
from qudag.evolution.template import Template
from qudag.node.protocol.core import Action, PeerCore


@dataclass(frozen=True)
class Advance:
    """Run one generation with these migrants and (es search) result sets."""

    migrants: Sequence[tuple[bytes, Template]]
    results: Sequence[ResultSet]


@dataclass(frozen=True)
class BestTemplate:
    """The current best individual as a template."""


@dataclass(frozen=True)
class MarkPublished:
    """Record that the individual `genome_id` went out as template vertex `vertex_id`."""

    genome_id: bytes
    vertex_id: bytes


BreederRequest = Advance | BestTemplate | MarkPublished


class AdvanceReply(Protocol):
    """What the step reads of a generation's report (`Breeder` and the daemon's proxy)."""

    @property
    def generation(self) -> int: ...
    @property
    def best_fitness(self) -> float: ...
    @property
    def best_id(self) -> bytes: ...
    @property
    def results(self) -> ResultSet | None: ...


@dataclass
class GenerationOutcome:
    report: Any  # the driver's AdvanceReply
    migrants: list[tuple[bytes, Template]]
    results_pooled: int
    # generations between each pooled set's and ours: how stale the network's sets arrive
    results_lag: list[int] = field(default_factory=list)
    published: bytes | None = None
    # Our best was another author's net, unchanged: not published, credited to this template.
    credited: bytes | None = None
    actions: list[Action] = field(default_factory=list)


def peer_generation(
    core: PeerCore,
    task: str,
    *,
    migrants: int,
    injected: set[bytes] | frozenset[bytes],
    share_results: bool,
    clock: Callable[[], int],
    publish: bool = True,
) -> Generator[BreederRequest, Any, GenerationOutcome]:
    """One generation of one task: take migrants (verified templates of others, chosen by
    the core) and, in the es search, the result sets received since the last generation;
    advance; gossip our own result set; publish the best if the core says so, unless it is
    another author's net unchanged (`core.copied_from`): that stays credited to its author."""
    chosen = core.migrants(task, migrants, exclude=injected) if migrants > 0 else []
    pooled = core.take_results(task) if share_results else []
    report: AdvanceReply = yield Advance(chosen, pooled)
    lag = [report.generation - 1 - r.generation for r in pooled]
    outcome = GenerationOutcome(report, chosen, len(pooled), lag)
    if share_results and report.results is not None:
        outcome.actions += core.publish_results(report.results, clock())
    if publish and core.should_publish(task, report.generation, report.best_fitness):
        best_id = report.best_id
        template: Template = yield BestTemplate()
        source = core.copied_from(template)
        if source is not None:
            outcome.credited = source
            return outcome
        vid, actions = core.publish_template(template, clock())
        yield MarkPublished(best_id, vid)
        outcome.published = vid
        outcome.actions += actions
    return outcome


def drive(
    step: Generator[BreederRequest, Any, GenerationOutcome],
    serve: Callable[[BreederRequest], Any],
) -> GenerationOutcome:
    """Run a step inline: `serve` answers each request (the simulator's driver)."""
    try:
        request = next(step)
        while True:
            request = step.send(serve(request))
    except StopIteration as done:
        outcome: GenerationOutcome = done.value
        return outcome
