"""`qudag-node run`: the trio driver that joins the peer core, libp2p, evolution and HTTP.

Everything here is I/O and scheduling; every decision is the sans-IO `PeerCore`'s. Tasks, all
owned by one nursery (cancel it and everything stops):

- the network (`P2PNode`): gossip validators feed `core.on_gossip` (the ledger ingest happens in
  the validator, so an invalid vertex is never relayed); sync requests go to
  `core.on_sync_request`;
- one evolution loop per task: a generation runs in a child process (`EvolutionProcess`, which
  owns the task's `Breeder`), then the core decides whether to publish the best template and
  which migrants the next generation gets;
- the re-evaluation loop: pulls the most promising unchecked claim from the core, re-measures it
  in a child process (`VerifierProcess`), and sleeps so that it uses at most `reeval_budget_ms`
  of CPU per second;
- a 200 ms tick: fetch missing vertices, heads gossip, peer bookkeeping, metrics;
- the redial loop: bootstrap peers and the peers we remember from earlier runs
  (`node/net/peerbook.py`), re-found through the DHT when their address changed;
- the HTTP status server (routes: node/ops/routes.py, metrics: node/ops/metrics.py).

Sync pages the core asks for are fetched, checked and stored by `SyncPages`
(node/sync_pages.py).

SQLite is used from the trio thread only; evolution state lives in the child processes. Why
children and not threads (the GIL; measured in docs/benchmarks.md, propagation): see
`node/workers/evolution_worker.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
import signal
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any

import blake3
import trio

from qudag.crypto.canonical import DecodeError
from qudag.crypto.keystore import KeyFileNotFoundError, KeystoreError, load_identity, save_identity
from qudag.crypto.signing import Identity, key_id
from qudag.dag.records import StoreError
from qudag.dag.store import Store
from qudag.dag.vertex import decode_vertex
from qudag.evolution.published import blob_cache, set_task_root
from qudag.evolution.tasks import TaskError, get_task
from qudag.node.errors import UserError
from qudag.node.net.peerbook import PEERS_FILE, PeerBook, valid_peer_id
from qudag.node.net.transport import MessageTooLarge, NetConfig, P2PNode, peer_key_seed
from qudag.node.ops.config import NodeConfig
from qudag.node.ops.cpu import cpu_tree
from qudag.node.ops.http import Routes, serve_http
from qudag.node.ops.metrics import NodeMetrics
from qudag.node.ops.observatory import Observatory
from qudag.node.ops.preflight import DataDirLock, check_port_free, listen_host_port
from qudag.node.ops.routes import LedgerRoutes
from qudag.node.protocol.core import (
    CONTROL_TOPIC,
    NODE_DECODERS,
    Action,
    CoreConfig,
    Disconnect,
    PeerCore,
    Publish,
    SendRequest,
    task_tolerances,
    task_topic,
    task_versions,
)
from qudag.node.protocol.datafetch import TaskData
from qudag.node.protocol.generation import (
    Advance,
    BestTemplate,
    BreederRequest,
    GenerationOutcome,
    peer_generation,
)
from qudag.node.protocol.reputation import ReputationPolicy
from qudag.node.sync_pages import SYNC_PIPELINE, SyncPages, now_ms
from qudag.node.workers.evolution_worker import EvolutionProcess, VerifierProcess, WorkerError
from qudag.node.workers.signature_worker import SignatureProcess

log = logging.getLogger("qudag.node")

LEDGER_FILE = "ledger.sqlite3"
TICK_S = 0.2
REDIAL_S = 3.0
# Remembered peers (node/net/peerbook.py) that are not `--bootstrap` peers are redialled with a
# back-off from REDIAL_S up to this: a peer gone for good costs a dial every few minutes.
REDIAL_REMEMBERED_MAX_S = 300.0
DIALS_AT_ONCE = 8  # concurrent redials of a round
DIAL_TIMEOUT_S = 3.0  # per address
FIND_TIMEOUT_S = 5.0  # asking the DHT where a peer listens now
WARN_AFTER_ROUNDS = 3  # failed rounds before a bootstrap peer's absence is worth a warning
SAVE_PEERS_EVERY_S = 300.0  # `seen_ms` alone changes: saved this often (peer changes at once)
NETWORK_SIZE_EVERY_S = 10.0  # authors in the ledger recounted this often (the size estimate)
PROGRESS_EVERY_S = 60.0  # a "where every task stands" line while running


WAIT_PEERS_MAX_S = 60  # the longest `--wait-peers` holds evolution back


def load_or_create_identity(config: NodeConfig) -> Identity:
    passphrase = None
    if config.passphrase_env is not None:
        passphrase = os.environ.get(config.passphrase_env)
        if passphrase is None:
            raise UserError(f"environment variable {config.passphrase_env} is not set")
    path = config.key_path
    try:
        return load_identity(path, passphrase)
    except KeyFileNotFoundError:
        identity = Identity.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_identity(identity, path, passphrase)
        log.info("created key %s at %s", identity.key_id.hex(), path)
        return identity
    except KeystoreError as exc:
        raise UserError(str(exc)) from None


def _task_dir(task: str) -> str:
    return (
        re.sub(r"[^A-Za-z0-9_.-]+", "_", task)[:64]
        + "-"
        + blake3.blake3(task.encode()).hexdigest()[:8]
    )


class Daemon:
    def __init__(
        self,
        config: NodeConfig,
        *,
        on_ready: Callable[[dict[str, Any]], None] | None = None,
        net_config: NetConfig | None = None,
    ) -> None:
        """`net_config`: network parameters other than the defaults (benchmarks compare them)."""
        self.net_config = net_config or NetConfig()
        self.on_ready = on_ready
        # Published tasks (`task:<id>`) load from this data dir's copy of their spec and
        # cached data, here and in the evolution and verifier children started later.
        set_task_root(config.data_dir)
        # Every task goes by its canonical name from here on (topics, ledger, status), so
        # `csv:d.csv` and `csv:d.csv:target=label` are one task and match the templates'.
        canonical = []
        for task in config.tasks:
            try:
                canonical.append(get_task(task).name)
            except TaskError as exc:
                raise UserError(f"--task {task}: {exc}") from None
        config = dataclasses.replace(config, tasks=tuple(dict.fromkeys(canonical)))
        self.config = config
        # What can refuse the start is checked before anything is created (issue 13, items
        # 2-4): ports first, then the data directory's lock, and only then the key and ledger.
        check_port_free(config.http_host, config.http_port, "--http")
        check_port_free(*listen_host_port(config.listen), "--listen")
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.lock = DataDirLock(config.data_dir)
        self.lock.acquire()
        self.identity = load_or_create_identity(config)
        try:
            self.store = Store.open(
                config.data_dir / LEDGER_FILE,
                max_orphans=config.max_orphans,
                max_skew_ms=config.clock_skew_ms,
                decoders=NODE_DECODERS,
            )
        except StoreError as exc:
            raise UserError(str(exc)) from None
        seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
        self.seed = seed
        self.core = PeerCore(
            self.identity,
            self.store,
            CoreConfig(
                tasks=tuple(config.tasks),
                publish_every=config.publish_every,
                migrants=config.migrants,
                es_batch_ms=config.es_batch_ms,
                min_attestations=config.trust_attestations,
                heads_interval_ms=int(config.heads_interval_s * 1000),
                anti_entropy_ms=10_000,
                max_reeval_queue=1_000,
                reputation=ReputationPolicy(ban_below=config.ban_below),
                sync_pipeline=SYNC_PIPELINE,
                tolerances=task_tolerances(config.tasks),
                versions=task_versions(config.tasks),
            ),
            random.Random(seed),
            # The data of published tasks: served to peers, fetched for `run --task ID`.
            data=TaskData(blob_cache(config.data_dir)),
        )
        # Each task's breeder runs in a child process, started by `run` (it restores the task's
        # checkpoint there); these handles mirror its progress as of the last generation.
        self.breeders: dict[str, EvolutionProcess] = {
            task: EvolutionProcess(
                task,
                seed + i,
                config.population,
                # One state per search: a node restarted with the other search starts afresh.
                config.data_dir
                / "evolution"
                / (_task_dir(task) + ("" if config.search == "islands" else ".es")),
                config.search,
            )
            for i, task in enumerate(config.tasks)
        }
        self.es_sets_pooled: dict[str, int] = {}  # other peers' result sets used (es search)
        self.es_lag_sum: dict[str, int] = {}
        self.verifier = VerifierProcess()
        # Signatures of bulk sync pages are checked in this child process (node/
        # signature_worker.py); worker threads (`precheck`) only until it is up or if it fails.
        self.signatures = SignatureProcess()
        self.metrics = NodeMetrics()
        self.net: P2PNode | None = None
        self.best_template_id: dict[str, bytes | None] = {t: None for t in config.tasks}
        # Our best is another author's net, unchanged: the template it is credited to.
        self.best_credited: dict[str, bytes | None] = {t: None for t in config.tasks}
        self.generation_done = trio.Event()
        self.finished = False  # every task done and the node stopped by itself
        self._reported: dict[str, bytes] = {}  # task -> last template logged as published
        self._actions_send, self._actions_recv = trio.open_memory_channel[Action](10_000)
        self._known_peers: set[str] = set()
        self._authors_known = (
            0  # authors in the ledger at the last count (`_estimate_network_size`)
        )
        self._authors_counted_at = -NETWORK_SIZE_EVERY_S
        # The peers we were connected to, across restarts (node/net/peerbook.py): dialled at
        # start with the bootstrap peers, so a node restarted on a new port rejoins by itself.
        self.peerbook = PeerBook.load(config.data_dir / PEERS_FILE)
        self._authenticated: set[str] = set()
        self.sync_pages = SyncPages(self.core, self.signatures, self.metrics, self._queue)
        self.started_ms = now_ms()
        # /templates, /migrants, /identities/ (node/ops/routes.py).
        self.routes = LedgerRoutes(self.core, self._default_task, self._injected)
        # The page at `/` and its JSON routes (node/ops/observatory.py).
        self.observatory = Observatory(
            self.core, peers=self._peers_view, default_task=self._default_task
        )

    # --- actions ----------------------------------------------------------------------
    def _queue(self, actions: list[Action]) -> None:
        for action in actions:
            try:
                self._actions_send.send_nowait(action)
            except trio.WouldBlock:
                log.warning("action queue full: dropping %s", type(action).__name__)

    async def _execute_actions(self, nursery: trio.Nursery) -> None:
        async for action in self._actions_recv:
            assert self.net is not None
            if isinstance(action, Publish):
                try:
                    await self.net.publish(action.topic, action.data)
                except MessageTooLarge as exc:
                    log.error("not published: %s", exc)
            elif isinstance(action, SendRequest):
                nursery.start_soon(self.sync_pages.request, self.net, action)
            elif isinstance(action, Disconnect):
                log.warning("disconnecting %s: %s", action.peer, action.reason)
                self.peerbook.forget(action.peer)
                await self.net.disconnect(action.peer, blacklist=True)

    # --- network callbacks ------------------------------------------------------------
    def _validator(self, topic: str) -> Callable[[str, bytes], bool | None]:
        def validate(peer: str, data: bytes) -> bool | None:
            t0 = now_ms()
            relay, actions = self.core.on_gossip(peer, topic, data, t0)
            self._queue(actions)
            if relay and data[:1] == b"\x92":
                try:
                    vertex = decode_vertex(data)
                    self.metrics.gossip_latency.observe(max(0, t0 - vertex.ts_ms) / 1000.0)
                except Exception:  # noqa: S110 - metrics only; the core has judged it already
                    pass
            return relay

        return validate

    async def _on_message(self, delivery: Any) -> None:
        """Deliveries were already ingested by the validator; nothing more to do."""

    async def _serve_sync(self, peer: str, request: bytes) -> bytes:
        self.metrics.sync_requests.labels(direction="served").inc()
        try:
            return self.core.on_sync_request(peer, request, now_ms())
        except DecodeError as exc:  # VertexError too: what the peer sent is at fault
            self._queue(self.core.on_peer_fault(peer, "bad-sync-request"))
            raise ValueError(f"bad sync request: {exc}") from None
        # Anything else is our own bug: the transport answers "internal error" and logs it with
        # its traceback; the peer is not struck for it.

    def _on_penalty(self, peer: str, reason: str) -> None:
        """Counted through `net.rejections` (reason `net-<reason>`) by `_export_counters`."""

    # --- loops ------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        assert self.net is not None
        while True:
            peers = set(self.net.peers())
            for peer in peers - self._known_peers:
                self.core.on_peer_connected(peer)
            for peer in self._known_peers - peers:
                self.core.on_peer_disconnected(peer)
                self._authenticated.discard(peer)
            self._known_peers = peers
            for peer in peers - self._authenticated:
                public_key = self.net.sync_identity(peer)
                if public_key is not None:
                    self._authenticated.add(peer)
                    self._queue(self.core.on_peer_authenticated(peer, key_id(public_key)))
            self._estimate_network_size(len(peers))
            self._queue(self.core.on_tick(now_ms()))
            self._update_gauges()
            self.observatory.history.maybe_sample(now_ms(), self._history_sample)
            await trio.sleep(TICK_S)

    def _estimate_network_size(self, connected: int) -> None:
        """A lower bound of the network's size for the sortitions of node/protocol/quorum.py
        (peers we reach, authors we hold): too low errs towards more vertices, not fewer.
        Counting authors reads the whole authors table (a 1,952-byte key per row), so it is
        recounted every NETWORK_SIZE_EVERY_S, not every tick."""
        t = time.monotonic()
        if t - self._authors_counted_at >= NETWORK_SIZE_EVERY_S:
            self._authors_counted_at = t
            self._authors_known = self.store.author_count()
        self.core.network_size = max(connected + 1, self._authors_known)

    def _redial_targets(self) -> dict[str, tuple[list[str], bool]]:
        """Peer id -> (addresses to try in order, whether it is a `--bootstrap` peer), for
        every bootstrap and remembered peer. Remembered addresses go first: after a peer
        restarted on a new port, they hold the new one and the configured one is stale."""
        targets: dict[str, tuple[list[str], bool]] = {}
        for peer, known in self.peerbook.peers().items():
            targets[peer] = (known.addrs, False)
        for addr in self.config.bootstrap:
            dial, _, peer = addr.rpartition("/p2p/")
            if not valid_peer_id(peer):
                continue  # P2PNode's discovery warns about it ("needs /p2p/<peer id>")
            addrs, _ = targets.get(peer, ([], True))
            targets[peer] = (list(dict.fromkeys([*addrs, dial])), True)
        return targets

    async def _redial_known_loop(self) -> None:
        """Dial every bootstrap and remembered peer we are not connected to: at start, then
        every REDIAL_S (remembered-only peers back off up to REDIAL_REMEMBERED_MAX_S).

        Why every few seconds: the network's discovery dials the bootstrap peers only while we
        have no peer at all, and forgets peers after a few failed dials. After a partition
        each half still has peers, so without this the halves could stay apart until a stale
        TCP connection happens to recover; with it they meet again within seconds. Why the
        remembered peers (issue 13, item 8): a node restarted on `tcp/0` comes back on a new
        port and its peers keep dialling the old one; it rejoins by dialling the peers it
        remembers, and whoever cannot reach a peer at a known address asks the network for
        its current one (`_redial_peer`). Each round also updates the book with the peers we
        are connected to now."""
        assert self.net is not None
        net = self.net
        limiter = trio.CapacityLimiter(DIALS_AT_ONCE)
        failures: dict[str, int] = {}  # peer -> consecutive failed rounds
        next_try: dict[str, float] = {}  # remembered-only peer -> trio time of its next dial
        saved_at = trio.current_time()
        while True:
            self._remember_peers()
            connected = set(net.peers())
            now = trio.current_time()
            targets = self._redial_targets()
            dialled = []
            async with trio.open_nursery() as dials:
                for peer, (addrs, bootstrap) in targets.items():
                    if peer in connected or peer == net.peer_id or net.is_blacklisted(peer):
                        failures.pop(peer, None)
                        next_try.pop(peer, None)
                        continue
                    if not bootstrap and (
                        now < next_try.get(peer, 0.0) or len(connected) >= self.net_config.max_peers
                    ):
                        continue
                    dials.start_soon(self._redial_peer, peer, addrs, bootstrap, failures, limiter)
                    dialled.append(peer)
            for peer in dialled:
                count = failures.get(peer, 0)
                if count and not targets[peer][1]:
                    delay = min(REDIAL_S * 2 ** min(count, 10), REDIAL_REMEMBERED_MAX_S)
                    next_try[peer] = trio.current_time() + delay
            self._remember_peers()
            if self.peerbook.dirty or trio.current_time() - saved_at > SAVE_PEERS_EVERY_S:
                self.peerbook.save()
                saved_at = trio.current_time()
            await trio.sleep(REDIAL_S)

    async def _redial_peer(
        self,
        peer: str,
        addrs: list[str],
        bootstrap: bool,
        failures: dict[str, int],
        limiter: trio.CapacityLimiter,
    ) -> None:
        """Dial `peer` at its known addresses; if none answers, ask the network where it
        listens now (`P2PNode.find_addrs`: the DHT, and what other connections taught our
        peerstore) and dial what is new. Failures are debug lines; a bootstrap peer missing
        for WARN_AFTER_ROUNDS rounds or more is a warning each round, which the log handler
        shows at most once a minute (qudag.node.ops.logs.RepeatFilter)."""
        assert self.net is not None
        net = self.net
        async with limiter:
            worked = await net.dial_addrs(peer, addrs, DIAL_TIMEOUT_S)
            how = "known address"
            if worked is None:
                found = await net.find_addrs(peer, FIND_TIMEOUT_S)
                fresh = [a for a in found if a not in addrs]
                how = "address found through the network"
                if fresh:
                    worked = await net.dial_addrs(peer, fresh, DIAL_TIMEOUT_S)
                if worked is None and peer in net.peers():
                    worked = ""  # the lookup asked the peer itself, at the address it found
        if worked is None:
            failures[peer] = failures.get(peer, 0) + 1
            log.debug("redial %s at %s failed (round %d)", peer, addrs, failures[peer])
            if bootstrap and failures[peer] >= WARN_AFTER_ROUNDS:
                log.warning(
                    "bootstrap peer %s unreachable at %s and not found through its peers; "
                    "still trying every %g s",
                    peer,
                    ", ".join(addrs),
                    REDIAL_S,
                )
            return
        missed = failures.pop(peer, 0)  # "" may also be another dial of it under way
        if peer in net.peers():
            log.log(
                logging.INFO if missed else logging.DEBUG,
                "connected to %s at %s (%s)",
                peer,
                worked or ", ".join(net.peer_addrs(peer)),
                how,
            )

    def _remember_peers(self) -> None:
        """Note every connected peer and where it listens in the peer book (saved by the
        redial loop when it changed, and at close)."""
        assert self.net is not None
        now = now_ms()
        for peer in self.net.peers():
            if not self.net.is_blacklisted(peer):
                self.peerbook.note(peer, self.net.peer_addrs(peer), now)

    async def _wait_for_peers(self) -> None:
        """`--wait-peers`: hold evolution until that many peers are connected, or until a
        peer's first result set arrives (it saw its peers: the network has begun, and a
        peer that waited for its own count, found through the DHT seconds later, would start
        that many generations behind: with the additive update a permanent offset between
        the centres); at most WAIT_PEERS_MAX_S (then evolve anyway, and say so)."""
        want = self.config.wait_peers
        if want <= 0:
            return
        with trio.move_on_after(WAIT_PEERS_MAX_S) as waited:
            while len(self._known_peers) < want and self.core.stats.es_received == 0:
                await trio.sleep(0.02)
        if waited.cancelled_caught:
            log.warning(
                "evolving with %d of %d peers after %d s (--wait-peers)",
                len(self._known_peers),
                want,
                WAIT_PEERS_MAX_S,
            )

    async def _evolution_loop(self, task: str) -> None:
        breeder = self.breeders[task]
        await self._wait_for_peers()
        while not self.task_done(task):
            evaluations_before = breeder.evaluations
            step = peer_generation(
                self.core,
                task,
                migrants=self.config.migrants,
                injected=breeder.injected,
                share_results=self.config.search == "es",
                clock=now_ms,
            )
            outcome = await self._drive_generation(step, breeder)
            report = outcome.report
            self.metrics.evaluations.labels(task=task).inc(report.evaluations - evaluations_before)
            self.metrics.generation.labels(task=task).set(report.generation)
            self.es_sets_pooled[task] = self.es_sets_pooled.get(task, 0) + outcome.results_pooled
            self.es_lag_sum[task] = self.es_lag_sum.get(task, 0) + sum(outcome.results_lag)
            if outcome.published is not None:
                self.best_template_id[task] = outcome.published
                self.best_credited[task] = None
            elif outcome.credited is not None:
                self.best_credited[task] = outcome.credited
            self._queue(outcome.actions)
            await trio.sleep(0)
        log.info(
            "task %s done: %s (generation %d, best fitness %.4f)",
            task,
            self._done_reason(task),
            breeder.generation,
            breeder.best_fitness,
        )

    def _report_progress(self, summary: bool) -> None:
        """What a daemon's user expects to see after "node ready": a line per template
        published, and (`summary`) one line of where every task stands (issue 13, item 8)."""
        for task, vid in self.best_template_id.items():
            if vid is not None and self._reported.get(task) != vid:
                self._reported[task] = vid
                breeder = self.breeders[task]
                log.info(
                    "published template %s of task %s (generation %d, fitness %.4f)",
                    vid.hex()[:16],
                    task,
                    breeder.generation,
                    breeder.best_fitness,
                )
        if summary and self.breeders:
            tasks = ", ".join(
                f"{task} gen {b.generation} best {b.best_fitness:.4f}"
                for task, b in self.breeders.items()
            )
            log.info(
                "progress: %s; %d peers, %d vertices, %d rejected",
                tasks,
                len(self._known_peers),
                self.store.count(),
                sum(self._rejections().values()),
            )

    async def _progress_loop(self) -> None:
        last_summary = trio.current_time()
        while True:
            await trio.sleep(1.0)
            due = trio.current_time() - last_summary >= PROGRESS_EVERY_S
            if due:
                last_summary = trio.current_time()
            self._report_progress(summary=due)

    def _done_reason(self, task: str) -> str | None:
        """Why `task` stops evolving (--generations, --until-fitness, --max-seconds), if it
        does; checked between generations, so a generation is never cut short."""
        breeder, cfg = self.breeders[task], self.config
        if cfg.generations is not None and breeder.generation >= cfg.generations:
            return f"reached --generations {cfg.generations}"
        if cfg.until_fitness is not None and breeder.best_fitness >= cfg.until_fitness:
            return f"reached --until-fitness {cfg.until_fitness:g}"
        if cfg.max_seconds is not None and (now_ms() - self.started_ms) / 1000 >= cfg.max_seconds:
            return f"spent --max-seconds {cfg.max_seconds:g}"
        return None

    def task_done(self, task: str) -> bool:
        return self._done_reason(task) is not None

    async def _final_sync_round(self) -> None:
        """Before a node exits on its own: one heads announcement after the last publish (a
        peer lacking our last vertices fetches them meanwhile), then until our own fetches are
        done and the action queue is empty; bounded, since a peer may never answer."""
        if not self._known_peers:
            return
        start = trio.current_time()
        heads_by = start + self.config.heads_interval_s + 0.5
        deadline = heads_by + 10.0
        while trio.current_time() < deadline:
            idle = (
                self._actions_send.statistics().current_buffer_used == 0
                and not self.store.wanted()
                and self.store.orphan_count() == 0
            )
            if trio.current_time() >= heads_by and idle:
                break
            await trio.sleep(TICK_S)
        log.info(
            "final sync round with %d peers: %.1f s, %d vertices held",
            len(self._known_peers),
            trio.current_time() - start,
            self.store.count(),
        )

    @staticmethod
    async def _drive_generation(
        step: Generator[BreederRequest, Any, GenerationOutcome], breeder: EvolutionProcess
    ) -> GenerationOutcome:
        """`generation.drive` with awaits: the child process answers the step's requests."""
        answer: Any = None
        try:
            while True:
                request = step.send(answer)
                if isinstance(request, Advance):
                    answer = await breeder.advance(request.migrants, request.results)
                elif isinstance(request, BestTemplate):
                    answer = await breeder.best_template()
                else:  # MarkPublished: checkpointed by the child
                    answer = await breeder.mark_published(request.genome_id, request.vertex_id)
        except StopIteration as done:
            return done.value

    async def _reevaluation_loop(self) -> None:
        budget = self.config.reeval_budget_ms / 1000.0
        while True:
            job = self.core.next_reevaluation() if budget > 0 else None
            if job is None:
                await trio.sleep(0.5)
                continue
            t0 = time.perf_counter()
            # Beside the claim, the held-out score for the job's draw (evolution/holdout.py).
            # As the task's designated verifier (we published it with private rows): the
            # score on them too.
            status, measured, holdout, designated = await self.verifier.verify(
                job.template, job.holdout_seed
            )
            if measured is None:  # a task (version) we do not have: we cannot judge
                log.info("cannot re-evaluate %s: %s", job.template_id.hex()[:16], status)
            spent = time.perf_counter() - t0  # wall time: >= the child's CPU time
            verdict, actions = self.core.on_reevaluated(
                job, measured, now_ms(), holdout, designated
            )
            if verdict is not None:
                self.metrics.reevaluations.labels(task=job.template.task, verdict=verdict).inc()
            self._queue(actions)
            # Keep to the CPU budget: `spent` of work buys spent/budget seconds of wall time.
            await trio.sleep(max(0.0, spent / budget - spent))

    def _rejections(self) -> dict[str, int]:
        """Everything refused so far, by reason: the core's and the network's (`net-...`)."""
        rejected: dict[str, int] = dict(self.core.stats.rejected)
        if self.net is not None:
            for reason, n in self.net.rejections.items():
                rejected["net-" + reason] = rejected.get("net-" + reason, 0) + n
        return rejected

    def _export_counters(self) -> None:
        """Bring /metrics up to the core's and the network's counters, so /metrics and /status
        `rejected` agree."""
        stats = self.core.stats
        self.metrics.catch_up(
            self._rejections(),
            equivocations=stats.equivocations,
            duplicates=stats.duplicates,
            dropped=stats.disconnects,
        )

    def _update_gauges(self) -> None:
        self._export_counters()
        self.metrics.peers.set(len(self._known_peers))
        self.metrics.vertices.set(self.store.count())
        self.metrics.orphans.set(self.store.orphan_count())
        for task in self.config.tasks:
            self.metrics.best_fitness.labels(task=task).set(self.best_verified(task))

    # --- status -----------------------------------------------------------------------
    def best_verified(self, task: str) -> float:
        """Best fitness we can vouch for, a measurement of ours: our own best or a claim we
        re-measured as valid (`PeerCore.ranked_templates`, never an attester's number)."""
        own = self.breeders[task].best_fitness
        top = self.core.ranked_templates(task, 1, measured_only=True)
        if top and top[0].measured_fitness is not None:
            return max(own, top[0].measured_fitness)
        return own

    def status(self) -> dict[str, Any]:
        rejected = self._rejections()
        ids = self.store.topological_order()
        digest = blake3.blake3(b"".join(sorted(ids))).hexdigest()
        tasks = {}
        for task, breeder in self.breeders.items():
            best_id = self.best_template_id.get(task)
            published, bred_from_others = self.core.genealogy(task)
            tasks[task] = {
                "published": published,
                "bred_from_others": bred_from_others,
                "generation": breeder.generation,
                "evaluations": breeder.evaluations,
                "best_fitness": breeder.best_fitness,
                "best_verified_fitness": self.best_verified(task),
                "best_verified_measured_by": "us",  # always a measurement of ours
                "best_template": best_id.hex() if best_id else None,
                "best_credited_to": (
                    credited.hex() if (credited := self.best_credited.get(task)) else None
                ),
                "migrants_injected": len(breeder.injected),
                "es_sets_pooled": self.es_sets_pooled.get(task, 0),
                # mean generations a pooled set was behind ours (how late the network is)
                "es_mean_lag": (
                    self.es_lag_sum.get(task, 0) / self.es_sets_pooled[task]
                    if self.es_sets_pooled.get(task)
                    else None
                ),
            }
        return {
            "peer_id": self.net.peer_id if self.net else None,
            "addrs": self.net.addrs if self.net else [],
            "key_id": self.identity.key_id.hex(),
            "vertices": self.store.count(),
            "vertex_set_digest": digest,
            "tips": len(self.store.tips()),
            "orphans": self.store.orphan_count(),
            "peers": sorted(self._known_peers),
            "tasks": tasks,
            "rejected": rejected,
            "reevaluations": dict(self.core.stats.reevaluations),
            "reevaluation_backlog": self.core.reevaluation_backlog(),
            # others' "valid" attestations judged against our own measurement, by outcome
            # (right: the attester gains a record; false: it is banned; unsure: neither)
            "attestations_checked": dict(self.core.stats.attestations_checked),
            # proven attesters' overfit flags whose draw we measured ourselves (ours passed),
            # by judgement of their record, and "overfit": flagged on our measurement too
            "held_out_rechecks": dict(self.core.stats.held_out_rechecks),
            # our own templates' held-out draws measured (display only), and how many of them
            # mark the template overfit
            "own_held_out": dict(self.core.stats.own_held_out),
            "task_mismatches": dict(self.core.stats.task_mismatches),
            "banned_authors": sorted(a.hex() for a in self.core.trust.banned_authors()),
            "uptime_s": (now_ms() - self.started_ms) / 1000.0,
            # the daemon itself (network, ledger, core) and its workers (evolution,
            # re-evaluation, signature checks), CPU seconds so far
            "cpu_s": cpu_tree(os.getpid()),
            "done": all(self.task_done(task) for task in self.breeders),
        }

    def _peers_view(self) -> list[dict[str, Any]]:
        """Connected peers for the observatory: libp2p id and, once the sync handshake proved
        it, the ML-DSA key id (the author of that peer's vertices)."""
        authors = self.core.peer_authors
        return [
            {
                "peer": peer,
                "author": author.hex() if (author := authors.get(peer)) is not None else None,
            }
            for peer in sorted(self._known_peers)
        ]

    def _history_sample(self) -> dict[str, Any]:
        """One point of the observatory's history: what /status shows, per task."""
        return {
            "vertices": self.store.count(),
            "peers": len(self._known_peers),
            "tasks": {
                task: {
                    "generation": breeder.generation,
                    "best_fitness": breeder.best_fitness,
                    "best_verified_fitness": self.best_verified(task),
                }
                for task, breeder in self.breeders.items()
            },
        }

    def _default_task(self) -> str:
        """The task an HTTP query means when it names none: the node's first."""
        return self.config.tasks[0] if self.config.tasks else ""

    def _injected(self, task: str) -> set[bytes] | None:
        """Migrants the breeder of `task` injected; None if this node does not evolve it."""
        breeder = self.breeders.get(task)
        return None if breeder is None else breeder.injected

    # --- run --------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._run()
        finally:
            with trio.CancelScope(shield=True):
                for worker in self._workers():
                    await worker.aclose()

    def _workers(self) -> list[EvolutionProcess | VerifierProcess | SignatureProcess]:
        return [*self.breeders.values(), self.verifier, self.signatures]

    async def _start_workers(self, started: trio.Event) -> None:
        """Start the evolution children (each restores its task's checkpoint) and the verifier,
        concurrently with the network; a child that fails to start (e.g. a corrupt checkpoint)
        stops the node with its reason (`WorkerError`)."""
        async with trio.open_nursery() as nursery:
            for worker in self._workers():
                if worker is not self.signatures:
                    nursery.start_soon(worker.start)
            nursery.start_soon(self._start_signatures)
        started.set()

    async def _start_signatures(self) -> None:
        """Not fatal: without the signature process, sync pages are verified in threads."""
        try:
            await self.signatures.start()
        except (WorkerError, OSError) as exc:
            log.warning("signature process not started, verifying in threads: %s", exc)

    async def _run(self) -> None:
        topics: Mapping[str, Any] = {CONTROL_TOPIC: self._validator(CONTROL_TOPIC)} | {
            task_topic(t): self._validator(task_topic(t)) for t in self.config.tasks
        }
        net = P2PNode(
            self.identity,
            listen=[self.config.listen],
            bootstrap=list(self.config.bootstrap),
            topics=topics,
            on_message=self._on_message,
            sync_handler=self._serve_sync,
            key_seed=peer_key_seed(self.identity),
            on_penalty=self._on_penalty,
            config=self.net_config,
        )
        host, port = self.config.http_host, int(self.config.http.rsplit(":", 1)[1])
        workers_started = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._start_workers, workers_started)
            if self.config.wait_peers > 0:
                # Peers that wait for us (--wait-peers) count us once we are connected: join
                # only when our evolution child is ready, or they start a whole start-up
                # (seconds: generating mnist1d) ahead of us (docs/studies.md, study 6).
                await workers_started.wait()
            async with net:
                self.net = net
                routes = Routes(
                    status=self.status,
                    metrics=self.metrics.render_prometheus,
                    vertex=self.store.get,
                    extra={
                        **self.routes.handlers(),
                        **self.observatory.handlers(),  # its "/" prefix last
                    },
                )
                http_port = await nursery.start(serve_http, host, port, routes)
                self._queue(self.core.start(now_ms()))
                await workers_started.wait()  # /status shows the restored generation from now on
                nursery.start_soon(self._execute_actions, nursery)
                nursery.start_soon(self._tick_loop)
                nursery.start_soon(self._redial_known_loop)
                nursery.start_soon(self._reevaluation_loop)
                nursery.start_soon(self._progress_loop)
                ready = {
                    "peer_id": net.peer_id,
                    "addrs": net.addrs,
                    "key_id": self.identity.key_id.hex(),
                    "http": f"{host}:{http_port}",
                }
                log.info("node ready: %s", ready)
                if self.on_ready is not None:
                    self.on_ready(ready)
                async with trio.open_nursery() as evolution:
                    for task in self.config.tasks:
                        evolution.start_soon(self._evolution_loop, task)
                self._report_progress(summary=True)
                self.generation_done.set()
                if self.config.when_done == "serve":
                    if self.config.tasks:
                        log.info("every task is done; serving the ledger until a signal")
                    else:  # node/ops/task_join.py: fetching a published task's data
                        log.info("no task of its own: syncing and serving the ledger")
                    await trio.sleep_forever()
                await self._final_sync_round()
                log.info(
                    "every task is done; evolution checkpointed in %s; exiting",
                    self.config.data_dir / "evolution",
                )
                self.finished = True
                nursery.cancel_scope.cancel()

    def close(self) -> None:
        if self.peerbook.dirty:
            self.peerbook.save()
        self.store.close()
        self.lock.release()


async def run_until_signal(daemon: Daemon) -> None:
    """Run the daemon until SIGINT or SIGTERM, then shut down cleanly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def run_then_stop() -> None:
                await daemon.run()  # returns once every task is done (--when-done exit)
                nursery.cancel_scope.cancel()

            nursery.start_soon(run_then_stop)
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
