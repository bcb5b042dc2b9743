"""A simulated node (`SimPeer`) and another process's node as this one sees it (`RemotePeer`).

Why apart from the simulator: a peer is the state every part of the simulation reads (the
gossip model its links, mesh and seen-cache, the faults its epoch, the statistics its
counters), while only `Simulation` builds peers and drives them.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import blake3

from qudag.evolution.verify import claim_tolerance
from qudag.node.protocol.breeder import Breeder
from qudag.node.protocol.core import CoreConfig, PeerCore
from qudag.node.protocol.fetcher import FetchPolicy
from qudag.simulations.config import replication_rules
from qudag.simulations.identity import derive_identity, derive_seed
from qudag.simulations.stats import PeerCounters

if TYPE_CHECKING:
    from qudag.simulations.sim import Simulation


class SimPeer:
    """One simulated node: its key, store, core, breeder and gossip state."""

    def __init__(self, sim: Simulation, idx: int, incarnation: int) -> None:
        self._public(sim, idx, incarnation, sim.strategy_of.get(idx))
        cfg = sim.config
        self.store = sim.open_store(idx, incarnation)
        self.core = self.make_core()
        self.breeder: Breeder | None = None
        if cfg.mode == "isolation" or self.strategy in (
            None,
            "inflate",
            "equivocate",
            "withhold",
            "collude",
            "overfit",
            "sybil",
        ):
            self.breeder = Breeder(
                sim.task,
                derive_seed(cfg.seed, "evo", idx, incarnation) % 2**31,
                config=sim.evo_config,
                state_dir=None,
                search=cfg.search,
                es_config=sim.es_config,
            )
        self.seen: dict[bytes, float] = {}  # gossip message id -> expiry (simulated ms)
        self.seen_kept = 0  # live entries after the last pruning
        # gossip message id -> earliest arrival of a delivery of it now in flight to us (kept
        # while links are stable: see gossip.schedule_delivery)
        self.inflight: dict[bytes, float] = {}
        self.reeval_credit = 0.0
        self.counters = PeerCounters()
        self.msgs_charged = 0  # messages already charged to a generation (msg_cpu_ms)
        self.byz_state: dict[str, Any] = {}
        self._digest_key: tuple[int, int] | None = None
        self._digest = b""

    def _public(self, sim: Simulation, idx: int, incarnation: int, strategy: str | None) -> None:
        """What every process of a run knows of a peer: name, key, generator, links, mesh."""
        cfg = sim.config
        self.sim = sim
        self.idx = idx
        self.name = peer_name(idx)
        self.incarnation = incarnation
        self.strategy = strategy
        self.online = True
        self.epoch = 0  # bumped when the peer leaves: its scheduled events become stale
        self.identity = derive_identity(cfg.seed, idx, incarnation)
        self.rng = random.Random(derive_seed(cfg.seed, "peer", idx, incarnation))
        self.links: set[int] = set()
        self.mesh: set[int] = set()
        self.blacklist: set[int] = set()
        # The epoch for which a discovery round is scheduled (gossip.rediscover_later).
        self.discovery_epoch: int | None = None

    def make_core(self) -> PeerCore:
        cfg = self.sim.config
        core_config = CoreConfig(
            tasks=(self.sim.task.name,),
            publish_every=cfg.publish_every,
            migrants=cfg.migrants,
            min_attestations=cfg.min_attestations,
            heads_interval_ms=cfg.heads_interval_ms,
            fetch=FetchPolicy(max_wanted=10_000),
            tolerances={self.sim.task.name: claim_tolerance(self.sim.task)},  # loaded once
            versions={self.sim.task.name: self.sim.task.version},
            es_group_size=cfg.es_group_size,
            # A Byzantine peer keeps no rule that would limit what it writes.
            **replication_rules(cfg if self.honest else replace(cfg, replication="full")),
        )
        core = PeerCore(self.identity, self.store, core_config, self.rng)
        # The simulator knows the network's size; a daemon estimates it (node/daemon.py).
        core.network_size = cfg.peers
        return core

    def current(self, epoch: int) -> bool:
        """Whether an event scheduled for this peer in `epoch` still concerns it: the peer is
        online and has not left (and come back) since."""
        return self.online and self.epoch == epoch

    @property
    def honest(self) -> bool:
        return self.strategy is None

    def digest(self) -> bytes:
        """A hash of the ids this peer stores. Cached by vertex count: a ledger only grows,
        so the same store with the same count holds the same set (at 1,000 peers hashing
        every peer's ~4,000 ids at each sample was 5 % of a run)."""
        key = (id(self.store), self.store.count())
        if self._digest_key != key:
            self._digest = blake3.blake3(b"".join(sorted(self.store.topological_order()))).digest()
            self._digest_key = key
        return self._digest

    @property
    def generation(self) -> int:
        return self.breeder.generation if self.breeder is not None else self.byz_state.get("gen", 0)


class RemotePeer(SimPeer):
    """A peer that another process of a parallel run simulates: what this process's peers
    see of it (name, key, links, gossip mesh), and no store, core or breeder.

    Its links and mesh are built here exactly as its own process builds them (the same
    per-peer generator, the same order), so both sides agree on who forwards to whom.
    """

    def __init__(self, sim: Simulation, idx: int) -> None:  # no SimPeer.__init__: no state
        self._public(sim, idx, 0, sim.strategy_of.get(idx))  # drawn alike in every process


def peer_name(idx: int) -> str:
    """A simulated peer's name: what its cores call it, what a `Disconnect` names."""
    return f"p{idx:04d}"


def peer_index(name: str) -> int | None:
    """The index in a simulated peer's name (`peer_name`), or None for another name."""
    try:
        return int(name[1:])
    except ValueError:
        return None
