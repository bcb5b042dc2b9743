"""The daemon's own decisions, in one process without a network: who is blamed for a failed
sync request, and which libp2p key (peer id) a node's key file gives it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from qudag.node.daemon import Daemon
from qudag.node.net.transport import P2PNode, peer_key_seed
from qudag.node.ops.config import NodeConfig
from qudag.node.protocol import messages
from qudag.simulations.identity import derive_identity

PEER = "12D3KooWPeerThatAsked"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    node = Daemon(NodeConfig(data_dir=tmp_path, tasks=("xor",), http="127.0.0.1:0"))
    try:
        yield node
    finally:
        node.close()


def _strikes(node: Daemon) -> int:
    return node.core.trust.strikes.get(PEER, 0)


def test_a_malformed_sync_request_is_the_peers_fault(daemon: Daemon) -> None:
    with pytest.raises(ValueError, match="bad sync request"):
        trio.run(daemon._serve_sync, PEER, b"\x81\xa2op\xa4nope")  # {"op": "nope"}
    assert _strikes(daemon) == 1


def test_our_own_bug_while_serving_sync_is_not_blamed_on_the_peer(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug(peer: str, data: bytes, now_ms: int) -> bytes:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(daemon.core, "on_sync_request", bug)
    request = messages.encode(messages.Since((), 16))
    with pytest.raises(RuntimeError, match="a bug of ours"):
        trio.run(daemon._serve_sync, PEER, request)
    assert _strikes(daemon) == 0


class _Captured(Exception):
    """Raised by the stand-in P2PNode once it has the daemon's arguments."""


def test_the_daemon_runs_with_the_peer_id_of_the_tested_derivation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def capture(identity: Any, **kwargs: Any) -> None:
        seen.update(kwargs, identity=identity)
        raise _Captured

    node = Daemon(NodeConfig(data_dir=tmp_path, tasks=("xor",), http="127.0.0.1:0"))
    try:
        monkeypatch.setattr("qudag.node.daemon.P2PNode", capture)
        with pytest.raises(_Captured):
            trio.run(node._run)
        assert seen["key_seed"] == peer_key_seed(node.identity)
    finally:
        node.close()


def test_peer_ids_are_those_nodes_already_have() -> None:
    """The derivation is frozen: this vector is the peer id running nodes have for this key."""
    identity = derive_identity("peer-id-vector")
    peer_id = P2PNode(identity, key_seed=peer_key_seed(identity)).peer_id
    assert peer_id == "12D3KooWF3325c9oz7e5VpGHAm6H6WQ8vVt8saSTbeGuvHHUUr7C"


def test_wait_peers_ends_when_a_peers_first_result_set_arrives(tmp_path: Path) -> None:
    """`--wait-peers 3` with one peer connected: the first result set gossiped by a peer that
    has already begun starts us too (a peer waiting for its own count, found through the DHT
    seconds later, would start that many generations behind)."""
    from qudag.evolution.es import ResultSet
    from qudag.node.protocol.core import task_topic

    config = NodeConfig(
        data_dir=tmp_path, tasks=("xor",), http="127.0.0.1:0", search="es", wait_peers=3
    )
    node = Daemon(config)
    waited: list[float] = []
    try:

        async def scenario() -> None:
            async with trio.open_nursery() as nursery:

                async def wait() -> None:
                    start = trio.current_time()
                    await node._wait_for_peers()
                    waited.append(trio.current_time() - start)

                nursery.start_soon(wait)
                await trio.sleep(0.5)
                assert not waited  # nobody there yet: still waiting
                results = ResultSet("xor", 1, 0, 17, 0.1, b"c" * 16, (1,), ((0.5, 0.2),))
                data = messages.encode(messages.EsResults(b"p" * 32, (results,)))
                node.core.on_gossip(PEER, task_topic("xor"), data, 1_700_000_000_000)

        trio.run(scenario)
    finally:
        node.close()
    assert len(waited) == 1 and 0.5 <= waited[0] < 30  # the set, not the 60 s limit, ended it


def test_the_daemon_feeds_the_observatory_its_peers_and_history(daemon: Daemon) -> None:
    """What the observatory's routes get from a daemon: connected peers with the key each
    proved, and a history sample per tick interval (node/ops/observatory.py)."""
    daemon._known_peers = {PEER, "12D3KooWNotAuthenticatedYet"}
    daemon.core.peer_authors[PEER] = b"\x07" * 32
    assert daemon._peers_view() == [  # sorted by peer id
        {"peer": "12D3KooWNotAuthenticatedYet", "author": None},
        {"peer": PEER, "author": "07" * 32},
    ]
    history = daemon.observatory.history
    assert history.maybe_sample(1_000, daemon._history_sample)
    assert not history.maybe_sample(1_500, daemon._history_sample)  # within the interval
    (sample,) = history.samples
    assert sample["peers"] == 2 and sample["vertices"] == daemon.store.count()
    assert set(sample["tasks"]) == {"xor"}
    assert sample["tasks"]["xor"]["generation"] == 0
