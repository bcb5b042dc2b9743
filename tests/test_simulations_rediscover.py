"""Peer rediscovery in the simulator (`SimConfig.rediscover`, simulations/gossip.py): a peer
that cut off its liars finds honest peers again, partitions still partition, and a seed
still fixes the run."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qudag.node.net.transport import NetConfig
from qudag.simulations import stats
from qudag.simulations.config import PartitionSpec, SimConfig
from qudag.simulations.sim import Simulation, run

WALL_CLOCK_FIELDS = {"wall_s", "cpu_s", "wait_s", "peak_rss_mb", "rss_mb"}

# A ring of 10 with 3 inflating liars: in seed 1 honest peer 8 has only liars (7 and 9) as
# neighbours, and bans both once it re-measured their inflated claims.
RING = dict(
    peers=10, generations=8, seed=1, population=4, lamarck_steps=1, publish_every=2,
    drain_ms=10_000, topology="ring", degree=2, byzantine="inflate", byzantine_fraction=0.3,
)  # fmt: skip


def _trapped(sim: Simulation) -> int:
    """The honest peer whose every neighbour in the graph is a liar."""
    trapped = [
        p.idx
        for p in sim.peers
        if p.honest and all(not sim.peers[b].honest for b in sim.net.neighbours[p.idx])
    ]
    assert len(trapped) == 1
    return trapped[0]


def test_the_discovery_delay_is_the_daemons_discovery_interval() -> None:
    assert SimConfig().rediscover_ms == NetConfig().discovery_interval * 1000
    assert not SimConfig().rediscover  # the studies' committed figures: the fixed graph


def test_a_parallel_run_with_rediscovery_is_refused_before_it_starts() -> None:
    # A dialled peer may live in another process, which would have to link at that instant.
    with pytest.raises(ValueError, match="rediscovery is for runs in one process"):
        SimConfig(peers=4, workers=2, rediscover=True)
    SimConfig(peers=4, workers=2)  # the same run on the fixed graph is accepted


def test_a_peer_that_banned_every_neighbour_finds_honest_peers_again() -> None:
    results = {}
    for rediscover in (False, True):
        sim = run(SimConfig(**RING, rediscover=rediscover))  # type: ignore[arg-type]
        try:
            x = _trapped(sim)
            peer = sim.peers[x]
            assert set(sim.net.neighbours[x]) <= peer.blacklist  # it banned both
            honest_links = sorted(b for b in peer.links if sim.peers[b].honest)
            others = {p.digest() for p in sim.peers if p.honest and p.idx != x}
            results[rediscover] = (honest_links, peer.digest() in others, sim.summary())
        finally:
            sim.close()
    links, same_set, summary = results[False]
    assert links == [] and not same_set  # the fixed graph leaves it alone
    assert summary["honest_cut_off"] == 1 and summary["honest_components"] >= 2
    links, same_set, summary = results[True]
    assert links and same_set
    assert summary["honest_cut_off"] == 0 and summary["honest_components"] == 1
    assert summary["identical_honest_sets"] == 1 and summary["rediscovered"] > 0


def test_a_partition_stays_a_partition_while_peers_rediscover() -> None:
    """Liars are cut off while the network is split in two: the discovery rounds they cause
    open links inside each side only, and the heal joins the sides again."""
    split_ms, heal_ms = 1_500, 9_000
    config = SimConfig(
        peers=16, generations=12, seed=2, population=4, lamarck_steps=1, publish_every=2,
        drain_ms=5_000, degree=4, byzantine="inflate", byzantine_fraction=0.25,
        partitions=(PartitionSpec(at_ms=split_ms, heal_ms=heal_ms),),
        rediscover=True, rediscover_ms=1_000,
    )  # fmt: skip
    sim = Simulation(config)
    crossing: list[tuple[int, int]] = []
    opened: list[int] = []

    def check() -> None:
        for p in sim.peers:
            crossing.extend((p.idx, b) for b in p.links if not sim.net.reachable(p.idx, b))
        opened.append(sim.rediscovered)

    try:
        sim.start()
        for t in range(split_ms + 100, heal_ms, 250):
            sim.sched.at(t, check)
        sim.sched.run_until(sim.end_ms)
        sim.finish()
        assert crossing == []
        assert opened[-1] > opened[0]  # rounds ran during the split
        assert stats.honest_sets_identical(sim)
    finally:
        sim.close()


def _rediscovering_run() -> dict[str, Any]:
    sim = run(SimConfig(**RING, rediscover=True))  # type: ignore[arg-type]
    try:
        summary = {k: v for k, v in sim.summary().items() if k not in WALL_CLOCK_FIELDS}
        links = [sorted(p.links) for p in sim.peers]
        ledgers = [[v.hex() for v in p.store.topological_order()] for p in sim.peers]
        out = {"summary": summary, "events": sim.events, "links": links, "ledgers": ledgers}
        return json.loads(json.dumps(out, sort_keys=True))
    finally:
        sim.close()


def test_a_seed_fixes_the_run_with_rediscovery() -> None:
    a = _rediscovering_run()
    assert a["summary"]["rediscovered"] > 0
    assert a == _rediscovering_run()
