"""Dead connections: a peer that stops answering is noticed, dropped everywhere, and redialled.

Two `P2PNode`s in their own processes on loopback (tests/net_helpers.py). B is frozen with
SIGSTOP: its kernel keeps the TCP connection open and even ACKs, so nothing but an application
probe can tell that B is gone. A then publishes megabytes to B, filling the socket's send
buffer, which is what made a plain `host.disconnect` hang (docs/reliability.md). A must drop B
from its connections and from pubsub's peer tables in bounded time, and once B is thawed
(SIGCONT) A must reconnect by itself and gossip and sync must work again.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from net_helpers import NodeProc

T = "qudag/liveness/1"
# NetConfig defaults: ping every 1 s, dead after 10 s of silence, close bounded by 2 s.
DETECT_LIMIT_S = 15.0
RECOVER_LIMIT_S = 15.0


@pytest.fixture
def pair() -> Iterator[tuple[NodeProc, NodeProc]]:
    a = NodeProc(topics=[T]).wait_ready()
    b: NodeProc | None = None
    try:
        b = NodeProc(bootstrap=a.addrs, topics=[T]).wait_ready()
        yield a, b
    finally:
        if b is not None:
            if b.proc.poll() is None:
                os.kill(b.proc.pid, signal.SIGCONT)
            b.kill()
        a.kill()


@pytest.mark.multiprocess
def test_frozen_peer_is_dropped_in_bounded_time_and_reconnected_when_it_thaws(
    pair: tuple[NodeProc, NodeProc],
) -> None:
    a, b = pair
    st = a.wait_for(lambda s: b.peer_id in s["topic_peers"][T], 20, topics=[T])
    assert b.peer_id in st["topic_peers"][T], st
    st = b.wait_for(lambda s: a.peer_id in s["topic_peers"][T], 20, topics=[T])
    assert a.peer_id in st["topic_peers"][T], st

    os.kill(b.proc.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    # ~20 MB towards the frozen peer: the TCP send buffer fills and writers block on it
    assert a.call(cmd="publish", topic=T, count=100, size=200_000, timeout=60).get("ok")
    st = a.wait_for(
        lambda s: b.peer_id not in s["peers"] and b.peer_id not in s["topic_peers"][T],
        DETECT_LIMIT_S + 10,
        topics=[T],
    )
    detected_s = time.monotonic() - frozen_at
    print(f"frozen peer dropped after {detected_s:.1f} s; rejections {st['rejections']}")
    assert b.peer_id not in st["peers"] and b.peer_id not in st["topic_peers"][T], st
    assert detected_s <= DETECT_LIMIT_S, detected_s
    assert st["rejections"].get("connection-dead", 0) >= 1, st
    assert all(st["health"].values()), st["health"]

    os.kill(b.proc.pid, signal.SIGCONT)
    thawed_at = time.monotonic()
    st = a.wait_for(lambda s: b.peer_id in s["topic_peers"][T], RECOVER_LIMIT_S + 10, topics=[T])
    recovered_s = time.monotonic() - thawed_at
    print(f"reconnected {recovered_s:.1f} s after the thaw")
    assert b.peer_id in st["peers"] and b.peer_id in st["topic_peers"][T], st
    assert recovered_s <= RECOVER_LIMIT_S, recovered_s
    # gossip flows both ways again and the sync protocol answers
    b.wait_for(lambda s: a.peer_id in s["topic_peers"][T], 10, topics=[T])
    time.sleep(1.1)  # one heartbeat: mesh grafted again
    before = a.call(cmd="status")["received"].get(T, 0)
    assert b.call(cmd="publish", topic=T, count=5, size=100).get("ok")
    st = a.wait_for(lambda s: s["received"].get(T, 0) >= before + 5, 10)
    assert st["received"].get(T, 0) >= before + 5, st
    reply = a.call(cmd="request", peer=b.peer_id, data=b"ping".hex())
    assert bytes.fromhex(reply["response"]) == b"echo:ping", reply


def test_redial_bookkeeping_survives_a_peer_the_peerstore_forgot() -> None:
    """Regression: the redial loop asked the peerstore for the addresses of a peer it had
    already forgotten (it raises PeerStoreError for an unknown peer), and the exception took
    the whole node down in a 6-node partition run."""
    import trio
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    from qudag.crypto.signing import Identity
    from qudag.node.net.libp2p_patches import quiet_libp2p_logging
    from qudag.node.net.transport import P2PNode

    quiet_libp2p_logging()
    stranger = ID.from_pubkey(create_new_key_pair().public_key)

    async def main() -> None:
        with trio.fail_after(20):
            async with P2PNode(Identity.generate()) as node:
                assert node._known_addrs(stranger) == []
                node._lost[stranger] = (trio.current_time() + 60, [])
                # The redial loop (one round a second) drops it: bounded by `fail_after` above.
                while stranger in node._lost:
                    await trio.sleep(0.05)
                assert all(node.health().values())

    trio.run(main)
