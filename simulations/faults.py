"""Faults on a schedule: partitions and their healing, churn (peers leaving and rejoining).

Functions of a `Simulation`, scheduled by `Simulation.start` in sharing runs: a partition
cuts the links between groups (simulations/network.py's `split_groups`) and its healing
reconnects every neighbour pair; churn takes one random online honest peer offline every
`ChurnSpec.interval_ms` and brings it back (or a fresh node in its place) after
`downtime_ms`. Byzantine peers are the other fault (simulations/byzantine.py);
`check_isolated` records when the honest peers cut a liar off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qudag.simulations import evolve, gossip, stats
from qudag.simulations.config import EPOCH_MS, PartitionSpec
from qudag.simulations.network import split_groups

if TYPE_CHECKING:
    from qudag.simulations.sim import Simulation


def split(sim: Simulation, spec: PartitionSpec) -> None:
    groups = split_groups(sim.config.peers, spec.parts, sim.net.graph, sim.rng)
    sim.net.split(groups)
    for a in range(sim.config.peers):
        for b in sorted(sim.peers[a].links):
            if not sim.net.reachable(a, b):
                gossip.link_down(sim, a, b)
    sim.events.append({"t_ms": sim.sched.now, "event": "split", "groups": len(groups)})


def heal(sim: Simulation) -> None:
    sim.net.heal()
    reconnect_all(sim)
    sim.heal_at = sim.sched.now
    union: set[bytes] = set()
    for p in stats.honest_online(sim):
        union.update(p.store.topological_order())
    sim.heal_union = sorted(union)
    sim.covered_at = None
    sim.events.append({"t_ms": sim.sched.now, "event": "heal", "vertices": len(union)})


def reconnect_all(sim: Simulation) -> None:
    for a in range(sim.config.peers):
        for b in sim.net.neighbours[a]:
            if a < b:
                gossip.link_up(sim, a, b)


def churn_leave(sim: Simulation) -> None:
    spec = sim.config.churn
    assert spec is not None
    if sim.sched.now >= sim.config.generations * sim.config.gen_ms:
        return  # churn stops with evolution: the drain measures how the network settles
    online = [p for p in sim.peers if p.online and p.honest]
    if len(online) > 2:
        peer = sim.rng.choice(online)
        for b in sorted(peer.links):
            gossip.link_down(sim, peer.idx, b)
        peer.online = False
        peer.epoch += 1
        sim.events.append({"t_ms": sim.sched.now, "event": "leave", "peer": peer.idx})
        sim.sched.after(spec.downtime_ms, churn_join, sim, peer.idx)
    sim.sched.after(spec.interval_ms, churn_leave, sim)


def churn_join(sim: Simulation, idx: int) -> None:
    spec = sim.config.churn
    assert spec is not None
    old = sim.peers[idx]
    if spec.keep_state:
        peer = old
        peer.core = peer.make_core()  # a restart: rebuilt from the committed ledger
        peer.blacklist.clear()
        peer.seen.clear()
    else:
        old.store.close()
        peer = sim._add_peer(idx, old.incarnation + 1)
        sim.peers[idx] = peer
    peer.online = True
    peer.epoch += 1
    sim.events.append(
        {"t_ms": sim.sched.now, "event": "join", "peer": idx, "kept_state": spec.keep_state}
    )
    sim._do(peer, peer.core.start(EPOCH_MS + int(sim.sched.now)))
    for b in sim.net.neighbours[idx]:
        gossip.link_up(sim, idx, b)
    sim.sched.after(peer.rng.random() * sim.config.tick_ms, sim._tick, idx, peer.epoch)
    sim.sched.after(peer.rng.random() * sim.config.gen_ms, evolve.generation, sim, idx, peer.epoch)


def check_isolated(sim: Simulation, b: int) -> None:
    liar = sim.peers[b]
    if liar.honest or b in sim.isolated_at:
        return
    if not any(sim.peers[c].honest for c in liar.links):
        sim.isolated_at[b] = sim.sched.now
