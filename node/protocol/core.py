"""The sans-IO peer core: ledger logic as a state machine of events in, actions out.

Modelled on h11/wsproto: no sockets, no trio, no clock, no threads. The daemon (libp2p) and the
simulator are two drivers of this same class; tests drive it directly through every ordering.
A driver feeds events by calling `on_*` methods with the current time, and carries out the
returned actions: `Publish` on a gossip topic, `SendRequest` to a peer over the sync protocol,
`Disconnect` a peer. Re-evaluation of fitness claims is pulled, not pushed: the driver asks
`next_reevaluation()` when it has CPU budget, runs the check wherever it likes (a thread, a
process, inline) and reports back with `on_reevaluated`.

What the core keeps in memory is either bounded (fetch queue, re-evaluation queue) or derived
from the store at start (re-evaluation backlog, reputation from our own attestations), so a
restart after `kill -9` loses nothing that was committed.
"""

from __future__ import annotations

import logging
import math
import random
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from qudag.crypto.canonical import DecodeError
from qudag.crypto.signing import Identity
from qudag.dag import payloads
from qudag.dag.payloads import (
    KIND_ATTESTATION,
    KIND_TASK,
    KIND_TEMPLATE,
    VERDICT_INVALID,
    VERDICT_VALID,
    attestation_payload,
    payload_decoders,
)
from qudag.dag.records import IngestResult, IngestStatus, TemplateEntry
from qudag.dag.store import Store
from qudag.dag.validate import Prechecked, precheck
from qudag.dag.vertex import Vertex, decode_vertex, make_identity_vertex, make_vertex
from qudag.evolution.es import ResultSet
from qudag.evolution.evaluate import NONFINITE_FITNESS
from qudag.evolution.holdout import Holdout, PrivateScore, holdout_seed
from qudag.evolution.tasks import csv_task_identity, get_task
from qudag.evolution.taskspec import TaskSpec, task_id_of
from qudag.evolution.template import Template
from qudag.evolution.verify import claim_tolerance
from qudag.node.protocol import messages, quorum
from qudag.node.protocol.datafetch import BAD, UNASKED, TaskData
from qudag.node.protocol.fetcher import FetchPolicy, MissingFetcher
from qudag.node.protocol.policy import (
    Designated,
    HeldOut,
    HeldOutRecords,
    TemplateStanding,
    TrustPolicy,
    TrustRules,
)
from qudag.node.protocol.reeval_queue import ReevaluationQueue
from qudag.node.protocol.reputation import ReputationPolicy

# A side channel for the operator only (a warning that explains a counter); no decision
# depends on it, so the core stays deterministic.
log = logging.getLogger("qudag.node")

CONTROL_TOPIC = "qudag/1/control"
TASK_TOPIC_PREFIX = "qudag/1/task/"

# Rejection reasons that prove the *forwarding* peer sent garbage (a valid-but-pending vertex
# or a duplicate proves nothing). Each costs the peer a strike (`TrustPolicy.strike`).
_PEER_FAULTS = frozenset(
    {"malformed", "non-canonical", "trailing-bytes", "oversize", "type", "bad-signature"}
)


# A response page is bounded in bytes as well as in vertices: 256 templates of ~55 KB (digits
# nets) are 14 MB, over the 4 MiB message limit, and such a page was refused by both sides, so
# a ledger of large templates could not be synced at all. Leave room for framing.
MAX_PAGE_BYTES = messages.MAX_MESSAGE_SIZE - 64 * 1024
MAX_HELD_BACK = 10_000  # pending vertices not relayed, remembered to publish once released
# Templates whose proven attester's overfit flag waits for our recomputation of its draw
# (`TrustPolicy.recheck_wanted`), one attester at a time per template. One beyond it is asked
# for again by the next ranking that judges it, and its flag does not count meanwhile, so the
# bound only delays a recomputation.
MAX_RECHECKS = 256
# Templates of ours waiting for our held-out draw of them (display only:
# `TrustPolicy.authored_held_out`), and those asked for in this run, which are not asked for
# again (a draw that could not be measured, a task version we no longer evaluate). One beyond
# either bound is asked for again by the next ranking that lists it.
MAX_OWN_DRAWS = 64
MAX_OWN_ASKED = 4096


def _fit_page(raws: list[bytes], budget: int = MAX_PAGE_BYTES) -> tuple[list[bytes], bool]:
    """The longest prefix of `raws` within `budget` bytes (at least one vertex: a vertex is at
    most 256 KB), and whether anything was cut."""
    total = 0
    for i, raw in enumerate(raws):
        total += len(raw) + 5  # msgpack bin header
        if total > budget and i > 0:
            return raws[:i], True
    return raws, False


def task_topic(task: str) -> str:
    return TASK_TOPIC_PREFIX + task


ES_GROUP_INFIX = "/es/"


def es_topic(task: str, groups: int, group: int) -> str:
    """The topic of a shared-ES group's result sets (`quorum.es_group`): the task topic when
    there is one group (what every peer before es groups used), else its own topic, so that
    a peer receives only its group's sets."""
    if groups <= 1:
        return task_topic(task)
    return f"{task_topic(task)}{ES_GROUP_INFIX}{groups}/{group}"


def is_es_group_topic(topic: str) -> bool:
    return topic.startswith(TASK_TOPIC_PREFIX) and ES_GROUP_INFIX in topic


# What a node's ledger runs on every arriving payload (`Store.open(decoders=...)`): a template
# the evolution engine would refuse never enters it.
NODE_DECODERS = payload_decoders({KIND_TEMPLATE: Template.from_dict, KIND_TASK: TaskSpec.from_dict})


# --- actions --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Publish:
    topic: str
    data: bytes


@dataclass(frozen=True)
class SendRequest:
    peer: str
    data: bytes


@dataclass(frozen=True)
class Disconnect:
    peer: str
    reason: str


Action = Publish | SendRequest | Disconnect


@dataclass(frozen=True)
class CoreConfig:
    tasks: tuple[str, ...]
    publish_every: int = 5  # generations between template publications
    migrants: int = 4  # migrants sampled per generation
    min_attestations: int = 2  # independent valid verdicts that make a claim "verified"
    heads_interval_ms: int = 2_000
    sync_page: int = 256
    sync_pipeline: int = 2  # bulk pages per peer requested or held but not yet ingested
    sync_stall_ms: int = 30_000  # a paging session silent this long is forgotten
    # Every this often, pull what a random trusted peer has that we lack (0: never). A guard
    # against gossip that stops flowing between two connected peers (docs/ARCHITECTURE.md).
    anti_entropy_ms: int = 0
    max_peer_strikes: int = 20
    max_reeval_queue: int = 1_000
    # Claims of one author queued for re-evaluation at once (issue 17: the queue is not
    # floodable); its highest claims are kept (node/protocol/reeval_queue.py).
    max_reeval_per_author: int = 4
    # Shared-ES result sets kept per task until the breeder takes them (evolution/es.py).
    max_es_inbox: int = 64
    max_es_per_author: int = 8  # result sets of one author pooled per generation
    # Our result sets wait up to this long to go out together (0: each at once); see
    # `publish_results`.
    es_batch_ms: int = 0
    # The shared ES pools within groups of about this many peers (0: one group, every peer's
    # sets; `quorum.es_group`). Peers must agree on the network's size to agree on groups:
    # the simulator knows it; a daemon's estimate is a lower bound that differs between
    # peers, so daemons keep one group unless an operator sets both this and their size.
    es_group_size: int = 0
    # Replication at scale (node/protocol/quorum.py; docs/ARCHITECTURE.md, "Replication at
    # scale"). A template is published only if it beats the best of its task we know to be
    # real: ours, or another author's that we re-measured (`publish_front`); of the peers with
    # such a template at one publication round, about `publish_quorum` publish (0: all); of the
    # peers that re-measure a claim, about `attest_quorum` publish their verdict as an
    # attestation vertex, the others keep it in their own store (0: all publish).
    publish_front: bool = True
    publish_quorum: int = 4
    attest_quorum: int = 6
    # Heads messages go to our neighbours only (False) or through the whole network (True):
    # they tell a neighbour what to fetch from us, and a neighbour's neighbours learn it from
    # that neighbour's own heads once it has the vertices.
    relay_heads: bool = False
    # Publish our identity vertex at start (True) or just before our first vertex (False):
    # a peer that never publishes costs the others nothing.
    eager_identity: bool = False
    reputation: ReputationPolicy = field(default_factory=ReputationPolicy)
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    # How far a re-measured fitness may be from a claim on each of `tasks` for the claim to be
    # valid (`task_tolerances`): given by the driver, because knowing it means loading the task
    # (a csv task reads its file) and the core does no I/O.
    tolerances: Mapping[str, float] = field(default_factory=dict)
    # The version of each of `tasks` this machine evaluates (`task_versions`), given by the
    # driver for the same reason. Only a template of one of these (task, version) pairs can be
    # verified by others' attestations (`PeerCore.ranked_templates`); for a task missing here,
    # only our own re-measurement makes a template verified.
    versions: Mapping[str, int] = field(default_factory=dict)


def task_tolerances(tasks: Iterable[str]) -> dict[str, float]:
    """`CoreConfig.tolerances` for `tasks`, for a driver to compute once when it builds the core
    (it loads each task; raises `TaskError` for a task this machine cannot load)."""
    return {task: claim_tolerance(get_task(task)) for task in tasks}


def task_versions(tasks: Iterable[str]) -> dict[str, int]:
    """`CoreConfig.versions` for `tasks` (loads each task, as `task_tolerances` does)."""
    return {task: get_task(task).version for task in tasks}


@dataclass
class CoreStats:
    """Counters a driver exports as metrics; labels are stable short strings."""

    ingested: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    duplicates: int = 0
    published: int = 0
    sync_requests_sent: int = 0
    sync_requests_served: int = 0
    reevaluations: dict[str, int] = field(default_factory=dict)
    equivocations: int = 0
    # "valid" attestations of others checked against our own measurement, by judgement
    # (`TrustPolicy.attestation_measured`: right, false, unsure).
    attestations_checked: dict[str, int] = field(default_factory=dict)
    # Proven attesters' overfit flags whose draw we measured ourselves because ours passed
    # the template, by judgement of their record (`TrustPolicy.held_out_rechecked`: right,
    # false, unsure), and "overfit" for those that flag it on our measurement too.
    held_out_rechecks: dict[str, int] = field(default_factory=dict)
    # Our own templates' held-out draws measured (display only): "measured", and "overfit"
    # for those whose claim stands above it by more than sampling explains.
    own_held_out: dict[str, int] = field(default_factory=dict)
    disconnects: int = 0
    es_received: int = 0
    # Templates of a csv task named like one of ours but made on a file with other content
    # (same path and options, other BLAKE3), by their task name: not our task, and said so.
    task_mismatches: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


@dataclass
class _Paging:
    """A bulk `since/2` paging session with one peer (node/protocol/messages.py)."""

    have: tuple[tuple[bytes, int], ...]  # sent with every page request of the session
    after: messages.Cursor | None = None  # cursor of the last page received
    outstanding: int = 1  # pages requested and not yet ingested
    more: bool = False  # the peer has a page after `after` that is not requested yet
    stopped: bool = False  # a page brought nothing new: request no more pages
    touched_ms: int = 0  # when the session started or last received a page
    bulk: bool = False  # a page said more follows: a long catch-up, not a small gap


@dataclass(frozen=True)
class SyncPage:
    """A received sync answer whose vertices still wait to be checked and ingested."""

    peer: str
    vertices: tuple[bytes, ...]
    paging: _Paging | None  # the session it belongs to (None: a `get` answer or stale)


@dataclass(frozen=True)
class Reevaluation:
    template_id: bytes
    author: bytes
    template: Template
    # Vertex ids we held when the job was made, after the template: with the template id they
    # fix the held-out draw (evolution/holdout.py), and our attestation references them, so
    # anyone can recompute it. The driver measures `holdout_seed` beside the claim.
    beacon: tuple[bytes, ...] = ()
    # Not None: this job recomputes the draw of this proven attester's held-out record, which
    # flagged the template overfit where our own draw passed it (`beacon` is the one its
    # attestation, `HeldOut.attestation`, records). The driver measures it as any job;
    # `on_reevaluated` judges that record with it and makes no verdict on the claim (ours is
    # made).
    recheck: HeldOut | None = None
    # True: the template is ours, and the job only measures its held-out draw for display
    # (`TrustPolicy.authored_held_out`): no verdict, no attestation, no reputation.
    own: bool = False

    @property
    def holdout_seed(self) -> bytes:
        return holdout_seed(self.template_id, self.beacon)


class PeerCore:
    def __init__(
        self,
        identity: Identity,
        store: Store,
        config: CoreConfig,
        rng: random.Random,
        *,
        data: TaskData | None = None,
    ) -> None:
        """`data`: the content-addressed cache of published tasks' data this peer serves
        and fetches into (node/protocol/datafetch.py); None: it neither serves nor fetches."""
        if store.decoders.get(KIND_TEMPLATE) != Template.from_dict:
            raise ValueError("a peer's store is opened with decoders=NODE_DECODERS")
        if missing := [task for task in config.tasks if task not in config.tolerances]:
            raise ValueError(f"CoreConfig.tolerances (task_tolerances) lacks {missing}")
        self.identity = identity
        self.me = identity.key_id
        self.store = store
        self.config = config
        self.rng = rng
        self.stats = CoreStats()
        self.data = data
        self.fetcher = MissingFetcher(config.fetch)
        # Every trust decision (bans, whose verdicts count, what is verified, sampled or
        # attested) is the policy's (node/protocol/policy.py); the core carries them out.
        self.trust = TrustPolicy(
            self.me,
            TrustRules(
                min_attestations=config.min_attestations,
                max_peer_strikes=config.max_peer_strikes,
                attest_quorum=config.attest_quorum,
                reputation=config.reputation,
            ),
        )
        self.trust.held_outs.source = self._held_out_records
        self.peers: set[str] = set()
        self.peer_authors: dict[str, bytes] = {}  # peer -> ML-DSA key id (from the handshake)
        self._proved: set[bytes] = set()  # authors whose equivocation the last ingest proved
        self._held_back: dict[bytes, str] = {}  # pending vertices not relayed -> their topic
        self._reeval = ReevaluationQueue(config.max_reeval_queue, config.max_reeval_per_author)
        self._reeval_queued: set[bytes] = set()  # queued once (or checked by us): not again
        # Templates whose held-out draw of a proven attester we are to recompute, oldest first,
        # and whether the last job served was one (at most one between two claims).
        self._rechecks: OrderedDict[bytes, None] = OrderedDict()
        self._recheck_last = False
        # Templates of ours whose held-out draw the driver is to measure, oldest first, and
        # those asked for in this run (`_want_own_draw`).
        self._own_draws: OrderedDict[bytes, None] = OrderedDict()
        self._own_asked: OrderedDict[bytes, None] = OrderedDict()
        self._last_heads_ms: int | None = None
        self._last_pull_ms: int | None = None
        self._paging: dict[str, _Paging] = {}
        self._es_inbox: dict[str, deque[tuple[bytes, ResultSet]]] = {}
        self._es_outbox: dict[str, list[ResultSet]] = {}  # our sets not yet sent (es_batch_ms)
        self._es_sent_ms: dict[str, int] = {}
        # The driver's estimate of how many peers the network has (the sortitions of
        # node/protocol/quorum.py); too low only means more vertices.
        self.network_size = 1
        self._publish_waits: dict[str, int] = {}  # task -> publication rounds held back
        # Our csv tasks by their name without the content hash -> the hash of our file.
        self._csv_tasks: dict[str, str] = {}
        for task in config.tasks:
            ours = csv_task_identity(task)
            if ours is not None:
                self._csv_tasks[ours[0]] = ours[1]
        self._rebuild_from_store()

    # --- start ------------------------------------------------------------------------
    def _rebuild_from_store(self) -> None:
        """Derive the re-evaluation backlog and our verdict history from the ledger."""
        checked = self._own_verdicts()
        for _, author, valid in checked:
            self.trust.claim_measured(author, valid)
        # The store keeps the evidence of equivocation (both vertices, the author flagged), so
        # the ban it earned survives a restart.
        for author in self.store.flagged_authors():
            self.trust.equivocation_proven(author)
        # Others' attestations of the claims we re-measured, judged again against our
        # measurement: attesters' records and the bans of false attesters survive a restart.
        # After the claims: a banned attester's claims were not re-measured after its ban, so
        # this order gives the scores the live order gave.
        for template_id, _, _ in checked:
            self._judge_attestations(template_id)
        # Held-out records need no rebuilding here: the policy's book reads each template's
        # from its attestation vertices when first asked (`_held_out_records`), so what we
        # flagged overfit stays flagged after a restart.
        for task in self.config.tasks:
            # Only our own verdicts say what is still to check (an "invalid" attestation from a
            # free identity must not keep a claim from our check).
            backlog = self.store.templates(
                task, limit=self.config.max_reeval_queue, trusted=[self.me]
            )
            for entry in backlog:
                if entry.author != self.me:
                    self._queue_reeval(entry.id, entry.author, entry.claimed_fitness)

    def _own_verdicts(self) -> list[tuple[bytes, bytes, bool]]:
        """(template id, author, valid) of every claim we re-measured: attested or kept in
        our store, in the order we made them."""
        out: list[tuple[bytes, bytes, bool]] = []
        for template_id, verdict in self.store.verdicts_by(self.me):
            target = self.store.vertex(template_id)
            self._reeval_queued.add(template_id)
            if target is not None:
                out.append((template_id, target.author, verdict == VERDICT_VALID))
        return out

    def _own_vertex_ids(self, kind: str) -> list[bytes]:
        return self.store.vertex_ids_by(self.me, kind)

    def start(self, now_ms: int) -> list[Action]:
        """What a peer publishes when it starts: its identity vertex if `eager_identity`;
        otherwise nothing, and the identity goes out just before our first vertex."""
        return self._publish_identity(now_ms) if self.config.eager_identity else []

    def _publish_identity(self, now_ms: int) -> list[Action]:
        """Publish our identity vertex once (seq 0), committing it before it is sent."""
        if self.store.next_seq(self.me) > 0:
            return []
        raw = make_identity_vertex(self.identity, now_ms, self.store.tips()[:7])
        return self._commit_own(raw, CONTROL_TOPIC, now_ms)

    def _commit_own(self, raw: bytes, topic: str, now_ms: int) -> list[Action]:
        result = self.store.ingest(raw, now_ms, durable=True)
        if not result.accepted:
            raise RuntimeError(f"own vertex refused by own store: {result.reason}")
        self.stats.published += 1
        return [Publish(topic, raw)]

    # --- peers ------------------------------------------------------------------------
    def on_peer_connected(self, peer: str) -> None:
        self.peers.add(peer)

    def on_peer_disconnected(self, peer: str) -> None:
        self.peers.discard(peer)
        self.fetcher.forget_peer(peer)
        self._paging.pop(peer, None)

    def on_peer_authenticated(self, peer: str, author: bytes) -> list[Action]:
        """The sync handshake proved that `peer` holds the ML-DSA key `author`."""
        self.peer_authors[peer] = author
        if self.trust.banned(author):
            return self._disconnect(peer, "banned-author")
        return []

    def _strike(self, peer: str | None, reason: str) -> list[Action]:
        if peer is None:
            return []
        return self._disconnect(peer, reason) if self.trust.strike(peer) else []

    def _disconnect(self, peer: str, reason: str) -> list[Action]:
        self.stats.disconnects += 1
        self.on_peer_disconnected(peer)
        return [Disconnect(peer, reason)]

    def _disconnect_author(self, author: bytes, reason: str) -> list[Action]:
        """Drop every connected peer whose handshake proved it holds `author`'s key (the
        peers that merely relayed its vertices are not at fault)."""
        actions: list[Action] = []
        for peer, key in list(self.peer_authors.items()):
            if key == author:
                actions += self._disconnect(peer, reason)
        return actions

    # --- gossip -----------------------------------------------------------------------
    def on_gossip(
        self, peer: str | None, topic: str, data: bytes, now_ms: int
    ) -> tuple[bool | None, list[Action]]:
        """A gossip message from `peer`. Returns (relay, actions).

        `relay` is the gossipsub validator's answer: True to relay; False for what is provably
        invalid or comes from a banned author; None for a valid message meant for the
        sender's neighbours only (heads, unless `relay_heads`), which the transport neither
        relays nor counts as invalid. A vertex whose parents we lack is valid-but-pending: kept
        (`max_orphans_per_author` of the store) and fetched for, but relayed only if we hold
        its author's previous vertex (`_relay_pending`).
        """
        if data[:1] != b"\x92":  # a vertex is a 2-array; messages are maps
            if topic == CONTROL_TOPIC:
                return self._on_heads(peer, data, now_ms)
            return self._on_es_results(peer, topic, data)
        self._proved = set()
        result = self.store.ingest(data, now_ms)
        actions = self._after_ingest(result, peer, now_ms)
        if result.status is IngestStatus.REJECTED:
            return False, actions
        if result.status is IngestStatus.PENDING:
            relay = self._relay_pending(result)
            if not relay and result.id is not None and result.author is not None:
                if not self.trust.banned(result.author):
                    self._hold_back(result.id, topic)
            return relay, actions
        if self._proved and (result.equivocation or self._proves_offence(result.id)):
            # The vertex that proved equivocation (or a false attestation) spreads although its
            # author is banned now, so that every honest peer holds the evidence and judges the
            # author itself; further vertices of a banned author (more twins included) do not.
            return True, actions
        if result.id is not None and self._author_banned(result.id):
            return False, actions
        return True, actions

    def _proves_offence(self, vid: bytes | None) -> bool:
        """Whether the vertex `vid` just banned its own author (a false attestation): the
        evidence, which spreads once like the vertex that proves an equivocation."""
        vertex = self.store.vertex(vid) if vid is not None else None
        return vertex is not None and vertex.author in self._proved

    def _on_heads(
        self, peer: str | None, data: bytes, now_ms: int
    ) -> tuple[bool | None, list[Action]]:
        try:
            msg = messages.decode(data)
        except DecodeError as exc:
            self.stats.reject("heads-" + exc.reason)
            return False, self._strike(peer, "bad-heads")
        if not isinstance(msg, messages.Heads):
            self.stats.reject("heads-type")
            return False, self._strike(peer, "bad-heads")
        unknown = self.store.missing(msg.tips)
        actions: list[Action] = []
        if unknown and peer is not None:
            # A tip we already wanted at an earlier heads message is not a gossip message still
            # in flight: our views diverged (a partition, a restart). Fetching parent by parent
            # then costs a round trip per DAG level, and the count test below misses the case
            # where both sides grew apart by similar amounts, so ask for a bulk `since` too.
            diverged = any(tip in self.fetcher for tip in unknown)
            self.fetcher.want(unknown, peer, now_ms)
            if diverged or msg.count > self.store.count() + len(unknown):
                actions += self._request_since(peer, now_ms)
        return (True if self.config.relay_heads else None), actions

    def _on_es_results(
        self, peer: str | None, topic: str, data: bytes
    ) -> tuple[bool, list[Action]]:
        """A shared-ES result set: pooled for our breeder if it is of one of our tasks."""
        try:
            msg = messages.decode(data)
        except DecodeError as exc:
            self.stats.reject("es-" + exc.reason)
            return False, self._strike(peer, "bad-es")
        if not isinstance(msg, messages.EsResults) or not (
            topic == task_topic(msg.sets[0].task)
            or topic.startswith(task_topic(msg.sets[0].task) + ES_GROUP_INFIX)
        ):
            self.stats.reject("es-type")
            return False, self._strike(peer, "bad-es")
        if self.trust.banned(msg.author):
            return False, []
        task = msg.sets[0].task
        # Another group's sets (ours changed with the network's size, or a peer's estimate
        # differs): relayed, not pooled.
        if msg.author != self.me and task in self.config.tasks and topic == self.es_topic(task):
            inbox = self._es_inbox.setdefault(task, deque(maxlen=self.config.max_es_inbox))
            for results in msg.sets:
                inbox.append((msg.author, results))
            self.stats.es_received += len(msg.sets)
        return True, []

    def publish_results(self, results: ResultSet, now_ms: int) -> list[Action]:
        """Gossip our result set of one shared-ES generation on its task topic: at once, or
        (`es_batch_ms` > 0) with the others of ours made within that interval, in one message.

        Why batch: every gossip message costs each daemon about a millisecond of CPU (libp2p:
        noise, yamux, protobuf, duplicates from every mesh peer), the same for 24 bytes as for
        a kilobyte, and a task with cheap evaluations makes a set every few milliseconds; the
        cost is staleness, since a set waits up to `es_batch_ms` (docs/studies.md, study 6)."""
        outbox = self._es_outbox.setdefault(results.task, [])
        outbox.append(results)
        return self._flush_results(results.task, now_ms)

    def _flush_results(self, task: str, now_ms: int) -> list[Action]:
        outbox = self._es_outbox.get(task)
        if not outbox:
            return []
        last = self._es_sent_ms.get(task)
        due = last is None or now_ms - last >= self.config.es_batch_ms
        if not due and len(outbox) < messages.MAX_ES_SETS:
            return []
        del self._es_outbox[task]
        self._es_sent_ms[task] = now_ms
        msg = messages.EsResults(self.me, tuple(outbox))
        return [Publish(self.es_topic(task), messages.encode(msg))]

    def es_topic(self, task: str) -> str:
        """The topic our shared-ES result sets of `task` go to, and the one whose sets we pool
        (`es_group_size`)."""
        groups, ours = quorum.es_group(self.me, task, self.network_size, self.config.es_group_size)
        return es_topic(task, groups, ours)

    def take_results(self, task: str) -> list[ResultSet]:
        """The result sets received for `task` since the last call, oldest first: every one,
        up to `max_es_per_author` per author (its newest).

        Why every one: the additive update makes a centre the sum of the sets it pooled, so a
        set we skip is a step our centre never takes and the others' do; peers that evolve at
        different rates send more than one set per generation of a slower peer, and keeping
        only the newest made the centres drift apart (docs/studies.md, study 6). The cap
        bounds what one author's burst weighs in an update."""
        inbox = self._es_inbox.pop(task, None)
        if not inbox:
            return []
        cap = self.config.max_es_per_author
        kept: list[tuple[bytes, ResultSet]] = []
        count: dict[bytes, int] = {}
        for author, results in reversed(inbox):
            if count.get(author, 0) < cap:
                count[author] = count.get(author, 0) + 1
                kept.append((author, results))
        return [results for _, results in reversed(kept)]

    def _hold_back(self, vid: bytes, topic: str) -> None:
        """Remember a pending vertex we did not relay, to publish it once it is released."""
        self._held_back[vid] = topic
        while len(self._held_back) > MAX_HELD_BACK:
            del self._held_back[next(iter(self._held_back))]  # the oldest

    def _publish_released(self, released: Sequence[bytes]) -> list[Action]:
        """A held-back vertex whose parents arrived is valid after all: it goes on, as the
        relay it did not get, or peers whose only path to it ran through us never see it
        (a simulated network with random latencies ended with different ledgers)."""
        actions: list[Action] = []
        for vid in released:
            topic = self._held_back.pop(vid, None)
            raw = self.store.get(vid) if topic is not None else None
            if topic is not None and raw is not None and not self._author_banned(vid):
                actions.append(Publish(topic, raw))
        return actions

    def _relay_pending(self, result: IngestResult) -> bool:
        """Relay a pending vertex only if its author is not banned and we hold the author's
        previous vertex (seq - 1, its required self-parent): then only others' vertices are
        missing, a race of honest gossip. Invented parents are not flooded (issue 17): each
        author can get one pending vertex relayed on top of what we accepted from it, and an
        author we know nothing of (a fresh identity) none."""
        author = result.author
        last = self.store.last_seq(author) if author is not None else None
        return self.trust.relays_pending(author, result.seq, last)

    def _author_banned(self, vid: bytes) -> bool:
        vertex = self.store.vertex(vid)
        return vertex is not None and self.trust.banned(vertex.author)

    def _after_ingest(
        self,
        result: IngestResult,
        peer: str | None,
        now_ms: int,
        known: dict[bytes, Vertex] | None = None,
    ) -> list[Action]:
        status = result.status
        if status is IngestStatus.REJECTED:
            reason = result.reason or "unknown"
            self.stats.reject(reason)
            return self._strike(peer, reason) if reason in _PEER_FAULTS else []
        if status is IngestStatus.DUPLICATE:
            self.stats.duplicates += 1
            return []
        if status is IngestStatus.PENDING:
            self.stats.pending += 1
            self.fetcher.want(result.missing, peer, now_ms)
            return []
        new_ids = [i for i in (result.id, *result.released) if i is not None]
        self.fetcher.received(new_ids)
        for reason in (r for _, r in result.dropped):
            self.stats.reject(reason)
        actions: list[Action] = []
        for vid in new_ids:
            self.stats.ingested += 1
            actions += self._on_new_vertex(vid, known)
        if self._held_back:
            actions += self._publish_released(result.released)
        for author in result.equivocators:
            # Provable by anyone: two validly signed vertices with one (author, seq), both
            # kept in the store. It costs what a proven false claim costs: a ban, and the
            # author's own connection.
            self.stats.equivocations += 1
            outcome = self.trust.equivocation_proven(author)
            if outcome.proved:
                self._proved.add(author)
            if outcome.disconnect:
                actions += self._disconnect_author(author, "equivocating-author")
        return actions

    def _on_new_vertex(self, vid: bytes, known: dict[bytes, Vertex] | None = None) -> list[Action]:
        vertex = known.get(vid) if known else None
        if vertex is None:
            vertex = self.store.vertex(vid)
        if vertex is None or vertex.author == self.me:
            return []
        if vertex.kind == KIND_ATTESTATION:
            self._note_held_out(vertex)
            # An attestation of a claim we already re-measured is judged now; one that came
            # first is judged when our measurement comes (`on_reevaluated`).
            return self._judge_attestations(vertex.payload["template"], only=vertex.author)
        if vertex.kind != KIND_TEMPLATE:
            return []
        task = vertex.payload["task"]
        if task in self.config.tasks:
            self._queue_reeval(vid, vertex.author, vertex.payload["objectives"]["fitness"])
            return []
        theirs = csv_task_identity(task)
        if theirs is not None and theirs[0] in self._csv_tasks:
            mismatches = self.stats.task_mismatches
            if task not in mismatches:
                log.warning(
                    "template %s is for %s: our file at that path has other content (%s), so "
                    "it is another task (neither re-evaluated nor bred from)",
                    vid.hex()[:16],
                    task,
                    self._csv_tasks[theirs[0]],
                )
            mismatches[task] = mismatches.get(task, 0) + 1
        return []

    def _note_held_out(self, attestation: Vertex) -> None:
        """Give the policy the held-out measurement and the designated score a new
        attestation carries (`_held_out_of`): it goes by ours, else by a proven attester's
        (`TrustPolicy.held_out_of`)."""
        template_id = attestation.payload["template"]
        target = self.store.vertex(template_id)
        if target is None or target.kind != KIND_TEMPLATE:
            return
        record, designated = self._held_out_of(attestation, target)
        if record is not None:
            self.trust.held_out(template_id, record)
            if self.trust.may_start_recheck(record):
                self._want_recheck(template_id)
        if designated is not None:
            self.trust.designated_score(template_id, designated)

    def _held_out_records(self, template_id: bytes) -> HeldOutRecords:
        """Every held-out record the ledger holds of a template (its attestation vertices, in
        the order stored), and its task author's designated score (the latest): the source
        the policy's bounded book reads from, at start and after an eviction."""
        target = self.store.vertex(template_id)
        if target is None or target.kind != KIND_TEMPLATE:
            return [], None
        records: list[HeldOut] = []
        designated: Designated | None = None
        for verification in self.store.verifications(template_id):
            if verification.attestation is None:
                continue
            attestation = self.store.vertex(verification.attestation)
            if attestation is None:
                continue
            record, score = self._held_out_of(attestation, target)
            if record is not None:
                records.append(record)
            designated = score or designated
        return records, designated

    def _held_out_of(
        self, attestation: Vertex, target: Vertex
    ) -> tuple[HeldOut | None, Designated | None]:
        """What an attestation of `target` says beside its verdict: a held-out measurement
        (if it carries one and the claim is of a task whose tolerance we know, to judge it
        overfit), and a designated score, counted only if its author is the author of the
        template's published task (anyone else's is ignored: a free identity could type any
        number, and nobody can check it)."""
        payload = attestation.payload
        record: HeldOut | None = None
        tolerance = self.config.tolerances.get(target.payload["task"])
        if payloads.HOLDOUT_KEY in payload and tolerance is not None:
            _, n, score, stderr = payloads.attestation_holdout(payload)
            holdout = Holdout(n, score, stderr)
            claimed = target.payload["objectives"]["fitness"]
            valid = payload["verdict"] == VERDICT_VALID
            overfit = self.trust.overfit(valid, holdout, claimed, tolerance)
            record = HeldOut(attestation.author, holdout, overfit, attestation.id)
        designated: Designated | None = None
        if payloads.DESIGNATED_KEY in payload:
            if self.trust.designates(attestation.author, self._task_author(target.payload["task"])):
                n, fitness = payloads.attestation_designated(payload)
                designated = Designated(attestation.author, fitness, n)
        return record, designated

    def _task_author(self, task: str) -> bytes | None:
        """The author of the published task `task` (its `task` vertex), if we hold it."""
        task_id = task_id_of(task)
        vertex = self.store.vertex(task_id) if task_id is not None else None
        return vertex.author if vertex is not None and vertex.kind == KIND_TASK else None

    def _judge_attestations(self, template_id: bytes, only: bytes | None = None) -> list[Action]:
        """Judge others' "valid" attestations of `template_id` (of attester `only`, if given)
        against our own measurement of it, if we hold one (`TrustPolicy.attestation_measured`):
        right gives the attester a record; provably false (beyond
        `false_attestation_margin` tolerances) costs it what the lie costs its claimant, a
        ban and its own connection. Anyone can check the evidence: the signed template, the
        signed attestation, and a re-measurement of the genome.

        Called when our measurement is made (`on_reevaluated`: the attestations that came
        before it), when an attestation arrives after it (`_on_new_vertex`), and at start
        (`_rebuild_from_store`), so each attestation is judged once per run whatever the
        order, and the judgements survive a restart."""
        verifications = self.store.verifications(template_id)
        measured = next((v.fitness for v in verifications if v.verifier == self.me), None)
        vouchers = [
            v.verifier
            for v in verifications
            if v.attestation is not None
            and v.verdict == VERDICT_VALID
            and v.verifier != self.me
            and (only is None or v.verifier == only)
        ]
        if measured is None or not vouchers:
            return []
        target = self.store.vertex(template_id)  # decoded only when there is someone to judge
        if target is None or target.kind != KIND_TEMPLATE:
            return []
        tolerance = self.config.tolerances.get(target.payload["task"])
        if tolerance is None:
            return []
        claimed = target.payload["objectives"]["fitness"]
        actions: list[Action] = []
        for attester in vouchers:
            judged, outcome = self.trust.attestation_measured(
                attester, claimed, measured, tolerance
            )
            counts = self.stats.attestations_checked
            counts[judged] = counts.get(judged, 0) + 1
            if outcome.proved:
                self._proved.add(attester)
            if outcome.disconnect:
                actions += self._disconnect_author(attester, "false-attester")
        return actions

    # --- sync -------------------------------------------------------------------------
    def on_sync_request(self, peer: str, data: bytes, now_ms: int) -> bytes:
        """Answer a sync request. Garbage raises `DecodeError` (the driver resets the stream
        and calls `on_peer_fault`)."""
        msg = messages.decode(data)
        self.stats.sync_requests_served += 1
        if isinstance(msg, messages.GetVertices):
            found = [raw for raw in (self.store.get(i) for i in msg.ids) if raw is not None]
            # Ids left out for size stay wanted by the asker and are fetched again later.
            found, _ = _fit_page(found)
            return messages.encode(messages.Vertices(tuple(found), False))
        if isinstance(msg, messages.Since):
            page, more = self.store.since(dict(msg.have), min(msg.limit, self.config.sync_page))
            page, cut = _fit_page(page)  # parents-first order: a prefix is still a valid page
            return messages.encode(messages.Vertices(tuple(page), more or cut))
        if isinstance(msg, messages.SinceAfter):
            limit = min(msg.limit, self.config.sync_page)
            rows, more = self.store.since_page(dict(msg.have), limit, msg.after)
            raws, cut = _fit_page([raw for _, raw in rows])
            following = rows[len(raws) - 1][0] if raws and (more or cut) else None
            return messages.encode(messages.Page(tuple(raws), following))
        if isinstance(msg, messages.GetChunk):
            if self.data is None:
                return messages.encode(messages.Chunk(msg.data, msg.index, False, b""))
            return messages.encode(self.data.serve(msg))
        raise DecodeError("unexpected-op", type(msg).__name__)

    def on_sync_response(self, peer: str, data: bytes, now_ms: int) -> list[Action]:
        """A sync answer handled in one go (the simulator, tests). The daemon calls the two
        halves itself, to check signatures in a worker thread between them."""
        page, actions = self.receive_sync_response(peer, data, now_ms)
        if page is not None:
            checked = precheck(page.vertices, self.store.known_keys(), decoders=self.store.decoders)
            actions += self.ingest_sync_page(page, checked, now_ms)
        return actions

    def receive_sync_response(
        self, peer: str, data: bytes, now_ms: int
    ) -> tuple[SyncPage | None, list[Action]]:
        """First half: decode an answer; for a bulk page, request the next page at once (up to
        `sync_pipeline` pages per peer requested or held), so the network works while this
        page is verified. Then `precheck` the vertices (any thread) and call
        `ingest_sync_page`, in the order the pages arrived."""
        try:
            msg = messages.decode(data)
        except DecodeError as exc:
            self._paging.pop(peer, None)
            self.stats.reject("sync-" + exc.reason)
            return None, self._strike(peer, "bad-sync")
        if isinstance(msg, messages.Chunk):
            outcome = UNASKED if self.data is None else self.data.on_chunk(peer, msg, now_ms)
            if outcome == BAD:
                self.stats.reject("bad-chunk")
                return None, self._strike(peer, "bad-chunk")
            return None, []
        if isinstance(msg, messages.Vertices):  # a `get` answer (or a version 1 `since` page)
            actions = self._request_since(peer, now_ms) if msg.more else []
            return SyncPage(peer, msg.vertices, None), actions
        if not isinstance(msg, messages.Page):
            self._paging.pop(peer, None)
            self.stats.reject("sync-type")
            return None, self._strike(peer, "bad-sync")
        paging = self._paging.get(peer)
        if paging is None:  # unasked, or its session ended: judged on its own, no follow-up
            return SyncPage(peer, msg.vertices, None), []
        paging.touched_ms = now_ms
        following = msg.next
        if following is not None and (
            not msg.vertices or (paging.after is not None and following <= paging.after)
        ):
            # A cursor that does not advance would page forever: stop this session.
            self.stats.reject("sync-cursor")
            following = None
            actions = self._strike(peer, "bad-sync")
        else:
            actions = []
        paging.after = following
        paging.more = following is not None
        paging.bulk |= paging.more
        return SyncPage(peer, msg.vertices, paging), actions + self._next_page(peer, paging)

    def ingest_sync_page(
        self, page: SyncPage, checked: list[Prechecked], now_ms: int
    ) -> list[Action]:
        """Second half: store a received page's vertices (`precheck` of `page.vertices`)."""
        actions: list[Action] = []
        # One transaction per page, not per vertex (a commit per vertex cost more than the
        # signature check in bulk catch-up; benchmarks/bench_node.py). Each vertex is still
        # judged on its own; what was accepted is committed when this returns.
        results = self.store.ingest_prechecked(checked, now_ms) if checked else []
        known = {c.vertex.id: c.vertex for c in checked if c.vertex is not None}
        for result in results:
            actions += self._after_ingest(result, page.peer, now_ms, known)
        paging = page.paging
        if paging is not None and self._paging.get(page.peer) is paging:
            useful = (IngestStatus.ACCEPTED, IngestStatus.PENDING)
            if not any(r.status in useful for r in results):
                paging.stopped = True  # nothing new (replays?): stop; heads restart it if needed
            paging.outstanding -= 1
            actions += self._next_page(page.peer, paging)
            if paging.outstanding <= 0 and (paging.stopped or not paging.more):
                del self._paging[page.peer]  # caught up with this peer
        return actions

    def on_sync_failed(self, peer: str) -> None:
        """A request timed out or the stream broke: allow another bulk request later."""
        self._paging.pop(peer, None)
        if self.data is not None:
            self.data.on_failed(peer)

    def on_peer_fault(self, peer: str, reason: str) -> list[Action]:
        """The driver saw `peer` send garbage outside gossip (e.g. on the sync stream)."""
        self.stats.reject(reason)
        return self._strike(peer, reason)

    def _request_since(self, peer: str, now_ms: int) -> list[Action]:
        """Start a paging session with `peer`, unless one is under way (with anyone: every
        peer would send the same history)."""
        if self._paging:
            return []
        have = tuple((h.author, h.seq) for h in self.store.heads())
        paging = _Paging(
            have[: messages.MAX_HAVE_AUTHORS], outstanding=0, more=True, touched_ms=now_ms
        )
        self._paging[peer] = paging
        return self._next_page(peer, paging)

    def _next_page(self, peer: str, paging: _Paging) -> list[Action]:
        if (
            not paging.more
            or paging.stopped
            or paging.outstanding >= max(1, self.config.sync_pipeline)
        ):
            return []
        paging.more = False
        paging.outstanding += 1
        self.stats.sync_requests_sent += 1
        req = messages.SinceAfter(paging.have, self.config.sync_page, paging.after)
        return [SendRequest(peer, messages.encode(req))]

    # --- time -------------------------------------------------------------------------
    def on_tick(self, now_ms: int) -> list[Action]:
        actions: list[Action] = []
        for task in list(self._es_outbox):
            actions += self._flush_results(task, now_ms)
        self.fetcher.want(self.store.wanted(), None, now_ms)
        # While a bulk sync pages through the history, fetching by id would walk the DAG down
        # from the tips one level per round trip, buffer what it gets as orphans and queue on
        # the same sync stream as the pages (a 20,000-vertex catch-up stalled that way). The
        # pages bring those ids, so a peer paging a long history is not asked by id until the
        # session ends; the other peers are, and so is a peer closing a small gap (one page),
        # or a session with a slow or lying peer would starve every fetch.
        for peer, paging in list(self._paging.items()):
            if now_ms - paging.touched_ms > self.config.sync_stall_ms:
                del self._paging[peer]  # an answer lost without a failure report: start over
        bulk = {peer for peer, paging in self._paging.items() if paging.bulk}
        peers = sorted(self.peers - bulk)
        for peer, ids in self.fetcher.due(now_ms, peers, self.rng):
            self.stats.sync_requests_sent += 1
            actions.append(SendRequest(peer, messages.encode(messages.GetVertices(tuple(ids)))))
        # Parents nobody served after every retry: what waits on them would wait forever.
        for _ in self.store.drop_orphans_waiting_on(self.fetcher.take_given_up()):
            self.stats.reject("orphan-abandoned")
        actions += self._anti_entropy(now_ms)
        if self.data is not None:
            for peer, request in self.data.requests(now_ms, sorted(self.peers), self.rng):
                self.stats.sync_requests_sent += 1
                actions.append(SendRequest(peer, request))
        if (
            self._last_heads_ms is None
            or now_ms - self._last_heads_ms >= self.config.heads_interval_ms
        ):
            self._last_heads_ms = now_ms
            heads = messages.Heads(
                tuple(self.store.tips()[: messages.MAX_HEADS]), self.store.count()
            )
            actions.append(Publish(CONTROL_TOPIC, messages.encode(heads)))
        return actions

    def _anti_entropy(self, now_ms: int) -> list[Action]:
        """Ask one random peer (not a banned author's) for everything we lack: a bulk
        session that ends after one empty page when we are in step."""
        interval = self.config.anti_entropy_ms
        if interval <= 0 or self._paging:
            return []
        if self._last_pull_ms is not None and now_ms - self._last_pull_ms < interval:
            return []
        self._last_pull_ms = now_ms
        trusted = [
            peer
            for peer in sorted(self.peers)
            if not self.trust.banned(self.peer_authors.get(peer, b""))
        ]
        return self._request_since(self.rng.choice(trusted), now_ms) if trusted else []

    # --- evolution --------------------------------------------------------------------
    def should_publish(self, task: str, generation: int, fitness: float) -> bool:
        """Every `publish_every` generations, if the best beats what we last published and
        (`publish_front`) the best of the task we know to be real, and if the publication
        sortition picks us (`publish_quorum`; node/protocol/quorum.py)."""
        if generation % self.config.publish_every != 0:
            return False
        last = self.own_templates(task)
        if any(v.payload["generation"] == generation for v in last):
            return False  # already published for this generation (restart after a crash)
        best_published = max((v.payload["objectives"]["fitness"] for v in last), default=None)
        if best_published is not None and fitness <= best_published:
            return False
        if self.config.publish_front:
            front = self.best_measured(task)
            if front is not None and fitness <= front:
                self._publish_waits.pop(task, None)
                return False
        waited = self._publish_waits.get(task, 0)
        if not quorum.publishes(
            self.me, task, generation, waited, self.config.publish_quorum, self.network_size
        ):
            self._publish_waits[task] = waited + 1
            return False
        self._publish_waits.pop(task, None)
        return True

    def best_measured(self, task: str) -> float | None:
        """The best fitness of another author's template of `task` that we re-measured (a
        measurement of ours, not a claim), or None."""
        for standing in self.ranked_templates(task, 2, measured_only=True):
            # Not an overfit one: its validation score is real but not a front to beat.
            if (
                standing.author != self.me
                and standing.measured_fitness is not None
                and not standing.overfit
            ):
                return standing.measured_fitness
        return None

    def publish_template(self, template: Template, now_ms: int) -> tuple[bytes, list[Action]]:
        """Sign `template` as our next vertex, commit it, and gossip it on its task topic."""
        actions = self._publish_identity(now_ms)  # our identity (seq 0) always comes first
        parents = self.store.parents_for(self.me)
        raw = make_vertex(
            self.identity,
            self.store.next_seq(self.me),
            now_ms,
            parents,
            KIND_TEMPLATE,
            template.to_dict(),
            decoders=self.store.decoders,
        )
        vid = decode_vertex(raw).id  # checked by make_vertex already
        actions += self._commit_own(raw, task_topic(template.task), now_ms)
        self._want_own_draw(vid, template.task)  # its held-out score, for display
        return vid, actions

    def publish_task(self, spec: TaskSpec, now_ms: int) -> tuple[bytes, list[Action]]:
        """Sign a task spec as our next vertex and commit it; its id names the task."""
        actions = self._publish_identity(now_ms)
        raw = make_vertex(
            self.identity,
            self.store.next_seq(self.me),
            now_ms,
            self.store.parents_for(self.me),
            KIND_TASK,
            spec.to_dict(),
            decoders=self.store.decoders,
        )
        vid = decode_vertex(raw).id
        return vid, actions + self._commit_own(raw, CONTROL_TOPIC, now_ms)

    def fetch_task_data(self, task_id: bytes) -> bool:
        """Start fetching the data of the task vertex `task_id` (from any peer, at the next
        ticks); False if we hold no such task vertex or have no data cache."""
        vertex = self.store.vertex(task_id)
        if self.data is None or vertex is None or vertex.kind != KIND_TASK:
            return False
        self.data.want(TaskSpec.from_dict(vertex.payload).data)
        return True

    def copied_from(self, template: Template) -> bytes | None:
        """The id of another author's template whose net `template` carries unchanged (the
        same genome bytes), or None if the net is ours. Such a template is never published
        under our key: the win stays credited to its author's template (`peer_generation`).

        Its genetic parents say where to look: the breeder gives an injected migrant, and every
        unmodified copy of it, the migrant's template vertex as its only ancestry
        (node/protocol/breeder.py); a modified descendant carries it too, but a new genome.
        """
        genome = template.genome.to_bytes()
        for vid in template.parents:
            vertex = self.store.vertex(vid)
            if vertex is None or vertex.author == self.me or vertex.kind != KIND_TEMPLATE:
                continue
            try:
                theirs = Template.from_dict(vertex.payload)
            except DecodeError:
                continue
            if theirs.genome.to_bytes() == genome:
                return vid
        return None

    def own_templates(self, task: str) -> list[Vertex]:
        out = []
        for vid in self._own_vertex_ids(KIND_TEMPLATE):
            vertex = self.store.vertex(vid)
            if vertex is not None and vertex.payload["task"] == task:
                out.append(vertex)
        return out

    def genealogy(self, task: str) -> tuple[int, int]:
        """(templates we published for `task`, how many of them descend from another author's
        template): the ledger's own record of whether sharing fed our evolution."""
        own = self.own_templates(task)
        foreign = 0
        for vertex in own:
            for parent_id in vertex.payload["parents"]:
                parent = self.store.vertex(parent_id)
                if parent is not None and parent.author != self.me:
                    foreign += 1
                    break
        return len(own), foreign

    def can_remeasure(self, task: str, task_version: int) -> bool:
        """Whether we could re-measure a claim on (`task`, `task_version`) ourselves: one of our
        tasks, at the version this machine evaluates (`CoreConfig.versions`)."""
        return task in self.config.tasks and self.config.versions.get(task) == task_version

    def ranked_templates(
        self,
        task: str,
        limit: int,
        *,
        include_unverified: bool = True,
        measured_only: bool = False,
    ) -> list[TemplateStanding]:
        """Templates of `task` as we judge them, best first: the one rule for what counts as
        verified (sampled as a migrant, listed or pulled as verified) and for the fitness
        shown as verified. `migrants`, the daemon's `/templates` route and status, and so the
        CLI's `templates list|pull`, all ask this.

        - Left out: banned or equivocating authors, and a template that we or an attester
          with a proven record found false, unless we measured it valid ourselves (our
          measurement wins).
        - Verified: we measured it valid (our own template: our engine measured it), or
          at least `min_attestations` valid verdicts of attesters with a proven record
          (`TrustPolicy.trusted_verifiers`: we checked one of their "valid" attestations against
          our own measurement and found it right) *and* we could re-measure it
          (`can_remeasure`): a task we do not hold or a task version we cannot evaluate is
          never verified on others' word, whoever vouches for it. A count of attestations
          proves nothing by itself: identities are free, so three keys of one liar could
          otherwise make a lie sampled before our own check (issue 17, "collusion").
        - Fitness shown as verified (`measured_fitness`, `measured_by`): a measurement, ours;
          never the number an attester typed. None when we measured nothing.
        - Order: what we measured, by our measurement; then verified on attestations; then
          (if `include_unverified`) the rest, both by claimed fitness; ties by id.

        `measured_only`: only others' templates we re-measured (one cheap query; the daemon's
        `best_verified` asks it on every tick).
        """
        banned = self.trust.banned_authors()
        # Whose verdicts count (`TrustPolicy.trusted_verifiers`). An explicit list
        # (`Store.templates` tests each verdict of a template against it, so its length
        # costs little).
        trusted = self.trust.trusted_verifiers()
        ours = {
            e.id: e
            for e in self.store.templates(
                task, limit=limit + len(banned), trusted=[self.me], include_unverified=False
            )
        }
        entries: dict[bytes, TemplateEntry] = {}
        if not measured_only:
            entries = {
                e.id: e
                for e in self.store.templates(
                    task,
                    limit=limit + 200,  # room for what is left out below
                    trusted=trusted,
                    include_unverified=include_unverified,
                )
            }
        for vid, entry in ours.items():
            entries.setdefault(vid, entry)
        judged: list[tuple[int, float, bytes, TemplateStanding]] = []
        for entry in entries.values():
            measured: float | None = None
            if entry.author == self.me:
                measured = entry.claimed_fitness
            elif entry.id in ours:
                measured = ours[entry.id].verified_fitness
            standing = self.trust.judge(
                entry, measured, self.can_remeasure(entry.task, entry.task_version)
            )
            if standing is not None and standing.awaiting_recheck:
                # Covers the flags no event announces: an attester proven after its flag
                # arrived, a restart that lost our recomputations.
                self._want_recheck(entry.id)
            if standing is None or (not standing.verified and not include_unverified):
                continue
            verified = standing.verified
            group = 0 if measured is not None and verified else 1 if verified else 2
            shown = measured if measured is not None else entry.claimed_fitness
            judged.append((group, -shown, entry.id, standing))
        judged.sort(key=lambda j: j[:3])
        ranked = [j[3] for j in judged[: max(0, limit)]]
        for standing in ranked:
            if standing.author == self.me:
                # Our draw of our own template is not in the ledger: after a restart (or an
                # eviction) it is measured again when the template is listed.
                self._want_own_draw(standing.id, standing.entry.task)
        return ranked

    def migrants(
        self, task: str, k: int, exclude: set[bytes] | frozenset[bytes] = frozenset()
    ) -> list[tuple[bytes, Template]]:
        """Up to `k` verified templates of `task` from others (`ranked_templates`, best
        first), at most one per author (diversity), none of `exclude`."""
        chosen: list[tuple[bytes, Template]] = []
        authors_used: set[bytes] = set()
        for standing in self.ranked_templates(task, 200, include_unverified=False):
            if len(chosen) >= k:
                break
            if not self.trust.sampleable(standing) or standing.author in authors_used:
                continue
            if standing.id in exclude:
                continue
            vertex = self.store.vertex(standing.id)
            if vertex is None:
                continue
            try:
                template = Template.from_dict(vertex.payload)
            except DecodeError:
                continue
            chosen.append((standing.id, template))
            authors_used.add(standing.author)
        return chosen

    # --- re-evaluation ----------------------------------------------------------------
    def _queue_reeval(self, vid: bytes, author: bytes, claimed: float) -> None:
        if vid in self._reeval_queued:
            return
        proven = self.trust.reevaluated_first(author)
        if self._reeval.push(vid, author, claimed, proven, self.rng.random()):
            self._reeval_queued.add(vid)

    def reevaluation_backlog(self) -> int:
        return len(self._reeval)

    def next_reevaluation(self) -> Reevaluation | None:
        """The next claim to check: claims of authors with a record (we found a claim of
        theirs right) first, by claimed fitness, highest first; then the rest in a random
        order; at most `max_reeval_per_author` queued per author
        (node/protocol/reeval_queue.py). Between two claims, at most one recomputation of a
        proven attester's held-out draw that flags a template ours passed
        (`Reevaluation.recheck`): anyone can earn a record and flag templates, so the
        recomputations must not starve the claims (the flag does not count until made).
        After every claim and recomputation, the held-out draw of a template of ours
        (`Reevaluation.own`, display only): one per template we publish, and last, so that a
        score nothing depends on never delays a check that decides trust."""
        if not self._recheck_last and (job := self._next_recheck()) is not None:
            self._recheck_last = True
            return job
        self._recheck_last = False
        if (claim := self._next_claim()) is not None:
            return claim
        if (job := self._next_recheck()) is not None:
            self._recheck_last = True
            return job
        return self.next_own_draw()

    def _next_recheck(self) -> Reevaluation | None:
        while self._rechecks:
            template_id, _ = self._rechecks.popitem(last=False)
            job = self._recheck_job(template_id)
            if job is not None:
                return job
        return None

    def _next_claim(self) -> Reevaluation | None:
        while (queued := self._reeval.pop()) is not None:
            vid = queued[0]
            vertex = self.store.vertex(vid)
            if vertex is None or self.trust.banned(vertex.author):
                continue
            try:
                template = Template.from_dict(vertex.payload)
            except DecodeError:
                continue
            return Reevaluation(vid, vertex.author, template, self._beacon(vid, vertex.author))
        return None

    def next_own_draw(self) -> Reevaluation | None:
        """The next template of ours whose held-out draw is to be measured (display only;
        `Reevaluation.own`), oldest first: `next_reevaluation` serves these last, and a
        reader of a stopped node's ledger, which checks no claims, serves only these."""
        while self._own_draws:
            vid, _ = self._own_draws.popitem(last=False)
            vertex = self.store.vertex(vid)
            if vertex is None or vertex.author != self.me:
                continue
            try:
                template = Template.from_dict(vertex.payload)
            except DecodeError:
                continue
            return Reevaluation(vid, self.me, template, self._beacon(vid, self.me), own=True)
        return None

    def _measured_valid(self, template_id: bytes) -> bool:
        """We re-measured the claim and found it valid (our verdict, kept in the store)."""
        return any(
            v.verifier == self.me and v.verdict == VERDICT_VALID
            for v in self.store.verifications(template_id)
        )

    def _want_own_draw(self, template_id: bytes, task: str) -> None:
        """Ask the driver for the held-out draw of a template of ours (display only), once per
        run: a template of one of our tasks that has no such measurement yet."""
        if (
            template_id in self._own_asked
            or task not in self.config.tolerances
            or len(self._own_draws) >= MAX_OWN_DRAWS
            or self.trust.held_outs.authored(template_id) is not None
        ):
            return
        self._own_draws[template_id] = None
        self._own_asked[template_id] = None
        while len(self._own_asked) > MAX_OWN_ASKED:
            self._own_asked.popitem(last=False)

    def _on_own_draw(self, job: Reevaluation, holdout: Holdout | None, tolerance: float) -> None:
        """Our held-out measurement of a template of ours: shown beside its claim, with the
        overfit mark if the claim stands above it by more than sampling explains
        (`TrustPolicy.authored_held_out`). It decides nothing and is not published."""
        if holdout is None or not math.isfinite(holdout.fitness):
            return  # drivers measure a draw only for a claim that holds (ours does)
        overfit = self.trust.overfit(True, holdout, job.template.fitness, tolerance)
        self.trust.authored_held_out(job.template_id, HeldOut(self.me, holdout, overfit))
        counts = self.stats.own_held_out
        counts["measured"] = counts.get("measured", 0) + 1
        if overfit:
            counts["overfit"] = counts.get("overfit", 0) + 1

    def _want_recheck(self, template_id: bytes) -> None:
        """Queue the recomputation of a proven attester's draw if the policy wants one (one
        entry per template: the next attester's is asked for when this one is made)."""
        if template_id in self._rechecks or len(self._rechecks) >= MAX_RECHECKS:
            return
        if self.trust.recheck_wanted(template_id, self._measured_valid(template_id)):
            self._rechecks[template_id] = None

    def _recheck_job(self, template_id: bytes) -> Reevaluation | None:
        """The job that recomputes the draw the policy still wants recomputed (it may have
        been made, or its attester banned, since it was queued): the template, and the beacon
        recorded in exactly the attestation that carries the attester's record."""
        wanted = self.trust.recheck_wanted(template_id, self._measured_valid(template_id))
        vertex = self.store.vertex(template_id) if wanted is not None else None
        if wanted is None or vertex is None or self.trust.banned(vertex.author):
            return None  # a banned author's template is left out whatever its held-out score
        attestation = self.store.vertex(wanted.attestation) if wanted.attestation else None
        if attestation is None or payloads.HOLDOUT_KEY not in attestation.payload:
            return None
        beacon = payloads.attestation_holdout(attestation.payload)[0]
        try:
            template = Template.from_dict(vertex.payload)
        except DecodeError:
            return None
        return Reevaluation(template_id, vertex.author, template, tuple(beacon), recheck=wanted)

    def _on_rechecked(
        self, job: Reevaluation, holdout: Holdout | None, tolerance: float
    ) -> list[Action]:
        """Our measurement of a proven attester's draw (`Reevaluation.recheck`): the policy
        judges its record with it (`TrustPolicy.held_out_rechecked`: a false one bans the
        attester, and the core drops its connection, as for a false "valid" attestation);
        then the next attester's flag of the template, if any, is queued."""
        if job.recheck is None:
            return []
        judged = self.trust.held_out_rechecked(
            job.template_id, job.recheck, holdout, job.template.fitness, tolerance
        )
        if judged is None:
            return []
        verdict, overfit, outcome = judged
        counts = self.stats.held_out_rechecks
        counts[verdict] = counts.get(verdict, 0) + 1
        if overfit:
            counts["overfit"] = counts.get("overfit", 0) + 1
        actions: list[Action] = []
        if outcome.disconnect:
            actions += self._disconnect_author(job.recheck.verifier, "false-attester")
        self._want_recheck(job.template_id)
        return actions

    def _beacon(self, template_id: bytes, author: bytes) -> tuple[bytes, ...]:
        """The held-out draw's beacon: up to `MAX_BEACON` ids our attestation will reference,
        chosen now that we hold the template. First vertices that list the template as a
        parent (so were signed after it) by authors whose vertices may seed a draw
        (`TrustPolicy.seeds_draws`: not the template's author, whose ids it could grind); then
        our latest vertex and the deepest tips, as for any vertex of ours."""
        children = self.store.children(template_id)
        later = [vid for vid, by in children if by != author and self.trust.seeds_draws(by)][
            : payloads.MAX_BEACON // 2
        ]
        # A child left out above must not come back as a tip: its id may have been ground.
        excluded = {template_id, *(vid for vid, _ in children)}
        chosen = self.store.parents_for(self.me, payloads.MAX_BEACON + 1)
        rest = sorted(v for v in chosen if v not in excluded)
        return tuple(sorted([*later, *rest[: payloads.MAX_BEACON - len(later)]]))

    def on_reevaluated(
        self,
        job: Reevaluation,
        measured: float | None,
        now_ms: int,
        holdout: Holdout | None = None,
        designated: PrivateScore | None = None,
    ) -> tuple[str | None, list[Action]]:
        """Record our re-measurement of a claim. Returns (verdict, actions).

        `measured` is the fitness we re-measured, or None when we cannot judge (e.g. a task
        version we do not have): then nothing is attested and nobody's reputation moves. A
        valid claim is within the task's tolerance of what we measured (evolution.verify).
        We update the author's reputation (once it falls below the ban threshold its peer is
        disconnected) and, if the attestation sortition draws us (`attest_quorum`), publish
        a signed attestation; else the verdict stays in our store. Valid and invalid verdicts
        alike: about `attest_quorum` of them per claim reach the ledger.

        `holdout` is the driver's held-out measurement for `job.holdout_seed` (None: not
        measured). A valid claim that it shows overfit (`Holdout.overfit`) is kept out of the
        migrants and the verified listing (`TrustPolicy.judge`), and the attestation carrying
        the measurement is always published (`TrustPolicy.attests`). `designated` is the
        driver's score on the task's private held-out rows, which only the task's author
        holds: counted only if we are that author, and then always attested, as the task's
        designated verifier (docs/reliability.md, "Designated verifier"). Then the "valid"
        attestations of this claim that others published before our check are judged
        against our measurement (`_judge_attestations`: a record, or a ban).

        A job for a template of ours (`Reevaluation.own`) only records `holdout` for display
        (`_on_own_draw`): no verdict, no attestation, and nobody's reputation moves.
        """
        tolerance = self.config.tolerances.get(job.template.task)
        if tolerance is not None and job.recheck is not None:
            return None, self._on_rechecked(job, holdout, tolerance)  # failed ones given up
        if measured is None or tolerance is None:
            return None, []
        if job.own:
            self._on_own_draw(job, holdout, tolerance)
            return None, []
        if not math.isfinite(measured):
            measured = NONFINITE_FITNESS
        valid = self.trust.claim_valid(job.template.fitness, measured, tolerance)
        verdict = VERDICT_VALID if valid else VERDICT_INVALID
        self.stats.reevaluations[verdict] = self.stats.reevaluations.get(verdict, 0) + 1
        outcome = self.trust.claim_measured(job.author, valid)
        held: tuple[tuple[bytes, ...], int, float, float] | None = None
        overfit = False
        if holdout is not None and math.isfinite(holdout.fitness):
            overfit = self.trust.overfit(valid, holdout, job.template.fitness, tolerance)
            self.trust.held_out(job.template_id, HeldOut(self.me, holdout, overfit))
            held = (job.beacon, holdout.n, holdout.fitness, holdout.stderr)
            if overfit:
                self.stats.reevaluations["overfit"] = self.stats.reevaluations.get("overfit", 0) + 1
            else:
                self._want_recheck(job.template_id)  # a proven attester's flag already here
        private: tuple[int, float] | None = None
        if (
            designated is not None
            and math.isfinite(designated.fitness)
            and self.trust.designates(self.me, self._task_author(job.template.task))
        ):
            private = (designated.n, designated.fitness)
            score = Designated(self.me, designated.fitness, designated.n)
            self.trust.designated_score(job.template_id, score)
        if outcome.promote:
            self._reeval.promote(job.author)  # its queued claims no longer wait behind strangers
        actions: list[Action] = []
        if outcome.disconnect:
            actions += self._disconnect_author(job.author, "lying-author")
        if not self.trust.attests(job.template_id, self.network_size, overfit, private is not None):
            # Not drawn to attest: the verdict is ours alone, kept in our store (it still
            # makes the template verified for us and counts in `ranked_templates`).
            self.store.record_verification(job.template_id, self.me, measured, verdict, now_ms)
            return verdict, actions + self._judge_attestations(job.template_id)
        actions += self._publish_identity(now_ms)  # our identity (seq 0) always comes first
        beacon = job.beacon if held is not None else ()
        own = self.store.parents_for(self.me, payloads.MAX_PARENTS - 1 - len(beacon))
        raw = make_vertex(
            self.identity,
            self.store.next_seq(self.me),
            now_ms,
            sorted(set(own) | {job.template_id} | set(beacon)),
            KIND_ATTESTATION,
            attestation_payload(job.template_id, measured, verdict, held, private),
        )
        actions += self._commit_own(raw, task_topic(job.template.task), now_ms)
        # Now that our measurement is in the store: the attestations that came before it.
        return verdict, actions + self._judge_attestations(job.template_id)


__all__ = [
    "CONTROL_TOPIC",
    "Action",
    "CoreConfig",
    "CoreStats",
    "Disconnect",
    "PeerCore",
    "Publish",
    "Reevaluation",
    "SendRequest",
    "NODE_DECODERS",
    "TemplateStanding",
    "task_tolerances",
    "task_versions",
    "task_topic",
    "es_topic",
    "is_es_group_topic",
]
