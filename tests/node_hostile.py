"""A hostile peer for the multi-process tests: the real `P2PNode`, sending raw garbage.

Run: `python tests/node_hostile.py --topic T [--gossip ADDR] [--pubsub-raw ADDR]
[--sync-raw ADDR] [--sync-request ADDR] [--count N]`. Each ADDR is a full multiaddr of an
honest daemon; each flag is one attack on that daemon:

- `--gossip`: connect, subscribe to topic T, and publish N distinct messages that are not
  vertices (valid gossipsub frames, garbage payloads): the core rejects and strikes each one;
- `--pubsub-raw`: open a gossipsub stream and write bytes that are not a protobuf RPC (the
  frame that tears down a stock py-libp2p node);
- `--sync-raw`: open `/qudag/sync/1.0.0` and write junk instead of a handshake hello;
- `--sync-request`: do the real ML-KEM handshake, then send a garbage request inside it.

It prints one JSON line per attack, then `{"event": "done", "peer_id": ...}`, and stays up
until its stdin closes, so the test can check that the victims dropped it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12
from net_helpers import DisconnectCounter  # this script runs from tests/ (sys.path[0])

from qudag.crypto.signing import Identity
from qudag.node.net.libp2p_patches import quiet_libp2p_logging
from qudag.node.net.sync_protocol import SYNC_PROTOCOL, SyncError
from qudag.node.net.transport import NetConfig, P2PNode

# A varint length 6, then a length-delimited protobuf field claiming 2^31 bytes.
BAD_PROTOBUF = bytes([6]) + b"\x0a\xff\xff\xff\xff\x0f"
# A handshake header announcing 200 bytes, then 200 bytes that are not a hello.
BAD_HANDSHAKE = (200).to_bytes(4, "big") + bytes(range(200))


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


async def _connect(node: P2PNode, addr: str) -> str:
    last: Exception | None = None
    for _ in range(10):
        try:
            return await node.connect(addr, timeout=5.0)
        except Exception as exc:  # cooldown after an earlier attack, slow start...
            last = exc
            await trio.sleep(0.3)
    raise RuntimeError(f"cannot connect to {addr}: {last!r}")


async def gossip_garbage(node: P2PNode, addr: str, topic: str, count: int) -> dict[str, Any]:
    peer = await _connect(node, addr)
    deadline = trio.current_time() + 10
    while peer not in node.topic_peers(topic) and trio.current_time() < deadline:
        await trio.sleep(0.1)
    await trio.sleep(1.2)  # one heartbeat: the victim is in our mesh for the topic
    for i in range(count):
        # b"\x92" (a 2-array, like a vertex) then junk: not decodable as a vertex
        await node.publish(topic, b"\x92" + os.urandom(40) + i.to_bytes(4, "big"))
        await trio.sleep(0.02)
    return {"attack": "gossip", "peer": peer, "sent": count}


async def raw_stream(node: P2PNode, addr: str, protocols: list[Any], data: bytes) -> dict[str, Any]:
    peer = await _connect(node, addr)
    stream = await node.host.new_stream(ID.from_base58(peer), protocols)
    await stream.write(data)
    outcome = "open"
    with trio.move_on_after(3):
        try:
            while await stream.read(65536):
                pass
            outcome = "eof"
        except Exception as exc:
            outcome = type(exc).__name__
    return {"attack": "raw", "protocol": str(protocols[0]), "peer": peer, "stream": outcome}


async def sync_request_garbage(node: P2PNode, addr: str) -> dict[str, Any]:
    peer = await _connect(node, addr)
    try:
        reply = await node.request(peer, b"\xc1 not a sync message", timeout=5.0)
        outcome = f"answered {len(reply)} bytes"
    except SyncError as exc:
        outcome = f"error {exc.reason}"
    return {"attack": "sync-request", "peer": peer, "outcome": outcome}


async def main(args: argparse.Namespace) -> None:
    quiet_libp2p_logging()
    node = P2PNode(
        Identity.generate(),
        topics={args.topic: None},
        config=NetConfig(dht=False),
    )
    drops = DisconnectCounter()
    node.host.get_network().register_notifee(drops)
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with node:
        emit({"event": "ready", "peer_id": node.peer_id})
        # Attacks that make a victim refuse us (penalty + cooldown) go to different victims,
        # first; the garbage gossip goes last, to every honest peer still connected to us.
        results = []
        for addr in args.sync_raw:
            results.append(await raw_stream(node, addr, [SYNC_PROTOCOL], BAD_HANDSHAKE))
            emit(results[-1])
        for addr in args.pubsub_raw:
            protocols = [PROTOCOL_ID_V12, PROTOCOL_ID_V11]
            results.append(await raw_stream(node, addr, protocols, BAD_PROTOBUF))
            emit(results[-1])
        for addr in args.sync_request:
            results.append(await sync_request_garbage(node, addr))
            emit(results[-1])
        for addr in args.gossip:
            results.append(await gossip_garbage(node, addr, args.topic, args.count))
            emit(results[-1])
        victims = {r["peer"] for r in results}
        # every victim should drop us; wait for it (bounded) so the report can say who did
        with trio.move_on_after(15):
            while any(drops.closed[p] == 0 for p in victims):
                await trio.sleep(0.1)
        emit(
            {
                "event": "done",
                "peer_id": node.peer_id,
                "t": time.time(),
                "dropped_by": dict(drops.closed),
            }
        )
        # Linger until the test closes our stdin, so it can check the victims dropped us.
        while await stdin.receive_some(4096):
            pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--topic", required=True)
    parser.add_argument("--gossip", action="append", default=[])
    parser.add_argument("--pubsub-raw", action="append", default=[])
    parser.add_argument("--sync-raw", action="append", default=[])
    parser.add_argument("--sync-request", action="append", default=[])
    parser.add_argument("--count", type=int, default=30)
    trio.run(main, parser.parse_args())
