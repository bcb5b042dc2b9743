"""P2PNode in one process: validators, callbacks, limits, sync errors, Noise-only, shutdown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from libp2p.peer.id import ID

from qudag.crypto.signing import Identity
from qudag.node.net.discovery import Discovery
from qudag.node.net.libp2p_patches import quiet_libp2p_logging
from qudag.node.net.sync_protocol import SyncError
from qudag.node.net.transport import (
    Delivery,
    MessageTooLarge,
    NetConfig,
    P2PNode,
    blake3_msg_id,
    peer_key_seed,
)

quiet_libp2p_logging()
ALICE, BOB = Identity.generate(), Identity.generate()
T = "qudag/unit/1"


def run(fn: Callable[[], Awaitable[None]], limit: float = 20.0) -> None:
    async def bounded() -> None:
        with trio.fail_after(limit):
            await fn()

    trio.run(bounded)


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `cond` until it holds; the timeout only bounds a test that would otherwise hang."""
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.02)


def meshed(node: P2PNode, *others: P2PNode, topic: str = T) -> bool:
    """Whether gossipsub's heartbeat has grafted every one of `others` into `node`'s mesh."""
    from libp2p.peer.id import ID

    mesh = node.router.mesh.get(topic, set())
    return all(ID.from_base58(o.peer_id) in mesh for o in others)


class two_nodes:
    """`async with two_nodes(...) as (a, b)`: B bootstraps from A; both subscribed to T."""

    def __init__(self, validator: Any = None, handler: Any = None, **kw: Any) -> None:
        self.got: list[Delivery] = []
        self.validator, self.handler, self.kw = validator, handler, kw

    async def _collect(self, d: Delivery) -> None:
        if d.data == b"boom":
            raise RuntimeError("callback bug")
        self.got.append(d)

    async def __aenter__(self) -> tuple[P2PNode, P2PNode]:
        self.stack = AsyncExitStack()
        await self.stack.__aenter__()
        try:
            a = await self.stack.enter_async_context(
                P2PNode(ALICE, topics={T: None}, sync_handler=self.handler, **self.kw)
            )
            b = await self.stack.enter_async_context(
                P2PNode(
                    BOB,
                    topics={T: self.validator},
                    on_message=self._collect,
                    bootstrap=a.addrs,
                    sync_handler=self.handler,
                    **self.kw,
                )
            )
            await wait_until(lambda: a.peer_id in b.topic_peers(T))
            await wait_until(lambda: b.peer_id in a.topic_peers(T))
            await wait_until(lambda: meshed(a, b) and meshed(b, a))
        except BaseException as exc:
            if not await self.stack.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        return a, b

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self.stack.__aexit__(*exc)


def test_validators_never_raise_and_rejections_are_counted() -> None:
    def validator(origin: str, data: bytes) -> bool:
        if data == b"raise":
            raise ValueError("bug in a validator")
        return data != b"invalid"

    async def main() -> None:
        nodes = two_nodes(validator=validator)
        async with nodes as (a, b):
            for payload in (b"raise", b"invalid", b"boom", b"ok-1", b"ok-1", b"ok-2", b"end"):
                await a.publish(T, payload)
            # One stream carries A's messages in order: once "end" is in, so is everything before.
            await wait_until(lambda: any(d.data == b"end" for d in nodes.got))
            assert [d.data for d in nodes.got] == [b"ok-1", b"ok-2", b"end"]  # duplicate dropped
            assert b.rejections["validator-error"] == 1
            assert b.rejections["invalid"] == 1
            assert b.rejections["callback-error"] == 1
            d = nodes.got[0]
            assert d.origin == a.peer_id and d.forwarder == a.peer_id and d.topic == T
            assert all(b.health().values())

    run(main)


def test_a_neighbours_only_message_reaches_the_neighbour_and_is_not_counted_invalid() -> None:
    """A validator's None (valid, for the sender's neighbours only: our heads) must not stop
    our own publication, which libp2p validates before sending, and must not count as an
    invalid message at the receiver."""
    seen: dict[str, list[bytes]] = {"alice": [], "bob": []}

    def neighbours_only(name: str) -> Callable[[str, bytes], bool | None]:
        def validate(origin: str, data: bytes) -> bool | None:
            seen[name].append(data)
            return None if data.startswith(b"local") else True

        return validate

    async def main() -> None:
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(
                P2PNode(ALICE, topics={T: neighbours_only("alice")})
            )
            b = await stack.enter_async_context(
                P2PNode(BOB, topics={T: neighbours_only("bob")}, bootstrap=a.addrs)
            )
            await wait_until(lambda: meshed(a, b) and meshed(b, a))
            await a.publish(T, b"local-heads")
            await a.publish(T, b"end")
            await wait_until(lambda: b"end" in seen["bob"])
            assert b"local-heads" in seen["bob"]  # sent although our validator said None
            assert "invalid" not in b.rejections and "invalid" not in a.rejections
            assert b.stats["not-relayed"] == 1

    run(main)


def test_size_limits_on_publish_and_request() -> None:
    async def handler(peer: str, req: bytes) -> bytes:
        return req

    async def main() -> None:
        cfg = NetConfig(max_message_size=1000, max_sync_message=2000)
        async with two_nodes(handler=handler, config=cfg) as (a, b):
            await a.publish(T, b"x" * 1000)
            with pytest.raises(MessageTooLarge):
                await a.publish(T, b"x" * 1001)
            assert a.rejections["oversize-send"] == 1
            assert await b.request(a.peer_id, b"y" * 2000, 5) == b"y" * 2000
            with pytest.raises(SyncError) as e:
                await b.request(a.peer_id, b"y" * 2001, 5)
            assert e.value.reason == "oversize"

    run(main)


def test_sync_errors_keep_the_stream_usable_and_identity_is_learned() -> None:
    async def handler(peer: str, req: bytes) -> Any:
        if req == b"crash":
            raise RuntimeError("handler bug")
        if req == b"wrong-type":
            return "not bytes"
        if req == b"slow":
            await trio.sleep(5)
        return b"re:" + req

    async def main() -> None:
        async with two_nodes(handler=handler, config=NetConfig(sync_handler_timeout=0.3)) as (
            a,
            b,
        ):
            assert await b.request(a.peer_id, b"1") == b"re:1"
            for bad in (b"crash", b"wrong-type", b"slow"):
                with pytest.raises(SyncError) as e:
                    await b.request(a.peer_id, bad, 5)
                assert e.value.reason == "remote"
                assert await b.request(a.peer_id, b"2") == b"re:2"
            assert a.rejections["sync-handler-error"] == 2
            assert a.rejections["sync-handler-timeout"] == 1
            assert b.sync_identity(a.peer_id) == ALICE.public_key
            assert a.sync_identity(b.peer_id) == BOB.public_key
            assert b.stats["sync-requests"] == 7 and a.stats["sync-served"] == 7

    run(main)


def test_request_to_an_unknown_peer_fails_cleanly() -> None:
    async def main() -> None:
        async with P2PNode(ALICE) as a:
            other = P2PNode(BOB)  # never started: its peer id is unknown and unreachable
            with pytest.raises(SyncError) as e:
                await a.request(other.peer_id, b"hello", timeout=2)
            assert e.value.reason in ("closed", "timeout")

    run(main)


def test_plaintext_peer_cannot_connect() -> None:
    """Workaround 4: only Noise is offered and accepted."""
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
    from multiaddr import Multiaddr

    async def main() -> None:
        async with P2PNode(ALICE) as a:
            kp = create_new_key_pair()
            plain = new_host(key_pair=kp, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)})
            async with plain.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                with pytest.raises(Exception):  # noqa: B017 - any failure to connect will do
                    with trio.fail_after(5):
                        await plain.connect(info_from_p2p_addr(Multiaddr(a.addrs[0])))
                        # some versions only fail on first use of the connection
                        await plain.new_stream(
                            info_from_p2p_addr(Multiaddr(a.addrs[0])).peer_id, ["/ipfs/id/1.0.0"]
                        )
            assert a.peers() == []

    run(main)


def test_cancellation_shuts_everything_down() -> None:
    """Cancelling the task that owns the nodes stops everything (both nodes, all their tasks):
    the nursery exits, which it cannot while any of their tasks still runs."""

    async def main() -> None:
        with trio.CancelScope() as scope:
            async with two_nodes() as (a, b):
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught

    run(main)


def test_msg_id_function_that_raises_falls_back() -> None:
    def bad_id(data: bytes) -> bytes:
        raise RuntimeError("bug")

    async def main() -> None:
        nodes = two_nodes(msg_id=bad_id)
        async with nodes as (a, b):
            msg_id = await a.publish(T, b"m")  # falls back to BLAKE3 (and logs the bug)
            await wait_until(lambda: len(nodes.got) == 1)
            assert nodes.got[0].msg_id == msg_id == blake3_msg_id(b"m")
            # a second topic, subscribed while running, goes to the same callback
            await b.subscribe("qudag/unit/2")
            await wait_until(lambda: b.peer_id in a.topic_peers("qudag/unit/2"))
            await a.publish("qudag/unit/2", b"on two")  # A is not subscribed: fanout
            await wait_until(lambda: len(nodes.got) == 2)
            assert (nodes.got[1].topic, nodes.got[1].data) == ("qudag/unit/2", b"on two")

    run(main)


def test_dead_reused_stream_is_reopened_once_and_inbound_streams_are_capped() -> None:
    from libp2p.peer.id import ID

    async def handler(peer: str, req: bytes) -> bytes:
        return req

    async def main() -> None:
        cfg = NetConfig(max_sync_streams_per_peer=3)
        async with two_nodes(handler=handler, config=cfg) as (a, b):
            pid = ID.from_base58(a.peer_id)
            assert await b.request(a.peer_id, b"1") == b"1"
            await b._sync_channels[pid].stream.reset()  # the stream dies between requests
            assert await b.request(a.peer_id, b"2") == b"2"
            assert b.stats["sync-reopened"] == 1
            # B's channel and two idle inbound streams (no handshake yet) fill its quota at A
            idle = [await b.host.new_stream(pid, ["/qudag/sync/1.0.0"]) for _ in range(2)]
            await wait_until(lambda: sum(a._sync_streams.values()) == 3)  # + B's channel
            with pytest.raises(Exception):  # noqa: B017 - reset by A (maybe while negotiating)
                with trio.fail_after(3):
                    extra = await b.host.new_stream(pid, ["/qudag/sync/1.0.0"])
                    await extra.read(1)
            assert a.rejections["sync-busy"] >= 1
            for s in idle:
                await s.reset()
            # a frame that fails authentication (here: B skips a counter) costs B, not A
            b._sync_channels[pid].session.sealer._counter += 1
            with pytest.raises(SyncError):
                await b.request(a.peer_id, b"3", 5)
            assert a.rejections["sync-decrypt"] == 1
            assert all(a.health().values())

    run(main)


def test_peer_key_seed_gives_a_stable_peer_id() -> None:
    seed = peer_key_seed(ALICE)
    assert len(seed) == 32 and seed == peer_key_seed(ALICE) != peer_key_seed(BOB)
    assert P2PNode(ALICE, key_seed=seed).peer_id == P2PNode(ALICE, key_seed=seed).peer_id
    assert P2PNode(ALICE).peer_id != P2PNode(ALICE).peer_id


def test_penalise_invalid_drops_the_forwarder_when_enabled() -> None:
    penalties: list[tuple[str, str]] = []

    async def main() -> None:
        cfg = NetConfig(penalise_invalid=True, penalty_cooldown=60)
        nodes = two_nodes(
            validator=lambda origin, data: data != b"forged",
            config=cfg,
        )
        async with nodes as (a, b):
            b._on_penalty = lambda peer, reason: penalties.append((peer, reason))
            await a.publish(T, b"forged")
            await wait_until(lambda: a.peer_id not in b.peers())
            assert penalties == [(a.peer_id, "gossip-invalid")]
            assert b.rejections["gossip-invalid"] == 1

    run(main)


def test_two_hops_validator_sees_the_relay_and_delivery_both_peers() -> None:
    """Line A - B - C (no discovery): C's validator is given B; the Delivery names A and B."""
    seen: list[str] = []
    got: list[Delivery] = []
    carol = Identity.generate()

    def validator(peer: str, data: bytes) -> bool:
        seen.append(peer)
        return True

    async def on_message(d: Delivery) -> None:
        got.append(d)

    async def main() -> None:
        cfg = NetConfig(dht=False)
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(P2PNode(ALICE, topics={T: None}, config=cfg))
            b = await stack.enter_async_context(
                P2PNode(BOB, topics={T: None}, bootstrap=a.addrs, config=cfg)
            )
            c = await stack.enter_async_context(
                P2PNode(
                    carol,
                    topics={T: validator},
                    on_message=on_message,
                    bootstrap=b.addrs,
                    config=cfg,
                )
            )
            await wait_until(lambda: meshed(c, b) and meshed(b, a, c) and meshed(a, b))
            assert a.peer_id not in c.peers()
            await a.publish(T, b"two hops")
            await wait_until(lambda: len(got) == 1)
            assert (got[0].origin, got[0].forwarder) == (a.peer_id, b.peer_id)
            assert seen == [b.peer_id]

    run(main)


# Liveness rounds driven by hand, at chosen times: the background loop waits an hour between
# rounds, so what is pinged depends on the times given here, not on the machine's speed.
MANUAL_LIVENESS = NetConfig(liveness_interval=3600.0, liveness_timeout=36_000.0)


def probe_counter(node: P2PNode, probed: list[str]) -> None:
    """Record the peer of every connection `node` pings (then ping it as usual)."""
    original = node._probe

    async def counting(conn: Any) -> None:
        probed.append(conn.muxed_conn.peer_id.to_base58())
        await original(conn)

    node._probe = counting  # type: ignore[method-assign]


def test_a_connection_that_carries_gossip_is_not_pinged() -> None:
    """Liveness pings go only to connections silent for a whole interval: a round one interval
    after the last, with A's gossip heard in between, pings nothing; the round after that,
    with A silent for an interval, pings A."""
    interval = MANUAL_LIVENESS.liveness_interval
    probed: list[str] = []

    async def main() -> None:
        async with two_nodes(config=MANUAL_LIVENESS) as (a, b):
            probe_counter(b, probed)
            pid = ID.from_base58(a.peer_id)
            async with trio.open_nursery() as tasks:
                t0 = trio.current_time()
                b._liveness_round(tasks, t0, 0.0)  # the connection is seen, alive, at t0
                await a.publish(T, b"tick")
                await wait_until(lambda: b._heard_at.get(pid, -1.0) > t0)
                b._liveness_round(tasks, t0 + interval, 0.0)
                assert not b._probing  # a ping is marked here before its task starts
                b._liveness_round(tasks, b._heard_at[pid] + interval, 0.0)
                await wait_until(lambda: probed == [a.peer_id])

    run(main)


def test_a_relay_sending_only_duplicates_is_not_pinged() -> None:
    """Full mesh A, B, C; A publishes. B hears the message first from A and again from C
    (a duplicate libp2p drops before validating): both copies prove the connection alive, so a
    round one interval later pings neither A nor C."""
    interval = MANUAL_LIVENESS.liveness_interval
    probed: list[str] = []

    async def main() -> None:
        nodes = two_nodes(config=MANUAL_LIVENESS)
        async with nodes as (a, b):
            async with P2PNode(
                Identity.generate(), topics={T: None}, bootstrap=a.addrs, config=MANUAL_LIVENESS
            ) as c:
                await c.connect(b.addrs[0], timeout=5.0)
                await wait_until(lambda: meshed(b, a, c) and meshed(c, a, b))
                probe_counter(b, probed)
                senders = [ID.from_base58(n.peer_id) for n in (a, c)]
                async with trio.open_nursery() as tasks:
                    t0 = trio.current_time()
                    b._liveness_round(tasks, t0, 0.0)
                    await a.publish(T, b"tick")
                    await wait_until(lambda: all(b._heard_at.get(p, -1.0) > t0 for p in senders))
                    b._liveness_round(tasks, t0 + interval, 0.0)
                    assert not b._probing and probed == []
                await wait_until(lambda: len(nodes.got) == 1)

    run(main, limit=40)


def test_discovery_backs_off_while_settled_and_wakes_on_a_new_peer() -> None:
    """DHT refreshes (3 random walks each) slow down from `discovery_interval` to
    `discovery_idle_interval` while nothing changes, and a new connection brings one sooner
    than the backed-off schedule would.

    Gaps are measured from the end of one refresh to the start of the next (the loop's own
    sleep), so a refresh slowed down by a loaded machine does not look like backing off."""
    cfg = NetConfig(discovery_interval=0.2, discovery_idle_interval=5.0)
    spans: list[tuple[float, float]] = []  # (start, end) of each refresh

    def gaps() -> list[float]:
        return [start - end for (_, end), (start, _) in zip(spans, spans[1:], strict=False)]

    async def main() -> None:
        async with two_nodes(config=cfg) as (a, b):
            assert b.dht is not None
            original = b.dht.refresh_routing_table

            async def timed() -> None:
                start = trio.current_time()
                await original()
                spans.append((start, trio.current_time()))

            b.dht.refresh_routing_table = timed  # type: ignore[method-assign]
            # Settled: the sleep doubles (0.2, 0.4, 0.8, 1.6 s, ...) instead of staying at 0.2 s.
            await wait_until(lambda: any(g >= 1.5 for g in gaps()), 20.0)
            async with P2PNode(Identity.generate(), topics={T: None}, config=cfg) as c:
                await c.connect(b.addrs[0], timeout=5.0)
                joined = trio.current_time()
                # A refresh follows the new peer (how soon: the mock-clock test below).
                await wait_until(lambda: any(start > joined for start, _ in spans), 10.0)

    run(main, limit=40)


def test_a_backed_off_discovery_sleep_ends_soon_after_the_peers_change() -> None:
    """`_discovery_sleep` of a backed-off loop (80 s) returns within one `discovery_interval`
    of a change in the connected peers, and sleeps its whole delay while nothing changes.
    On trio's mock clock: the times are exact, whatever the machine's load."""
    cfg = NetConfig(discovery_interval=0.5)
    peers: set[str] = {"a"}
    host = SimpleNamespace(get_connected_peers=lambda: set(peers))
    node = SimpleNamespace(config=cfg, host=host)

    async def main() -> None:
        t0 = trio.current_time()
        await Discovery._discovery_sleep(node, 80.0, {"a"})  # type: ignore[arg-type]
        assert trio.current_time() - t0 == pytest.approx(80.0)

        async def change_at(t: float) -> None:
            await trio.sleep_until(t)
            peers.add("b")

        async with trio.open_nursery() as nursery:
            t1 = trio.current_time()
            nursery.start_soon(change_at, t1 + 3.2)
            await Discovery._discovery_sleep(node, 80.0, {"a"})  # type: ignore[arg-type]
            woken = trio.current_time() - t1
        assert 3.2 <= woken <= 3.2 + cfg.discovery_interval

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_idontwant_only_to_peers_that_could_still_send_the_message() -> None:
    """Full mesh A, B, C; A publishes 10 messages under the IDONTWANT size threshold and 10 over
    it. IDONTWANT (gossipsub v1.2) asks a mesh peer not to send us a message we already have:
    worth a control RPC only where a copy could still come from. So none for A's own messages
    (peers never send an origin its own message), none under the threshold, and none to the
    peer that forwarded the message or to its origin; B and C still tell each other."""
    cfg = NetConfig(dht=False, idontwant_min_size=1000)
    sent: dict[str, list[tuple[bytes, str]]] = {}
    forwarders: dict[str, dict[bytes, str]] = {}

    def spy(node: P2PNode) -> None:
        me, original = node.peer_id, node.router.emit_idontwant
        sent[me] = []

        async def emit_idontwant(msg_ids: list[bytes], to_peer: Any) -> None:
            sent[me] += [(m, to_peer.to_base58()) for m in msg_ids]
            await original(msg_ids, to_peer)

        node.router.emit_idontwant = emit_idontwant  # type: ignore[method-assign]

    def collector(name: str) -> Callable[[Delivery], Awaitable[None]]:
        forwarders[name] = {}

        async def on_message(d: Delivery) -> None:
            forwarders[name][d.msg_id] = d.forwarder

        return on_message

    small = [b"s%03d" % i + b"." * 96 for i in range(10)]
    big = [b"b%03d" % i + b"." * 1996 for i in range(10)]

    async def main() -> None:
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(P2PNode(ALICE, topics={T: None}, config=cfg))
            b = await stack.enter_async_context(
                P2PNode(
                    BOB, topics={T: None}, on_message=collector("b"), bootstrap=a.addrs, config=cfg
                )
            )
            c = await stack.enter_async_context(
                P2PNode(
                    Identity.generate(),
                    topics={T: None},
                    on_message=collector("c"),
                    bootstrap=a.addrs,
                    config=cfg,
                )
            )
            await c.connect(b.addrs[0], timeout=5.0)
            await wait_until(lambda: meshed(a, b, c) and meshed(b, a, c) and meshed(c, a, b))
            for node in (a, b, c):
                spy(node)
            for data in small + big:
                await a.publish(T, data)
                await trio.sleep(0.05)
            # Delivered, and every relay (where IDONTWANTs are sent) finished: a message's relay
            # starts before its delivery reaches `on_message` (libp2p's push_msg).
            await wait_until(
                lambda: (
                    all(len(f) == 20 for f in forwarders.values())
                    and not any(n.router._relaying for n in (a, b, c))
                )
            )
            names = {b.peer_id: "b", c.peer_id: "c"}
            assert sent[a.peer_id] == []  # own messages
            small_ids = {blake3_msg_id(d) for d in small}
            big_ids = {blake3_msg_id(d) for d in big}
            total = 0
            for peer, name in names.items():
                for msg_id, to in sent[peer]:
                    assert msg_id in big_ids and msg_id not in small_ids
                    assert to not in (a.peer_id, forwarders[name][msg_id])
                    total += 1
            assert total >= len(big)  # whoever heard one first from A tells the other

    run(main, limit=40)


def test_a_peer_without_the_ping_protocol_counts_as_alive() -> None:
    """Issue 13 item 9: a peer that answers our ping with "protocol not supported" (a
    js-libp2p node without the ping service) has answered: the probe marks its connection
    alive instead of letting it be dropped as silent after `liveness_timeout`."""
    from libp2p.host.ping import ID as PING_ID
    from libp2p.peer.id import ID as PeerID

    async def main() -> None:
        async with two_nodes() as (a, b):
            b.host.remove_stream_handler(PING_ID)
            await wait_until(lambda: b.peer_id in a.peers())
            conn = a.host.get_network().get_connections(PeerID.from_base58(b.peer_id))[0]
            a._alive_at[conn] = -1.0
            await a._probe(conn)
            assert a._alive_at[conn] > 0

    run(main)
