"""One generation step for both drivers, and the core's handling of shared-ES result sets."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import replace
from typing import Any

import pytest
import trio

from qudag.crypto.canonical import DecodeError
from qudag.dag.store import Store
from qudag.evolution.engine import default_config
from qudag.evolution.es import ResultSet
from qudag.evolution.tasks import get_task
from qudag.evolution.template import Template
from qudag.evolution.toolbox import genome_id
from qudag.evolution.verify import verify_claim
from qudag.node.daemon import Daemon
from qudag.node.protocol import messages
from qudag.node.protocol.breeder import Breeder
from qudag.node.protocol.core import (
    NODE_DECODERS,
    CoreConfig,
    PeerCore,
    Publish,
    is_es_group_topic,
    task_tolerances,
    task_topic,
    task_versions,
)
from qudag.node.protocol.generation import (
    drive,
    peer_generation,
)
from qudag.simulations.evolve import serve_inline
from qudag.simulations.identity import derive_identity

EPOCH = 1_700_000_000_000


def _core(
    name: str = "a",
    tasks: tuple[str, ...] = ("xor",),
    es_batch_ms: int = 0,
    publish_front: bool = True,
    es_group_size: int = 0,
) -> PeerCore:
    config = CoreConfig(
        tasks=tasks,
        publish_every=2,
        tolerances=task_tolerances(tasks),
        versions=task_versions(tasks),
        es_batch_ms=es_batch_ms,
        publish_front=publish_front,
        es_group_size=es_group_size,
    )
    return PeerCore(
        derive_identity(name),
        Store.open(":memory:", decoders=NODE_DECODERS),
        config,
        random.Random(1),
    )


class _Clock:
    def __init__(self) -> None:
        self.now = EPOCH

    def __call__(self) -> int:
        self.now += 1_000
        return self.now


class _AsyncBreeder:
    """What the daemon awaits (the evolution child's interface), over an in-process breeder."""

    def __init__(self, breeder: Breeder) -> None:
        self.breeder = breeder

    async def advance(self, migrants: Any, results: Any) -> Any:
        await trio.sleep(0)
        return self.breeder.advance(migrants, results)

    async def best_template(self) -> Template:
        await trio.sleep(0)
        return replace(self.breeder.best_template(), latency_ns=0)

    async def mark_published(self, genome_id: bytes, vertex_id: bytes) -> bool:
        self.breeder.mark_published(genome_id, vertex_id)
        return True


def test_the_daemon_and_the_simulator_make_the_same_templates_from_one_seed() -> None:
    def step(core: PeerCore, breeder: Breeder, clock: _Clock) -> Any:
        return peer_generation(
            core,
            "xor",
            migrants=2,
            injected=breeder.injected,
            share_results=False,
            clock=clock,
        )

    sim_core, sim_breeder, sim_clock = _core(), Breeder("xor", 5), _Clock()
    sim_published = []
    for _ in range(6):
        outcome = drive(step(sim_core, sim_breeder, sim_clock), serve_inline(sim_breeder))
        sim_published.append(outcome.published)

    daemon_core, daemon_breeder, daemon_clock = _core(), Breeder("xor", 5), _Clock()
    proxy = _AsyncBreeder(daemon_breeder)
    daemon_published = []

    async def daemon_run() -> None:
        for _ in range(6):
            outcome = await Daemon._drive_generation(
                step(daemon_core, daemon_breeder, daemon_clock),
                proxy,  # type: ignore[arg-type]
            )
            daemon_published.append(outcome.published)

    trio.run(daemon_run)
    assert any(vid is not None for vid in sim_published)
    assert sim_published == daemon_published
    assert sorted(sim_core.store.topological_order()) == sorted(
        daemon_core.store.topological_order()
    )


def _result_set(task: str = "xor", generation: int = 0) -> ResultSet:
    return ResultSet(task, 1, generation, 17, 0.1, b"c" * 16, (1, 2), ((0.5, 0.2), (0.1, 0.9)))


def test_result_sets_of_our_task_are_pooled_once_each_and_relayed() -> None:
    sender, receiver = _core("s"), _core("r")
    actions = sender.publish_results(_result_set(), EPOCH)
    assert [type(a) for a in actions] == [Publish]
    topic, data = actions[0].topic, actions[0].data  # type: ignore[union-attr]
    assert topic == task_topic("xor")
    newer = sender.publish_results(_result_set(generation=1), EPOCH)[0].data  # type: ignore[union-attr]
    relay, _ = receiver.on_gossip("peer", topic, data, EPOCH)
    relay2, _ = receiver.on_gossip("peer", topic, newer, EPOCH)
    assert relay and relay2
    # A faster peer's two sets within one of our generations are both steps of its centre:
    # skipping one would make our centre drift from its.
    pooled = receiver.take_results("xor")
    assert [r.generation for r in pooled] == [0, 1]
    assert receiver.take_results("xor") == []  # taken once
    # Our own set coming back through the mesh is not pooled again.
    sender.on_gossip("peer", topic, data, EPOCH)
    assert sender.take_results("xor") == []


def test_in_es_groups_a_peer_pools_its_groups_sets_only() -> None:
    """Issue 14: with `es_group_size` a peer's sets go to its group's topic, and it pools the
    sets of that topic only (another group's are relayed, not pooled), so what it handles per
    generation grows with its group, not with the network."""
    cores = [_core(f"g{i}", es_group_size=4) for i in range(40)]
    for core in cores:
        core.network_size = 40  # 10 groups
    topics = {core.es_topic("xor") for core in cores}
    assert len(topics) > 1 and all(is_es_group_topic(t) for t in topics)
    sender = cores[0]
    (action,) = sender.publish_results(_result_set(), EPOCH)
    assert action.topic == sender.es_topic("xor")  # type: ignore[union-attr]
    same = [c for c in cores[1:] if c.es_topic("xor") == action.topic]  # type: ignore[union-attr]
    other = [c for c in cores[1:] if c.es_topic("xor") != action.topic]  # type: ignore[union-attr]
    assert same and other
    for core in same + other:
        relay, _ = core.on_gossip("peer", action.topic, action.data, EPOCH)  # type: ignore[union-attr]
        assert relay
    assert all(len(c.take_results("xor")) == 1 for c in same)
    assert all(c.take_results("xor") == [] for c in other)
    # One group (the default, and any network no larger than a group): the task topic.
    alone = _core("alone", es_group_size=4)
    assert alone.es_topic("xor") == task_topic("xor")


def test_one_authors_burst_is_capped_at_its_newest_sets() -> None:
    sender, receiver = _core("s"), _core("r")
    cap = receiver.config.max_es_per_author
    for g in range(cap + 3):
        action = sender.publish_results(_result_set(generation=g), EPOCH)[0]
        receiver.on_gossip("peer", action.topic, action.data, EPOCH)  # type: ignore[union-attr]
    pooled = receiver.take_results("xor")
    assert [r.generation for r in pooled] == list(range(3, cap + 3))


def test_batched_result_sets_go_out_together_within_the_interval_and_arrive_in_order() -> None:
    sender, receiver = _core("s", es_batch_ms=100), _core("r")
    first = sender.publish_results(_result_set(generation=0), EPOCH)
    assert len(first) == 1  # nothing sent yet in this interval: at once
    assert sender.publish_results(_result_set(generation=1), EPOCH + 30) == []
    assert sender.publish_results(_result_set(generation=2), EPOCH + 60) == []

    def es_sent(actions: list[Any]) -> list[Publish]:
        return [a for a in actions if isinstance(a, Publish) and a.topic == task_topic("xor")]

    assert es_sent(sender.on_tick(EPOCH + 99)) == []  # still within the interval
    (batch,) = es_sent(sender.on_tick(EPOCH + 100))  # the tick sends what waited
    assert es_sent(sender.on_tick(EPOCH + 300)) == []  # nothing left
    for action in (*first, batch):
        relay, _ = receiver.on_gossip("peer", action.topic, action.data, EPOCH)  # type: ignore[union-attr]
        assert relay
    assert [r.generation for r in receiver.take_results("xor")] == [0, 1, 2]


def test_a_full_batch_goes_out_without_waiting() -> None:
    sender = _core("s", es_batch_ms=10_000)
    sender.publish_results(_result_set(generation=0), EPOCH)
    sent = [
        sender.publish_results(_result_set(generation=g), EPOCH + g)
        for g in range(1, messages.MAX_ES_SETS + 1)
    ]
    assert [len(a) for a in sent] == [0] * (messages.MAX_ES_SETS - 1) + [1]
    decoded = messages.decode(sent[-1][0].data)  # type: ignore[union-attr]
    assert isinstance(decoded, messages.EsResults)
    assert [r.generation for r in decoded.sets] == list(range(1, messages.MAX_ES_SETS + 1))


def test_es_messages_refuse_empty_oversized_or_mixed_batches() -> None:
    author = b"a" * 32
    for sets, reason in (
        ((), "range"),
        (tuple(_result_set(generation=g) for g in range(messages.MAX_ES_SETS + 1)), "range"),
        ((_result_set(), _result_set("iris")), "range"),
    ):
        data = messages.encode(messages.EsResults(author, sets))
        with pytest.raises(DecodeError) as err:
            messages.decode(data)
        assert err.value.reason == reason


def test_malformed_or_misrouted_result_sets_are_rejected_and_counted() -> None:
    core = _core()
    bad = messages.encode(messages.EsResults(b"a" * 32, (_result_set(),))).replace(
        b"sigma", b"sigmo"
    )
    relay, _ = core.on_gossip("peer", task_topic("xor"), bad, EPOCH)
    assert not relay
    wrong_topic = messages.encode(messages.EsResults(b"a" * 32, (_result_set("iris"),)))
    relay, _ = core.on_gossip("peer", task_topic("xor"), wrong_topic, EPOCH)
    assert not relay
    assert core.stats.rejected == {"es-missing-field": 1, "es-type": 1}
    assert core.take_results("xor") == []


def test_a_banned_authors_result_sets_are_dropped() -> None:
    core = _core()
    liar = b"l" * 32
    for _ in range(5):
        core.trust.claim_measured(liar, False)
    assert core.trust.banned(liar)
    data = messages.encode(messages.EsResults(liar, (_result_set(),)))
    relay, _ = core.on_gossip("peer", task_topic("xor"), data, EPOCH)
    assert not relay and core.take_results("xor") == []


def _receive_and_verify(core: PeerCore, actions: list[Any]) -> None:
    """Deliver another author's publications to `core`, which re-measures each claim."""
    for action in actions:
        if isinstance(action, Publish):
            relay, _ = core.on_gossip("author-peer", action.topic, action.data, EPOCH)
            assert relay
    while (job := core.next_reevaluation()) is not None:
        assert core.on_reevaluated(job, verify_claim(job.template), EPOCH)[0] == "valid"


def test_an_unmodified_migrant_that_wins_is_credited_to_its_author_not_republished() -> None:
    """Issue 17, "overfit": honest nodes sampled another author's net as a migrant, it became
    their best, and they re-published it byte for byte under their own keys. Here the
    receiver's engine makes only unmodified copies, so the migrant stays its best."""
    author_core, author = _core("author"), Breeder("xor", 3)
    for _ in range(20):
        author.advance()
    foreign = author.best_template()
    foreign_id, actions = author_core.publish_template(foreign, EPOCH)
    copies_only = dataclasses.replace(
        default_config(get_task("xor")),
        crossover_rate=0.0,
        structure_rate=0.0,
        weight_rate=0.0,
        learn_rate=0.0,
    )
    # Without the front rule (which alone would keep a copy of a net we measured from being
    # published: it cannot beat it), so that what is tested is `copied_from`.
    core, clock = _core("us", publish_front=False), _Clock()
    breeder = Breeder("xor", 5, config=copies_only)
    _receive_and_verify(core, actions)
    outcomes = []
    for _ in range(4):
        step = peer_generation(
            core, "xor", migrants=1, injected=breeder.injected, share_results=False, clock=clock
        )
        outcomes.append(drive(step, serve_inline(breeder)))
    assert breeder.injected == {foreign_id}
    assert all(o.report.best_id == genome_id(foreign.genome) for o in outcomes)  # it won
    for outcome in outcomes:
        if outcome.published is not None:
            vertex = core.store.vertex(outcome.published)
            assert vertex is not None
            ours = Template.from_dict(vertex.payload)
            assert ours.genome.to_bytes() != foreign.genome.to_bytes(), "re-published a copy"
    assert [o.published for o in outcomes] == [None] * 4
    # It stays credited to its author's template at every generation we would have published.
    assert [o.credited for o in outcomes] == [None, foreign_id, None, foreign_id]
    assert core.own_templates("xor") == []


def test_a_modified_descendant_of_a_migrant_is_ours_and_published() -> None:
    author_core, author = _core("author"), Breeder("xor", 3)
    for _ in range(20):
        author.advance()
    foreign = author.best_template()
    foreign_id, actions = author_core.publish_template(foreign, EPOCH)
    core, breeder, clock = _core("us"), Breeder("xor", 5), _Clock()
    _receive_and_verify(core, actions)
    published = []
    for _ in range(4):
        step = peer_generation(
            core, "xor", migrants=1, injected=breeder.injected, share_results=False, clock=clock
        )
        outcome = drive(step, serve_inline(breeder))
        if outcome.published is not None:
            published.append(outcome.published)
    assert published  # the engine improved on the migrant: a new net, ours to publish
    for vid in published:
        vertex = core.store.vertex(vid)
        assert vertex is not None and foreign_id in vertex.payload["parents"]
        assert Template.from_dict(vertex.payload).genome.to_bytes() != foreign.genome.to_bytes()
