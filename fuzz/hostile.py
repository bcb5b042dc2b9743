"""A hostile peer speaking the real wire format (libp2p, gossipsub, `/qudag/sync/1.0.0`).

    python fuzz/hostile.py --targets 10.77.0.10:8700,10.77.0.11:8700 \\
        --listen /ip4/10.77.0.30/tcp/4001 --task two-spirals --report attack.json

It finds the honest nodes through their status ports, connects to every one of them (invalid
gossip is not relayed, so each honest node must hear it first-hand), completes a real ML-KEM/
ML-DSA sync handshake (so honest nodes can map its libp2p peer to its ML-DSA author), and
then runs these attack classes in order, each counted in the JSON report it writes:

  forged-signature   a genuine template re-signed by us but claiming an honest author, and our
                     own vertex with a flipped signature bit
  inflated-fitness   our own validly signed template claiming fitness 1.0 for a random net
  equivocation       two different validly signed vertices with the same (author, seq), by a
                     second key of ours (equivocation by the key the handshake proved bans
                     and drops us at once, like the lie; tests/test_node_core.py checks that)
  orphan-flood       validly signed vertices whose parents do not exist
  oversize           a payload over the gossip limit (bypassing our own send check), and a
                     vertex-shaped payload over the vertex size limit
  replay             genuine vertices published again, and served again on sync requests
  garbage-gossip     random bytes on the task topic
  garbage-pubsub     a malformed protobuf frame on a raw gossipsub stream
  garbage-sync       junk instead of a handshake on a raw sync stream

While it runs, the sync requests honest nodes send it (e.g. for the orphans' parents) get
pages of replayed genuine vertices, then garbage, then nothing (`serve_sync`). Test-only tool:
it is never imported by the node.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import Counter
from typing import Any

import numpy as np
import trio

from qudag.crypto.canonical import pack
from qudag.crypto.signing import Identity
from qudag.dag.vertex import (
    KIND_TEMPLATE,
    SIGNING_CONTEXT,
    decode_vertex,
    encode_body,
    make_identity_vertex,
    make_vertex,
)
from qudag.evolution.genome import Genome
from qudag.evolution.template import Template
from qudag.node.commands.join import bootstrap_addr
from qudag.node.commands.status import fetch_status
from qudag.node.errors import UserError
from qudag.node.net.libp2p_patches import quiet_libp2p_logging
from qudag.node.net.transport import NetConfig, P2PNode
from qudag.node.protocol import messages
from qudag.node.protocol.core import CONTROL_TOPIC, task_topic

# A varint length then a protobuf field claiming 2^31 bytes: libp2p's RPC parser raises on it.
BAD_PROTOBUF = bytes([6]) + b"\x0a\xff\xff\xff\xff\x0f"
# A handshake header announcing 200 bytes, then 200 bytes of junk: not a hello.
BAD_HANDSHAKE = (200).to_bytes(4, "big") + bytes(range(200))
GOSSIPSUB = "/meshsub/1.2.0"
SYNC = "/qudag/sync/1.0.0"


class Attacker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.identity = Identity.generate()
        self.sybil = Identity.generate()  # a second author of ours, for the equivocation
        self.rng = np.random.default_rng(args.seed)
        self.sent: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.genuine: list[bytes] = []
        self.seq = 0
        self.own_tip: bytes | None = None
        self.sync_served = 0
        self.served: Counter[str] = Counter()
        self.targets: dict[str, str] = {}  # peer id -> status address
        self.node = P2PNode(
            self.identity,
            listen=[args.listen],
            topics={CONTROL_TOPIC: None, task_topic(args.task): None},
            sync_handler=self.serve_sync,
            config=NetConfig(dht=False, penalty_cooldown=1.0),
        )

    # --- the sync side of the attack --------------------------------------------------
    async def serve_sync(self, peer: str, request: bytes) -> bytes:
        """Per asking peer: 2 pages of replayed genuine vertices, 2 garbage answers, then
        empty pages (withholding: legal, and it keeps us connected for the other classes)."""
        self.sync_served += 1
        self.served[peer] += 1
        n = self.served[peer]
        self.sent["sync-requests-answered"] += 1
        if n <= 2 and self.genuine:
            self.sent["replay-sync"] += len(self.genuine[:64])
            return messages.encode(messages.Vertices(tuple(self.genuine[:64]), False))
        if n <= 4:
            self.sent["garbage-sync-response"] += 1
            return b"\xc1" + os.urandom(32)
        return messages.encode(messages.Vertices((), False))

    # --- helpers ----------------------------------------------------------------------
    async def publish(self, cls: str, topic: str, data: bytes, *, raw: bool = False) -> None:
        try:
            if raw:  # bypass our own validator and size check, as a hostile peer would
                saved = self.node.pubsub.topic_validators.pop(topic, None)
                try:
                    await self.node.pubsub.publish(topic, data)
                finally:
                    if saved is not None:
                        self.node.pubsub.topic_validators[topic] = saved
            else:
                await self.node.publish(topic, data)
            self.sent[cls] += 1
        except Exception as exc:
            self.errors[f"{cls}: {type(exc).__name__}"] += 1
        await trio.sleep(0.01)

    def own_vertex(self, kind: str, payload: dict[str, Any], parents: list[bytes]) -> bytes:
        return make_vertex(self.identity, self.seq, int(time.time() * 1000), parents, kind, payload)

    def honest_copy(self, base: Template, generation: int) -> dict[str, Any]:
        """An honest template's net and claim, as our own (a valid claim)."""
        return dataclasses.replace(base, parents=(), generation=generation).to_dict()

    def inflated_template(self, base: Template, generation: int) -> dict[str, Any]:
        """A random net of the honest template's shape, claiming fitness 1.0."""
        g = base.genome
        hidden = g.layer_sizes[:-1]
        genome = Genome.random(self.rng, g.n_inputs, hidden, g.layer_sizes[-1])
        genome = Genome(g.n_inputs, g.layer_sizes, g.activations, genome.weights, genome.biases)
        fake = dataclasses.replace(
            base, genome=genome, fitness=1.0, parents=(), generation=generation, operator="lie"
        )
        return fake.to_dict()

    # --- phases -----------------------------------------------------------------------
    async def connect(self) -> None:
        for address in self.args.targets.split(","):
            host = address.rsplit(":", 1)[0]
            deadline = time.monotonic() + 30
            while True:
                try:
                    status = await trio.to_thread.run_sync(fetch_status, address, 3.0)
                    addr = bootstrap_addr(host, status)
                    peer = await self.node.connect(addr, timeout=5)
                    self.targets[peer] = address
                    break
                except (UserError, Exception) as exc:
                    if time.monotonic() > deadline:
                        self.errors[f"connect {address}: {type(exc).__name__}"] += 1
                        break
                    await trio.sleep(0.5)
        await trio.sleep(2.5)  # gossipsub heartbeats: we are in every mesh

    async def fetch_genuine(self) -> None:
        for peer in self.targets:
            try:
                reply = await self.node.request(
                    peer, messages.encode(messages.Since((), messages.MAX_PAGE_VERTICES)), 15
                )
                page = messages.decode(reply)
                if isinstance(page, messages.Vertices):
                    self.genuine = list(page.vertices)
                    return
            except Exception as exc:
                self.errors[f"fetch: {type(exc).__name__}"] += 1

    async def run(self) -> dict[str, Any]:
        args = self.args
        topic = task_topic(args.task)
        async with self.node:
            await self.connect()
            await self.fetch_genuine()
            honest = [decode_vertex(r) for r in self.genuine]
            templates = [v for v in honest if v.kind == KIND_TEMPLATE]
            if not templates:
                raise SystemExit("no honest template to imitate yet")
            base = Template.from_dict(templates[-1].payload)
            victim = templates[-1]

            # Our identity (valid): later vertices are attributable to this author.
            identity_raw = make_identity_vertex(self.identity, int(time.time() * 1000))
            await self.publish("identity", CONTROL_TOPIC, identity_raw)
            identity_id = decode_vertex(identity_raw).id
            sybil_raw = make_identity_vertex(self.sybil, int(time.time() * 1000))
            await self.publish("identity", CONTROL_TOPIC, sybil_raw)
            sybil_id = decode_vertex(sybil_raw).id
            await trio.sleep(0.5)

            # The order matters: each class must reach the honest nodes before one of them
            # gets us dropped (20 strikes of garbage, or the lie that gets us banned).

            # oversize: over the gossip limit, and a vertex-shaped blob over the vertex limit.
            await self.publish("oversize", topic, b"\x92" + os.urandom(600 * 1024), raw=True)
            await self.publish("oversize", topic, b"\x92\xc6" + os.urandom(300 * 1024), raw=True)

            # garbage gossip: a few random byte strings (strikes, below the drop
            # threshold), early: forged signatures below cost more strikes and may get us dropped.
            for _ in range(args.count):
                data = os.urandom(int(self.rng.integers(1, 400)))
                await self.publish("garbage-gossip", topic, data)

            # forged signatures, right after the garbage (5 + 2 x 5 strikes, below the 20 that
            # drop us): an honest author's template signed by us, and our own vertex with a
            # flipped signature bit. Before the lie, because it gets us banned and dropped at
            # once (one proven lie bans), after which a node hears nothing more from us
            # first-hand.
            self.seq = 1
            seq1_a = self.own_vertex(KIND_TEMPLATE, self.honest_copy(base, 1), [identity_id])
            for i in range(args.count):
                payload = dict(victim.payload)
                payload["generation"] = victim.payload["generation"] + 1000 + i
                body = encode_body(
                    victim.author, victim.seq + 1, int(time.time() * 1000), [victim.id],
                    KIND_TEMPLATE, payload,
                )  # fmt: skip
                signature = self.identity.sign(body, SIGNING_CONTEXT)
                await self.publish("forged-signature", topic, pack([body, signature]))
                flipped = bytearray(seq1_a)
                flipped[-(i + 5)] ^= 0x40
                await self.publish("forged-signature", topic, bytes(flipped))

            # orphan flood: validly signed by us, parents that do not exist.
            for i in range(args.orphans):
                self.seq = 1000 + i
                parents = [os.urandom(32), os.urandom(32)]
                raw = self.own_vertex(KIND_TEMPLATE, self.honest_copy(base, 10 + i), parents)
                await self.publish("orphan-flood", topic, raw)

            # our seq 1 (an honest claim), which the lie below builds on.
            await self.publish("own-template", topic, seq1_a)

            # equivocation: two different, validly signed seq-1 templates (honest claims) of
            # our second key; that author is banned, this connection (our first key) is not.
            twins = [
                make_vertex(
                    self.sybil,
                    1,
                    int(time.time() * 1000),
                    [sybil_id],
                    KIND_TEMPLATE,
                    self.honest_copy(base, generation),
                )
                for generation in (1, 2)
            ]
            await self.publish("equivocation", topic, twins[0])
            await trio.sleep(0.3)
            await self.publish("equivocation", topic, twins[1])

            # replays of genuine vertices on gossip.
            for raw in self.genuine[: args.count * 4]:
                await self.publish("replay-gossip", topic, raw)

            # Let honest nodes ask us for the orphans' parents (replays, then garbage).
            await trio.sleep(3.0)

            # inflated fitness: a random net claiming 1.0, validly signed, seq 2 on our chain.
            self.seq = 2
            lie = self.own_vertex(
                KIND_TEMPLATE, self.inflated_template(base, 3), [decode_vertex(seq1_a).id]
            )
            await self.publish("inflated-fitness", topic, lie)

            # Let honest nodes re-evaluate the lie, ban us and drop us.
            await trio.sleep(args.linger)

            # garbage on raw streams (needs a connection: reconnect if we were dropped).
            for peer, address in self.targets.items():
                for cls, protocol, data in (
                    ("garbage-pubsub", GOSSIPSUB, BAD_PROTOBUF),
                    ("garbage-sync", SYNC, BAD_HANDSHAKE),
                ):
                    await self.raw_stream(cls, peer, address, protocol, data)
            await trio.sleep(2.0)
        return {
            "author": self.identity.key_id.hex(),
            "peer_id": self.node.peer_id,
            "targets": list(self.targets),
            "sent": dict(self.sent),
            "errors": dict(self.errors),
        }

    async def raw_stream(
        self, cls: str, peer: str, address: str, protocol: str, data: bytes
    ) -> None:
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        host = address.rsplit(":", 1)[0]
        for _ in range(5):
            try:
                if peer not in self.node.peers():
                    status = await trio.to_thread.run_sync(fetch_status, address, 3.0)
                    await self.node.connect(bootstrap_addr(host, status), timeout=5)
                stream = await self.node.host.new_stream(
                    ID.from_base58(peer), [TProtocol(protocol)]
                )
                await stream.write(data)
                self.sent[cls] += 1
                with trio.move_on_after(2.0):
                    try:
                        while await stream.read(65536):
                            pass
                    except Exception:  # noqa: S110 - the honest node resets the stream
                        pass
                return
            except Exception as exc:
                self.errors[f"{cls}: {type(exc).__name__}"] += 1
                await trio.sleep(1.2)  # the honest node may refuse us for a moment


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--targets", required=True, help="HOST:PORT status addresses, comma-separated"
    )
    parser.add_argument("--listen", required=True, help="our libp2p listen multiaddr")
    parser.add_argument("--task", default="xor")
    parser.add_argument("--count", type=int, default=5, help="forged vertices per kind")
    parser.add_argument("--orphans", type=int, default=200)
    parser.add_argument("--linger", type=float, default=8.0, help="seconds before the garbage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", default="-", help="JSON report file ('-': stdout)")
    args = parser.parse_args()
    quiet_libp2p_logging()
    report = trio.run(Attacker(args).run)
    text = json.dumps(report, indent=1)
    if args.report == "-":
        print(text)
    else:
        with open(args.report, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
