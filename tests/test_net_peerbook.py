"""The peer book (node/net/peerbook.py) and the transport calls that re-find a peer by its id.

The book: what a node was connected to survives a restart, in a file that is bounded, written
atomically and decoded strictly (a corrupt file is a warning, never a traceback). The transport:
a peer restarted on a new port is dialled at its new address, which a third peer told us
through the DHT (`P2PNode.find_addrs`), not at the stale one (`P2PNode.dial_addrs`).
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest
import trio
from libp2p.peer.id import ID

from qudag.crypto.signing import Identity
from qudag.node.net import peerbook
from qudag.node.net.libp2p_patches import quiet_libp2p_logging
from qudag.node.net.peerbook import MAX_ADDRS, MAX_PEERS, PeerBook, decode, dialable, valid_peer_id
from qudag.node.net.transport import NetConfig, P2PNode

quiet_libp2p_logging()
PEER = "12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf"
OTHER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


def test_peer_ids_and_addresses_are_checked() -> None:
    assert valid_peer_id(PEER) and valid_peer_id(OTHER)
    for bad in ["", "abc", "0OIl", PEER[:-3], 5]:
        assert not valid_peer_id(bad)  # type: ignore[arg-type]
    assert dialable("/ip4/127.0.0.1/tcp/4001") == "/ip4/127.0.0.1/tcp/4001"
    assert dialable(f"/ip4/10.1.2.3/tcp/4001/p2p/{PEER}") == "/ip4/10.1.2.3/tcp/4001"
    for bad in ["/ip4/0.0.0.0/tcp/1", "/ip6/::/tcp/1", "/ip4/127.0.0.1/udp/1", "nonsense", ""]:
        assert dialable(bad) is None


def test_the_book_survives_a_restart_and_keeps_new_addresses_first(tmp_path: Path) -> None:
    path = tmp_path / peerbook.PEERS_FILE
    book = PeerBook.load(path)
    assert len(book) == 0 and not book.dirty
    book.note(PEER, ["/ip4/127.0.0.1/tcp/1000", "/ip4/0.0.0.0/tcp/1000"], 5)
    assert book.dirty
    book.save()
    assert not book.dirty
    book.note(PEER, ["/ip4/127.0.0.1/tcp/1000"], 6)
    assert not book.dirty, "only the time changed: nothing worth a write"
    book.note(PEER, [f"/ip4/127.0.0.1/tcp/2000/p2p/{PEER}"], 7)
    assert book.dirty
    book.save()
    again = PeerBook.load(path)
    assert again.addrs(PEER) == ["/ip4/127.0.0.1/tcp/2000", "/ip4/127.0.0.1/tcp/1000"]
    again.forget(PEER)
    assert PEER not in again and again.dirty
    assert [p.name for p in tmp_path.iterdir()] == [peerbook.PEERS_FILE]  # no temporary left


def test_the_book_is_bounded(tmp_path: Path) -> None:
    book = PeerBook(tmp_path / "peers.json")
    ids = [ID(b"\x00\x05" + i.to_bytes(5, "big")).to_base58() for i in range(MAX_PEERS + 5)]
    for i, peer in enumerate(ids):
        book.note(peer, [f"/ip4/127.0.0.1/tcp/{1000 + j}" for j in range(MAX_ADDRS + 3)], i)
    assert len(book) == MAX_PEERS
    assert ids[0] not in book and ids[-1] in book  # the least recently seen went first
    assert all(len(p.addrs) == MAX_ADDRS for p in book.peers().values())
    book.save()
    assert len(PeerBook.load(book.path)) == MAX_PEERS


GOOD = {"version": 1, "peers": {PEER: {"addrs": ["/ip4/127.0.0.1/tcp/1"], "seen_ms": 1}}}


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x80\x03}q\x00.",  # a pickle: never unpickled
        b"{not json",
        b"[]",
        json.dumps({**GOOD, "version": 2}).encode(),
        json.dumps({**GOOD, "extra": 1}).encode(),
        json.dumps({"version": 1, "peers": {"abc": GOOD["peers"][PEER]}}).encode(),
        json.dumps({"version": 1, "peers": {PEER: {"addrs": [], "seen_ms": 1}}}).encode(),
        json.dumps({"version": 1, "peers": {PEER: {"addrs": ["x"], "seen_ms": 1}}}).encode(),
        json.dumps({"version": 1, "peers": {PEER: {"addrs": ["/ip4/1.2.3.4/tcp/1"]}}}).encode(),
        json.dumps(
            {"version": 1, "peers": {PEER: {"addrs": ["/ip4/1.2.3.4/tcp/1"], "seen_ms": -1}}}
        ).encode(),  # noqa: E501
        b'{"version": 1, "version": 1, "peers": {}}',
        b'{"version": 1, "peers": {}, "x": NaN}',
        b"[" * 100_000,
        b" " * (peerbook.MAX_FILE_BYTES + 1),
    ],
)
def test_a_corrupt_file_is_ignored_with_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / peerbook.PEERS_FILE
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger=peerbook.__name__):
        book = PeerBook.load(path)
    assert len(book) == 0
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "ignoring" in caplog.records[0].getMessage()
    assert decode(json.dumps(GOOD).encode())[PEER].addrs == ["/ip4/127.0.0.1/tcp/1"]


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused): a peer's address before it
    restarted on another port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_peer_known_at_a_stale_address_is_found_through_a_third_peer() -> None:
    """X knows Z only at an address where nothing listens any more (Z restarted on a new
    port: an in-process restart is not one, libp2p leaves the old listener serving); Z is
    connected to Y. X fails at the stale address, asks the network, learns Z's address from
    Y, and connects there."""
    ids = [Identity.generate() for _ in range(3)]
    # max_peers=1 (X and Z): their own discovery dials nobody beyond Y, so only the calls
    # under test connect them.
    alone = NetConfig(max_peers=1)

    async def scenario() -> None:
        async with (
            P2PNode(ids[0]) as y,
            P2PNode(ids[1], bootstrap=y.addrs, config=alone) as x,
            P2PNode(ids[2], bootstrap=y.addrs, config=alone) as z_node,
        ):
            z = z_node.peer_id
            fresh = [a.rsplit("/p2p/", 1)[0] for a in z_node.addrs]
            stale = [f"/ip4/127.0.0.1/tcp/{closed_port()}"]
            with trio.fail_after(15):
                while ID.from_base58(z) not in set(y.dht.routing_table.get_peer_ids()):  # type: ignore[union-attr]
                    await trio.sleep(0.05)
            # X's own DHT refresh (from 0.5 s on) may reach Z through Y before this line: its
            # Kademlia queries connect to the peers they ask, whatever `max_peers` says. Then
            # the stale dial answers "" (connected, or being dialled, already) instead of
            # failing; the lookup below must find Z's live address either way.
            assert await x.dial_addrs(z, stale, 2.0) in (None, "")
            found = await x.find_addrs(z, 5.0)
            assert set(fresh) & set(found), (found, fresh)
            new = [a for a in found if a not in stale]
            # "": the lookup itself connected (it asks Z, the peer closest to its own id)
            assert await x.dial_addrs(z, new, 2.0) in [*fresh, ""]
            with trio.fail_after(5):  # "" may be a dial still under way
                while z not in x.peers():
                    await trio.sleep(0.05)
            assert x.peer_addrs(z) and set(x.peer_addrs(z)) <= set(fresh)

    async def main() -> None:
        with trio.fail_after(60):
            await scenario()

    trio.run(main)
