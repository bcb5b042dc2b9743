"""What a simulation run is told: its configuration, fault schedules and replication rules.

Why apart from the simulator: the CLI, the studies and the parallel runner build and check
configurations without loading the simulated network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qudag.evolution.es import ESConfig
from qudag.evolution.tasks import get_task
from qudag.node.protocol.breeder import SEARCHES
from qudag.simulations.network import LinkModel

REEVAL_CREDIT_MAX = 10.0  # re-measurements a peer may save up (one burst at most)
EPOCH_MS = 1_700_000_000_000  # simulated time 0 as a wall-clock timestamp for the cores
STRATEGIES = (
    "inflate",
    "badsig",
    "equivocate",
    "orphans",
    "withhold",
    "replay",
    "collude",
    "overfit",
    "sybil",
)


@dataclass(frozen=True)
class ChurnSpec:
    """Every `interval_ms` one random online honest peer leaves for `downtime_ms`.

    `keep_state`: it comes back with its ledger and population (a restart: a new `PeerCore`
    over the same store, as after `kill -9`); otherwise a *new* node takes its place in the
    graph (new key, empty ledger, new population) and must catch up from scratch.
    """

    interval_ms: int = 5_000
    downtime_ms: int = 10_000
    keep_state: bool = True


@dataclass(frozen=True)
class PartitionSpec:
    """At `at_ms` the network splits into `parts` groups; at `heal_ms` it heals."""

    at_ms: int
    heal_ms: int
    parts: int = 2


@dataclass(frozen=True)
class SimConfig:
    peers: int = 10
    task: str = "xor"
    generations: int = 20
    seed: int = 0
    mode: str = "sharing"  # sharing | isolation (no network at all)
    topology: str = "random-regular"
    degree: int = 6
    link: LinkModel = field(default_factory=LinkModel)
    population: int | None = None  # None: the task's tuned default
    lamarck_steps: int | None = None  # None: the task's tuned default
    gen_ms: int = 1_000  # simulated duration of one generation
    gen_jitter: float = 0.1
    publish_every: int = 5
    migrants: int = 2
    min_attestations: int = 2
    reevals_per_gen: float = 1.0
    tick_ms: int = 500
    heads_interval_ms: int = 2_000
    mesh_d: int = 6
    mesh_lo: int = 4
    mesh_hi: int = 12
    seen_ttl_ms: int = 120_000
    sync_timeout_ms: int = 5_000
    max_orphans: int = 2_000
    store: str = "memory"  # memory | disk (a temporary directory, removed at the end)
    shared_blobs: bool = True  # vertex bytes in one process-wide BlobStore, not in each store
    early_duplicates: bool = True  # see gossip.schedule_delivery
    defer_commit: bool = True  # one commit per run of ingests (Store.open): see open_store
    meta_cache: int = 50_000
    drain_ms: int = 10_000  # network-only time after the last generation
    sample_ms: int = 0  # metrics interval; 0 = gen_ms
    churn: ChurnSpec | None = None
    partitions: tuple[PartitionSpec, ...] = ()
    byzantine: str | None = None
    byzantine_fraction: float = 0.0
    byzantine_rate: int = 3  # bad messages per generation (badsig, orphans, replay)
    inflate_by: float = 0.25
    # Verifiers measure a held-out score beside each claim that holds (issue 17, section 3).
    # False: the claim check alone, the defence against overfit nets off (for comparison).
    holdout: bool = True
    target: float | None = None  # fitness that counts as "reached"; None: the task's own
    # The search each peer runs (node/protocol/breeder.py): `islands` (NSGA-II + migrants) or
    # `es` (the shared evolution strategy: result sets gossiped and pooled, evolution/es.py).
    search: str = "islands"
    es: ESConfig | None = None  # None: ESConfig() with `start_seed` = the run's seed
    # Time model. 0: a generation lasts `gen_ms` whatever it computed. > 0: a generation
    # lasts (evaluations the peer made in it: offspring, migrants, re-measured claims) x
    # eval_ms, and its outputs (gossip, publications, attestations) leave when it ends; so
    # sharing cannot buy speed with compute that isolated peers are not given.
    eval_ms: float = 0.0
    # With eval_ms: the CPU a peer's daemon spends per gossip message it sends or receives
    # (duplicates included), charged to its next generation as evaluations are: a node whose
    # daemon and evolution share a core. 0: messages are free (the default). Measured on real
    # daemons: ~0.8 ms (docs/studies.md, study 6, "Real daemons").
    msg_cpu_ms: float = 0.0
    # The replication rules of the peers' cores (node/protocol/quorum.py): "quorum", the
    # daemon's (publish what beats the known front, about `publish_quorum` publishers per
    # improvement and `attest_quorum` attesters per claim, heads to neighbours only, identity
    # with the first vertex) or "full", the design before it (every improvement published,
    # every re-measurement attested, heads flooded, identity at start), for comparison.
    replication: str = "quorum"
    # Shared-ES groups of about this many peers (0: one group; `CoreConfig.es_group_size`).
    # A group's result sets go straight to its members (a gossipsub topic mesh of a group that
    # small is nearly complete) and are not relayed.
    es_group_size: int = 0
    publish_quorum: int = 4
    attest_quorum: int = 6
    stop_at_target: bool = False  # end the run once an honest peer reached the target
    # Peer discovery as the daemon's (node/net/discovery.py): a peer left with fewer links
    # than its topology degree by a `Disconnect` (its own or the other side's) dials peers it
    # may connect to (`gossip.connectable`), chosen by its own generator, until it is back at
    # its degree or none is left. Off: the fixed graph of the start, which the committed
    # figures of the studies other than `byzantine` were measured with.
    rediscover: bool = False
    # The dials happen a uniform draw in [0, rediscover_ms) after the loss: the daemon's
    # discovery loop wakes within `NetConfig.discovery_interval` (10 s) once its connected
    # peers changed, then dials what its routing table holds.
    rediscover_ms: int = 10_000
    # Processes that share the peers (simulations/parallel.py). A run is a function of its
    # seed *and* this number: each process draws link latencies from its own generator.
    workers: int = 1

    def __post_init__(self) -> None:
        if self.peers < 1 or self.generations < 0:
            raise ValueError("peers >= 1 and generations >= 0")
        if self.mode not in ("sharing", "isolation"):
            raise ValueError("mode is sharing or isolation")
        if self.search not in SEARCHES:
            raise ValueError(f"search is one of {', '.join(SEARCHES)}")
        if self.eval_ms < 0 or self.msg_cpu_ms < 0:
            raise ValueError("eval_ms and msg_cpu_ms must be >= 0")
        if self.replication not in REPLICATIONS:
            raise ValueError(f"replication is one of {', '.join(REPLICATIONS)}")
        if self.store not in ("memory", "disk"):
            raise ValueError("store is memory or disk")
        if self.byzantine is not None and self.byzantine not in STRATEGIES:
            raise ValueError(f"byzantine strategy is one of {', '.join(STRATEGIES)}")
        if not 0.0 <= self.byzantine_fraction < 1.0:
            raise ValueError("byzantine fraction is in [0, 1)")
        if not 1 <= self.mesh_lo <= self.mesh_d <= self.mesh_hi:
            raise ValueError("mesh degrees: 1 <= lo <= d <= hi")
        if self.rediscover_ms < 0:
            raise ValueError("rediscover_ms must be >= 0")
        if not 1 <= self.workers <= self.peers:
            raise ValueError("workers is between 1 and the number of peers")
        if self.workers > 1:
            # Churn, partitions and Byzantine peers (bans) open and close links, which both
            # ends see at once here; across processes that would need its own message.
            if self.churn is not None or self.partitions or self.byzantine is not None:
                raise ValueError(
                    "workers > 1 is for runs without churn, partitions or Byzantine peers"
                )
            if self.link.min_latency_ms <= 0:
                raise ValueError("workers > 1 needs a link latency with a positive minimum")
            if self.stop_at_target:
                raise ValueError("stop_at_target is for runs in one process")
            if self.rediscover:
                # The dialled peer may live in another process, which would have to link at once.
                raise ValueError("peer rediscovery is for runs in one process")

    @property
    def liars(self) -> int:
        """How many of the peers are Byzantine."""
        return liars_of(self.peers, self.byzantine_fraction) if self.byzantine else 0


REPLICATIONS = ("quorum", "full")


def liars_of(peers: int, fraction: float) -> int:
    """How many of `peers` a Byzantine `fraction` makes liars (rounded to the nearest)."""
    return int(round(fraction * peers))


def replication_rules(config: SimConfig) -> dict[str, Any]:
    """The `CoreConfig` fields that `SimConfig.replication` sets."""
    if config.replication == "full":
        return {
            "publish_front": False,
            "publish_quorum": 0,
            "attest_quorum": 0,
            "relay_heads": True,
            "eager_identity": True,
        }
    return {
        "publish_front": True,
        "publish_quorum": config.publish_quorum,
        "attest_quorum": config.attest_quorum,
        "relay_heads": False,
        "eager_identity": False,
    }


def run_target(config: SimConfig) -> float | None:
    """The fitness that counts as "reached": the configured one, else the task's own."""
    return config.target if config.target is not None else get_task(config.task).solved_fitness
