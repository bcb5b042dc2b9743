"""Many peers in one process: the real `PeerCore`, `Breeder` and `Store`, over a simulated network.

This module is a *driver* of the peer core, like the trio daemon (node/daemon.py), and holds no
protocol logic of its own: every ledger decision (ingest, relay, what to fetch, which migrants,
when to publish, verdicts, bans) is the core's. What the driver adds is what the daemon gets
from libp2p and trio, simulated:

- time: a discrete-event scheduler (simulations/scheduler.py); every `now_ms` given to a core is
  simulated, so a run is as fast as the CPU allows and a pure function of its seed;
- the network: a networkx topology with per-link latency, bandwidth and loss
  (simulations/network.py), connections that a partition or a `Disconnect` action tears down;
- gossip close to gossipsub's: each peer keeps a mesh of D neighbours (repaired every
  heartbeat between D_lo and D_hi), forwards a message it has not seen to its mesh, drops
  duplicates by content id (BLAKE3 of the bytes, the daemon's message id) within `seen_ttl`,
  and publishes its own messages to every connected peer (flood publish, gossipsub v1.1's
  default); the validator is `PeerCore.on_gossip`'s relay answer. Lazy IHAVE/IWANT gossip is
  not modelled: the core's heads gossip and sync requests are what repairs gaps here;
- sync: a `SendRequest` reaches its target after link delay, the target core answers
  (`on_sync_request`), the answer comes back after link delay; a request to a peer that left,
  was cut off, withholds or lost the message fails after `sync_timeout_ms` (`on_sync_failed`);
- evolution: one `Breeder` per peer, one generation per `gen_ms` of simulated time (with
  jitter, so peers are not in lockstep), migrants from `core.migrants`, publications through
  `core.publish_template`; re-evaluations as the daemon's loop does them, with a budget of
  `reevals_per_gen` claims per generation;
- faults: churn, partitions on a schedule, Byzantine peers (simulations/byzantine.py).

Costs that repeat across peers with identical bytes are paid once per process: signature
checks (dag.validate's opt-in verified-id cache), claim re-measurements (a dict of template
id -> measured fitness here: `verify_claim` is a deterministic function of the template bytes),
and memory for the vertex bytes themselves (one `SharedBlobs` for all stores: each store keeps
its own rows and applies its own rules, only the content-addressed bytes are held once).

Determinism: every random draw comes from generators seeded from `SimConfig.seed`, keys are
derived from the seed, collections are iterated in sorted order, and simulated peers sign with
FIPS 204's deterministic ML-DSA variant (`DeterministicIdentity`; the daemon's signatures stay
hedged), so vertex bytes and ids are a function of the seed too: a run is bit-identical
(tests/test_simulations_core.py compares every vertex id of two runs).
"""

from __future__ import annotations

import math
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import blake3

from qudag.crypto.canonical import DecodeError
from qudag.dag import validate
from qudag.dag import vertex as dag_vertex
from qudag.dag.records import SharedBlobs
from qudag.dag.store import Store
from qudag.evolution.engine import default_config
from qudag.evolution.es import ESConfig
from qudag.evolution.holdout import Holdout
from qudag.evolution.tasks import Task, get_task
from qudag.evolution.verify import claim_tolerance, remeasure, remeasure_holdout, within_tolerance
from qudag.node.protocol import quorum
from qudag.node.protocol.breeder import Breeder
from qudag.node.protocol.core import (
    NODE_DECODERS,
    Action,
    CoreConfig,
    Disconnect,
    PeerCore,
    Publish,
    Reevaluation,
    SendRequest,
    es_topic,
    is_es_group_topic,
)
from qudag.node.protocol.fetcher import FetchPolicy
from qudag.node.protocol.generation import Advance, BestTemplate, BreederRequest, peer_generation
from qudag.node.protocol.generation import drive as drive_generation
from qudag.simulations.config import (
    EPOCH_MS,
    REEVAL_CREDIT_MAX,
    PartitionSpec,
    SimConfig,
    replication_rules,
    run_target,
)
from qudag.simulations.identity import derive_identity, derive_seed
from qudag.simulations.network import Network, build_topology, split_groups
from qudag.simulations.scheduler import Scheduler
from qudag.simulations.stats import PeerCounters, current_rss_mb, merge_sample, merge_summary


class SimPeer:
    """One simulated node: its key, store, core, breeder and gossip state."""

    def __init__(self, sim: Simulation, idx: int, incarnation: int) -> None:
        cfg = sim.config
        self.sim = sim
        self.idx = idx
        self.name = f"p{idx:04d}"
        self.incarnation = incarnation
        self.strategy: str | None = sim.strategy_of.get(idx)
        self.online = True
        self.epoch = 0  # bumped when the peer leaves: its scheduled events become stale
        self.identity = derive_identity(cfg.seed, idx, incarnation)
        self.rng = random.Random(derive_seed(cfg.seed, "peer", idx, incarnation))
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
        self.links: set[int] = set()
        self.mesh: set[int] = set()
        self.blacklist: set[int] = set()
        self.seen: dict[bytes, float] = {}  # gossip message id -> expiry (simulated ms)
        self.seen_kept = 0  # live entries after the last pruning
        # gossip message id -> earliest arrival of a delivery of it now in flight to us (kept
        # while links are stable: see Simulation._send)
        self.inflight: dict[bytes, float] = {}
        self.reeval_credit = 0.0
        self.counters = PeerCounters()
        self.msgs_charged = 0  # messages already charged to a generation (msg_cpu_ms)
        self.byz_state: dict[str, Any] = {}
        self._digest_key: tuple[int, int] | None = None
        self._digest = b""

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
        cfg = sim.config
        self.sim = sim
        self.idx = idx
        self.name = f"p{idx:04d}"
        self.incarnation = 0
        self.strategy = None
        self.online = True
        self.epoch = 0
        self.identity = derive_identity(cfg.seed, idx, 0)
        self.rng = random.Random(derive_seed(cfg.seed, "peer", idx, 0))
        self.links = set()
        self.mesh = set()
        self.blacklist = set()


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


class Simulation:
    """Build with a `SimConfig`, call `run()`, read `rows` (time series) and `summary()`.

    With `config.workers > 1`, `run()` starts the other processes (simulations/parallel.py)
    and this one simulates the peers of worker 0; `rows`, `events` and `summary()` then
    describe the whole run.
    """

    def __init__(self, config: SimConfig, worker: int = 0) -> None:
        self.config = config
        self.worker = worker
        self.workers = config.workers
        # peer index -> simulated by this process (every peer when workers == 1)
        self.local = [i % config.workers == worker for i in range(config.peers)]
        self.outboxes = [Outbox() for _ in range(config.workers)]
        self._remote_data: dict[bytes, bytes] = {}  # gossip id -> bytes, sent by other workers
        # Parallel runs only, for worker 0 to work out the whole run's figures: evaluations
        # spent (time, count), when each finished peer looked whether all were done (the
        # first such look after the last peer finished is "generations-done"), and when
        # this process's last peer finished.
        self._evals_at: list[tuple[float, int]] = []
        self._done_checks: list[float] = []
        self._last_finish = 0.0
        self._merged: dict[str, Any] | None = None  # the whole run's summary (parallel runs)
        self.task: Task = get_task(config.task)
        overrides: dict[str, Any] = {}
        if config.population is not None:
            overrides["population"] = config.population
        if config.lamarck_steps is not None:
            overrides["lamarck_steps"] = config.lamarck_steps
        self.evo_config = default_config(self.task, **overrides)
        # Every peer of a run starts the shared ES from one centre (a function of the seed).
        self.es_config = config.es or ESConfig(start_seed=derive_seed(config.seed, "es") % 2**31)
        self.target = run_target(config)
        self.sched = Scheduler()
        self.rng = random.Random(derive_seed(config.seed, "sim"))
        graph = build_topology(
            config.topology, config.peers, derive_seed(config.seed, "graph") % 2**31, config.degree
        )
        net_seed = derive_seed(config.seed, "net", *([worker] if config.workers > 1 else []))
        self.net = Network(graph, config.link, random.Random(net_seed))
        n_byz = int(round(config.byzantine_fraction * config.peers)) if config.byzantine else 0
        byz = sorted(self.rng.sample(range(config.peers), n_byz)) if n_byz else []
        self.strategy_of: dict[int, str] = {i: config.byzantine for i in byz if config.byzantine}
        self._tmp: Path | None = None
        if config.store == "disk":
            self._tmp = Path(tempfile.mkdtemp(prefix="qudag-sim-"))
        # Full replication: every store holds every ~4 KB vertex. Sharing the bytes (the
        # stores keep their rows, indexes and rules) cut a 300-peer run from 3.7 GiB.
        self.blobs: SharedBlobs | None = SharedBlobs() if config.shared_blobs else None
        self.verified = validate.enable_verified_cache()
        validate.enable_parsed_key_cache()
        self.decoded = dag_vertex.enable_decode_cache()
        self.measured: dict[bytes, float | None] = {}  # template vertex id -> re-measured fitness
        # held-out draw (`Reevaluation.holdout_seed`, which fixes the template too) -> score
        self.held_out: dict[bytes, Holdout | None] = {}
        self.author_idx: dict[bytes, int] = {}
        self.es_topic_of: dict[int, str] = {}  # peer -> its shared-ES group's topic
        self.es_members: dict[str, set[int]] = {}  # that topic -> the group's peers
        self.peers: list[SimPeer] = []
        self.rows: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []  # this process's shares of the rows
        self.events: list[dict[str, Any]] = []
        self.heal_at: float | None = None
        self.heal_union: list[bytes] = []
        self.covered_at: float | None = None
        self.identical_at: float | None = None
        self.isolated_at: dict[int, float] = {}
        self.reached_at: float | None = None
        self.reached_evals: int | None = None
        self.sync_requests = 0
        self.sync_failed = 0
        self.gossip_delivered = 0
        self.wall_s = 0.0
        self.cpu_s = 0.0  # this process's CPU time: the fair figure on a shared machine
        self.wait_s = 0.0  # wall time spent waiting for other workers at window ends
        self.peak_rss_mb = 0.0
        self.rss_mb = 0.0  # resident memory at the end of the run, all stores still open
        self._done_generations = False
        self._pending: dict[int, tuple[int, int, int]] = {}  # request id -> (asker, target, epoch)
        self._req_seq = 0
        self._profile_s: dict[str, float] = {}
        self._end_ms = math.inf  # set by `start`
        self._linked = False  # the links of the start are up (set by `start`)
        self._t0 = self._c0 = 0.0
        # Links change only through churn, partitions and Disconnect actions (Byzantine runs
        # cause those); `_do` clears this at the first Disconnect of an honest run.
        self._stable_links = (
            config.early_duplicates
            and config.churn is None
            and not config.partitions
            and config.byzantine is None
        )

    # --- setup ---------------------------------------------------------------------------
    def open_store(self, idx: int, incarnation: int) -> Store:
        cfg = self.config
        path = ":memory:"
        if self._tmp is not None:
            path = str(self._tmp / f"p{idx:04d}-{incarnation}.sqlite3")
        # A store here never outlives the run, so committing each gossip message's ingest
        # on its own buys nothing: with `defer_commit` a peer's ingests are written by one
        # commit at its next query (every query still sees exactly what was accepted).
        return Store.open(
            path,
            max_orphans=cfg.max_orphans,
            meta_cache=cfg.meta_cache,
            blobs=self.blobs,
            defer_commit=cfg.defer_commit,
            decoders=NODE_DECODERS,
        )

    def _add_peer(self, idx: int, incarnation: int) -> SimPeer:
        peer = SimPeer(self, idx, incarnation) if self.local[idx] else RemotePeer(self, idx)
        self.author_idx[peer.identity.key_id] = idx
        if self.config.es_group_size > 0:
            groups, ours = quorum.es_group(
                peer.identity.key_id, self.task.name, self.config.peers, self.config.es_group_size
            )
            old = self.es_topic_of.get(idx)
            if old is not None:
                self.es_members[old].discard(idx)
            topic = es_topic(self.task.name, groups, ours)
            self.es_topic_of[idx] = topic
            self.es_members.setdefault(topic, set()).add(idx)
        return peer

    @cached_property
    def max_gen_ms(self) -> float:
        """The longest a generation can last: `gen_ms`, or with `eval_ms` the evaluations
        of a generation (offspring, every migrant, the largest re-measurement burst)."""
        cfg = self.config
        if cfg.eval_ms <= 0:
            return float(cfg.gen_ms)
        if cfg.search == "es":
            per_gen = 2 * self.es_config.pairs + cfg.migrants
        else:
            per_gen = self.evo_config.n_offspring + cfg.migrants
        # Messages handled per generation, generously: every peer's set and vertices, each
        # received over every link and forwarded over every other.
        messages = 4 * self.config.peers * max(1, cfg.degree)
        return (per_gen + REEVAL_CREDIT_MAX) * cfg.eval_ms + messages * cfg.msg_cpu_ms

    @property
    def end_ms(self) -> float:
        """Simulated time at which the run ends (known once `start` ran)."""
        return self._end_ms

    @property
    def local_peers(self) -> list[SimPeer]:
        """The peers this process simulates (all of them unless `config.workers > 1`)."""
        if self.workers == 1:
            return self.peers
        return [p for p in self.peers if self.local[p.idx]]

    def run(self) -> Simulation:
        if self.workers > 1:
            from qudag.simulations.parallel import run_workers

            run_workers(self)
            return self
        self.start()
        stop = (lambda: self.reached_at is not None) if self.config.stop_at_target else None
        self.sched.run_until(self._end_ms, stop)
        self.finish()
        return self

    def start(self) -> None:
        """Build the peers, link them, and schedule everything up to the end of the run."""
        cfg = self.config
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()
        self.peers = [self._add_peer(i, 0) for i in range(cfg.peers)]
        sharing = cfg.mode == "sharing"
        if sharing:  # connect first, so the identity vertices are gossiped, not fetched
            for a in range(cfg.peers):
                for b in self.net.neighbours[a]:
                    if a < b:
                        self._link_up(a, b)
        self._linked = True
        if self.workers > 1:
            self._evals_at.append((0.0, self.total_evaluations()))
        for peer in self.local_peers:
            offset = peer.rng.random()
            if sharing:
                self._do(peer, peer.core.start(EPOCH_MS))
                self.sched.at(offset * cfg.tick_ms, self._tick, peer.idx, peer.epoch)
            self.sched.at(
                offset * cfg.gen_ms * cfg.gen_jitter, self._generation, peer.idx, peer.epoch
            )
        if sharing:
            for p in cfg.partitions:
                self.sched.at(p.at_ms, self._split, p)
                self.sched.at(p.heal_ms, self._heal)
            if cfg.churn is not None:
                self.sched.at(cfg.churn.interval_ms, self._churn_leave)
        sample = cfg.sample_ms or cfg.gen_ms
        self.sched.at(0, self._sample, sample)
        self._end_ms = cfg.generations * self.max_gen_ms * (1 + cfg.gen_jitter) + cfg.drain_ms

    def finish(self) -> None:
        """The last sample and this process's costs, once the scheduler reached the end."""
        self._sample_now()
        self.wall_s = time.perf_counter() - self._t0
        self.cpu_s = time.process_time() - self._c0
        self.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        self.rss_mb = current_rss_mb()

    def close(self) -> None:
        for peer in self.local_peers:
            peer.store.close()
        validate.disable_verified_cache()
        validate.disable_parsed_key_cache()
        dag_vertex.disable_decode_cache()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    # --- connections ---------------------------------------------------------------------
    def _connectable(self, a: int, b: int) -> bool:
        pa, pb = self.peers[a], self.peers[b]
        return (
            pa.online
            and pb.online
            and self.net.reachable(a, b)
            and b not in pa.blacklist
            and a not in pb.blacklist
        )

    def _link_up(self, a: int, b: int) -> None:
        if b in self.peers[a].links or not self._connectable(a, b):
            return
        for x, y in ((a, b), (b, a)):
            px, py = self.peers[x], self.peers[y]
            px.links.add(y)
            if self.local[x]:
                px.core.on_peer_connected(py.name)
        for x, y in ((a, b), (b, a)):
            px, py = self.peers[x], self.peers[y]
            if y in px.links and self.local[x]:
                self._do(px, px.core.on_peer_authenticated(py.name, py.identity.key_id))
        self._graft(a)
        self._graft(b)

    def _link_down(self, a: int, b: int) -> None:
        for x, y in ((a, b), (b, a)):
            px, py = self.peers[x], self.peers[y]
            if y in px.links:
                px.links.discard(y)
                px.mesh.discard(y)
                px.core.on_peer_disconnected(py.name)

    def _graft(self, a: int) -> None:
        """Mesh maintenance (gossipsub heartbeat): keep D_lo <= |mesh| <= D_hi, target D."""
        cfg = self.config
        peer = self.peers[a]
        mesh = peer.mesh
        if self.workers > 1 and self._linked and not cfg.mesh_lo <= len(mesh) <= cfg.mesh_hi:
            if len(mesh) > cfg.mesh_hi or any(
                len(self.peers[b].mesh) < cfg.mesh_hi for b in peer.links - mesh
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
                other = self.peers[b]
                if len(other.mesh) < cfg.mesh_hi:
                    mesh.add(b)
                    other.mesh.add(a)
        elif len(mesh) > cfg.mesh_hi:
            extra = sorted(mesh)
            peer.rng.shuffle(extra)
            for b in extra[: len(mesh) - cfg.mesh_d]:
                mesh.discard(b)
                self.peers[b].mesh.discard(a)

    # --- actions -------------------------------------------------------------------------
    def _do(self, peer: SimPeer, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self.publish(peer, action.topic, action.data)
            elif isinstance(action, SendRequest):
                self._send_request(peer, action)
            elif isinstance(action, Disconnect):
                if self.workers > 1:
                    raise ParallelError(
                        f"{peer.name} disconnected {action.peer} ({action.reason}): a parallel "
                        "run cannot close links; run with workers=1"
                    )
                self._stable_links = False
                b = self._index(action.peer)
                if b is not None:
                    peer.blacklist.add(b)
                    self._link_down(peer.idx, b)
                    self.events.append(
                        {
                            "t_ms": self.sched.now,
                            "event": "disconnect",
                            "peer": peer.idx,
                            "other": b,
                            "reason": action.reason,
                        }
                    )
                    self._check_isolated(b)

    def _index(self, name: str) -> int | None:
        try:
            return int(name[1:])
        except ValueError:
            return None

    def publish(self, peer: SimPeer, topic: str, data: bytes, to: list[int] | None = None) -> None:
        """Gossip our own message: to every connected peer (flood publish) or to `to`."""
        mid = blake3.blake3(data).digest()
        peer.seen[mid] = self.sched.now + self.config.seen_ttl_ms
        if to is None and is_es_group_topic(topic):
            to = sorted(self.es_members.get(topic, set()) - {peer.idx})
        targets = sorted(peer.links) if to is None else to
        for b in targets:
            self._send(peer, b, topic, data, mid)

    def _send(self, src: SimPeer, b: int, topic: str, data: bytes, mid: bytes) -> None:
        size = len(data)
        src.counters.msgs_out += 1
        src.counters.bytes_out += size
        arrival = self.net.transmit(src.idx, b, size, self.sched.now)
        if arrival is None:
            return
        if not self.local[b]:
            if arrival <= self._end_ms:  # later arrivals are never counted (as below)
                box = self.outboxes[b % self.workers]
                first = mid not in box.sent
                if first:
                    box.sent.add(mid)
                box.gossip.append([arrival, b, src.idx, topic, mid, data if first else None])
            return
        self._schedule_delivery(src.idx, b, topic, data, mid, arrival)

    def _schedule_delivery(
        self, a: int, b: int, topic: str, data: bytes, mid: bytes, arrival: float
    ) -> None:
        """A copy from `a` reaches `b` at `arrival`: schedule it, or count it as a dropped
        duplicate right away where that is certain."""
        dst = self.peers[b]
        size = len(data)
        if self._stable_links and a in dst.links and arrival <= self._end_ms:
            # Nothing in this run can close a link or take a peer offline, so every scheduled
            # delivery happens. This one would only be counted as a dropped duplicate by
            # `_deliver` if `b`'s seen-entry for the id outlives the arrival, or if an earlier
            # delivery of the same id to `b` is in flight (arriving at `first`, no later than
            # this one, while no live entry predates it): that one will find the entry expired
            # or refreshed and set it to at least now + seen_ttl. Count it now and skip the
            # event (3 of 4 deliveries at scale are duplicates), unless it would arrive after
            # the run ends (then it is never counted). The transmit above still ran: queues and
            # random draws are those of a run without this shortcut.
            seen = dst.seen.get(mid, 0.0)
            first = dst.inflight.get(mid)
            if seen > arrival or (
                first is not None
                and seen <= first <= arrival < self.sched.now + self.config.seen_ttl_ms
            ):
                counters = dst.counters
                counters.msgs_in += 1
                counters.bytes_in += size
                counters.duplicates += 1
                return
            if first is None or arrival < first:
                dst.inflight[mid] = arrival
        self.sched.at(arrival, self._deliver, b, dst.epoch, a, topic, data, mid)

    def _deliver(self, b: int, epoch: int, a: int, topic: str, data: bytes, mid: bytes) -> None:
        peer = self.peers[b]
        group = is_es_group_topic(topic)  # straight from a group member, not over a link
        if not peer.online or peer.epoch != epoch or (a not in peer.links and not group):
            return  # the connection closed while the message was in flight
        if peer.inflight:
            peer.inflight.pop(mid, None)
        peer.counters.msgs_in += 1
        peer.counters.bytes_in += len(data)
        now = self.sched.now
        expiry = peer.seen.get(mid)
        if expiry is not None and expiry > now:
            peer.counters.duplicates += 1
            return
        peer.seen[mid] = now + self.config.seen_ttl_ms
        self.gossip_delivered += 1
        relay, actions = peer.core.on_gossip(self.peers[a].name, topic, data, EPOCH_MS + int(now))
        if relay and not group and peer.strategy != "withhold":
            for c in sorted(peer.mesh):
                if c != a:
                    self._send(peer, c, topic, data, mid)
        self._do(peer, actions)

    # --- sync ----------------------------------------------------------------------------
    def _send_request(self, peer: SimPeer, action: SendRequest) -> None:
        b = self._index(action.peer)
        self.sync_requests += 1
        self._req_seq += 1
        rid = self._req_seq
        self._pending[rid] = (peer.idx, b if b is not None else -1, peer.epoch)
        self.sched.after(self.config.sync_timeout_ms, self._sync_timeout, rid)
        if b is None or b not in peer.links:
            return
        arrival = self.net.transmit(peer.idx, b, len(action.data), self.sched.now)
        if arrival is None:
            return
        if self.local[b]:
            self.sched.at(arrival, self._serve, rid, peer.idx, b, self.peers[b].epoch, action.data)
        else:
            self.outboxes[b % self.workers].requests.append(
                [arrival, rid, peer.idx, b, action.data]
            )

    def _serve(self, rid: int, a: int, b: int, epoch_b: int, data: bytes) -> None:
        """Peer `b` answers request `rid` of peer `a`. (A request from another process is
        answered even if it timed out there meanwhile: the asker drops that answer.)"""
        server = self.peers[b]
        if self.local[a] and rid not in self._pending:
            return
        if not server.online or server.epoch != epoch_b:
            return
        if a not in server.links or server.strategy == "withhold":
            return
        asker = self.peers[a]
        now = EPOCH_MS + int(self.sched.now)
        try:
            response = server.core.on_sync_request(asker.name, data, now)
        except DecodeError:
            self._do(server, server.core.on_peer_fault(asker.name, "bad-sync-request"))
            return
        arrival = self.net.transmit(b, a, len(response), self.sched.now)
        if arrival is None:
            return
        if self.local[a]:
            self.sched.at(arrival, self._respond, rid, response)
        else:
            self.outboxes[a % self.workers].answers.append([arrival, rid, response])

    def receive(self, frame: list[list[list[Any]]]) -> None:
        """Schedule what another process sent (an `Outbox.take()` frame, decoded)."""
        gossip, requests, answers = frame
        remote = self._remote_data
        for arrival, b, a, topic, mid, data in gossip:
            if data is None:
                data = remote[mid]
            else:
                remote[mid] = data
            self._schedule_delivery(a, b, topic, data, mid, arrival)
        for arrival, rid, a, b, data in requests:
            self.sched.at(arrival, self._serve, rid, a, b, self.peers[b].epoch, data)
        for arrival, rid, data in answers:
            self.sched.at(arrival, self._respond, rid, data)

    def _respond(self, rid: int, response: bytes) -> None:
        pending = self._pending.pop(rid, None)
        if pending is None:
            return
        a, b, epoch = pending
        asker = self.peers[a]
        if not asker.online or asker.epoch != epoch or b not in asker.links:
            return
        now = EPOCH_MS + int(self.sched.now)
        self._do(asker, asker.core.on_sync_response(self.peers[b].name, response, now))

    def _sync_timeout(self, rid: int) -> None:
        pending = self._pending.pop(rid, None)
        if pending is None:
            return
        a, b, epoch = pending
        self.sync_failed += 1
        asker = self.peers[a]
        if asker.online and asker.epoch == epoch and b >= 0:
            asker.core.on_sync_failed(self.peers[b].name)

    # --- periodic ------------------------------------------------------------------------
    def _tick(self, idx: int, epoch: int) -> None:
        peer = self.peers[idx]
        if not peer.online or peer.epoch != epoch:
            return
        now = self.sched.now
        # Expired entries count as unseen wherever `seen` is read, so when they are dropped
        # changes nothing but memory: rebuild only once the cache doubled since the last
        # rebuild (at 1,000 peers a rebuild every tick copied ~10,000 live entries).
        if len(peer.seen) > max(256, 2 * peer.seen_kept):
            peer.seen = {k: v for k, v in peer.seen.items() if v > now}
            peer.seen_kept = len(peer.seen)
        self._graft(idx)
        actions = peer.core.on_tick(EPOCH_MS + int(now))
        if peer.strategy == "withhold":
            actions = [a for a in actions if not isinstance(a, Publish)]
        self._do(peer, actions)
        self.sched.after(self.config.tick_ms, self._tick, idx, epoch)

    def _generation(self, idx: int, epoch: int) -> None:
        from qudag.simulations import byzantine

        peer = self.peers[idx]
        if not peer.online or peer.epoch != epoch:
            return
        cfg = self.config
        if peer.generation >= cfg.generations or (
            peer.incarnation > 0 and self.sched.now >= cfg.generations * cfg.gen_ms
        ):  # a node that replaced a departed one evolves until the evolution phase ends
            if self.workers > 1:
                self._done_checks.append(self.sched.now)
            self._maybe_done()
            return
        t0 = time.perf_counter()
        spent_before = self.peer_evaluations(peer)
        actions: list[Action] = []
        best: float | None = None
        if peer.strategy is not None and cfg.mode == "sharing":
            byzantine.generation(self, peer)
        else:
            actions, best = self._honest_generation(peer)
        self._profile_s["generation"] = self._profile_s.get("generation", 0.0) + (
            time.perf_counter() - t0
        )
        spent = self.peer_evaluations(peer) - spent_before
        if self.workers > 1:  # the whole run's count at any time is the sum over processes
            self._evals_at.append((self.sched.now, spent))
            if peer.generation >= cfg.generations:
                self._last_finish = max(self._last_finish, self.sched.now)
        jitter = 1.0 + cfg.gen_jitter * (2.0 * peer.rng.random() - 1.0)
        if cfg.eval_ms > 0:
            handled = peer.counters.msgs_in + peer.counters.msgs_out
            messages, peer.msgs_charged = handled - peer.msgs_charged, handled
            duration = (spent * cfg.eval_ms + messages * cfg.msg_cpu_ms) * jitter
            self.sched.after(duration, self._generation_done, idx, epoch, actions, best)
        else:
            duration = cfg.gen_ms * jitter
            self._generation_done(idx, epoch, actions, best)
        self.sched.after(duration, self._generation, idx, epoch)

    def _generation_done(
        self, idx: int, epoch: int, actions: list[Action], best: float | None
    ) -> None:
        """A generation's outputs leave, and its best counts, when its compute is done."""
        peer = self.peers[idx]
        if not peer.online or peer.epoch != epoch:
            return
        self._do(peer, actions)
        if (
            best is not None
            and peer.honest
            and self.reached_at is None
            and self.target is not None
            and best >= self.target
        ):
            self.reached_at = self.sched.now
            self.reached_evals = self.total_evaluations()

    def peer_evaluations(self, peer: SimPeer) -> int:
        """Every evaluation a peer made: offspring, migrants, re-measured claims."""
        evolution = peer.breeder.evolution.evaluations if peer.breeder is not None else 0
        return evolution + peer.counters.evaluations_reeval

    def _honest_generation(self, peer: SimPeer) -> tuple[list[Action], float]:
        """The daemon's generation step (node/protocol/generation.py), served inline; then
        the re-measurements of this generation. Returns (actions, best fitness)."""
        cfg = self.config
        breeder = peer.breeder
        assert breeder is not None
        sharing = cfg.mode == "sharing"

        step = peer_generation(
            peer.core,
            self.task.name,
            migrants=cfg.migrants if sharing else 0,
            injected=breeder.injected,
            share_results=sharing and cfg.search == "es",
            clock=lambda: EPOCH_MS + int(self.sched.now),
            publish=sharing,
        )
        outcome = drive_generation(step, serve_inline(breeder))
        peer.counters.es_sets_pooled += outcome.results_pooled
        peer.counters.es_lag += sum(outcome.results_lag)
        for vid, _ in outcome.migrants:
            peer.counters.migrants += 1
            vertex = peer.store.vertex(vid)
            author = self.author_idx.get(vertex.author, -1) if vertex is not None else -1
            if author >= 0 and not self.peers[author].honest:
                peer.counters.migrants_from_liars += 1
        actions = outcome.actions
        if sharing:
            actions += self._reevaluate(peer, EPOCH_MS + int(self.sched.now))
        return actions, float(outcome.report.best_fitness)

    def publish_best(self, peer: SimPeer, generation: int, inflate: float = 0.0) -> bytes | None:
        """Publish a Byzantine peer's best, its claim raised by `inflate` (simulations/
        byzantine.py); honest peers publish through the generation step."""
        breeder = peer.breeder
        assert breeder is not None
        best = breeder.best
        if not peer.core.should_publish(self.task.name, generation, best.task_fitness + inflate):
            return None
        template = replace(breeder.best_template(), latency_ns=0)
        if inflate:
            template = replace(template, fitness=template.fitness + inflate)
        vid, actions = peer.core.publish_template(template, EPOCH_MS + int(self.sched.now))
        breeder.mark_published(best.id, vid)
        self._do(peer, actions)
        return vid

    def _reevaluate(self, peer: SimPeer, now: int) -> list[Action]:
        peer.reeval_credit = min(
            peer.reeval_credit + self.config.reevals_per_gen, REEVAL_CREDIT_MAX
        )
        out: list[Action] = []
        while peer.reeval_credit >= 1.0:
            job = peer.core.next_reevaluation()
            if job is None:
                break
            peer.reeval_credit -= 1.0
            measured, holdout = self.remeasure(job)
            peer.counters.evaluations_reeval += 1
            _, actions = peer.core.on_reevaluated(job, measured, now, holdout)
            out += actions
            for a in actions:
                if isinstance(a, Disconnect):
                    self.events.append(
                        {
                            "t_ms": self.sched.now,
                            "event": "ban",
                            "peer": peer.idx,
                            "other": self.author_idx.get(job.author, -1),
                            "reason": a.reason,
                        }
                    )
        return out

    def remeasure(self, job: Reevaluation) -> tuple[float | None, Holdout | None]:
        """`evolution.verify.remeasure`, once per template id per process (the bytes fix
        the answer), and beside it the held-out score for the job's draw
        (`remeasure_holdout`, once per template id and draw)."""
        # evolution.verify.Claim declares settable attributes; Template is frozen.
        claim: Any = job.template
        if job.template_id not in self.measured:
            self.measured[job.template_id] = remeasure(claim)[1]
        measured = self.measured[job.template_id]
        if measured is None or not within_tolerance(claim, measured):
            return measured, None  # a false claim is refused on its own: no held-out score
        seed = job.holdout_seed
        if seed not in self.held_out:
            self.held_out[seed] = remeasure_holdout(claim, seed)
        return measured, self.held_out[seed]

    def _maybe_done(self) -> None:
        cfg = self.config
        end = cfg.generations * cfg.gen_ms
        if not self._done_generations and all(
            p.generation >= cfg.generations or (p.incarnation > 0 and self.sched.now >= end)
            for p in self.local_peers
            if p.online
        ):
            self._done_generations = True
            self.events.append({"t_ms": self.sched.now, "event": "generations-done"})

    # --- faults --------------------------------------------------------------------------
    def _split(self, spec: PartitionSpec) -> None:
        groups = split_groups(self.config.peers, spec.parts, self.net.graph, self.rng)
        self.net.split(groups)
        for a in range(self.config.peers):
            for b in sorted(self.peers[a].links):
                if not self.net.reachable(a, b):
                    self._link_down(a, b)
        self.events.append({"t_ms": self.sched.now, "event": "split", "groups": len(groups)})

    def _heal(self) -> None:
        self.net.heal()
        self._reconnect_all()
        self.heal_at = self.sched.now
        union: set[bytes] = set()
        for p in self.honest_online():
            union.update(p.store.topological_order())
        self.heal_union = sorted(union)
        self.covered_at = None
        self.events.append({"t_ms": self.sched.now, "event": "heal", "vertices": len(union)})

    def _reconnect_all(self) -> None:
        for a in range(self.config.peers):
            for b in self.net.neighbours[a]:
                if a < b:
                    self._link_up(a, b)

    def _churn_leave(self) -> None:
        spec = self.config.churn
        assert spec is not None
        if self.sched.now >= self.config.generations * self.config.gen_ms:
            return  # churn stops with evolution: the drain measures how the network settles
        online = [p for p in self.peers if p.online and p.honest]
        if len(online) > 2:
            peer = self.rng.choice(online)
            for b in sorted(peer.links):
                self._link_down(peer.idx, b)
            peer.online = False
            peer.epoch += 1
            self.events.append({"t_ms": self.sched.now, "event": "leave", "peer": peer.idx})
            self.sched.after(spec.downtime_ms, self._churn_join, peer.idx)
        self.sched.after(spec.interval_ms, self._churn_leave)

    def _churn_join(self, idx: int) -> None:
        spec = self.config.churn
        assert spec is not None
        old = self.peers[idx]
        if spec.keep_state:
            peer = old
            peer.core = peer.make_core()  # a restart: rebuilt from the committed ledger
            peer.blacklist.clear()
            peer.seen.clear()
        else:
            old.store.close()
            peer = self._add_peer(idx, old.incarnation + 1)
            self.peers[idx] = peer
        peer.online = True
        peer.epoch += 1
        self.events.append(
            {"t_ms": self.sched.now, "event": "join", "peer": idx, "kept_state": spec.keep_state}
        )
        self._do(peer, peer.core.start(EPOCH_MS + int(self.sched.now)))
        for b in self.net.neighbours[idx]:
            self._link_up(idx, b)
        self.sched.after(peer.rng.random() * self.config.tick_ms, self._tick, idx, peer.epoch)
        self.sched.after(peer.rng.random() * self.config.gen_ms, self._generation, idx, peer.epoch)

    def _check_isolated(self, b: int) -> None:
        liar = self.peers[b]
        if liar.honest or b in self.isolated_at:
            return
        if not any(self.peers[c].honest for c in liar.links):
            self.isolated_at[b] = self.sched.now

    # --- metrics -------------------------------------------------------------------------
    def honest_online(self) -> list[SimPeer]:
        return [p for p in self.local_peers if p.online and p.honest]

    def total_evaluations(self) -> int:
        total = 0
        for p in self.local_peers:
            if p.breeder is not None:
                total += p.breeder.evolution.evaluations
            total += p.counters.evaluations_reeval
        return total

    def _sample(self, interval: float) -> None:
        self._sample_now()
        self.sched.after(interval, self._sample, interval)

    def _sample_now(self) -> None:
        part = self.sample_part()
        if part is None:
            return
        self.samples.append(part)
        if self.workers > 1:
            return  # the rows are merged from every process's samples at the end
        now = self.sched.now
        row = merge_sample([part], self.target)
        if self.heal_at is not None and self.covered_at is None:
            if self._covers(self.honest_online()):
                self.covered_at = now
        if row["identical"] and self._done_generations and self.identical_at is None:
            self.identical_at = now
        self.rows.append(row)

    def sample_part(self) -> dict[str, Any] | None:
        """This process's share of a time-series row (`merge_sample` makes the row)."""
        honest = self.honest_online()
        if not honest:
            return None
        counts = [p.store.count() for p in honest]
        # Sets can only be identical if the counts are: hash them only then.
        digests = sorted({p.digest() for p in honest}) if len(set(counts)) == 1 else None
        return {
            "t_ms": int(self.sched.now),
            "generation": min(p.generation for p in honest),
            "evaluations": self.total_evaluations(),
            "bests": _bests(honest),
            "counts": counts,
            "orphans_max": max(p.store.orphan_count() for p in honest),
            "messages": self.net.messages,
            "bytes": self.net.bytes,
            "sync_requests": self.sync_requests,
            "online": sum(p.online for p in self.local_peers),
            "digests": digests,
        }

    def _covers(self, honest: list[SimPeer]) -> bool:
        return all(all(p.store.has(v) for v in self.heal_union) for p in honest)

    def honest_sets_identical(self) -> bool:
        if self._merged is not None:
            return bool(self._merged["identical_honest_sets"])
        honest = self.honest_online()
        return len({p.digest() for p in honest}) == 1

    def ledger_bytes(self, peer: SimPeer) -> int:
        """The wire bytes of every vertex the peer stores (from its store, so that a vertex
        this process only ever saw in a sync answer counts too)."""
        store = peer.store
        return sum(len(store.get(v) or b"") for v in store.topological_order())

    def summary(self) -> dict[str, Any]:
        """The run's figures (the whole run's, also when other processes took part)."""
        if self._merged is not None:
            return dict(self._merged)
        return merge_summary(self.config, [self.summary_part()])

    def summary_part(self) -> dict[str, Any]:
        """This process's share of `summary()` (`merge_summary` adds the shares up)."""
        cfg = self.config
        honest = self.honest_online()
        liars = [p for p in self.local_peers if not p.honest]
        liar_keys = [p.identity.key_id for p in liars]
        # Sybil attesters (`collude`): of the honest peers that re-measured a lie a sybil
        # vouched for (and found it false), the share that banned the sybil.
        found_false = {
            p.idx: {t for t, v in p.store.verdicts_by(p.identity.key_id) if v == "invalid"}
            for p in honest
        }
        silent = {p.identity.key_id for p in liars if p.strategy == "sybil"}
        banned_by = [
            sum(p.core.trust.banned(k) for p in honest) / max(1, len(honest))
            for k in liar_keys
            if k not in silent
        ]
        # A `sybil` liar's own key claims nothing; each fresh key that made a claim counts,
        # judged by the honest peers that re-measured that claim.
        for liar in liars:
            for key, vid in liar.byz_state.get("fresh_claims", []):
                judges = [p for p in honest if vid in found_false[p.idx]]
                if judges:
                    banned_by.append(sum(p.core.trust.banned(key) for p in judges) / len(judges))
        flagged_by = [
            sum(k in set(p.store.flagged_authors()) for p in honest) / max(1, len(honest))
            for k in liar_keys
        ]
        attesters_banned_by = []
        for liar in liars:
            attested = set(liar.byz_state.get("attested", []))
            for sybil in liar.byz_state.get("sybils", []):
                judges = [p for p in honest if found_false[p.idx] & attested]
                if judges:
                    banned = sum(p.core.trust.banned(sybil.key_id) for p in judges)
                    attesters_banned_by.append(banned / len(judges))
        return {
            "honest": len(honest),
            "liars": len(liars),
            "generations": [p.generation for p in honest],
            "evaluations": self.total_evaluations(),
            "bests": _bests(honest),
            "counts": [p.store.count() for p in honest],
            "ledger": [self.ledger_bytes(p) for p in honest] if cfg.mode == "sharing" else [0],
            "orphans": [p.store.orphan_count() for p in honest],
            "messages": self.net.messages,
            "bytes": self.net.bytes,
            "duplicates": sum(p.counters.duplicates for p in self.local_peers),
            "sync_requests": self.sync_requests,
            "sync_failed": self.sync_failed,
            "digests": sorted({p.digest() for p in honest}),
            "isolated": [self.isolated_at.get(p.idx) for p in liars],
            "banned_by": banned_by,
            "flagged_by": flagged_by,
            "attesters_banned_by": attesters_banned_by,
            "migrants": sum(p.counters.migrants for p in honest),
            "migrants_from_liars": sum(p.counters.migrants_from_liars for p in honest),
            "es_sets_pooled": sum(p.counters.es_sets_pooled for p in honest),
            "es_lag": sum(p.counters.es_lag for p in honest),
            "rejected": sum(sum(p.core.stats.rejected.values()) for p in honest),
            "sim_time_ms": int(self.sched.now),
            "events_executed": self.sched.executed,
            "signature_cache_hits": self.verified.hits,
            "signature_checks": self.verified.misses,
            "decode_cache_hits": self.decoded.hits,
            "decodes": self.decoded.misses,
            "reached_t_ms": self.reached_at,
            "reached_evals": self.reached_evals,
            "identical_t_ms": self.identical_at,
            "heal_t_ms": self.heal_at,
            "covered_after_heal_ms": (
                None
                if self.covered_at is None or self.heal_at is None
                else self.covered_at - self.heal_at
            ),
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "wait_s": self.wait_s,
            "peak_rss_mb": self.peak_rss_mb,
            "rss_mb": self.rss_mb,
        }


def _bests(peers: list[SimPeer]) -> list[list[Any]]:
    """[peer index, best fitness] pairs: merged in index order, a mean is the same float
    whichever process held which peer."""
    return [[p.idx, p.breeder.best.task_fitness] for p in peers if p.breeder is not None]


def serve_inline(breeder: Breeder) -> Callable[[BreederRequest], Any]:
    """How the simulator answers the generation step's requests: the breeder, called inline."""

    def serve(request: BreederRequest) -> Any:
        if isinstance(request, Advance):
            return breeder.advance(request.migrants, request.results)
        if isinstance(request, BestTemplate):
            # latency_ns is a wall-clock reading (the machine's load, not the seed, decides
            # it): published as 0, "not measured", so that a vertex's bytes are a function of
            # the seed.
            return replace(breeder.best_template(), latency_ns=0)
        breeder.mark_published(request.genome_id, request.vertex_id)
        return None

    return serve


def run(config: SimConfig, on_sim: Callable[[Simulation], None] | None = None) -> Simulation:
    """Run one simulation to the end; the caller must `close()` it (or use the result once)."""
    sim = Simulation(config)
    try:
        sim.run()
        if on_sim is not None:
            on_sim(sim)
    except BaseException:
        sim.close()
        raise
    return sim
