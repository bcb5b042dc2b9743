"""The sans-IO peer core, driven directly: orderings, orphans, sync, lying peers, restarts.

Every test wires cores together by hand (no network, no clock): what one core returns as
actions is delivered to another as events, in orders the test chooses.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag.crypto.canonical import DecodeError, pack, unpack
from qudag.crypto.signing import Identity
from qudag.dag.payloads import KIND_ATTESTATION, VERDICT_VALID, attestation_payload
from qudag.dag.store import Store
from qudag.dag.validate import precheck
from qudag.dag.vertex import decode_vertex, make_identity_vertex, make_vertex
from qudag.evolution.genome import Genome
from qudag.evolution.tasks import get_task
from qudag.evolution.template import Template, from_genome
from qudag.evolution.verify import remeasure, verify_claim
from qudag.node.commands import templates as templates_cli
from qudag.node.errors import UserError
from qudag.node.ops.routes import LedgerRoutes
from qudag.node.protocol import messages, quorum
from qudag.node.protocol.core import (
    CONTROL_TOPIC,
    NODE_DECODERS,
    CoreConfig,
    Disconnect,
    PeerCore,
    Publish,
    SendRequest,
    task_tolerances,
    task_topic,
)
from qudag.node.protocol.reeval_queue import ReevaluationQueue

TASK = "xor"
NOW = 1_700_000_000_000


@pytest.fixture(scope="module")
def identities() -> list[Identity]:
    return [Identity.generate() for _ in range(4)]


def honest_template(seed: int, generation: int = 0) -> Template:
    task = get_task(TASK)
    genome = Genome.random(np.random.default_rng(seed), task.n_inputs, [4], task.n_outputs)
    draft = from_genome(genome, task, 0.0, generation=generation, latency_repeats=3)
    return replace(draft, fitness=verify_claim(draft))


def lying_template(seed: int, generation: int = 0) -> Template:
    honest = honest_template(seed, generation)
    return replace(honest, fitness=honest.fitness + 0.5)


def make_core(identity: Identity, path: Path | str = ":memory:", **config: object) -> PeerCore:
    store = Store.open(path, decoders=NODE_DECODERS)
    if "tolerances" not in config:
        config["tolerances"] = task_tolerances((TASK,))
    config.setdefault("versions", {TASK: get_task(TASK).version})
    core_config = CoreConfig(tasks=(TASK,), **config)  # type: ignore[arg-type]
    return PeerCore(identity, store, core_config, random.Random(0))


def publications(actions: list) -> list[Publish]:
    return [a for a in actions if isinstance(a, Publish)]


def author_history(core: PeerCore, n_templates: int, liar: bool = False) -> list[Publish]:
    """An author's identity vertex and `n_templates` template vertices, in publish order."""
    out = publications(core.start(NOW))
    for i in range(n_templates):
        template = lying_template(i) if liar else honest_template(i)
        _, actions = core.publish_template(template, NOW + i + 1)
        out += publications(actions)
    return out


def serve(requests: list, servers: dict[str, PeerCore], client: PeerCore) -> int:
    """Answer a client's SendRequest actions from the named server cores until none remain."""
    rounds = 0
    pending = [a for a in requests if isinstance(a, SendRequest)]
    while pending and rounds < 100:
        rounds += 1
        action = pending.pop(0)
        response = servers[action.peer].on_sync_request("client", action.data, NOW)
        more = client.on_sync_response(action.peer, response, NOW)
        pending += [a for a in more if isinstance(a, SendRequest)]
    return rounds


def test_start_publishes_identity_once(identities: list[Identity], tmp_path: Path) -> None:
    core = make_core(identities[0], tmp_path / "a.sqlite3", eager_identity=True)
    first = core.start(NOW)
    assert [type(a) for a in first] == [Publish]
    assert first[0].topic == CONTROL_TOPIC
    core.store.close()
    again = make_core(identities[0], tmp_path / "a.sqlite3", eager_identity=True)
    assert again.start(NOW + 10) == []  # restart: identity already committed, not republished


def test_a_peer_that_publishes_nothing_writes_no_identity(identities: list[Identity]) -> None:
    """Issue 14: with lazy identities (the default) a peer costs the ledger nothing until it
    publishes; then its identity goes out first, once, in the same batch as its vertex."""
    core = make_core(identities[0])
    assert core.start(NOW) == [] and core.store.count() == 0
    _, actions = core.publish_template(honest_template(0), NOW + 1)
    kinds = [decode_vertex(a.data).kind for a in publications(actions)]
    assert kinds == ["identity", "template"]
    _, actions = core.publish_template(honest_template(1), NOW + 2)
    assert [decode_vertex(a.data).kind for a in publications(actions)] == ["template"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(order=st.permutations(list(range(5))))
def test_any_delivery_order_gives_the_same_ledger(
    identities: list[Identity], order: list[int]
) -> None:
    author = make_core(identities[0])
    history = author_history(author, 4)
    receiver = make_core(identities[1])
    receiver.on_peer_connected("author")
    for i in order:
        relay, actions = receiver.on_gossip("author", history[i].topic, history[i].data, NOW)
        # Relayed once stored; pending on the author's unknown previous vertex, not flooded.
        assert relay == receiver.store.has(decode_vertex(history[i].data).id)
        serve(actions, {"author": author}, receiver)
    # Parents that arrived out of order are fetched by the tick from the hinting peer.
    for t in range(20):
        serve(receiver.on_tick(NOW + 1_000 * t), {"author": author}, receiver)
        if receiver.store.count() == author.store.count():
            break
    assert set(receiver.store.topological_order()) == set(author.store.topological_order())
    assert receiver.store.tips() == author.store.tips()
    assert receiver.store.orphan_count() == 0


def test_orphan_is_pending_then_fetched_from_the_forwarder(identities: list[Identity]) -> None:
    author = make_core(identities[0])
    history = author_history(author, 2)
    receiver = make_core(identities[1])
    receiver.on_peer_connected("fwd")
    receiver.on_peer_connected("other")
    relay, actions = receiver.on_gossip("fwd", history[-1].topic, history[-1].data, NOW)
    # Valid-but-pending is kept and fetched for, not rejected; but its author's previous
    # vertex is unknown to us, so it is not relayed (issue 17: invented parents).
    assert not relay
    assert receiver.store.orphan_count() == 1
    requests = [a for a in receiver.on_tick(NOW) if isinstance(a, SendRequest)]
    assert requests and requests[0].peer == "fwd"  # the forwarding peer is asked first
    serve(requests, {"fwd": author}, receiver)
    for t in range(1, 10):
        serve(receiver.on_tick(NOW + 2_000 * t), {"fwd": author, "other": author}, receiver)
    assert receiver.store.count() == author.store.count()
    assert receiver.store.orphan_count() == 0


def test_orphan_whose_parent_nobody_serves_is_dropped_and_no_longer_asked_for(
    identities: list[Identity],
) -> None:
    author = make_core(identities[0])
    history = author_history(author, 2)
    withholder = make_core(identities[2])  # holds nothing: answers every request with nothing
    receiver = make_core(identities[1])
    receiver.on_peer_connected("fwd")
    receiver.on_gossip("fwd", history[-1].topic, history[-1].data, NOW)
    assert receiver.store.orphan_count() == 1
    attempts = receiver.fetcher.policy.max_attempts
    t = NOW
    for _ in range(attempts + 2):
        serve(receiver.on_tick(t), {"fwd": withholder}, receiver)
        t += receiver.fetcher.policy.max_backoff_ms
    assert receiver.store.orphan_count() == 0
    assert receiver.stats.rejected.get("orphan-abandoned") == 1
    later = [a for a in receiver.on_tick(t) if isinstance(a, SendRequest)]
    assert not any(isinstance(messages.decode(a.data), messages.GetVertices) for a in later)
    # The dropped orphan is not lost for good: offered again with its parents, it is accepted.
    for pub in history:
        receiver.on_gossip("fwd", pub.topic, pub.data, t)
    assert receiver.store.count() == author.store.count()


def test_heads_trigger_bulk_catch_up(identities: list[Identity]) -> None:
    author = make_core(identities[0], sync_page=2)
    author_history(author, 6)
    heads = [a for a in author.on_tick(NOW) if isinstance(a, Publish) and a.topic == CONTROL_TOPIC]
    assert heads
    newcomer = make_core(identities[1], sync_page=2)
    newcomer.on_peer_connected("author")
    relay, actions = newcomer.on_gossip("author", CONTROL_TOPIC, heads[0].data, NOW)
    assert not relay  # heads go to neighbours only (`relay_heads`, issue 14)
    assert any(
        isinstance(messages.decode(a.data), messages.SinceAfter)
        for a in actions
        if isinstance(a, SendRequest)
    )
    rounds = serve(actions, {"author": author}, newcomer)
    assert rounds >= 3  # paged: 7 vertices at 2 per page
    assert set(newcomer.store.topological_order()) == set(author.store.topological_order())


def test_garbage_is_rejected_counted_and_costs_the_peer(identities: list[Identity]) -> None:
    core = make_core(identities[0], max_peer_strikes=3)
    core.on_peer_connected("evil")
    disconnects = []
    for i in range(3):
        relay, actions = core.on_gossip("evil", task_topic(TASK), b"\x92\xc4\x01" + bytes([i]), NOW)
        assert not relay
        disconnects += [a for a in actions if isinstance(a, Disconnect)]
    assert sum(core.stats.rejected.values()) == 3
    assert [d.peer for d in disconnects] == ["evil"]
    with pytest.raises(ValueError):
        core.on_sync_request("evil", b"\xff\xff", NOW)


def deliver_all(history: list[Publish], to: PeerCore, peer: str) -> None:
    for pub in history:
        relay, _ = to.on_gossip(peer, pub.topic, pub.data, NOW)


def run_reevaluations(core: PeerCore) -> list[tuple[str | None, list]]:
    results = []
    while (job := core.next_reevaluation()) is not None:
        results.append(core.on_reevaluated(job, verify_claim(job.template), NOW + 5))
    return results


def test_lying_author_is_attested_invalid_banned_and_never_sampled(
    identities: list[Identity],
) -> None:
    liar = make_core(identities[2])
    honest = make_core(identities[0])
    verifier = make_core(identities[1])
    deliver_all(author_history(liar, 3, liar=True), verifier, "liar-peer")
    deliver_all(author_history(honest, 1), verifier, "honest-peer")
    verifier.on_peer_connected("liar-peer")
    verifier.on_peer_authenticated("liar-peer", identities[2].key_id)
    results = run_reevaluations(verifier)
    verdicts = sorted(v for v, _ in results)
    # One proven lie (penalty 5) bans the author (threshold -4): its other claims are not
    # worth our CPU and are skipped.
    assert verdicts == ["invalid", "valid"]
    # Each verdict was published as a signed attestation on the task topic.
    attestations = [p for _, actions in results for p in publications(actions)]
    assert len([a for a in attestations if a.topic == task_topic(TASK)]) == 2
    assert verifier.trust.banned(identities[2].key_id)
    disconnects = [a for _, actions in results for a in actions if isinstance(a, Disconnect)]
    assert [d.peer for d in disconnects] == ["liar-peer"]
    migrants = verifier.migrants(TASK, 10)
    assert [t.fitness for _, t in migrants] == [honest_template(0).fitness]
    # Banned author's later vertices are not relayed.
    later, _ = liar.publish_template(lying_template(9), NOW + 50)
    raw = liar.store.get(later)
    assert raw is not None
    relay, _ = verifier.on_gossip("liar-peer", task_topic(TASK), raw, NOW + 60)
    assert not relay


def test_unverified_claims_are_not_sampled(identities: list[Identity]) -> None:
    honest = make_core(identities[0])
    sampler = make_core(identities[1])
    deliver_all(author_history(honest, 2), sampler, "p")
    assert sampler.migrants(TASK, 5) == []  # nobody checked them yet
    run_reevaluations(sampler)
    assert len(sampler.migrants(TASK, 5)) == 1  # one per author: diversity


def test_restart_rebuilds_backlog_and_does_not_republish(
    identities: list[Identity], tmp_path: Path
) -> None:
    author = make_core(identities[0])
    history = author_history(author, 2)
    path = tmp_path / "v.sqlite3"
    verifier = make_core(identities[1], path)
    deliver_all(history, verifier, "p")
    assert verifier.reevaluation_backlog() == 2
    job = verifier.next_reevaluation()
    assert job is not None
    verifier.on_reevaluated(job, verify_claim(job.template), NOW)
    assert verifier.should_publish(TASK, 5, 0.9)
    _, _ = verifier.publish_template(replace(honest_template(7, generation=5), fitness=0.9), NOW)
    verifier.store.close()

    restarted = make_core(identities[1], path)
    assert restarted.reevaluation_backlog() == 1  # the checked one is not queued again
    assert not restarted.should_publish(TASK, 5, 0.95)  # generation 5 already published
    author = identities[0].key_id
    # The record the checked claim gave its author survives the restart.
    assert restarted.trust.reevaluated_first(author) and verifier.trust.reevaluated_first(author)
    assert not restarted.trust.banned(author)


@pytest.mark.parametrize("pipeline", [2, 3])  # 3: the daemon's SYNC_PIPELINE
def test_bulk_sync_requests_the_next_page_before_storing_this_one(
    identities: list[Identity], pipeline: int
) -> None:
    """Cursor pages are pipelined: page k+1 is asked for as soon as page k arrives, and never
    more than `sync_pipeline` pages are requested or held unstored at once."""
    author = make_core(identities[0], sync_page=2)
    author_history(author, 9)
    heads = [a for a in author.on_tick(NOW) if isinstance(a, Publish) and a.topic == CONTROL_TOPIC]
    newcomer = make_core(identities[1], sync_page=2, sync_pipeline=pipeline)
    newcomer.on_peer_connected("author")
    _, actions = newcomer.on_gossip("author", CONTROL_TOPIC, heads[0].data, NOW)
    in_flight = [a for a in actions if isinstance(a, SendRequest)]
    assert len(in_flight) == 1
    held: list = []
    most = 0
    pipelined = False
    for _ in range(200):
        if not in_flight and not held:
            break
        if in_flight and len(held) < pipeline:  # answers arrive while earlier pages are unstored
            request = in_flight.pop(0)
            assert isinstance(messages.decode(request.data), messages.SinceAfter)
            response = author.on_sync_request("newcomer", request.data, NOW)
            page, more = newcomer.receive_sync_response("author", response, NOW)
            assert page is not None
            held.append(page)
            asked = [a for a in more if isinstance(a, SendRequest)]
            pipelined |= bool(asked) and len(held) == 1
            in_flight += asked
        else:
            page = held.pop(0)
            checked = precheck(page.vertices, newcomer.store.known_keys(), workers=2)
            in_flight += [
                a
                for a in newcomer.ingest_sync_page(page, checked, NOW)
                if isinstance(a, SendRequest)
            ]
        most = max(most, len(in_flight) + len(held))
    assert pipelined and most == pipeline
    assert set(newcomer.store.topological_order()) == set(author.store.topological_order())
    assert newcomer.stats.rejected == {}


def test_a_peer_whose_cursor_does_not_advance_cannot_page_forever(
    identities: list[Identity],
) -> None:
    author = make_core(identities[0], sync_page=2)
    history = author_history(author, 3)
    client = make_core(identities[1])
    client.on_peer_connected("liar")
    actions = client._request_since("liar", NOW)
    assert actions
    stuck = messages.encode(messages.Page((history[0].data,), (0, b"\x00" * 32)))
    sent = 0
    for _ in range(10):
        actions = client.on_sync_response("liar", stuck, NOW)
        sent += sum(isinstance(a, SendRequest) for a in actions)
    assert sent <= 1 and client.stats.rejected.get("sync-cursor", 0) >= 1


@pytest.mark.parametrize(
    "message",
    [
        messages.SinceAfter(((b"\x04" * 32, 3),), 128, None),
        messages.SinceAfter((), 1, (7, b"\x05" * 32)),
        messages.Page((b"raw",), (0, b"\x06" * 32)),
        messages.Page((), None),
    ],
)
def test_version_2_sync_messages_round_trip_strictly(message: messages.Message) -> None:
    data = messages.encode(message)
    assert messages.decode(data) == message
    value = unpack(data, messages.MAX_MESSAGE_SIZE)
    for key, bad in (("after", [1]), ("after", [True, b"\x01" * 32]), ("next", [-1, b"1" * 32])):
        if key in value:
            with pytest.raises(DecodeError):
                messages.decode(pack({**value, key: bad}))


def test_replayed_pages_end_the_session_and_fetching_waits_for_it(
    identities: list[Identity],
) -> None:
    """A peer that pages replays forever (advancing cursors, nothing new) cannot hold the bulk
    session open, and while a session runs, ids are not fetched one by one (it brings them)."""
    author = make_core(identities[0])
    history = author_history(author, 3)
    client = make_core(identities[1])
    for pub in history:
        client.on_gossip("replayer", pub.topic, pub.data, NOW)
    client.on_peer_connected("replayer")
    client.fetcher.want([b"\x07" * 32], "replayer", NOW)
    assert client._request_since("replayer", NOW)
    requests = 0
    for depth in range(1, 50):
        page = messages.Page(tuple(p.data for p in history), (depth, b"\x00" * 32))
        actions = client.on_sync_response("replayer", messages.encode(page), NOW)
        if depth == 1:
            ticks = [a for a in client.on_tick(NOW) if isinstance(a, SendRequest)]
            assert ticks == []  # more pages follow: the wanted id waits for them
        requests += sum(isinstance(a, SendRequest) for a in actions)
        if not any(isinstance(a, SendRequest) for a in actions) and not client._paging:
            break
    assert requests <= 2 and not client._paging
    fetches = [a for a in client.on_tick(NOW + 5_000) if isinstance(a, SendRequest)]
    assert [messages.decode(a.data) for a in fetches] == [messages.GetVertices((b"\x07" * 32,))]


def test_a_paging_peer_starves_neither_fetching_nor_later_sessions(
    identities: list[Identity],
) -> None:
    """A small gap (one page) does not hold back fetching by id; a long catch-up holds back
    only its own peer (the others are asked), and a session silent for `sync_stall_ms` is
    given up."""
    author = make_core(identities[0])
    history = author_history(author, 2)
    client = make_core(identities[1], sync_stall_ms=10_000)
    client.on_peer_connected("slow")
    client.on_peer_connected("other")
    missing = b"\x07" * 32
    client.fetcher.want([missing], "slow", NOW)
    assert client._request_since("slow", NOW)
    asked = [a for a in client.on_tick(NOW) if isinstance(a, SendRequest)]
    assert [(a.peer, messages.decode(a.data)) for a in asked] == [
        ("slow", messages.GetVertices((missing,)))
    ]
    more = messages.Page(tuple(p.data for p in history), (1, b"\x00" * 32))
    client.on_sync_response("slow", messages.encode(more), NOW)  # ... then "slow" goes quiet
    hinted = b"\x08" * 32  # first asked of its hint, unless that peer is paging a long history
    client.fetcher.want([hinted], "slow", NOW + 1_000)
    asked = [a for a in client.on_tick(NOW + 1_000) if isinstance(a, SendRequest)]
    assert [(a.peer, messages.decode(a.data)) for a in asked] == [
        ("other", messages.GetVertices((missing, hinted)))
    ]
    assert client._request_since("other", NOW + 1_000) == []  # one session at a time
    client.on_tick(NOW + 11_001)
    assert not client._paging
    assert client._request_since("other", NOW + 12_000)


def test_anti_entropy_pulls_what_gossip_never_delivered(identities: list[Identity]) -> None:
    """Two connected peers whose gossip stopped flowing (no vertex, no heads) still converge:
    every `anti_entropy_ms` a peer pulls what a random peer has, and when in step, one empty
    page ends the exchange."""
    author = make_core(identities[0])
    history = author_history(author, 3)
    client = make_core(identities[1], anti_entropy_ms=5_000)
    for pub in history[:2]:
        client.on_gossip("author", pub.topic, pub.data, NOW)
    client.on_peer_connected("author")
    t, rounds = NOW, []
    for _ in range(3):
        rounds.append(serve(client.on_tick(t), {"author": author}, client))
        t += 5_000
    assert client.store.count() == author.store.count()
    assert rounds[0] >= 1 and rounds[1] == 1 and rounds[2] == 1  # in step: one empty page
    assert serve(client.on_tick(t - 4_000), {"author": author}, client) == 0  # not sooner
    # Off by default (the simulator's modelled gossip does not lose messages this way).
    assert CoreConfig(tasks=(TASK,)).anti_entropy_ms == 0


def test_a_core_refuses_a_store_without_the_nodes_payload_decoders() -> None:
    """A peer's ledger must judge template payloads as evolution does; the decoders are a
    parameter of `Store.open` (not process state), so a store opened without them is refused
    here rather than silently admitting templates the engine cannot read."""
    with pytest.raises(ValueError, match="NODE_DECODERS"):
        PeerCore(Identity.generate(), Store.open(":memory:"), CoreConfig(()), random.Random(0))
    core = make_core(Identity.generate())
    assert core.store.decoders == NODE_DECODERS


def test_verdicts_use_the_tolerances_the_driver_gave_and_load_no_task(
    identities: list[Identity], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core is sans-IO: judging a claim must not load its task (a csv task would be read
    from disk in the middle of a verdict); the tolerance comes from `CoreConfig.tolerances`."""
    history = author_history(make_core(identities[0]), 1)
    strict, lenient = make_core(identities[1]), make_core(identities[2], tolerances={TASK: 2.0})
    for core in (strict, lenient):
        deliver_all(history, core, "p")

    def no_io(name: str) -> None:
        raise AssertionError(f"the core loaded task {name!r}")

    monkeypatch.setattr("qudag.node.protocol.core.get_task", no_io)
    for core, verdict in ((strict, "invalid"), (lenient, "valid")):
        job = core.next_reevaluation()
        assert job is not None
        assert core.on_reevaluated(job, job.template.fitness - 1.5, NOW)[0] == verdict
    with pytest.raises(ValueError, match="tolerances"):
        make_core(identities[3], tolerances={})


# --- what counts as verified, and the fitness shown as verified (issue 17) -------------------
def forged_attestation(
    attester: PeerCore, template_id: bytes, fitness: float, verdict: str = VERDICT_VALID
) -> list[Publish]:
    """`attester`'s identity vertex and a signed attestation (`verdict`, "valid" unless
    given) of `template_id` carrying whatever `fitness` it typed (nothing stops an attester
    from typing any number)."""
    out = publications(attester.start(NOW))
    parents = sorted(set(attester.store.parents_for(attester.me, 7)) | {template_id})
    raw = make_vertex(
        attester.identity,
        attester.store.next_seq(attester.me),
        NOW + 1,
        parents,
        KIND_ATTESTATION,
        attestation_payload(template_id, fitness, verdict),
    )
    assert attester.store.ingest(raw, NOW + 1).accepted
    return out + [Publish(task_topic(TASK), raw)]


def give_record(core: PeerCore, attesters: list[PeerCore]) -> None:
    """As if `core` had checked a "valid" attestation of each of `attesters` against its own
    measurement and found it right: a proven record (`Reputation.proven_attester`), the
    weight that makes their attestations count before `core`'s own check."""
    for attester in attesters:
        assert core.trust.attestation_measured(attester.me, 0.5, 0.5, 1e-6)[0] == "right"
        assert attester.me in core.trust.trusted_verifiers()


def listed(core: PeerCore, task: str) -> list[dict[str, Any]]:
    """The daemon's `/templates` answer for `task`, from the route's own code over `core`."""
    routes = LedgerRoutes(core, lambda: core.config.tasks[0], lambda task: None)
    response = routes.templates("/templates", f"task={task}&limit=20")
    assert response.status == 200
    return json.loads(response.body)["templates"]


class _ListingClient:
    """What `templates pull|show` asks a node, answered by the route's code over `core`."""

    def __init__(self, core: PeerCore) -> None:
        self.core = core

    def templates(self, task: str | None, limit: int) -> dict[str, Any]:
        entries = listed(self.core, task or TASK)[:limit]
        return {"task": task, "templates": entries}


def pick(core: PeerCore, task: str) -> bytes:
    """The template `templates pull` takes by default from `core`'s node."""
    return templates_cli.pick(_ListingClient(core), None, task)  # type: ignore[arg-type]


def run_remeasurements(core: PeerCore) -> list[str | None]:
    """Re-measure every queued claim as both drivers do (`remeasure`: no verdict on a task
    version this machine cannot evaluate)."""
    verdicts = []
    while (job := core.next_reevaluation()) is not None:
        _, measured = remeasure(job.template)
        verdicts.append(core.on_reevaluated(job, measured, NOW + 5)[0])
    return verdicts


def test_what_we_cannot_remeasure_is_never_verified_whoever_vouches_for_it(
    identities: list[Identity],
) -> None:
    """Issue 17, "version skew": an inflated claim of a task version we cannot evaluate, and one
    of a task we do not hold, each attested "valid" by two attesters with a proven record, are
    not sampled, not listed as verified and not what `templates pull` hands out."""
    author, node = make_core(identities[0]), make_core(identities[1])
    attesters = [make_core(i, eager_identity=True) for i in identities[2:4]]
    give_record(node, attesters)  # their word would count, were it on what we can measure
    skewed = replace(lying_template(0), task_version=get_task(TASK).version + 1)
    parity = get_task("parity-3")
    genome = Genome.random(np.random.default_rng(0), parity.n_inputs, [4], parity.n_outputs)
    other_task = from_genome(genome, parity, 0.99, latency_repeats=3)
    history = publications(author.start(NOW))
    ids = []
    for i, template in enumerate((skewed, other_task)):
        vid, actions = author.publish_template(template, NOW + 1 + i)
        history += publications(actions)
        ids.append(vid)
    for core in (node, *attesters):
        deliver_all(history, core, "author-peer")
    for attester in attesters:
        for vid in ids:
            deliver_all(forged_attestation(attester, vid, 0.99), node, "attester-peer")
    assert run_remeasurements(node) == [None]  # no verdict: we cannot evaluate that version
    assert node.migrants(TASK, 5) == []
    for task, vid in ((TASK, ids[0]), ("parity-3", ids[1])):
        (entry,) = [e for e in listed(node, task) if e["id"] == vid.hex()]
        assert entry["verified_fitness"] is None, f"{task}: listed as verified"
        assert not entry.get("verified", False)
    with pytest.raises(UserError, match="no verified template"):
        pick(node, TASK)
    # Once we measured an honest template ourselves, that is what is sampled and pulled.
    _, actions = author.publish_template(honest_template(1), NOW + 10)
    deliver_all(publications(actions), node, "author-peer")
    assert run_remeasurements(node) == ["valid"]
    assert [vid for vid, _ in node.migrants(TASK, 5)] == [pick(node, TASK)]


def test_the_verified_fitness_shown_is_our_measurement_never_an_attesters_number(
    identities: list[Identity],
) -> None:
    """Issue 17: the fitness shown as verified was the number the attesters typed. Two
    attesters with a proven record sign "valid" with 0.99 and 0.05 for a claim we measure at
    its true value."""
    author, node = make_core(identities[0]), make_core(identities[1])
    attesters = [make_core(i, eager_identity=True) for i in identities[2:4]]
    give_record(node, attesters)
    history = author_history(author, 1)
    vid = decode_vertex(history[-1].data).id
    truth = honest_template(0).fitness
    for core in attesters:
        deliver_all(history, core, "author-peer")
    deliver_all(history, node, "author-peer")
    for attester, typed in zip(attesters, (0.99, 0.05), strict=True):
        deliver_all(forged_attestation(attester, vid, typed), node, "attester-peer")
    # Before our own check: verified on two proven attesters' word, but measured by nobody
    # we can name.
    (entry,) = listed(node, TASK)
    assert entry["verified"] is True
    assert entry["verified_fitness"] not in (0.99, 0.05)
    assert entry["verified_fitness"] is None and entry.get("measured_by") is None
    assert entry["claimed_fitness"] == truth
    assert node.ranked_templates(TASK, 1, measured_only=True) == []  # daemon's best_verified
    # After it: our measurement, and it says whose.
    assert run_remeasurements(node) == ["valid"]
    (entry,) = listed(node, TASK)
    assert entry["verified_fitness"] == truth and entry["measured_by"] == "us"
    assert entry["verified"] is True
    (best,) = node.ranked_templates(TASK, 1, measured_only=True)
    assert best.measured_fitness == truth and best.measured_by == node.me


def twin_of(author: PeerCore, original: Publish, generation: int = 999) -> Publish:
    """Another validly signed vertex with `original`'s author, seq and parents."""
    last = decode_vertex(original.data)
    twin = make_vertex(
        author.identity,
        last.seq,
        last.ts_ms + 1,
        list(last.parents),
        last.kind,
        replace(honest_template(77), generation=generation).to_dict(),
    )
    return Publish(original.topic, twin)


def test_equivocation_costs_a_ban_and_the_authors_connection(
    identities: list[Identity], tmp_path: Path
) -> None:
    """Issue 17: two signed vertices with one (author, seq) are proof, like a proven false
    claim: the author is banned and its own peer disconnected; the relay is not blamed."""
    cheat = identities[2].key_id
    author = make_core(identities[2])
    history = author_history(author, 2)
    twin = twin_of(author, history[-1])
    verifier = make_core(identities[1], tmp_path / "v.sqlite3")
    for peer in ("cheat-peer", "relay-peer"):
        verifier.on_peer_connected(peer)
    verifier.on_peer_authenticated("cheat-peer", cheat)
    deliver_all(history, verifier, "relay-peer")
    relay, actions = verifier.on_gossip("relay-peer", twin.topic, twin.data, NOW)
    assert relay  # the proof itself spreads, so that every honest peer can check it
    assert verifier.stats.equivocations == 1
    assert verifier.trust.banned(cheat)
    assert [(a.peer, a.reason) for a in actions if isinstance(a, Disconnect)] == [
        ("cheat-peer", "equivocating-author")
    ]
    # The evidence stays: both signed vertices, and the author flagged in the store.
    ids = {decode_vertex(history[-1].data).id, decode_vertex(twin.data).id}
    assert [(a, set(v)) for a, _, v in verifier.store.equivocations()] == [(cheat, ids)]
    assert verifier.store.flagged_authors() == [cheat]
    assert verifier.ranked_templates(TASK, 10) == []
    assert verifier.next_reevaluation() is None  # a banned author's claims cost no CPU
    # More twins of a banned author are not flooded: the first proof was enough.
    third = twin_of(author, history[-1], generation=1000)
    assert decode_vertex(third.data).id not in ids
    assert verifier.on_gossip("relay-peer", third.topic, third.data, NOW)[0] is False
    # A reconnect of the author is refused, and so is a restart's amnesty.
    assert verifier.on_peer_authenticated("cheat-again", cheat) == [
        Disconnect("cheat-again", "banned-author")
    ]
    verifier.store.close()
    restarted = make_core(identities[1], tmp_path / "v.sqlite3")
    assert restarted.trust.banned(cheat)


def test_equivocation_proved_by_released_orphans_bans_too(identities: list[Identity]) -> None:
    author = make_core(identities[2])
    history = author_history(author, 2)
    twin = twin_of(author, history[-1])
    verifier = make_core(identities[1])
    verifier.on_peer_connected("cheat-peer")
    verifier.on_peer_authenticated("cheat-peer", identities[2].key_id)
    for pub in [*history[:-2], history[-1], twin]:
        verifier.on_gossip("relay-peer", pub.topic, pub.data, NOW)
    assert verifier.store.orphan_count() == 2  # both wait for the author's seq 1
    _, actions = verifier.on_gossip("relay-peer", history[-2].topic, history[-2].data, NOW)
    assert verifier.trust.banned(identities[2].key_id)
    assert [a.peer for a in actions if isinstance(a, Disconnect)] == ["cheat-peer"]


def test_a_pending_vertex_is_relayed_only_on_its_authors_known_previous_vertex(
    identities: list[Identity],
) -> None:
    """Issue 17: a signed vertex with invented parents was relayed network-wide. A pending
    vertex is relayed only if we hold its author's previous vertex (the self-parent): then
    what is missing is someone else's vertex in flight, the honest race; otherwise the author
    can chain at most one relayed orphan onto what we accepted."""
    author = make_core(identities[0])
    history = author_history(author, 3)  # seq 0..3
    receiver = make_core(identities[1], max_peer_strikes=3)
    receiver.on_peer_connected("fwd")
    receiver.on_gossip("fwd", history[0].topic, history[0].data, NOW)
    # seq 2: its self-parent (seq 1) is unknown to us. Buffered and fetched, not relayed.
    relay, _ = receiver.on_gossip("fwd", history[2].topic, history[2].data, NOW)
    assert not relay and receiver.store.orphan_count() == 1
    assert receiver.stats.pending == 1
    # seq 1 on the known seq 0, plus a parent we lack: the honest race, relayed.
    identity_id = decode_vertex(history[0].data).id
    raced = make_vertex(
        author.identity,
        1,
        NOW + 1,
        sorted([identity_id, b"\x01" * 32]),
        "template",
        honest_template(5).to_dict(),
        decoders=NODE_DECODERS,
    )
    relay, _ = receiver.on_gossip("fwd", task_topic(TASK), raced, NOW)
    assert relay and receiver.store.orphan_count() == 2
    # A fresh identity whose own first vertex points at invented parents: not relayed.
    stranger = Identity.generate()
    forged = make_vertex(stranger, 1, NOW, [b"\x02" * 32], "template", honest_template(6).to_dict())
    assert receiver.on_gossip("fwd", task_topic(TASK), forged, NOW)[0] is False
    # Nothing pending is the forwarder's fault: no strikes, no disconnect.
    assert receiver.trust.strikes.get("fwd", 0) == 0
    # seq 1 arrives after all: seq 2, held back, is valid and goes on now, once (peers
    # whose only path to it ran through us would never see it otherwise).
    _, actions = receiver.on_gossip("fwd", history[1].topic, history[1].data, NOW)
    published = [a for a in actions if isinstance(a, Publish)]
    assert [(a.topic, a.data) for a in published] == [(history[2].topic, history[2].data)]
    _, again = receiver.on_gossip("fwd", history[3].topic, history[3].data, NOW)
    assert not [a for a in again if isinstance(a, Publish) and a.data == history[2].data]


def sybil_claims(n: int, fitness: float) -> list[Publish]:
    """`n` fresh identities, each publishing one claim of `fitness` (their identity vertex
    and a template vertex on it)."""
    base = honest_template(3)
    out: list[Publish] = []
    for i in range(n):
        sybil = Identity.generate()
        identity_raw = make_identity_vertex(sybil, NOW)
        claim = replace(base, fitness=fitness + i * 1e-3)
        raw = make_vertex(
            sybil,
            1,
            NOW + 1,
            [decode_vertex(identity_raw).id],
            "template",
            claim.to_dict(),
            decoders=NODE_DECODERS,
        )
        out += [Publish(CONTROL_TOPIC, identity_raw), Publish(task_topic(TASK), raw)]
    return out


def test_the_reevaluation_order_cannot_be_flooded(identities: list[Identity]) -> None:
    """Issue 17: 120 throwaway identities publishing higher false claims pushed the check of
    a proven author's claim back (the queue took the highest claim first). Claims of authors
    whose claims we checked and found right come first, and no author holds more than
    `max_reeval_per_author` places."""
    known = make_core(identities[0])
    verifier = make_core(identities[1], max_reeval_queue=60)
    deliver_all(author_history(known, 1), verifier, "known-peer")
    assert [v for v, _ in run_reevaluations(verifier)] == ["valid"]  # a record now
    _, actions = known.publish_template(honest_template(1), NOW + 10)
    real = publications(actions)[-1]
    modest = decode_vertex(real.data).payload["objectives"]["fitness"]
    # 100 fresh identities, each with a higher claim, arrive first and overfill the queue.
    deliver_all(sybil_claims(100, modest + 1.0), verifier, "flood-peer")
    deliver_all([real], verifier, "known-peer")
    first = [verifier.next_reevaluation() for _ in range(3)]
    assert identities[0].key_id in [job.author for job in first if job is not None]
    assert verifier.reevaluation_backlog() <= 60


def test_one_author_holds_at_most_its_budget_of_the_reevaluation_queue(
    identities: list[Identity],
) -> None:
    prolific = make_core(identities[0])
    other = make_core(identities[2])
    verifier = make_core(identities[1])
    deliver_all(author_history(prolific, 50), verifier, "p")
    deliver_all(author_history(other, 1), verifier, "q")
    assert verifier.config.max_reeval_per_author == 4
    assert verifier.reevaluation_backlog() == 4 + 1
    authors = [job.author for job in iter(verifier.next_reevaluation, None)]
    assert authors.count(identities[0].key_id) == 4
    assert authors.count(identities[2].key_id) == 1


def test_a_queued_claim_moves_up_when_its_author_gains_a_record() -> None:
    """Strangers' claims go by the caller's random draw, not by their claimed number; an
    author that gains a record moves its claims into the proven group, by claimed fitness."""
    queue = ReevaluationQueue(capacity=3, per_author=2)
    a, b = b"a" * 32, b"b" * 32
    assert queue.push(b"1" * 32, a, 0.5, proven=False, draw=0.9)
    assert queue.push(b"2" * 32, b, 0.9, proven=False, draw=0.2)
    assert queue.push(b"3" * 32, b, 0.8, proven=False, draw=0.6)
    assert not queue.push(b"4" * 32, b, 0.1, proven=False, draw=0.7)  # b's budget; ranks last
    assert queue.push(b"5" * 32, b, 0.95, proven=False, draw=0.1)  # replaces b's last (0.6)
    queue.promote(a)
    assert [queue.pop() for _ in range(4)] == [(b"1" * 32, a), (b"5" * 32, b), (b"2" * 32, b), None]
    for i in range(500):  # churn: stale heap entries stay bounded
        queue.push(i.to_bytes(32, "big"), a, float(i), proven=False, draw=1.0 - i / 500)
    assert len(queue) == 2 and len(queue._heap) <= 2 * 2 + 64


def test_strangers_inflated_claims_do_not_take_every_check() -> None:
    """Issue 17, "sybil": a stream of fresh keys, each with a claim far above the honest ones,
    must not take every check from honest strangers (who get a record only by being checked
    once). With strangers in a random order, honest claims get their share."""
    queue = ReevaluationQueue(capacity=200, per_author=4)
    rng = random.Random(7)

    def claim(kind: bytes, i: int, fitness: float) -> None:
        n = i.to_bytes(31, "big")
        queue.push(kind + n, kind.lower() + n, fitness, False, rng.random())

    for i in range(150):  # liars: one key each, claims 0.25 above every honest claim
        claim(b"L", i, 0.95)
    for i in range(50):
        claim(b"H", i, 0.70)
    first = [queue.pop() for _ in range(40)]
    honest = sum(1 for q in first if q is not None and q[0].startswith(b"H"))
    assert 4 <= honest <= 18  # ~10 expected (a quarter of the claims are honest)


def test_orphans_beyond_an_authors_cap_are_dropped_and_counted(
    identities: list[Identity],
) -> None:
    receiver = make_core(identities[1])
    receiver.on_peer_connected("fwd")
    flooder = Identity.generate()
    cap = receiver.store.max_orphans_per_author
    payload = honest_template(6).to_dict()
    for seq in range(1, cap + 3):
        raw = make_vertex(flooder, seq, NOW, [bytes([seq % 256]) * 32], "template", payload)
        assert receiver.on_gossip("fwd", task_topic(TASK), raw, NOW)[0] is False
    assert receiver.store.orphan_count() == cap
    assert receiver.stats.rejected == {"orphan-author-cap": 2}
    assert receiver.trust.strikes.get("fwd", 0) == 0  # the forwarder proved nothing wrong


# --- issue 14: replication at scale (node/protocol/quorum.py) ---------------------------
def test_a_verifier_not_drawn_keeps_its_verdict_and_it_counts_for_it(
    identities: list[Identity], tmp_path: Path
) -> None:
    author = make_core(identities[0])
    _, actions = author.publish_template(honest_template(0), NOW)
    history = publications(actions)
    tid = decode_vertex(history[-1].data).id
    # Two verifiers in a network of 10^6 with a quorum of 1: neither is drawn (asserted).
    network = 10**6
    verifiers = [
        make_core(i, tmp_path / f"{n}.sqlite3", attest_quorum=1)
        for n, i in enumerate(identities[1:3])
    ]
    for verifier in verifiers:
        assert not quorum.attests(tid, verifier.me, 1, network)
        verifier.network_size = network
        deliver_all(history, verifier, "author-peer")
        before = verifier.store.count()
        ((verdict, actions),) = run_reevaluations(verifier)
        assert verdict == "valid"
        assert publications(actions) == []  # no attestation, no identity vertex
        assert verifier.store.count() == before
        # The verdict is ours: the template is verified for us, by our measurement.
        (standing,) = verifier.ranked_templates(TASK, 5, include_unverified=False)
        assert standing.id == tid and standing.measured_by == verifier.me
    # It survives a restart: the claim is not queued again, the author's record is kept.
    path = tmp_path / "0.sqlite3"
    verifiers[0].store.close()
    again = make_core(identities[1], path, attest_quorum=1)
    assert again.next_reevaluation() is None
    assert again.trust.reevaluated_first(author.me)


def test_a_drawn_verifier_attests(identities: list[Identity]) -> None:
    author = make_core(identities[0])
    _, actions = author.publish_template(honest_template(0), NOW)
    history = publications(actions)
    verifier = make_core(identities[1])  # network size 1: drawn whatever the quorum
    deliver_all(history, verifier, "author-peer")
    ((verdict, actions),) = run_reevaluations(verifier)
    assert [decode_vertex(p.data).kind for p in publications(actions)] == [
        "identity",
        "attestation",
    ]


def test_only_what_beats_the_measured_front_is_published(identities: list[Identity]) -> None:
    """A template no better than another author's that we re-measured is not published; a
    better one is. Claims we did not measure do not hold anyone back (a liar's claim of
    1.0 would otherwise silence the network)."""
    other = make_core(identities[0])
    theirs = honest_template(3)
    _, actions = other.publish_template(theirs, NOW)
    us = make_core(identities[1], publish_every=1)
    assert us.should_publish(TASK, 1, theirs.fitness)  # received but not measured: no front
    deliver_all(publications(actions), us, "other-peer")
    assert us.should_publish(TASK, 2, theirs.fitness)
    run_reevaluations(us)
    assert us.best_measured(TASK) == theirs.fitness
    assert not us.should_publish(TASK, 3, theirs.fitness)
    assert us.should_publish(TASK, 4, theirs.fitness + 0.01)
    full = make_core(identities[2], publish_every=1, publish_front=False)
    deliver_all(publications(actions), full, "other-peer")
    run_reevaluations(full)
    assert full.should_publish(TASK, 3, theirs.fitness)


# --- issue 17, section 2: false attesters, and weight by proven record ----------------------
def published(core: PeerCore, template: Template, at: int) -> tuple[bytes, list[Publish]]:
    """`core` publishes `template`: its id and the vertices to deliver (identity first)."""
    vid, actions = core.publish_template(template, at)
    return vid, publications(actions)


def disconnected(actions: list) -> list[tuple[str, str]]:
    return [(a.peer, a.reason) for a in actions if isinstance(a, Disconnect)]


def test_a_false_attester_is_banned_when_our_check_comes_after_its_attestation(
    identities: list[Identity], tmp_path: Path
) -> None:
    """Issue 17, "collusion": S1 and S2 vouched for all 7 lies of a run and were never
    penalised. A "valid" attestation of a claim we then re-measure false costs its author what
    the lie costs the claimant: a ban, and its own connection; and it survives a restart."""
    liar, node = make_core(identities[0]), make_core(identities[1], tmp_path / "n.sqlite3")
    sybil = make_core(identities[2], eager_identity=True)
    vid, history = published(liar, lying_template(0), NOW)
    deliver_all(history, sybil, "liar-peer")
    deliver_all(history, node, "liar-peer")
    node.on_peer_connected("sybil-peer")
    node.on_peer_authenticated("sybil-peer", sybil.me)
    deliver_all(forged_attestation(sybil, vid, 0.99), node, "sybil-peer")
    assert not node.trust.banned(sybil.me)
    job = node.next_reevaluation()
    assert job is not None
    verdict, actions = node.on_reevaluated(job, verify_claim(job.template), NOW + 5)
    assert verdict == "invalid"
    assert node.trust.banned(liar.me) and node.trust.banned(sybil.me)
    assert ("sybil-peer", "false-attester") in disconnected(actions)
    assert node.stats.attestations_checked == {"false": 1}
    assert node.on_peer_authenticated("sybil-again", sybil.me) == [
        Disconnect("sybil-again", "banned-author")
    ]
    node.store.close()
    restarted = make_core(identities[1], tmp_path / "n.sqlite3")
    assert restarted.trust.banned(sybil.me)


def test_a_false_attester_is_banned_when_its_attestation_comes_after_our_check(
    identities: list[Identity], tmp_path: Path
) -> None:
    """The other order: we re-measured the claim (and kept the verdict in our store, not drawn
    to attest), then the "valid" attestation arrives. It is judged on arrival, relayed once as
    evidence, and the ban survives a restart."""
    liar = make_core(identities[0])
    node = make_core(identities[1], tmp_path / "n.sqlite3", attest_quorum=1)
    node.network_size = 10**6
    sybil = make_core(identities[2], eager_identity=True)
    vid, history = published(liar, lying_template(0), NOW)
    assert not quorum.attests(vid, node.me, 1, node.network_size)  # our verdict stays local
    deliver_all(history, sybil, "liar-peer")
    deliver_all(history, node, "liar-peer")
    assert run_remeasurements(node) == ["invalid"]
    node.on_peer_connected("sybil-peer")
    node.on_peer_authenticated("sybil-peer", sybil.me)
    identity, attestation = forged_attestation(sybil, vid, 0.99)
    assert node.on_gossip("sybil-peer", identity.topic, identity.data, NOW)[0]
    relay, actions = node.on_gossip("sybil-peer", attestation.topic, attestation.data, NOW + 6)
    assert node.trust.banned(sybil.me)
    assert disconnected(actions) == [("sybil-peer", "false-attester")]
    assert relay  # the evidence spreads, so that every peer that re-measures can judge it
    node.store.close()
    restarted = make_core(identities[1], tmp_path / "n.sqlite3", attest_quorum=1)
    assert restarted.trust.banned(sybil.me)
    assert sybil.me not in restarted.trust.trusted_verifiers()


@pytest.mark.parametrize(
    ("off_by_tolerances", "banned", "proven"),
    [(0.5, False, True), (1.5, False, False), (2.5, True, False)],
)
def test_an_attester_is_judged_with_a_margin_for_measurements_on_other_machines(
    identities: list[Identity], off_by_tolerances: float, banned: bool, proven: bool
) -> None:
    """The tolerance rule: an attester that said "valid" measured within 1 tolerance of the
    claim on its machine; if our measurement is within 2 tolerances, the two measurements may
    differ by a tolerance only, which the tolerance allows, so no penalty (and no credit above
    1 tolerance, where our own verdict is "invalid"). Beyond 2 tolerances: banned."""
    tolerance = 0.01
    author, node = make_core(identities[0]), make_core(identities[1], tolerances={TASK: tolerance})
    attester = make_core(identities[2], eager_identity=True)
    vid, history = published(author, honest_template(0), NOW)
    deliver_all(history, attester, "author-peer")
    deliver_all(history, node, "author-peer")
    deliver_all(forged_attestation(attester, vid, honest_template(0).fitness), node, "a-peer")
    job = node.next_reevaluation()
    assert job is not None
    measured = job.template.fitness - off_by_tolerances * tolerance
    verdict, _ = node.on_reevaluated(job, measured, NOW + 5)
    assert verdict == ("valid" if off_by_tolerances <= 1 else "invalid")
    assert node.trust.banned(attester.me) is banned
    assert (attester.me in node.trust.trusted_verifiers()) is proven


def collusion(
    identities: list[Identity],
) -> tuple[PeerCore, PeerCore, list[PeerCore], bytes, list[Publish]]:
    """Issue 17's collusion: identity L (the liar) publishes an inflated claim, S1 and S2 (its
    sybils) attest it "valid". Returns (liar, node, sybils, lie id, what the node receives)."""
    liar, node = make_core(identities[0]), make_core(identities[1])
    sybils = [make_core(i, eager_identity=True) for i in identities[2:4]]
    vid, history = published(liar, lying_template(0), NOW)
    received = list(history)
    for sybil in sybils:
        deliver_all(history, sybil, "liar-peer")
        received += forged_attestation(sybil, vid, 0.99)
    return liar, node, sybils, vid, received


def test_a_colluded_lie_is_not_sampled_listed_or_pulled_as_verified_before_our_check(
    identities: list[Identity],
) -> None:
    """Issue 17: in 9 of 40 node-rounds the lie was sampled as a migrant before the node's own
    check, and `/templates` ranked it first, verified. Two attesters without a record we
    checked weigh nothing; after our check, all three identities are banned."""
    liar, node, sybils, vid, received = collusion(identities)
    deliver_all(received, node, "liar-peer")
    assert node.migrants(TASK, 5) == []
    (entry,) = listed(node, TASK)
    assert entry["id"] == vid.hex() and not entry["verified"]
    with pytest.raises(UserError, match="no verified template"):
        pick(node, TASK)
    assert run_remeasurements(node) == ["invalid"]
    assert all(node.trust.banned(c.me) for c in (liar, *sybils))
    assert listed(node, TASK) == [] and node.migrants(TASK, 5) == []


def test_attesters_with_a_proven_record_verify_before_our_check(
    identities: list[Identity], tmp_path: Path
) -> None:
    """Weight by proven record: once we checked a "valid" attestation of each of two attesters
    against our own measurement and found it right, their attestations of another author's
    new claim make it verified (sampled, listed) before we re-measure it; one proven attester
    and one without a record do not. The records survive a restart."""
    known, node = make_core(Identity.generate()), make_core(identities[1], tmp_path / "n.sqlite3")
    attesters = [make_core(i, eager_identity=True) for i in identities[2:4]]
    stranger = make_core(Identity.generate(), eager_identity=True)  # no record with us
    first, history = published(known, honest_template(0), NOW)
    for attester in (*attesters, stranger):
        deliver_all(history, attester, "author-peer")
    for attester in attesters:
        history += forged_attestation(attester, first, honest_template(0).fitness)
    deliver_all(history, node, "author-peer")
    assert run_remeasurements(node) == ["valid"]
    assert all(a.me in node.trust.trusted_verifiers() for a in attesters)
    assert node.stats.attestations_checked == {"right": 2}
    assert stranger.me not in node.trust.trusted_verifiers()
    newcomer = make_core(Identity.generate())  # an author we never checked
    claims = {}
    for seed, vouchers in ((1, attesters), (2, [attesters[0], stranger])):
        template = honest_template(seed)
        vid, history = published(newcomer, template, NOW + 10 * seed)
        for core in (*attesters, stranger):
            deliver_all(history, core, "author-peer")
        for attester in vouchers:
            history += forged_attestation(attester, vid, template.fitness)
        deliver_all(history, node, "author-peer")
        claims[seed] = vid
    standing = {s.id: s for s in node.ranked_templates(TASK, 5)}
    assert standing[claims[1]].verified and standing[claims[1]].measured_fitness is None
    assert not standing[claims[2]].verified  # one proven attester is not `min_attestations`
    assert [vid for vid, _ in node.migrants(TASK, 5) if vid != first] == [claims[1]]
    assert {e["id"]: e["verified"] for e in listed(node, TASK)}[claims[1].hex()]
    node.store.close()
    restarted = make_core(identities[1], tmp_path / "n.sqlite3")
    assert all(a.me in restarted.trust.trusted_verifiers() for a in attesters)
    assert stranger.me not in restarted.trust.trusted_verifiers()
    assert {s.id for s in restarted.ranked_templates(TASK, 5) if s.verified} == {first, claims[1]}
