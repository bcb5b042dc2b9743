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
pages of replayed genuine vertices, then garbage, then nothing (`serve_sync`).

That is `--mode classic` (the default). The trust attacks of issue 17 are modes of their own,
each with keys the attacker owns beside its connection key (so a ban of one of them does not
cost it the connection, and every class reaches every honest node first-hand):

  collude       per round, a fresh liar L publishes a random net claiming 1.0 and two fresh
                sybils S1, S2 attest it "valid" at 1.0, all within milliseconds
  flood         a proven author of ours (an honest copy that every target measured valid
                first), then `--sybils` throwaway identities each claiming a higher fitness
                than any honest net, then three more honest claims of the proven author, then
                one colluded lie as above, then (once the first target has checked a quarter of
                the flood) one more honest claim of the proven author
  version-skew  S1 and S2 first earn a record (each attests "valid" a claim that the target
                measured valid itself), then L's lie declares the task version after the
                targets' (which they cannot evaluate) and S1, S2 attest it
  overfit       per round, a fresh author publishes random tanh features whose output layer
                is fitted by least squares on the task's validation split (the simulator's
                `overfit` cheat), claiming its true validation fitness (~1.0 on digits)

The report lists every key and vertex id of the attack with the time it was signed, so a test
can follow each through the honest nodes' routes and ledgers. Test-only tool: it is never
imported by the node.
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
from qudag.dag.payloads import KIND_ATTESTATION, VERDICT_VALID, attestation_payload
from qudag.dag.vertex import (
    KIND_TEMPLATE,
    SIGNING_CONTEXT,
    decode_vertex,
    encode_body,
    make_identity_vertex,
    make_vertex,
)
from qudag.evolution.genome import Genome
from qudag.evolution.tasks import get_task
from qudag.evolution.template import Template, from_genome
from qudag.node.commands.join import bootstrap_addr
from qudag.node.commands.status import fetch_status
from qudag.node.commands.templates import NodeClient
from qudag.node.errors import UserError
from qudag.node.net.libp2p_patches import quiet_libp2p_logging
from qudag.node.net.transport import NetConfig, P2PNode
from qudag.node.protocol import messages
from qudag.node.protocol.core import CONTROL_TOPIC, task_topic
from qudag.node.sync_pages import now_ms
from qudag.simulations.byzantine import random_features, refit_on_validation

# A varint length then a protobuf field claiming 2^31 bytes: libp2p's RPC parser raises on it.
BAD_PROTOBUF = bytes([6]) + b"\x0a\xff\xff\xff\xff\x0f"
# A handshake header announcing 200 bytes, then 200 bytes of junk: not a hello.
BAD_HANDSHAKE = (200).to_bytes(4, "big") + bytes(range(200))
GOSSIPSUB = "/meshsub/1.2.0"
SYNC = "/qudag/sync/1.0.0"
MODES = ("classic", "collude", "flood", "version-skew", "overfit")


class Author:
    """A key of ours and its chain: each vertex lists the previous one (seq - 1) as a parent,
    as the ledger requires."""

    def __init__(self, key: Identity | None = None) -> None:
        self.key = key or Identity.generate()
        self.seq = 0
        self.last: bytes | None = None

    @property
    def hex(self) -> str:
        return self.key.key_id.hex()

    def introduce(self) -> bytes:
        """The identity vertex (seq 0): the public key that the honest nodes check with."""
        raw = make_identity_vertex(self.key, now_ms())
        self.seq, self.last = 1, decode_vertex(raw).id
        return raw

    def sign(self, kind: str, payload: dict[str, Any], refs: tuple[bytes, ...] = ()) -> bytes:
        assert self.last is not None, "introduce() first"
        parents = sorted({self.last, *refs})
        raw = make_vertex(self.key, self.seq, now_ms(), parents, kind, payload)
        self.seq, self.last = self.seq + 1, decode_vertex(raw).id
        return raw

    def attest(self, template_id: bytes, fitness: float) -> bytes:
        """A "valid" attestation of `template_id` at `fitness` (the number we type)."""
        payload = attestation_payload(template_id, fitness, VERDICT_VALID)
        return self.sign(KIND_ATTESTATION, payload, (template_id,))


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
        self.target_keys: dict[str, str] = {}  # status address -> the node's author key id
        self.events: dict[str, Any] = {}  # what the trust modes did, for the report
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
    async def publish(
        self, cls: str, topic: str, data: bytes, *, raw: bool = False, pace: float = 0.01
    ) -> None:
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
        await trio.sleep(pace)

    def own_vertex(self, kind: str, payload: dict[str, Any], parents: list[bytes]) -> bytes:
        return make_vertex(self.identity, self.seq, now_ms(), parents, kind, payload)

    def honest_copy(self, base: Template, generation: int) -> dict[str, Any]:
        """An honest template's net and claim, as our own (a valid claim)."""
        return dataclasses.replace(base, parents=(), generation=generation).to_dict()

    def inflated_template(
        self,
        base: Template,
        generation: int,
        fitness: float = 1.0,
        task_version: int | None = None,
    ) -> dict[str, Any]:
        """A random net of the honest template's shape, claiming `fitness` (on `task_version`,
        by default the honest template's)."""
        g = base.genome
        hidden = g.layer_sizes[:-1]
        genome = Genome.random(self.rng, g.n_inputs, hidden, g.layer_sizes[-1])
        genome = Genome(g.n_inputs, g.layer_sizes, g.activations, genome.weights, genome.biases)
        fake = dataclasses.replace(
            base,
            genome=genome,
            fitness=fitness,
            parents=(),
            generation=generation,
            operator="lie",
            task_version=base.task_version if task_version is None else task_version,
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
                    self.target_keys[address] = str(status["key_id"])
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
        mode = {
            "classic": self.run_classic,
            "collude": self.run_collude,
            "flood": self.run_flood,
            "version-skew": self.run_version_skew,
            "overfit": self.run_overfit,
        }[self.args.mode]
        async with self.node:
            await self.connect()
            await mode()
        return {
            "mode": self.args.mode,
            "author": self.identity.key_id.hex(),
            "peer_id": self.node.peer_id,
            "targets": list(self.targets),
            "sent": dict(self.sent),
            "errors": dict(self.errors),
            **self.events,
        }

    async def run_classic(self) -> None:
        args = self.args
        topic = task_topic(args.task)
        await self.fetch_genuine()
        honest = [decode_vertex(r) for r in self.genuine]
        templates = [v for v in honest if v.kind == KIND_TEMPLATE]
        if not templates:
            raise SystemExit("no honest template to imitate yet")
        base = Template.from_dict(templates[-1].payload)
        victim = templates[-1]

        # Our identity (valid): later vertices are attributable to this author.
        identity_raw = make_identity_vertex(self.identity, now_ms())
        await self.publish("identity", CONTROL_TOPIC, identity_raw)
        identity_id = decode_vertex(identity_raw).id
        sybil_raw = make_identity_vertex(self.sybil, now_ms())
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
                victim.author, victim.seq + 1, now_ms(), [victim.id],
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
                now_ms(),
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

    # --- the trust attacks (issue 17) --------------------------------------------------
    def _client(self, address: str) -> NodeClient:
        return NodeClient(address, 5.0)

    async def honest_listing(self, address: str) -> list[dict[str, Any]]:
        """The target's `/templates` of our task, honest authors' entries only."""
        honest = set(self.target_keys.values())
        data = await trio.to_thread.run_sync(
            lambda: self._client(address).templates(self.args.task, 100)
        )
        return [e for e in data["templates"] if e.get("author") in honest]

    async def honest_base(self) -> Template:
        """An honest template to take the shape, task and version of our claims from: the
        first target's best of an honest author (waited for: a node publishes its first
        template after a few generations)."""
        address = next(iter(self.target_keys))
        deadline = time.monotonic() + 60
        while True:
            entries = await self.honest_listing(address)
            if entries:
                return await self.template_of(address, entries[0]["id"])
            if time.monotonic() > deadline:
                raise SystemExit("no honest template to imitate yet")
            await trio.sleep(0.5)

    async def template_of(self, address: str, template_id: str) -> Template:
        client = self._client(address)
        vertex = await trio.to_thread.run_sync(
            lambda: client.get_vertex(f"/vertices/{template_id}", None, "template")
        )
        return Template.from_dict(vertex.payload)

    async def introduce(self, authors: list[Author], pace: float = 0.002) -> None:
        """Publish our keys' identity vertices, then give the targets a moment to store them
        (a claim whose author's key is unknown waits as an orphan)."""
        for author in authors:
            await self.publish("identity", CONTROL_TOPIC, author.introduce(), pace=pace)
        await trio.sleep(0.5)

    async def colluded_lie(
        self, base: Template, generation: int, attesters: list[Author] | None = None, **claim: Any
    ) -> dict[str, Any]:
        """A fresh liar's inflated claim (`inflated_template(**claim)`), attested "valid" at
        the claimed fitness by `attesters` (two fresh sybils if None), sent back to back."""
        liar = Author()
        new = [liar] + ([Author(), Author()] if attesters is None else [])
        attesters = attesters or new[1:]
        await self.introduce(new)
        payload = self.inflated_template(base, generation, **claim)
        lie = liar.sign(KIND_TEMPLATE, payload)
        lie_id = decode_vertex(lie).id
        topic = task_topic(self.args.task)
        signed_ms = now_ms()
        await self.publish("colluded-lie", topic, lie, pace=0)
        for attester in attesters:
            fitness = payload["objectives"]["fitness"]
            await self.publish("false-attestation", topic, attester.attest(lie_id, fitness), pace=0)
        return {
            "lie": lie_id.hex(),
            "liar": liar.hex,
            "attesters": [a.hex for a in attesters],
            "claimed": payload["objectives"]["fitness"],
            "task_version": payload["task_version"],
            "signed_ms": signed_ms,
        }

    async def run_collude(self) -> None:
        base = await self.honest_base()
        rounds = self.events.setdefault("rounds", [])
        for r in range(self.args.rounds):
            rounds.append(await self.colluded_lie(base, 100 + r))
            await trio.sleep(self.args.pause)
        await trio.sleep(self.args.linger)

    async def measured_by_every_target(self, template_id: str, timeout: float) -> bool:
        """Whether every target lists `template_id` as measured by itself (valid) in time."""
        deadline = time.monotonic() + timeout
        pending = set(self.target_keys)
        while pending and time.monotonic() < deadline:
            for address in list(pending):
                data = await trio.to_thread.run_sync(
                    lambda a=address: self._client(a).templates(self.args.task, 100)
                )
                if any(
                    e.get("id") == template_id and e.get("measured_by") == "us"
                    for e in data["templates"]
                ):
                    pending.discard(address)
            await trio.sleep(0.3)
        return not pending

    async def verdicts_made(self) -> list[int]:
        """How many claims each target has re-measured so far (`/status` `reevaluations`)."""
        made = []
        for address in self.target_keys:
            status = await trio.to_thread.run_sync(fetch_status, address, 3.0)
            counts = status.get("reevaluations", {})
            made.append(int(counts.get("valid", 0)) + int(counts.get("invalid", 0)))
        return made

    async def run_flood(self) -> None:
        args = self.args
        topic = task_topic(args.task)
        base = await self.honest_base()
        # A proven author of ours: an honest copy that every target measures valid first.
        proven = Author()
        await self.introduce([proven])
        first = proven.sign(KIND_TEMPLATE, self.honest_copy(base, 1))
        await self.publish("proven-claim", topic, first)
        first_id = decode_vertex(first).id.hex()
        self.events["proven_author"] = proven.hex
        self.events["proven_first"] = first_id
        self.events["proven_everywhere"] = await self.measured_by_every_target(first_id, 45)
        # The flood: throwaway identities, each claiming more than any honest net.
        sybils = [Author() for _ in range(args.sybils)]
        await self.introduce(sybils)
        await trio.sleep(1.0)
        before = await self.verdicts_made()
        self.events["flood_started_ms"] = now_ms()
        flood = []
        for i, sybil in enumerate(sybils):
            claim = 0.99 + 0.0099 * float(self.rng.random())  # above honest nets, below the lie
            raw = sybil.sign(KIND_TEMPLATE, self.inflated_template(base, 200 + i, claim))
            flood.append(decode_vertex(raw).id.hex())
            await self.publish("flood-claim", topic, raw, pace=0)
        self.events["flood_sent_ms"] = now_ms()
        self.events["flood"] = flood
        self.events["sybils"] = [s.hex for s in sybils]
        # Three claims of the proven author right behind the flood (copies of three different
        # honest nets: a node may judge copies of one net at once), then the real lie.
        address = next(iter(self.target_keys))
        entries = (await self.honest_listing(address))[:3]
        nets = [await self.template_of(address, e["id"]) for e in entries]
        if not nets:
            raise SystemExit("flood: the target lists no honest template to copy")
        behind = []
        for generation, net in enumerate(nets, 2):
            raw = proven.sign(KIND_TEMPLATE, self.honest_copy(net, generation))
            await self.publish("proven-claim", topic, raw, pace=0)
            behind.append(decode_vertex(raw).id.hex())
        self.events["proven_behind_flood"] = behind
        self.events["lie"] = await self.colluded_lie(base, 900)
        # One more claim of the proven author while the flood is being checked: once the
        # first target has judged a quarter of it, so that most of it still waits at every
        # target when the claim arrives. (Waiting for every target let a fast one finish
        # the whole flood while a slow one reached its quarter: CI saw that once.)
        # One: with the three above it is the author's budget of queued claims
        # (`max_reeval_per_author`, 4), so none is dropped if the three still wait.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            made = await self.verdicts_made()
            if any(m - b >= args.sybils // 4 for m, b in zip(made, before, strict=True)):
                break
            await trio.sleep(0.05)
        self.events["during_sent_ms"] = now_ms()
        raw = proven.sign(KIND_TEMPLATE, self.honest_copy(nets[0], 10))
        await self.publish("proven-claim", topic, raw, pace=0)
        self.events["proven_during_flood"] = [decode_vertex(raw).id.hex()]
        await trio.sleep(args.linger)

    async def run_version_skew(self) -> None:
        base = await self.honest_base()
        attesters = [Author(), Author()]
        await self.introduce(attesters)
        # The record: each attester says "valid" of a claim every target measured valid
        # itself, at its claimed fitness (what an honest attester would have measured).
        earned = []
        for address in self.target_keys:
            # another author's claim: a node measures no claim of its own, so it could not
            # judge an attestation of one
            theirs = [
                e
                for e in await self.honest_listing(address)
                if e.get("measured_by") == "us" and e.get("author") != self.target_keys[address]
            ]
            if not theirs:
                continue
            entry = theirs[0]
            for attester in attesters:
                tid = bytes.fromhex(entry["id"])
                raw = attester.attest(tid, float(entry["claimed_fitness"]))
                await self.publish("earned-attestation", task_topic(self.args.task), raw)
            earned.append({"target": address, "template": entry["id"]})
        self.events["earned"] = earned
        await trio.sleep(2.0)
        skewed = base.task_version + 1
        self.events["rounds"] = [
            await self.colluded_lie(base, 500 + r, attesters, task_version=skewed)
            for r in range(self.args.rounds)
        ]
        await trio.sleep(self.args.linger)

    async def run_overfit(self) -> None:
        task = get_task(self.args.task)
        rounds = self.events.setdefault("rounds", [])
        for r in range(self.args.rounds):
            genome = refit_on_validation(task, random_features(task, self.args.seed + r))
            claimed = float(task.fitness([genome], "val")[0])
            cheat = from_genome(genome, task, claimed, latency_repeats=3)
            cheater = Author()
            await self.introduce([cheater])
            raw = cheater.sign(KIND_TEMPLATE, dataclasses.replace(cheat, generation=r).to_dict())
            signed_ms = now_ms()
            await self.publish("overfit", task_topic(self.args.task), raw, pace=0)
            rounds.append(
                {
                    "cheat": decode_vertex(raw).id.hex(),
                    "author": cheater.hex,
                    "claimed": claimed,
                    "test_score": float(task.score(genome, "test")),
                    "signed_ms": signed_ms,
                }
            )
            await trio.sleep(self.args.pause)
        await trio.sleep(self.args.linger)

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
    parser.add_argument("--mode", choices=MODES, default="classic")
    parser.add_argument(
        "--rounds", type=int, default=3, help="lies (collude, version-skew, overfit)"
    )
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between rounds")
    parser.add_argument("--sybils", type=int, default=120, help="throwaway identities (flood)")
    parser.add_argument("--count", type=int, default=5, help="forged vertices per kind")
    parser.add_argument("--orphans", type=int, default=200)
    parser.add_argument("--linger", type=float, default=8.0, help="seconds before the garbage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", default="-", help="JSON report file ('-': stdout)")
    args = parser.parse_args()
    for name in ("rounds", "sybils", "count", "orphans"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be 0 or more")
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
