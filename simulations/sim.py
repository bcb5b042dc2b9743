"""Many peers in one process: the real `PeerCore`, `Breeder` and `Store`, over a simulated network.

This module is a *driver* of the peer core, like the trio daemon (node/daemon.py), and holds no
protocol logic of its own: every ledger decision (ingest, relay, what to fetch, which migrants,
when to publish, verdicts, bans) is the core's. What the driver adds is what the daemon gets
from libp2p and trio, simulated, one module each:

- time: a discrete-event scheduler (simulations/scheduler.py); every `now_ms` given to a core is
  simulated, so a run is as fast as the CPU allows and a pure function of its seed;
- the network: a networkx topology with per-link latency, bandwidth and loss
  (simulations/network.py), and over it connections, a gossipsub-like mesh, message delivery
  and sync requests (simulations/gossip.py);
- the peers: key, store, core, breeder and gossip state of each (simulations/peer.py);
- evolution (here): one `Breeder` per peer, one generation per `gen_ms` of simulated time (with
  jitter, so peers are not in lockstep), migrants from `core.migrants`, publications through
  `core.publish_template`; re-evaluations as the daemon's loop does them, with a budget of
  `reevals_per_gen` claims per generation;
- faults: churn and partitions on a schedule (simulations/faults.py), Byzantine peers
  (simulations/byzantine.py);
- statistics: what each sample and the summary read from the peers (simulations/stats.py).

This module holds the run's state (one `Simulation`: the other modules are functions of it),
builds the peers, schedules the periodic events, and carries out the actions the cores return.

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
from functools import cached_property
from pathlib import Path
from typing import Any

from qudag.dag import validate
from qudag.dag import vertex as dag_vertex
from qudag.dag.records import SharedBlobs
from qudag.dag.store import Store
from qudag.evolution.engine import default_config
from qudag.evolution.es import ESConfig
from qudag.evolution.holdout import Holdout
from qudag.evolution.tasks import Task, get_task
from qudag.node.protocol import quorum
from qudag.node.protocol.core import (
    NODE_DECODERS,
    Action,
    Disconnect,
    Publish,
    SendRequest,
    es_topic,
)
from qudag.simulations import evolve, faults, gossip, stats
from qudag.simulations.config import EPOCH_MS, REEVAL_CREDIT_MAX, SimConfig, run_target
from qudag.simulations.gossip import Outbox, ParallelError
from qudag.simulations.identity import derive_seed
from qudag.simulations.network import Network, build_topology
from qudag.simulations.peer import RemotePeer, SimPeer, peer_index, peer_name
from qudag.simulations.scheduler import Scheduler
from qudag.simulations.stats import current_rss_mb, merge_summary


class Simulation:
    """Build with a `SimConfig`, call `run()`, read `rows` (time series) and `summary()`.

    With `config.workers > 1`, `run()` starts the other processes (simulations/parallel.py)
    and this one simulates the peers of worker 0; `rows`, `events` and `summary()` then
    describe the whole run.
    """

    def __init__(self, config: SimConfig, worker: int = 0) -> None:
        self.config = config
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
        n_byz = config.liars
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
        # A liar's migrant is harm only if it generalises worse than the honest peers' nets:
        # test-split score by template vertex id (each scored once), and one entry per
        # migrant an honest peer of this process sampled from a liar's key.
        self.test_scores: dict[bytes, float] = {}
        self.liar_migrant_tests: list[float] = []
        self.liar_genomes: set[bytes] = set()  # genome ids of those migrants
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
        self.rediscovered = 0  # links a discovery round opened (gossip.rediscover)
        self.wall_s = 0.0
        self.cpu_s = 0.0  # this process's CPU time: the fair figure on a shared machine
        self.wait_s = 0.0  # wall time spent waiting for other workers at window ends
        self.peak_rss_mb = 0.0
        self.rss_mb = 0.0  # resident memory at the end of the run, all stores still open
        self._done_generations = False
        self._pending: dict[int, tuple[int, int, int]] = {}  # request id -> (asker, target, epoch)
        self._req_seq = 0
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
            path = str(self._tmp / f"{peer_name(idx)}-{incarnation}.sqlite3")
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
                        gossip.link_up(self, a, b)
        self._linked = True
        if self.workers > 1:
            self._evals_at.append((0.0, stats.total_evaluations(self)))
        for peer in self.local_peers:
            offset = peer.rng.random()
            if sharing:
                self._do(peer, peer.core.start(EPOCH_MS))
                self.sched.at(offset * cfg.tick_ms, self._tick, peer.idx, peer.epoch)
            self.sched.at(
                offset * cfg.gen_ms * cfg.gen_jitter, evolve.generation, self, peer.idx, peer.epoch
            )
        if sharing:
            for p in cfg.partitions:
                self.sched.at(p.at_ms, faults.split, self, p)
                self.sched.at(p.heal_ms, faults.heal, self)
            if cfg.churn is not None:
                self.sched.at(cfg.churn.interval_ms, faults.churn_leave, self)
        sample = cfg.sample_ms or cfg.gen_ms
        self.sched.at(0, stats.sample, self, sample)
        self._end_ms = cfg.generations * self.max_gen_ms * (1 + cfg.gen_jitter) + cfg.drain_ms

    def finish(self) -> None:
        """The last sample and this process's costs, once the scheduler reached the end."""
        stats.sample_now(self)
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

    # --- actions -------------------------------------------------------------------------
    def _do(self, peer: SimPeer, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                gossip.publish(self, peer, action.topic, action.data)
            elif isinstance(action, SendRequest):
                gossip.send_request(self, peer, action)
            elif isinstance(action, Disconnect):
                if self.workers > 1:
                    raise ParallelError(
                        f"{peer.name} disconnected {action.peer} ({action.reason}): a parallel "
                        "run cannot close links; run with workers=1"
                    )
                self._stable_links = False
                b = peer_index(action.peer)
                if b is not None:
                    peer.blacklist.add(b)
                    gossip.link_down(self, peer.idx, b)
                    gossip.rediscover_later(self, peer.idx)
                    gossip.rediscover_later(self, b)
                    self.events.append(
                        {
                            "t_ms": self.sched.now,
                            "event": "disconnect",
                            "peer": peer.idx,
                            "other": b,
                            "reason": action.reason,
                        }
                    )
                    faults.check_isolated(self, b)

    # --- heartbeat -----------------------------------------------------------------------
    def _tick(self, idx: int, epoch: int) -> None:
        peer = self.peers[idx]
        if not peer.current(epoch):
            return
        now = self.sched.now
        # Expired entries count as unseen wherever `seen` is read, so when they are dropped
        # changes nothing but memory: rebuild only once the cache doubled since the last
        # rebuild (at 1,000 peers a rebuild every tick copied ~10,000 live entries).
        if len(peer.seen) > max(256, 2 * peer.seen_kept):
            peer.seen = {k: v for k, v in peer.seen.items() if v > now}
            peer.seen_kept = len(peer.seen)
        gossip.graft(self, idx)
        actions = peer.core.on_tick(EPOCH_MS + int(now))
        if peer.strategy == "withhold":
            actions = [a for a in actions if not isinstance(a, Publish)]
        self._do(peer, actions)
        self.sched.after(self.config.tick_ms, self._tick, idx, epoch)

    def liars_key(self, key_id: bytes) -> bool:
        """Whether a key is a liar's: a Byzantine peer's own, or one that no simulated peer
        owns (its sybil attesters and fresh keys). Every process of a parallel run knows every
        peer's own key, and a key a liar makes exists only in the liar's process, so this is
        the same answer in every process."""
        idx = self.author_idx.get(key_id)
        return idx is None or not self.peers[idx].honest

    # --- results -------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The run's figures (the whole run's, also when other processes took part)."""
        if self._merged is not None:
            return dict(self._merged)
        return merge_summary(self.config, [stats.summary_part(self)])


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
