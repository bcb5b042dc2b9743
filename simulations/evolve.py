"""Evolution in the simulator: each peer's generations, its re-measurements and publications.

Functions of a `Simulation`, like the other parts of the simulator: `Simulation.start`
schedules each peer's first `generation`, which schedules the next. An honest generation is the
daemon's own generation step (node/protocol/generation.py, `peer_generation`), its breeder
requests served inline (`serve_inline`) instead of by a worker process; a Byzantine peer's
generation is its strategy's (simulations/byzantine.py). The time a generation takes is
simulated: `gen_ms`, or with `eval_ms` its evaluations and handled messages, and its outputs
leave only when that time is over (`generation_done`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from qudag.evolution.holdout import Holdout
from qudag.evolution.toolbox import genome_id
from qudag.evolution.verify import remeasure, remeasure_holdout, within_tolerance
from qudag.node.protocol.breeder import Breeder
from qudag.node.protocol.core import Action, Disconnect, Reevaluation
from qudag.node.protocol.generation import Advance, BestTemplate, BreederRequest, peer_generation
from qudag.node.protocol.generation import drive as drive_generation
from qudag.simulations import stats
from qudag.simulations.config import EPOCH_MS, REEVAL_CREDIT_MAX
from qudag.simulations.peer import SimPeer

if TYPE_CHECKING:
    from qudag.simulations.sim import Simulation


def generation(sim: Simulation, idx: int, epoch: int) -> None:
    from qudag.simulations import byzantine

    peer = sim.peers[idx]
    if not peer.current(epoch):
        return
    cfg = sim.config
    if peer.generation >= cfg.generations or (
        peer.incarnation > 0 and sim.sched.now >= cfg.generations * cfg.gen_ms
    ):  # a node that replaced a departed one evolves until the evolution phase ends
        if sim.workers > 1:
            sim._done_checks.append(sim.sched.now)
        maybe_done(sim)
        return
    spent_before = peer_evaluations(sim, peer)
    actions: list[Action] = []
    best: float | None = None
    if peer.strategy is not None and cfg.mode == "sharing":
        byzantine.generation(sim, peer)
    else:
        actions, best = honest_generation(sim, peer)
    spent = peer_evaluations(sim, peer) - spent_before
    if sim.workers > 1:  # the whole run's count at any time is the sum over processes
        sim._evals_at.append((sim.sched.now, spent))
        if peer.generation >= cfg.generations:
            sim._last_finish = max(sim._last_finish, sim.sched.now)
    jitter = 1.0 + cfg.gen_jitter * (2.0 * peer.rng.random() - 1.0)
    if cfg.eval_ms > 0:
        handled = peer.counters.msgs_in + peer.counters.msgs_out
        messages, peer.msgs_charged = handled - peer.msgs_charged, handled
        duration = (spent * cfg.eval_ms + messages * cfg.msg_cpu_ms) * jitter
        sim.sched.after(duration, generation_done, sim, idx, epoch, actions, best)
    else:
        duration = cfg.gen_ms * jitter
        generation_done(sim, idx, epoch, actions, best)
    sim.sched.after(duration, generation, sim, idx, epoch)


def generation_done(
    sim: Simulation, idx: int, epoch: int, actions: list[Action], best: float | None
) -> None:
    """A generation's outputs leave, and its best counts, when its compute is done."""
    peer = sim.peers[idx]
    if not peer.current(epoch):
        return
    sim._do(peer, actions)
    if (
        best is not None
        and peer.honest
        and sim.reached_at is None
        and sim.target is not None
        and best >= sim.target
    ):
        sim.reached_at = sim.sched.now
        sim.reached_evals = stats.total_evaluations(sim)


def peer_evaluations(sim: Simulation, peer: SimPeer) -> int:
    """Every evaluation a peer made: offspring, migrants, re-measured claims."""
    evolution = peer.breeder.evolution.evaluations if peer.breeder is not None else 0
    return evolution + peer.counters.evaluations_reeval


def honest_generation(sim: Simulation, peer: SimPeer) -> tuple[list[Action], float]:
    """The daemon's generation step (node/protocol/generation.py), served inline; then
    the re-measurements of this generation. Returns (actions, best fitness)."""
    cfg = sim.config
    breeder = peer.breeder
    assert breeder is not None
    sharing = cfg.mode == "sharing"

    step = peer_generation(
        peer.core,
        sim.task.name,
        migrants=cfg.migrants if sharing else 0,
        injected=breeder.injected,
        share_results=sharing and cfg.search == "es",
        clock=lambda: EPOCH_MS + int(sim.sched.now),
        publish=sharing,
    )
    outcome = drive_generation(step, serve_inline(breeder))
    peer.counters.es_sets_pooled += outcome.results_pooled
    peer.counters.es_lag += sum(outcome.results_lag)
    for vid, template in outcome.migrants:
        peer.counters.migrants += 1
        vertex = peer.store.vertex(vid)
        if vertex is not None and sim.liars_key(vertex.author):
            peer.counters.migrants_from_liars += 1
            sim.liar_migrant_tests.append(stats.test_score(sim, vid, template.genome))
            sim.liar_genomes.add(genome_id(template.genome))
    actions = outcome.actions
    if sharing:
        actions += reevaluate(sim, peer, EPOCH_MS + int(sim.sched.now))
    return actions, float(outcome.report.best_fitness)


def publish_best(
    sim: Simulation, peer: SimPeer, generation: int, inflate: float = 0.0
) -> bytes | None:
    """Publish a Byzantine peer's best, its claim raised by `inflate` (simulations/
    byzantine.py); honest peers publish through the generation step."""
    breeder = peer.breeder
    assert breeder is not None
    best = breeder.best
    if not peer.core.should_publish(sim.task.name, generation, best.task_fitness + inflate):
        return None
    template = replace(breeder.best_template(), latency_ns=0)
    if inflate:
        template = replace(template, fitness=template.fitness + inflate)
    vid, actions = peer.core.publish_template(template, EPOCH_MS + int(sim.sched.now))
    breeder.mark_published(best.id, vid)
    sim._do(peer, actions)
    return vid


def reevaluate(sim: Simulation, peer: SimPeer, now: int) -> list[Action]:
    peer.reeval_credit = min(peer.reeval_credit + sim.config.reevals_per_gen, REEVAL_CREDIT_MAX)
    out: list[Action] = []
    while peer.reeval_credit >= 1.0:
        job = peer.core.next_reevaluation()
        if job is None:
            break
        peer.reeval_credit -= 1.0
        measured, holdout = remeasure_once(sim, job)
        peer.counters.evaluations_reeval += 1
        _, actions = peer.core.on_reevaluated(job, measured, now, holdout)
        out += actions
        for a in actions:
            if isinstance(a, Disconnect):
                sim.events.append(
                    {
                        "t_ms": sim.sched.now,
                        "event": "ban",
                        "peer": peer.idx,
                        # whom it banned: the claim's author, or the attester whose
                        # held-out draw we recomputed (`Reevaluation.recheck`)
                        "other": sim.author_idx.get(
                            job.recheck.verifier if job.recheck else job.author, -1
                        ),
                        "reason": a.reason,
                    }
                )
    return out


def remeasure_once(sim: Simulation, job: Reevaluation) -> tuple[float | None, Holdout | None]:
    """`evolution.verify.remeasure`, once per template id per process (the bytes fix
    the answer), and beside it the held-out score for the job's draw
    (`remeasure_holdout`, once per template id and draw)."""
    # evolution.verify.Claim declares settable attributes; Template is frozen.
    claim: Any = job.template
    if job.template_id not in sim.measured:
        sim.measured[job.template_id] = remeasure(claim)[1]
    measured = sim.measured[job.template_id]
    if measured is None or not within_tolerance(claim, measured) or not sim.config.holdout:
        return measured, None  # a false claim is refused on its own: no held-out score
    seed = job.holdout_seed
    if seed not in sim.held_out:
        sim.held_out[seed] = remeasure_holdout(claim, seed)
    return measured, sim.held_out[seed]


def maybe_done(sim: Simulation) -> None:
    cfg = sim.config
    end = cfg.generations * cfg.gen_ms
    if not sim._done_generations and all(
        p.generation >= cfg.generations or (p.incarnation > 0 and sim.sched.now >= end)
        for p in sim.local_peers
        if p.online
    ):
        sim._done_generations = True
        sim.events.append({"t_ms": sim.sched.now, "event": "generations-done"})


def serve_inline(breeder: Breeder) -> Callable[[BreederRequest], Any]:
    """How the simulator answers the generation step's requests: the breeder, called inline."""

    def serve(request: BreederRequest) -> Any:
        if isinstance(request, Advance):
            return breeder.advance(request.migrants, request.results)
        if isinstance(request, BestTemplate):
            # latency_ns is a wall-clock reading (the machine's load, not the seed, decides
            # it): published as 0, "not measured", so that a vertex's bytes are a function of
            # the seed.
            return replace(breeder.best_template(), latency_ns=0)
        breeder.mark_published(request.genome_id, request.vertex_id)
        return None

    return serve
