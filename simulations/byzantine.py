"""Byzantine peers: what a hostile node can send, made with real keys and real signatures.

Each strategy runs once per generation of the hostile peer (`generation`). A hostile peer owns
a real `PeerCore` and `Store` (so its own vertices chain correctly) but chooses what to put on
the wire. The honest peers see only bytes, and only their own cores judge them.

- inflate:    evolves honestly but claims `inflate_by` more fitness than its best has. Caught
              by re-evaluation (an invalid verdict costs 5 reputation, the ban is at -4).
- badsig:     gossips `byzantine_rate` template vertices per generation whose signature has
              one flipped byte. Rejected on arrival, never relayed; every one is a strike
              against the sending peer (disconnect at `max_peer_strikes`).
- equivocate: evolves honestly, but each publication is two different template vertices with
              the same (author, seq), one to each half of its connections. Both are valid and
              spread; whoever holds both flags the author and stops sampling it.
- orphans:    gossips `byzantine_rate` signed vertices per generation whose parents do not
              exist. Valid-but-pending, so they are buffered (bounded) and relayed, and every
              receiver tries to fetch parents that nobody has (bounded attempts).
- withhold:   evolves and publishes its own templates, but relays nothing, answers no sync
              request and sends no heads: a black hole for everything that passes through it.
- collude:    evolves honestly but claims `inflate_by` more fitness than its best has, and two
              sybil identities it controls (real keys, their own identity vertices, never a
              simulated peer) attest each inflated claim "valid" (issue 17, "collusion").
              Unproven attesters weigh nothing, so no honest peer samples the lie before
              its own check; that check bans the liar and both sybils.
- overfit:    evolves honestly but publishes its best with the output layer refitted to the
              validation split (least squares on the last hidden layer's activations): a
              true claim on that split, a net that generalises worse (issue 17, "overfit").
              The claim check passes; the verifiers' held-out score flags it, so no honest
              peer samples it (a classification task with a test split of its own: on
              memorisation tasks such as two-spirals, val and test are one set).
- sybil:      evolves honestly, but publishes each inflated claim (`inflate_by`) under a
              fresh identity made for it (identity vertex, then the template), attested "valid"
              by the two fresh identities before it: a ban costs the attacker one key, and no
              key has a record. Nothing may be sampled before its own check, and the claims of
              keys without a record must not delay the checks of proven authors.
- replay:     re-gossips `byzantine_rate` old vertices from its ledger per generation.
              Duplicates are dropped by message id within the seen window; after it they are
              only duplicates to the store.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from qudag.crypto.canonical import pack, unpack
from qudag.crypto.signing import Identity
from qudag.dag.payloads import (
    KIND_ATTESTATION,
    KIND_TEMPLATE,
    MAX_PARENTS,
    VERDICT_VALID,
    attestation_payload,
)
from qudag.dag.vertex import make_identity_vertex, make_vertex
from qudag.evolution.genome import ACTIVATIONS, Genome
from qudag.evolution.tasks import Task
from qudag.evolution.template import Template, from_genome
from qudag.node.protocol.core import CONTROL_TOPIC, task_topic
from qudag.simulations import evolve, gossip

if TYPE_CHECKING:
    from qudag.simulations.peer import SimPeer
    from qudag.simulations.sim import Simulation


def generation(sim: Simulation, peer: SimPeer) -> None:
    strategy = peer.strategy
    peer.byz_state["gen"] = peer.byz_state.get("gen", 0) + 1
    gen = peer.generation
    if strategy == "inflate":
        _evolve(sim, peer, inflate=sim.config.inflate_by)
    elif strategy == "withhold":
        _evolve(sim, peer)
    elif strategy == "collude":
        _collude(sim, peer)
    elif strategy == "overfit":
        _overfit(sim, peer)
    elif strategy == "sybil":
        _sybil_stream(sim, peer)
    elif strategy == "equivocate":
        _equivocate(sim, peer, gen)
    elif strategy == "badsig":
        for i in range(sim.config.byzantine_rate):
            _badsig(sim, peer, gen, i)
    elif strategy == "orphans":
        for i in range(sim.config.byzantine_rate):
            _orphan(sim, peer, gen, i)
    elif strategy == "replay":
        _replay(sim, peer)


def _advance(sim: Simulation, peer: SimPeer) -> int:
    """One honest generation (it samples honest migrants); returns its number."""
    breeder = peer.breeder
    assert breeder is not None
    migrants = peer.core.migrants(sim.task.name, sim.config.migrants, exclude=breeder.injected)
    report = breeder.advance(migrants)
    peer.byz_state["gen"] = report.generation
    return report.generation


def _evolve(sim: Simulation, peer: SimPeer, inflate: float = 0.0) -> bytes | None:
    """Honest evolution, dishonest or withheld publications. Returns the id of the template
    published this generation, if any."""
    return evolve.publish_best(sim, peer, _advance(sim, peer), inflate=inflate)


SYBILS_PER_LIAR = 2


def sybils(sim: Simulation, peer: SimPeer) -> list[Identity]:
    """The sybil identities a colluding peer controls (deterministic per seed and peer)."""
    from qudag.simulations.identity import derive_identity

    made: list[Identity] | None = peer.byz_state.get("sybils")
    if made is None:
        made = [
            derive_identity(sim.config.seed, "sybil", peer.idx, peer.incarnation, k)
            for k in range(SYBILS_PER_LIAR)
        ]
        peer.byz_state["sybils"] = made
    return made


def _collude(sim: Simulation, peer: SimPeer) -> None:
    """An inflated claim, attested "valid" by each of the peer's sybils. The sybils' vertices
    go into the liar's own store first (so their chains and parents are valid) and out on the
    liar's own links, as a daemon speaking for three keys would send them."""
    vid = _evolve(sim, peer, inflate=sim.config.inflate_by)
    if vid is None:
        return
    attested: list[bytes] = peer.byz_state.setdefault("attested", [])
    attested.append(vid)
    for sybil in sybils(sim, peer):
        _attest_valid(sim, peer, sybil, vid)


def _sign_as(
    sim: Simulation, peer: SimPeer, key: Identity, kind: str, payload: dict, link: bytes | None
) -> bytes | None:
    """A vertex of another key the hostile peer controls: its identity vertex first if it has
    none, then the vertex (linked to `link`), both into the peer's own store (so chains and
    parents are valid) and out on the peer's own links, as a daemon speaking for several keys
    would send them. Returns the vertex id if the store took it."""
    store = peer.store
    now = _now(sim)
    if store.next_seq(key.key_id) == 0:
        raw = make_identity_vertex(key, now, store.tips()[:7])
        if store.ingest(raw, now).accepted:
            gossip.publish(sim, peer, CONTROL_TOPIC, raw)
    own = store.parents_for(key.key_id, MAX_PARENTS - 1)
    parents = sorted(set(own) | ({link} if link is not None else set()))
    raw = make_vertex(key, store.next_seq(key.key_id), now, parents, kind, payload)
    result = store.ingest(raw, now)
    if not result.accepted:
        return None
    gossip.publish(sim, peer, task_topic(sim.task.name), raw)
    return result.id


def _attest_valid(sim: Simulation, peer: SimPeer, key: Identity, vid: bytes) -> None:
    template = peer.store.vertex(vid)
    assert template is not None
    claimed = template.payload["objectives"]["fitness"]
    payload = attestation_payload(vid, claimed, VERDICT_VALID)
    _sign_as(sim, peer, key, KIND_ATTESTATION, payload, vid)


def _sybil_stream(sim: Simulation, peer: SimPeer) -> None:
    """Each inflated claim under a fresh key, vouched for by the two keys made before it."""
    from qudag.simulations.identity import derive_identity

    breeder = peer.breeder
    assert breeder is not None
    if _advance(sim, peer) % sim.config.publish_every != 0:
        return
    made: list[Identity] = peer.byz_state.setdefault("fresh", [])
    key = derive_identity(sim.config.seed, "fresh", peer.idx, peer.incarnation, len(made))
    made.append(key)
    template = replace(breeder.best_template(), latency_ns=0)
    template = replace(template, fitness=template.fitness + sim.config.inflate_by)
    vid = _sign_as(sim, peer, key, KIND_TEMPLATE, template.to_dict(), None)
    if vid is None:
        return
    peer.byz_state.setdefault("attested", []).append(vid)
    peer.byz_state.setdefault("fresh_claims", []).append((key.key_id, vid))
    for voucher in made[-3:-1]:
        _attest_valid(sim, peer, voucher, vid)


def refit_on_validation(task: Task, genome: Genome) -> Genome:
    """`genome` with its output layer replaced by the least-squares fit of the validation
    split's one-hot targets (+-1, logits scaled by 5) on the last hidden layer's
    activations: what a cheater that trains on the split it is checked on publishes."""
    x, y = task.split("val")
    h = x.astype(np.float64)
    hidden = zip(genome.weights[:-1], genome.biases[:-1], genome.activations[:-1], strict=True)
    for w, b, act in hidden:
        h = ACTIVATIONS[act]((h @ w + b).astype(np.float32)).astype(np.float64)
    a = np.hstack([h, np.ones((len(h), 1))])
    targets = -np.ones((len(y), task.n_outputs))
    targets[np.arange(len(y)), y] = 1.0
    fit = np.linalg.solve(a.T @ a + 1e-8 * np.eye(a.shape[1]), a.T @ targets)
    weights = (*genome.weights[:-1], (fit[:-1] * 5).astype(np.float32))
    biases = (*genome.biases[:-1], (fit[-1] * 5).astype(np.float32))
    activations = (*genome.activations[:-1], "identity")
    return Genome(genome.n_inputs, genome.layer_sizes, activations, weights, biases)


def random_features(task: Task, seed: int, width: int = 160) -> Genome:
    """A net of random tanh features (output layer zero): with `refit_on_validation`, the
    cheater of issue 17, "overfit", that classifies every validation sample of digits."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((task.n_inputs, width)) / 8).astype(np.float32)
    b1 = (rng.standard_normal(width) * 0.5).astype(np.float32)
    w2 = np.zeros((width, task.n_outputs), dtype=np.float32)
    b2 = np.zeros(task.n_outputs, dtype=np.float32)
    shape = (width, task.n_outputs)
    return Genome(task.n_inputs, shape, ("tanh", "identity"), (w1, w2), (b1, b2))


def _overfit(sim: Simulation, peer: SimPeer) -> None:
    """Honest evolution; each publication is the best refitted on the validation split, its
    (true) validation fitness claimed. Published like `evolve.publish_best`."""
    breeder = peer.breeder
    assert breeder is not None
    generation = _advance(sim, peer)
    if generation % sim.config.publish_every != 0:  # no publication: no refit to pay for
        return
    best = replace(breeder.best_template(), latency_ns=0)
    genome = refit_on_validation(sim.task, best.genome)
    claimed = float(sim.task.fitness([genome], "val")[0])
    if not peer.core.should_publish(sim.task.name, generation, claimed):
        return
    cheat = replace(best, genome=genome, fitness=claimed, operator="refit")
    vid, actions = peer.core.publish_template(cheat, _now(sim))
    breeder.mark_published(breeder.best.id, vid)
    sim._do(peer, actions)
    peer.byz_state.setdefault("overfit", []).append(vid)


def _garbage_template(sim: Simulation, peer: SimPeer, gen: int, salt: int) -> Template:
    """A well-formed template (a real genome of the task) to wrap in hostile vertices."""
    base: Template | None = peer.byz_state.get("template")
    if base is None:
        breeder_genome = _random_genome(sim, peer)
        base = from_genome(breeder_genome, sim.task, 0.5, latency_repeats=1)
        peer.byz_state["template"] = base
    return replace(base, generation=gen * 1000 + salt, fitness=0.99, latency_ns=0)


def _random_genome(sim: Simulation, peer: SimPeer) -> Genome:
    rng = np.random.default_rng(peer.rng.randrange(2**31))
    return Genome.random(rng, sim.task.n_inputs, list(sim.task.default_hidden), sim.task.n_outputs)


def _now(sim: Simulation) -> int:
    from qudag.simulations.config import EPOCH_MS

    return EPOCH_MS + int(sim.sched.now)


def _badsig(sim: Simulation, peer: SimPeer, gen: int, i: int) -> None:
    store = peer.store
    template = _garbage_template(sim, peer, gen, i)
    raw = make_vertex(
        peer.identity,
        store.next_seq(peer.identity.key_id),
        _now(sim),
        store.parents_for(peer.identity.key_id),
        KIND_TEMPLATE,
        template.to_dict(),
    )
    body, signature = unpack(raw, len(raw) + 1)
    flipped = bytes([signature[0] ^ 0x01]) + signature[1:]
    gossip.publish(sim, peer, task_topic(sim.task.name), pack([body, flipped]))


def _orphan(sim: Simulation, peer: SimPeer, gen: int, i: int) -> None:
    store = peer.store
    template = _garbage_template(sim, peer, gen, i)
    fake_parents = [peer.rng.randbytes(32) for _ in range(2)]
    raw = make_vertex(
        peer.identity,
        store.next_seq(peer.identity.key_id) + 1 + peer.rng.randrange(1000),
        _now(sim),
        fake_parents,
        KIND_TEMPLATE,
        template.to_dict(),
    )
    gossip.publish(sim, peer, task_topic(sim.task.name), raw)


def _equivocate(sim: Simulation, peer: SimPeer, gen: int) -> None:
    breeder = peer.breeder
    assert breeder is not None
    if _advance(sim, peer) % sim.config.publish_every != 0:
        return
    store = peer.store
    me = peer.identity.key_id
    seq = store.next_seq(me)
    parents = store.parents_for(me)
    now = _now(sim)
    best = replace(breeder.best_template(), latency_ns=0)  # as evolve.publish_best
    twin = replace(best, generation=best.generation + 1_000_000)
    raws = [
        make_vertex(peer.identity, seq, now, parents, KIND_TEMPLATE, t.to_dict())
        for t in (best, twin)
    ]
    result = store.ingest(raws[0], now, durable=True)
    if not result.accepted:
        return
    links = sorted(peer.links)
    half = len(links) // 2
    topic = task_topic(sim.task.name)
    gossip.publish(sim, peer, topic, raws[0], to=links[:half] or links)
    gossip.publish(sim, peer, topic, raws[1], to=links[half:])


def _replay(sim: Simulation, peer: SimPeer) -> None:
    ids = peer.store.topological_order()
    if not ids:
        return
    topic = task_topic(sim.task.name)
    for _ in range(sim.config.byzantine_rate):
        raw = peer.store.get(ids[peer.rng.randrange(len(ids))])
        if raw is not None:
            gossip.publish(sim, peer, topic, raw)


__all__ = ["generation"]
