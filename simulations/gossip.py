"""The simulated network between peers: links, a gossipsub-like mesh, delivery, sync requests.

Functions of a `Simulation` (its peers, scheduler and `Network` hold the state); the driver
calls them for a core's `Publish` and `SendRequest` actions and for link changes. What they
model is what the daemon gets from libp2p:

- connections that a partition, churn or a `Disconnect` action tears down, each side told
  through `on_peer_connected` / `on_peer_authenticated` / `on_peer_disconnected`;
- with `SimConfig.rediscover`, the daemon's peer discovery (node/net/discovery.py): a peer
  that a `Disconnect` (its own or the other side's) left below its topology degree dials
  new peers (`rediscover_later`), so liars cut off do not cut honest peers off each other;
- gossip close to gossipsub's: each peer keeps a mesh of D neighbours (repaired every
  heartbeat between D_lo and D_hi), forwards a message it has not seen to its mesh, drops
  duplicates by content id (BLAKE3 of the bytes, the daemon's message id) within `seen_ttl`,
  and publishes its own messages to every connected peer (flood publish, gossipsub v1.1's
  default); the validator is `PeerCore.on_gossip`'s relay answer. Lazy IHAVE/IWANT gossip is
  not modelled: the core's heads gossip and sync requests are what repairs gaps here;
- sync: a `SendRequest` reaches its target after link delay, the target core answers
  (`on_sync_request`), the answer comes back after link delay; a request to a peer that left,
  was cut off, withholds or lost the message fails after `sync_timeout_ms` (`on_sync_failed`);
- in a parallel run (simulations/parallel.py), what goes to a peer of another process waits
  in that process's `Outbox` until the end of the time window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import blake3

from qudag.crypto.canonical import DecodeError
from qudag.node.protocol.core import SendRequest, is_es_group_topic
from qudag.simulations.config import EPOCH_MS
from qudag.simulations.peer import SimPeer, peer_index

if TYPE_CHECKING:
    from qudag.simulations.sim import Simulation


class ParallelError(RuntimeError):
    """A parallel run met something only a single process can simulate, or a worker failed."""


@dataclass
class Outbox:
    """What one process sends another at the end of a time window (simulations/parallel.py):
    gossip deliveries, sync requests and sync answers, each with its arrival time. A
    message's bytes go to a process once; later copies name it by its gossip id."""

    gossip: list[list[Any]] = field(default_factory=list)  # [arrival, to, from, topic, mid, data]
    requests: list[list[Any]] = field(default_factory=list)  # [arrival, rid, asker, server, data]
    answers: list[list[Any]] = field(default_factory=list)  # [arrival, rid, data]
    sent: set[bytes] = field(default_factory=set)  # gossip ids whose bytes went already

    def take(self) -> list[list[list[Any]]]:
        frame = [self.gossip, self.requests, self.answers]
        self.gossip, self.requests, self.answers = [], [], []
        return frame


def connectable(sim: Simulation, a: int, b: int) -> bool:
    pa, pb = sim.peers[a], sim.peers[b]
    return (
        pa.online
        and pb.online
        and sim.net.reachable(a, b)
        and b not in pa.blacklist
        and a not in pb.blacklist
    )


def link_up(sim: Simulation, a: int, b: int) -> None:
    if b in sim.peers[a].links or not connectable(sim, a, b):
        return
    for x, y in ((a, b), (b, a)):
        px, py = sim.peers[x], sim.peers[y]
        px.links.add(y)
        if sim.local[x]:
            px.core.on_peer_connected(py.name)
    for x, y in ((a, b), (b, a)):
        px, py = sim.peers[x], sim.peers[y]
        if y in px.links and sim.local[x]:
            sim._do(px, px.core.on_peer_authenticated(py.name, py.identity.key_id))
    graft(sim, a)
    graft(sim, b)


def link_down(sim: Simulation, a: int, b: int) -> None:
    for x, y in ((a, b), (b, a)):
        px, py = sim.peers[x], sim.peers[y]
        if y in px.links:
            px.links.discard(y)
            px.mesh.discard(y)
            px.core.on_peer_disconnected(py.name)


def rediscover_later(sim: Simulation, a: int) -> None:
    """Peer `a` lost a link to a `Disconnect`: with `SimConfig.rediscover`, dial new peers
    (`rediscover`) after a draw of the discovery delay, once per lost-link episode."""
    cfg = sim.config
    peer = sim.peers[a]
    if not cfg.rediscover or not peer.online or peer.discovery_epoch == peer.epoch:
        return
    if len(peer.links) >= len(sim.net.neighbours[a]):
        return
    peer.discovery_epoch = peer.epoch
    delay = peer.rng.random() * cfg.rediscover_ms
    sim.sched.after(delay, rediscover, sim, a, peer.epoch)


def rediscover(sim: Simulation, a: int, epoch: int) -> None:
    """The daemon's discovery round for `a`: dial peers chosen by `a`'s own generator among
    those it may connect to (online, reachable across partitions, blacklisted by neither
    side) until `a` is back at its topology degree or none is left. A dialled peer takes the
    link whatever its own count (the daemon's `max_peers`, 50, is not reached here); a dial
    the core answers with a `Disconnect` (a banned author) starts the next round."""
    peer = sim.peers[a]
    if not peer.current(epoch):
        return
    peer.discovery_epoch = None
    need = len(sim.net.neighbours[a]) - len(peer.links)
    if need <= 0:
        return
    candidates = [
        b
        for b in range(sim.config.peers)
        if b != a and b not in peer.links and connectable(sim, a, b)
    ]
    for b in peer.rng.sample(candidates, min(need, len(candidates))):
        link_up(sim, a, b)
        if b in peer.links:
            sim.rediscovered += 1


def graft(sim: Simulation, a: int) -> None:
    """Mesh maintenance (gossipsub heartbeat): keep D_lo <= |mesh| <= D_hi, target D."""
    cfg = sim.config
    peer = sim.peers[a]
    mesh = peer.mesh
    if sim.workers > 1 and sim._linked and not cfg.mesh_lo <= len(mesh) <= cfg.mesh_hi:
        if len(mesh) > cfg.mesh_hi or any(
            len(sim.peers[b].mesh) < cfg.mesh_hi for b in peer.links - mesh
        ):
            # Another process's peer would have to change its mesh at the same instant.
            raise ParallelError("the gossip mesh changed after start: run with workers=1")
        return
    if len(mesh) < cfg.mesh_lo:
        candidates = sorted(peer.links - mesh)
        peer.rng.shuffle(candidates)
        for b in candidates:
            if len(mesh) >= cfg.mesh_d:
                break
            other = sim.peers[b]
            if len(other.mesh) < cfg.mesh_hi:
                mesh.add(b)
                other.mesh.add(a)
    elif len(mesh) > cfg.mesh_hi:
        extra = sorted(mesh)
        peer.rng.shuffle(extra)
        for b in extra[: len(mesh) - cfg.mesh_d]:
            mesh.discard(b)
            sim.peers[b].mesh.discard(a)


def publish(
    sim: Simulation, peer: SimPeer, topic: str, data: bytes, to: list[int] | None = None
) -> None:
    """Gossip our own message: to every connected peer (flood publish) or to `to`."""
    mid = blake3.blake3(data).digest()
    peer.seen[mid] = sim.sched.now + sim.config.seen_ttl_ms
    if to is None and is_es_group_topic(topic):
        to = sorted(sim.es_members.get(topic, set()) - {peer.idx})
    targets = sorted(peer.links) if to is None else to
    for b in targets:
        send(sim, peer, b, topic, data, mid)


def send(sim: Simulation, src: SimPeer, b: int, topic: str, data: bytes, mid: bytes) -> None:
    size = len(data)
    src.counters.msgs_out += 1
    src.counters.bytes_out += size
    arrival = sim.net.transmit(src.idx, b, size, sim.sched.now)
    if arrival is None:
        return
    if not sim.local[b]:
        if arrival <= sim._end_ms:  # later arrivals are never counted (as below)
            box = sim.outboxes[b % sim.workers]
            first = mid not in box.sent
            if first:
                box.sent.add(mid)
            box.gossip.append([arrival, b, src.idx, topic, mid, data if first else None])
        return
    schedule_delivery(sim, src.idx, b, topic, data, mid, arrival)


def schedule_delivery(
    sim: Simulation, a: int, b: int, topic: str, data: bytes, mid: bytes, arrival: float
) -> None:
    """A copy from `a` reaches `b` at `arrival`: schedule it, or count it as a dropped
    duplicate right away where that is certain."""
    dst = sim.peers[b]
    size = len(data)
    if sim._stable_links and a in dst.links and arrival <= sim._end_ms:
        # Nothing in this run can close a link or take a peer offline, so every scheduled
        # delivery happens. This one would only be counted as a dropped duplicate by
        # `deliver` if `b`'s seen-entry for the id outlives the arrival, or if an earlier
        # delivery of the same id to `b` is in flight (arriving at `first`, no later than
        # this one, while no live entry predates it): that one will find the entry expired
        # or refreshed and set it to at least now + seen_ttl. Count it now and skip the
        # event (3 of 4 deliveries at scale are duplicates), unless it would arrive after
        # the run ends (then it is never counted). The transmit above still ran: queues and
        # random draws are those of a run without this shortcut.
        seen = dst.seen.get(mid, 0.0)
        first = dst.inflight.get(mid)
        if seen > arrival or (
            first is not None and seen <= first <= arrival < sim.sched.now + sim.config.seen_ttl_ms
        ):
            counters = dst.counters
            counters.msgs_in += 1
            counters.bytes_in += size
            counters.duplicates += 1
            return
        if first is None or arrival < first:
            dst.inflight[mid] = arrival
    sim.sched.at(arrival, deliver, sim, b, dst.epoch, a, topic, data, mid)


def deliver(
    sim: Simulation, b: int, epoch: int, a: int, topic: str, data: bytes, mid: bytes
) -> None:
    peer = sim.peers[b]
    group = is_es_group_topic(topic)  # straight from a group member, not over a link
    if not peer.current(epoch) or (a not in peer.links and not group):
        return  # the connection closed while the message was in flight
    if peer.inflight:
        peer.inflight.pop(mid, None)
    peer.counters.msgs_in += 1
    peer.counters.bytes_in += len(data)
    now = sim.sched.now
    expiry = peer.seen.get(mid)
    if expiry is not None and expiry > now:
        peer.counters.duplicates += 1
        return
    peer.seen[mid] = now + sim.config.seen_ttl_ms
    relay, actions = peer.core.on_gossip(sim.peers[a].name, topic, data, EPOCH_MS + int(now))
    if relay and not group and peer.strategy != "withhold":
        for c in sorted(peer.mesh):
            if c != a:
                send(sim, peer, c, topic, data, mid)
    sim._do(peer, actions)


def send_request(sim: Simulation, peer: SimPeer, action: SendRequest) -> None:
    b = peer_index(action.peer)
    sim.sync_requests += 1
    sim._req_seq += 1
    rid = sim._req_seq
    sim._pending[rid] = (peer.idx, b if b is not None else -1, peer.epoch)
    sim.sched.after(sim.config.sync_timeout_ms, sync_timeout, sim, rid)
    if b is None or b not in peer.links:
        return
    arrival = sim.net.transmit(peer.idx, b, len(action.data), sim.sched.now)
    if arrival is None:
        return
    if sim.local[b]:
        sim.sched.at(arrival, serve, sim, rid, peer.idx, b, sim.peers[b].epoch, action.data)
    else:
        sim.outboxes[b % sim.workers].requests.append([arrival, rid, peer.idx, b, action.data])


def serve(sim: Simulation, rid: int, a: int, b: int, epoch_b: int, data: bytes) -> None:
    """Peer `b` answers request `rid` of peer `a`. (A request from another process is
    answered even if it timed out there meanwhile: the asker drops that answer.)"""
    server = sim.peers[b]
    if sim.local[a] and rid not in sim._pending:
        return
    if not server.current(epoch_b):
        return
    if a not in server.links or server.strategy == "withhold":
        return
    asker = sim.peers[a]
    now = EPOCH_MS + int(sim.sched.now)
    try:
        response = server.core.on_sync_request(asker.name, data, now)
    except DecodeError:
        sim._do(server, server.core.on_peer_fault(asker.name, "bad-sync-request"))
        return
    arrival = sim.net.transmit(b, a, len(response), sim.sched.now)
    if arrival is None:
        return
    if sim.local[a]:
        sim.sched.at(arrival, respond, sim, rid, response)
    else:
        sim.outboxes[a % sim.workers].answers.append([arrival, rid, response])


def receive(sim: Simulation, frame: list[list[list[Any]]]) -> None:
    """Schedule what another process sent (an `Outbox.take()` frame, decoded)."""
    gossip, requests, answers = frame
    remote = sim._remote_data
    for arrival, b, a, topic, mid, data in gossip:
        if data is None:
            data = remote[mid]
        else:
            remote[mid] = data
        schedule_delivery(sim, a, b, topic, data, mid, arrival)
    for arrival, rid, a, b, data in requests:
        sim.sched.at(arrival, serve, sim, rid, a, b, sim.peers[b].epoch, data)
    for arrival, rid, data in answers:
        sim.sched.at(arrival, respond, sim, rid, data)


def respond(sim: Simulation, rid: int, response: bytes) -> None:
    pending = sim._pending.pop(rid, None)
    if pending is None:
        return
    a, b, epoch = pending
    asker = sim.peers[a]
    if not asker.current(epoch) or b not in asker.links:
        return
    now = EPOCH_MS + int(sim.sched.now)
    sim._do(asker, asker.core.on_sync_response(sim.peers[b].name, response, now))


def sync_timeout(sim: Simulation, rid: int) -> None:
    pending = sim._pending.pop(rid, None)
    if pending is None:
        return
    a, b, epoch = pending
    sim.sync_failed += 1
    asker = sim.peers[a]
    if asker.current(epoch) and b >= 0:
        asker.core.on_sync_failed(sim.peers[b].name)
