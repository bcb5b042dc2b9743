"""Transport Workaround 12: yamux window updates are batched, and large transfers still flow."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from libp2p.stream_muxer.yamux.yamux import YamuxStream
from test_net_transport import T, run, two_nodes, wait_until

from qudag.node.net import yamux_window


@pytest.fixture
def updates() -> Iterator[list[int]]:
    """Increments of every WINDOW_UPDATE frame sent in this process (both nodes)."""
    sent: list[int] = []
    original = YamuxStream.send_window_update

    async def counting(self: Any, increment: int, skip_lock: bool = False) -> None:
        sent.append(increment)
        await original(self, increment, skip_lock=skip_lock)

    YamuxStream.send_window_update = counting  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        YamuxStream.send_window_update = original  # type: ignore[method-assign]


def _gossip_updates(sent: list[int], batched: bool) -> int:
    """WINDOW_UPDATE frames sent while A publishes 50 messages of 5 KB that B receives."""
    counted: list[int] = []

    async def main() -> None:
        nodes = two_nodes()
        async with nodes as (a, _):
            # After the nodes started: P2PNode installs the workaround when it is created.
            (yamux_window.install if batched else yamux_window.uninstall)()
            before = len(sent)
            for i in range(50):
                await a.publish(T, i.to_bytes(2, "big") + b"x" * 5000)
            await wait_until(lambda: len(nodes.got) >= 50, 10)
            counted.append(len(sent) - before)

    run(main)
    return counted[0]


def test_gossip_sends_no_window_update_per_read(updates: list[int]) -> None:
    """libp2p alone sends updates for every message received; batched, 250 KB of gossip (about
    the 256 KiB initial window of the pubsub stream) needs at most a few."""
    try:
        unbatched = _gossip_updates(updates, batched=False)
    finally:
        yamux_window.install()
    batched = _gossip_updates(updates, batched=True)
    assert unbatched >= 50 * 3, unbatched  # what the workaround is for (libp2p's behaviour)
    assert batched <= 5, batched


def test_a_transfer_larger_than_the_window_completes(updates: list[int]) -> None:
    """3 MiB each way over one sync stream (12x the initial 256 KiB window): the credit comes
    back in batches and nothing stalls."""
    big = bytes(range(256)) * (3 * 4096)

    async def handler(peer: str, req: bytes) -> bytes:
        return req[::-1]

    async def main() -> None:
        async with two_nodes(handler=handler) as (a, b):
            for _ in range(2):
                assert await b.request(a.peer_id, big, 30) == big[::-1]

    run(main, limit=60)
    assert updates, "a transfer over the window needs window updates"
    assert min(updates) >= 128 * 1024  # each one credits at least half the initial window
