"""`P2PNode`: the daemon's network, a trio adapter over py-libp2p 0.8.1 that deals only in bytes.

What it gives the daemon: gossipsub topics with content-addressed message ids and validators
that never raise, a request/response protocol (`/qudag/sync/1.0.0`) whose stream is encrypted
with a post-quantum handshake (`qudag.crypto.handshake`), bootstrap and Kademlia discovery,
peer penalties and a blacklist, and counters of everything it rejected. It knows nothing of
vertices or ledgers: the sans-IO core decides what bytes mean.

`P2PNode` is the driver; its parts live beside it: libp2p_patches.py (the library's
workarounds: guarded pubsub, the IDONTWANT router, queue defaults, probes, socket abort),
sync_protocol.py (the `/qudag/sync/1.0.0` server and client), liveness.py (dead connections
and redials) and discovery.py (bootstrap and DHT refreshes), the last three mixed into
`P2PNode`.

py-libp2p 0.8.1 needs care: the library's crash bugs and costly defaults, the failing behaviour
of each, and what we do about it are numbered in docs/libp2p-workarounds.md; the code marks each
with `Workaround N` in the files of node/net/
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import blake3
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INetConn, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12
from libp2p.pubsub.pb import rpc_pb2
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from qudag.crypto.signing import Identity
from qudag.node.net import record_cache, yamux_window
from qudag.node.net.discovery import Discovery
from qudag.node.net.libp2p_patches import (
    ConnectionWatch,
    GuardedPubsub,
    Router,
    abort_socket,
    quiet_reset,
    tcp_peer_addr,
    tune_libp2p_defaults,
)
from qudag.node.net.liveness import Liveness
from qudag.node.net.sync_protocol import (
    SYNC_PROTOCOL,
    SyncChannel,
    SyncHandler,
    SyncProtocol,
)
from qudag.node.protocol.policy import PeerOffences

log = logging.getLogger(__name__)


# A topic validator's verdict on a message: True (valid, relay it), False (invalid: dropped,
# counted, optionally penalised) or None (valid, but for the sender's neighbours only: not
# relayed, not counted; our own such messages still go out to our neighbours).
Validator = Callable[[str, bytes], bool | None]
"""`(from_peer_id, data) -> bool`: sync, cheap; reject only what is provably invalid.

`from_peer_id` is the peer that relayed the message to us (for a neighbour's own message, the
publisher itself): always a connected peer, so the one to ask first for missing parents, and
the accountable one, since honest peers validate before they relay. The publisher (`from_id`,
signed by its libp2p key) is `Delivery.origin`."""


@dataclass(frozen=True)
class Delivery:
    """One gossip message that passed validation, as the daemon sees it."""

    topic: str
    origin: str  # peer id of the publisher (signed by its libp2p key: strict signing is on)
    forwarder: str  # peer id that relayed it to us: ask this one first for missing parents
    data: bytes
    msg_id: bytes


MessageCallback = Callable[[Delivery], Awaitable[None]]
PenaltyCallback = Callable[[str, str], None]
"""`(peer_id, reason)`: told of every protocol violation, e.g. to feed a reputation table."""


def blake3_msg_id(data: bytes) -> bytes:
    """Default content-addressed message id: BLAKE3 of the payload (= vertex id if the caller's
    id is BLAKE3 of the same bytes). Duplicates arriving by different paths are dropped by id."""
    return blake3.blake3(data).digest()


@dataclass(frozen=True)
class NetConfig:
    """Network parameters. Each default is deliberate; see the module docstring."""

    max_message_size: int = 256 * 1024  # gossip payload limit, both directions
    max_sync_message: int = 4 * 1024 * 1024  # request or response plaintext
    sync_handler_timeout: float = 10.0  # server side, per request
    handshake_timeout: float = 5.0
    sync_idle_timeout: float = 60.0  # an idle sync stream is closed after this
    sync_frame_timeout: float = 30.0  # a frame whose header arrived must complete within this
    max_sync_streams_per_peer: int = 4  # inbound; more are reset (each costs a handshake)
    max_sync_streams: int = 64  # inbound, all peers together
    connect_timeout: float = 5.0
    discovery_interval: float = 10.0  # DHT refresh period once settled (starts at 0.5 s)
    # While refreshes change nothing (same peers connected and in the routing table), the
    # period doubles up to this; any change brings it back to `discovery_interval`. Each
    # refresh is 3 random walks of DHT queries: in a settled 8-node mesh they were 16-35 % of
    # a daemon's busy samples (py-spy on two daemons, docs/benchmarks.md).
    discovery_idle_interval: float = 80.0
    max_peers: int = 50  # discovery stops dialling beyond this
    ban_threshold: int = 3  # offences before a peer is blacklisted (each one disconnects)
    penalty_cooldown: float = 30.0  # after an offence, the peer's connections are refused
    heartbeat_interval: int = 1
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    # Gossipsub v1.2 IDONTWANT, sent when we relay a message to tell our mesh peers not to send
    # it to us: only for messages of at least this many bytes (py-libp2p sends one for every
    # message, to every mesh peer, ours included; go-libp2p's threshold is 1 KiB). Never for our
    # own messages, never to the peer that forwarded it or to its origin (neither sends it again).
    idontwant_min_size: int = 64 * 1024
    queue_size: int = 4096  # subscription channel, per-peer RPC queue, delivery channel
    deliver_own: bool = False  # deliver our own publications to on_message too
    # Penalise the forwarder of a message the validator rejects (an honest peer validates
    # before it relays, so only the origin or a non-validating relay forwards invalid data).
    # Off by default: peers running different validator versions would drop each other.
    penalise_invalid: bool = False
    dht: bool = True
    # Dead-connection detection (Workaround 10): every connection silent for `liveness_interval`
    # is pinged (each round); one from whose peer nothing was heard (pong, gossip, sync answer)
    # for `liveness_timeout` is closed and the peer redialled every `redial_interval` for up to
    # `redial_for` seconds. The timeout is many probe periods: on a loaded 2-core machine a
    # busy peer's event loop can be late by seconds, and dropping a live connection costs more
    # (every sync on it fails, the reconnect redoes both handshakes) than noticing a dead one a
    # few seconds later. 0 turns detection off.
    liveness_interval: float = 1.0
    probe_timeout: float = 5.0
    liveness_timeout: float = 10.0
    close_timeout: float = 2.0
    redial_interval: float = 1.0
    redial_for: float = 600.0


class MessageTooLarge(ValueError):
    """A payload is over the configured limit (raised on send; counted on receive)."""


def peer_key_seed(identity: Identity) -> bytes:
    """A 32-byte seed for the libp2p ed25519 key, derived from the ML-DSA identity's secret, so
    one key file gives a node both its identity and a stable peer id. BLAKE3 of a fixed
    domain-separation prefix and the secret: one-way, so the seed reveals nothing about the
    ML-DSA secret. The formula is frozen: changing it would change every node's peer id (and
    so every bootstrap address that names one); tests/test_node_daemon.py pins a vector."""
    return blake3.blake3(b"qudag/libp2p-key/v1" + identity.secret_bytes()).digest()


# Discovery precedes Liveness: Liveness declares the `_dial` that Discovery defines.
class P2PNode(SyncProtocol, Discovery, Liveness):
    """A libp2p peer for the daemon. Use as `async with P2PNode(...) as node:`.

    Everything the node runs lives in a nursery owned by the context manager: leaving the block
    (or cancelling the task) stops it all, within about a second.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
        bootstrap: Sequence[str] = (),
        topics: Mapping[str, Validator | None] | None = None,
        on_message: MessageCallback | None = None,
        sync_handler: SyncHandler | None = None,
        msg_id: Callable[[bytes], bytes] = blake3_msg_id,
        key_seed: bytes | None = None,
        on_penalty: PenaltyCallback | None = None,
        config: NetConfig | None = None,
    ) -> None:
        """
        identity: the ML-DSA-65 identity that signs our side of every sync handshake.
        listen: multiaddrs to listen on (tcp port 0 picks a free port; see `addrs`).
        bootstrap: full multiaddrs (`.../p2p/<peer id>`) to dial at start and for discovery.
        topics: topic -> validator (or None: accept all) subscribed at start.
        on_message: awaited for each validated gossip message, one at a time, in order.
        sync_handler: serves `/qudag/sync/1.0.0` requests; None = the protocol answers errors.
        msg_id: content-addressed message id of a payload (must be cheap and never raise).
        key_seed: 32 bytes seeding the libp2p ed25519 key (a stable peer id; see
            `peer_key_seed(identity)`); None = a random key each run.
        on_penalty: told `(peer_id, reason)` for every protocol violation by a peer.
        """
        self.identity = identity
        self.config = config or NetConfig()
        self._listen = [multiaddr.Multiaddr(a) for a in listen]
        self._bootstrap = [multiaddr.Multiaddr(a) for a in bootstrap]
        self._initial_topics = dict(topics or {})
        self._on_message = on_message
        self._sync_handler = sync_handler
        self._msg_id_fn = msg_id
        self._on_penalty = on_penalty
        self._rejections: Counter[str] = Counter()
        self._stats: Counter[str] = Counter()
        # Which peers are refused (blacklist, cooldowns) is the policy's
        # (node/protocol/policy.py); the transport reports offences and carries it out.
        self._offences: PeerOffences[ID] = PeerOffences(
            self.config.ban_threshold, self.config.penalty_cooldown
        )
        self._forwarders: OrderedDict[bytes, str] = OrderedDict()
        self._validators: dict[str, Validator | None] = {}
        self._sync_channels: dict[ID, SyncChannel] = {}
        self._sync_locks: dict[ID, trio.Lock] = {}
        self._sync_identities: dict[ID, bytes] = {}
        self._sync_streams: Counter[ID] = Counter()  # open inbound sync streams per peer
        self._dial_failures: Counter[ID] = Counter()
        self._dialing: set[ID] = set()
        self._alive_at: dict[INetConn, float] = {}  # connection -> trio time of its last pong
        self._heard_at: dict[ID, float] = {}  # peer -> trio time of its last gossip/sync answer
        self._probing: set[INetConn] = set()
        # peer lost to a dead connection -> (redial until, its addresses when it was lost)
        self._lost: dict[ID, tuple[float, list[multiaddr.Multiaddr]]] = {}
        self._nursery: trio.Nursery | None = None
        self._kick_send: trio.MemorySendChannel[ID] | None = None
        self._deliveries: trio.MemorySendChannel[tuple[str, rpc_pb2.Message]] | None = None
        self._exit_stack: AsyncExitStack | None = None

        tune_libp2p_defaults(self.config.queue_size, 4 * self.config.max_message_size)
        record_cache.install()  # Workaround 11
        yamux_window.install()  # Workaround 12
        key_pair = create_new_key_pair(key_seed)
        # Workaround 4: Noise is the only security transport offered or accepted.
        self.host = new_host(
            key_pair=key_pair,
            sec_opt={
                NOISE_PROTOCOL_ID: NoiseTransport(
                    key_pair, noise_privkey=create_x25519_key_pair().private_key
                )
            },
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        )
        cfg = self.config
        self.router = Router(
            [PROTOCOL_ID_V12, PROTOCOL_ID_V11],
            idontwant_min_size=cfg.idontwant_min_size,
            degree=cfg.degree,
            degree_low=cfg.degree_low,
            degree_high=cfg.degree_high,
            heartbeat_interval=cfg.heartbeat_interval,
            spam_protection_enabled=False,  # counts own publishes; 10 msg/s per forwarder
        )
        self.pubsub = GuardedPubsub(
            self,
            self.host,
            self.router,
            msg_id_constructor=self._message_id,
            max_inbound_rpc_size=4 * cfg.max_message_size + 64 * 1024,
        )
        self.dht: KadDHT | None = KadDHT(self.host, DHTMode.SERVER) if cfg.dht else None
        self.host.set_stream_handler(SYNC_PROTOCOL, self._serve_sync)
        # Workaround 1, for every other handler (identify, ping, kad, ...): a raising handler
        # must cost a stream, not the node. Pubsub's own handler is guarded in its subclass.
        mux_handlers = self.host.get_mux().handlers
        for protocol, handler in list(mux_handlers.items()):
            if (
                protocol is not None
                and handler is not None
                and protocol not in (*self.router.get_protocols(),)
            ):
                self.host.set_stream_handler(protocol, self._guard(protocol, handler))
        self.host.get_network().register_notifee(ConnectionWatch(self._on_connected))

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> P2PNode:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await stack.enter_async_context(self._run())
        except BaseException:
            await stack.aclose()
            raise
        self._exit_stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._exit_stack = self._exit_stack, None
        if stack is not None:
            return await stack.__aexit__(exc_type, exc, tb)
        return None

    @asynccontextmanager
    async def _run(self) -> AsyncIterator[None]:
        # Workaround 2: every service whose handler is already registered runs before the host
        # listens or dials.
        async with AsyncExitStack() as services:
            await services.enter_async_context(background_trio_service(self.pubsub))
            await services.enter_async_context(background_trio_service(self.router))
            if self.dht is not None:
                await services.enter_async_context(background_trio_service(self.dht))
            await self.pubsub.wait_until_ready()
            deliveries_send, deliveries_recv = trio.open_memory_channel[
                tuple[str, rpc_pb2.Message]
            ](self.config.queue_size)
            self._deliveries = deliveries_send
            async with self.host.run(self._listen), trio.open_nursery() as nursery:
                self._nursery = nursery
                self._kick_send, kick_recv = trio.open_memory_channel[ID](256)
                nursery.start_soon(self._dispatch, deliveries_recv)
                nursery.start_soon(self._enforce_blacklist, kick_recv)
                for topic, validator in self._initial_topics.items():
                    await self.subscribe(topic, validator)
                nursery.start_soon(self._discovery_loop)
                if self.config.liveness_timeout > 0:
                    nursery.start_soon(self._liveness_loop)
                    nursery.start_soon(self._redial_loop)
                try:
                    yield
                finally:
                    nursery.cancel_scope.cancel()
                    self._nursery = None

    # ----------------------------------------------------------------- identity and peers

    @property
    def peer_id(self) -> str:
        return self.host.get_id().to_base58()

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs others can dial (`.../p2p/<peer id>`); valid once started."""
        return [str(a) for a in self.host.get_addrs()]

    def peers(self) -> list[str]:
        """Currently connected peers."""
        return sorted(p.to_base58() for p in self.host.get_connected_peers())

    def topic_peers(self, topic: str) -> list[str]:
        """Connected peers known to be subscribed to `topic`."""
        return sorted(p.to_base58() for p in self.pubsub.peer_topics.get(topic, set()))

    def sync_identity(self, peer_id: str) -> bytes | None:
        """The ML-DSA public key a peer proved in its last sync handshake with us, if any."""
        return self._sync_identities.get(ID.from_base58(peer_id))

    @property
    def rejections(self) -> dict[str, int]:
        """What this node rejected or dropped, by reason (for /status and /metrics)."""
        return dict(self._rejections)

    @property
    def stats(self) -> dict[str, int]:
        """Traffic counters: published, delivered, sync requests served and made."""
        return dict(self._stats)

    def health(self) -> dict[str, bool]:
        """Whether each libp2p service still runs: a library task that fails cancels its whole
        service (bug 9), which the daemon should report rather than gossip into the void."""
        services: dict[str, Any] = {"pubsub": self.pubsub, "gossipsub": self.router}
        if self.dht is not None:
            services["dht"] = self.dht
        out = {}
        for name, service in services.items():
            manager = getattr(service, "_manager", None)
            out[name] = bool(manager is not None and manager.is_running)
        out["network"] = self._nursery is not None
        return out

    def is_blacklisted(self, peer_id: str) -> bool:
        return ID.from_base58(peer_id) in self._offences.blacklisted

    async def connect(self, addr: str, timeout: float | None = None) -> str:
        """Dial a full multiaddr; returns the peer id. Raises on failure (trio.TooSlowError...)."""
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        if self._refused(info.peer_id):
            raise ConnectionRefusedError(f"{info.peer_id} is blacklisted or cooling down")
        self._unblock(info.peer_id)
        with trio.fail_after(timeout or self.config.connect_timeout):
            await self.host.connect(info)
        if self.dht is not None:
            await self.dht.add_peer(info.peer_id, skip_server_mode_check=True)
        return info.peer_id.to_base58()

    def peer_addrs(self, peer_id: str) -> list[str]:
        """Where a peer listens, as far as we know now: what we dialled and what its identify
        told us (the peerstore), else the DHT routing table. Without `/p2p/<id>`."""
        pid = ID.from_base58(peer_id)
        suffix = f"/p2p/{peer_id}"
        return [str(a).removesuffix(suffix) for a in self._known_addrs(pid)]

    def _reached_at(self, pid: ID, addr: str) -> bool:
        """Whether a connection to `pid` runs over TCP to `addr` (an /ip4 or /ip6 TCP address;
        True for any other address, whose form a socket's peer name cannot be compared to)."""
        dialled = addr.split("/p2p/", 1)[0]
        if not dialled.startswith(("/ip4/", "/ip6/")) or "/tcp/" not in dialled:
            return True
        reached = {tcp_peer_addr(c) for c in self.host.get_network().get_connections(pid)}
        return None in reached or dialled in reached

    async def dial_addrs(self, peer_id: str, addrs: Sequence[str], timeout: float) -> str | None:
        """Dial `peer_id` at each of `addrs` in turn until one answers: the address that worked
        ("" if we were connected, or another dial of it is under way, already), None if none
        did or the peer is refused.

        One address at a time because libp2p dials a single TCP address per peer (the first in
        its peerstore: the swarm's "smart address selection"), so a stale address remembered
        from before the peer restarted would hide its new one: each attempt leaves only the
        address being tried in the peerstore. Failures are the caller's to report."""
        pid = ID.from_base58(peer_id)
        if pid in self._dialing:
            return ""
        if pid == self.host.get_id() or self._refused(pid):
            return None
        self._dialing.add(pid)
        try:
            for addr in addrs:
                if pid in self.host.get_connected_peers():
                    return ""
                try:
                    info = PeerInfo(pid, [multiaddr.Multiaddr(addr)])
                except Exception as exc:  # a bad address: the next one may do
                    log.debug("cannot dial %s at %r: %r", peer_id, addr, exc)
                    continue
                self.host.get_peerstore().clear_addrs(pid)
                self._unblock(pid)
                try:
                    with trio.fail_after(timeout):
                        await self.host.connect(info)
                except Exception as exc:  # TooSlowError, SwarmException, OSError...
                    log.debug("dial %s at %s failed: %r", peer_id, addr, exc)
                    continue
                # libp2p's connect returns at once when another dial (a DHT query's) connected
                # meanwhile: then `addr` is not where the peer was reached.
                if not self._reached_at(pid, addr):
                    return ""
                self._dial_failures.pop(pid, None)
                self._stats["dials"] += 1
                if self.dht is not None:
                    await self.dht.add_peer(pid, skip_server_mode_check=True)
                return addr
            return None
        finally:
            self._dialing.discard(pid)

    async def find_addrs(self, peer_id: str, timeout: float) -> list[str]:
        """Ask the network where `peer_id` listens now; what we know of it afterwards.

        A Kademlia lookup of its id: the peers closest to it answer with the addresses their
        peerstores hold (taught by their own connections to it) and signed peer records,
        which land in our peerstore. `KadDHT.find_peer` is not used: it answers from the
        local routing table and peerstore first, i.e. with the stale address that has just
        failed (`dial_addrs` clears the peerstore of a peer it fails to reach, so what the
        peerstore holds after the lookup is news). Bounded by `timeout`; never raises."""
        pid = ID.from_base58(peer_id)
        if self.dht is not None and self.host.get_connected_peers():
            with trio.move_on_after(timeout):
                try:
                    await self.dht.peer_routing.find_closest_peers_network(pid.to_bytes())
                except Exception as exc:  # the lookup is a hint: failing it is not news
                    log.debug("DHT lookup of %s failed: %r", peer_id, exc)
        return self.peer_addrs(peer_id)

    async def disconnect(self, peer_id: str, *, blacklist: bool = False) -> None:
        """Close every connection to a peer; with `blacklist`, also refuse it from now on."""
        pid = ID.from_base58(peer_id)
        if blacklist:
            self._offences.blacklist(pid)
            self._apply_blacklist(pid)
        await self._disconnect(pid)

    def _apply_blacklist(self, pid: ID) -> None:
        """Carry out the policy's blacklisting of `pid` in libp2p's own tables."""
        self._count("blacklisted")
        if getattr(self.pubsub, "_manager", None) is not None:
            self.pubsub.add_to_blacklist(pid)  # resets its pubsub stream only (Workaround 5)
        if self.dht is not None:
            self.dht.routing_table.remove_peer(pid)

    async def _disconnect(self, pid: ID) -> None:
        """Close every connection to `pid` (Workaround 10: never hangs, always removes them)."""
        self._lost.pop(pid, None)
        channel = self._sync_channels.pop(pid, None)
        if channel is not None:
            await quiet_reset(channel.stream)
        async with trio.open_nursery() as closing:
            for conn in list(self.host.get_network().get_connections(pid)):
                closing.start_soon(self._close_connection, conn)

    async def _close_connection(self, conn: INetConn) -> None:
        """Tear one connection down in bounded time, whatever state its socket is in.

        `SwarmConn.close` is what removes a connection from the swarm, resets its streams and
        notifies pubsub (which drops the peer from gossipsub's mesh and its peer tables); it
        hangs on a dead socket (Workaround 10), so the socket is aborted first, the close gets
        `close_timeout`, and whatever it did not finish is done here."""
        pid = conn.muxed_conn.peer_id
        self._alive_at.pop(conn, None)
        try:
            abort_socket(conn)
        except Exception as exc:  # an unexpected transport: its own close must do
            log.debug("abort socket to %s: %r", pid, exc)
        with trio.CancelScope(shield=True), trio.move_on_after(self.config.close_timeout):
            try:
                await conn.close()
            except Exception as exc:  # already closing or gone
                log.debug("close connection to %s: %r", pid, exc)
        try:
            await self._forget_connection(conn, pid)
        except Exception:
            log.exception("cleanup after closing a connection to %s failed", pid)

    async def _forget_connection(self, conn: INetConn, pid: ID) -> None:
        network = self.host.get_network()
        if conn in network.get_connections(pid):
            self._count("close-forced")
            network.remove_conn(conn)  # type: ignore[attr-defined]
        if not network.get_connections(pid):
            channel = self._sync_channels.pop(pid, None)
            if channel is not None:
                await quiet_reset(channel.stream)
            if pid in self.pubsub.peers:
                self.pubsub._handle_dead_peer(pid)

    # ----------------------------------------------------------------- liveness
    def _unblock(self, pid: ID) -> None:
        """Take `pid` out of the swarm's negative dial cache before we dial it ourselves.

        After one dial whose every address failed (a peer restarting: connection refused),
        libp2p refuses to dial that peer again for 60 s without trying; a node restarted after
        a crash, or a partition's other half, would stay unreachable that long. Which peers to
        dial, and how often, is decided here (`_dial`, `_redial_loop`, `dial_addrs` for the
        daemon's redial of bootstrap and remembered peers), so the cache is bypassed for our
        own dials."""
        unblock = getattr(self.host.get_network(), "unblock_peer", None)
        if unblock is not None:
            unblock(pid)

    def _refused(self, pid: ID) -> bool:
        """Blacklisted, or penalised recently (`PeerOffences.refuses`): connections from or to
        it are closed at once."""
        return self._offences.refuses(pid, trio.current_time())

    def _on_connected(self, pid: ID) -> None:
        if self._refused(pid):
            self._count(
                "blacklisted-connection"
                if pid in self._offences.blacklisted
                else "cooldown-connection"
            )
            if self._kick_send is not None:
                try:
                    self._kick_send.send_nowait(pid)
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    pass

    async def _enforce_blacklist(self, kicks: trio.MemoryReceiveChannel[ID]) -> None:
        async for pid in kicks:
            await self._disconnect(pid)

    def _count(self, reason: str) -> None:
        self._rejections[reason] += 1

    def _penalise(self, pid: ID, reason: str) -> None:
        """A peer broke the protocol: count it, tell the daemon, drop the peer, ban repeaters."""
        self._count(reason)
        blacklisted_now = self._offences.offend(pid, trio.current_time())
        if self._on_penalty is not None:
            try:
                self._on_penalty(pid.to_base58(), reason)
            except Exception:
                log.exception("on_penalty callback failed")
        if blacklisted_now:
            self._apply_blacklist(pid)
        # Drop the peer; the policy keeps it away for a while: without the cooldown, DHT
        # discovery (ours or the peer's) and pubsub's stream retry (which dials) re-connect it
        # within a second.
        if self.dht is not None:
            self.dht.routing_table.remove_peer(pid)
        if self._nursery is not None:
            if getattr(self.pubsub, "_manager", None) is not None:
                self.pubsub.add_to_blacklist(pid)
            self._nursery.start_soon(self._disconnect, pid)
            self._nursery.start_soon(self._end_cooldown, pid)

    async def _end_cooldown(self, pid: ID) -> None:
        await trio.sleep(self._offences.cooldown_s)
        if not self._refused(pid):
            self.pubsub.remove_from_blacklist(pid)

    def _guard(self, protocol: str, handler: Callable[[INetStream], Awaitable[None]]) -> Any:
        async def guarded(stream: INetStream) -> None:
            try:
                await handler(stream)
            except Exception as exc:
                self._count(f"stream-error:{protocol}")
                log.info("handler for %s failed: %r", protocol, exc)
                await quiet_reset(stream)

        return guarded

    # ----------------------------------------------------------------- gossip

    def _payload_id(self, data: bytes) -> bytes:
        try:
            return bytes(self._msg_id_fn(data))
        except Exception:  # never let a caller's id function break libp2p's internals
            log.exception("msg_id function failed; using BLAKE3 of the payload")
            return blake3_msg_id(data)

    def _message_id(self, msg: rpc_pb2.Message) -> bytes:
        return self._payload_id(msg.data)

    def _make_validator(self, topic: str) -> Callable[[ID, rpc_pb2.Message], bool]:
        """Workaround 3: the validator libp2p calls never raises; it only returns a bool."""

        def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            try:
                data = msg.data
                if len(data) > self.config.max_message_size:
                    self._count("oversize")
                    return False
                predicate = self._validators.get(topic)
                relay = forwarder.to_base58()
                verdict = True if predicate is None else predicate(relay, data)
                if verdict is None:
                    if forwarder != self.host.get_id():
                        self._stats["not-relayed"] += 1
                        return False  # handled by the predicate; libp2p must not relay it
                elif not verdict:
                    self._count("invalid")
                    if self.config.penalise_invalid and forwarder != self.host.get_id():
                        self._penalise(forwarder, "gossip-invalid")
                    return False
                forwarders = self._forwarders
                forwarders[self._message_id(msg)] = relay
                while len(forwarders) > 4 * self.config.queue_size:
                    forwarders.popitem(last=False)
                return True
            except Exception:
                log.exception("validator for topic %s raised; message rejected", topic)
                self._count("validator-error")
                return False

        return validate

    async def subscribe(self, topic: str, validator: Validator | None = None) -> None:
        """Subscribe to `topic`; messages go to `on_message`. Call while running."""
        if self._nursery is None:
            raise RuntimeError("subscribe() needs a running node (inside `async with`)")
        self._validators[topic] = validator
        if topic in self.pubsub.topic_ids:
            return
        self.pubsub.set_topic_validator(topic, self._make_validator(topic), False)
        subscription = await self.pubsub.subscribe(topic)
        self._nursery.start_soon(self._drain, topic, subscription)

    async def _drain(self, topic: str, subscription: Any) -> None:
        """Move messages out of libp2p's subscription channel at once (it drops when full)."""
        assert self._deliveries is not None
        async for msg in subscription:
            await self._deliveries.send((topic, msg))

    async def _dispatch(self, deliveries: trio.MemoryReceiveChannel[Any]) -> None:
        me = self.host.get_id().to_bytes()
        async for topic, msg in deliveries:
            if msg.from_id == me and not self.config.deliver_own:
                continue
            msg_id = self._message_id(msg)
            origin = ID(msg.from_id).to_base58()
            forwarder = self._forwarders.pop(msg_id, origin)
            self._stats["delivered"] += 1
            if self._on_message is None:
                continue
            try:
                await self._on_message(Delivery(topic, origin, forwarder, msg.data, msg_id))
            except Exception:  # a daemon bug must not stop the network; it is logged loudly
                log.exception("on_message callback failed")
                self._count("callback-error")

    async def publish(self, topic: str, data: bytes) -> bytes:
        """Publish `data` on `topic` (subscribed or not); returns its message id."""
        if len(data) > self.config.max_message_size:
            self._count("oversize-send")
            raise MessageTooLarge(
                f"{len(data)} bytes > max_message_size {self.config.max_message_size}"
            )
        await self.pubsub.publish(topic, bytes(data))
        self._stats["published"] += 1
        return self._payload_id(data)
