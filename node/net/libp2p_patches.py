"""libp2p patches and workarounds: what py-libp2p 0.8.1 needs to run a node safely.

Everything here changes or guards library behaviour (the numbered workarounds in the
docstring of node/net/transport.py) and knows nothing of our protocols: `P2PNode` composes
these parts, so a library upgrade is checked against this one file.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import multiaddr
import trio
from google.protobuf.message import DecodeError as ProtobufDecodeError
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.peer.id import ID
from libp2p.protocol_muxer.exceptions import ProtocolNotSupportedError
from libp2p.protocol_muxer.multiselect_client import MultiselectClient
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.pubsub import pubsub as pubsub_module
from libp2p.pubsub import rpc_queue as rpc_queue_module
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub

if TYPE_CHECKING:
    from qudag.node.net.transport import P2PNode

# One logger for the whole network layer, so its configuration does not depend on the split.
log = logging.getLogger("qudag.node.net.transport")


def tune_libp2p_defaults(queue_size: int, max_rpc: int) -> None:
    """Raise libp2p's module-level queue defaults (32 -> `queue_size`): beyond 32 queued items
    it drops messages (the subscription channel with a warning, the per-peer RPC queue at DEBUG
    level). These are process-wide defaults read when a subscription or peer queue is created;
    one node per process is the daemon's shape, so setting them here is safe."""
    pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = max(
        pubsub_module.SUBSCRIPTION_CHANNEL_SIZE, queue_size
    )
    current = rpc_queue_module.RpcQueue.__init__.__defaults__ or (32, 1024 * 1024)
    rpc_queue_module.RpcQueue.__init__.__defaults__ = (
        max(int(current[0]), queue_size),
        max(int(current[1]), max_rpc),
    )


def quiet_libp2p_logging(level: int = logging.ERROR) -> None:
    """Silence libp2p's noisy loggers (KadDHT logs an empty WARNING on almost every query, the
    pubsub layer warns on every drop we already count). For daemons and tests; not called by
    `P2PNode` itself, because logging configuration belongs to the application."""
    for name in ("libp2p", "multiaddr", "async_service"):
        logging.getLogger(name).setLevel(level)


async def probe_connection(conn: INetConn, timeout: float) -> bool:
    """True if the peer at the other end of `conn` answered anything within `timeout`.

    The liveness question is "is anybody there", not "does it speak ping": a peer that answers
    the ping protocol's negotiation with "na" (e.g. a js-libp2p node without the ping service)
    has just proved that the connection carries its bytes. libp2p's `ping_connection` reports
    that answer as a failure (its `select_one_of` turns "na" into a generic negotiation error),
    and such a peer was dropped as dead after `liveness_timeout` (issue 13, item 9)."""
    with trio.move_on_after(timeout):
        stream: INetStream | None = None
        try:
            stream = await conn.new_stream()
            communicator = MultiselectCommunicator(stream)
            client = MultiselectClient()
            await client.handshake(communicator)  # the peer's multistream header: an answer
            try:
                await client.try_select(communicator, PING_PROTOCOL)
            except ProtocolNotSupportedError:
                return True
            await perform_ping_roundtrip(stream)
            return True
        except trio.Cancelled:
            raise
        except Exception as exc:  # reset, closed, garbage: no proof of life from this probe
            log.debug("ping probe failed: %r", exc)
            return False
        finally:
            if stream is not None:
                await quiet_reset(stream)
    return False


async def quiet_reset(stream: INetStream) -> None:
    """Reset a stream even from a cancelled scope; never raise (it may already be dead)."""
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        try:
            await stream.reset()
        except Exception:  # the stream or connection may already be gone
            pass


def _socket_stream(conn: Any) -> trio.SocketStream | None:
    """The TCP stream under a libp2p connection: SwarmConn -> Yamux -> SecureSession -> Noise
    reader/writer -> RawConnection -> TrioTCPStream -> trio.SocketStream (None for others)."""
    obj = conn
    for _ in range(12):
        if isinstance(obj, trio.SocketStream):
            return obj
        for attr in ("muxed_conn", "secured_conn", "conn", "read_writer", "read_write_closer"):
            inner = getattr(obj, attr, None)
            if inner is not None and inner is not obj:
                obj = inner
                break
        else:
            inner = getattr(obj, "stream", None)
            if inner is None or inner is obj:
                return None
            obj = inner
    return None


def tcp_peer_addr(conn: Any) -> str | None:
    """`/ip4/HOST/tcp/PORT` of the remote end of a connection's TCP socket (None for other
    transports, or a socket already gone)."""
    stream = _socket_stream(conn)
    if stream is None:
        return None
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return None
    return f"/ip{6 if ':' in host else 4}/{host}/tcp/{port}"


def abort_socket(conn: Any) -> bool:
    """Close a connection's TCP socket at once with a reset (SO_LINGER 0): every task blocked
    reading or writing it wakes with an error, so libp2p's own teardown can no longer hang on
    it, and a peer that is still there learns at once that the connection is gone."""
    stream = _socket_stream(conn)
    if stream is None:
        return False
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    stream.socket.close()
    return True


_IDONTWANT_PROTOCOLS = (PROTOCOL_ID_V12,)


class GuardedPubsub(Pubsub):
    """Pubsub with the crash bugs guarded and delivery drops counted."""

    def __init__(self, node: P2PNode, *args: Any, **kwargs: Any) -> None:
        self._node = node
        super().__init__(*args, **kwargs)

    async def stream_handler(self, stream: INetStream) -> None:
        # Workaround 2: a stream that arrives before the service runs has no manager yet.
        if getattr(self, "_manager", None) is None:
            await quiet_reset(stream)
            return
        try:
            await super().stream_handler(stream)
        except ProtobufDecodeError as exc:  # Workaround 1: the peer sent a malformed RPC
            peer_id = stream.muxed_conn.peer_id
            log.info("malformed pubsub RPC from %s: %r", peer_id, exc)
            await quiet_reset(stream)
            self._handle_dead_peer(peer_id)
            self._node._penalise(peer_id, "pubsub-malformed")
        except Exception as exc:  # Workaround 1: anything else escaping (e.g. a connection
            # torn down mid-read) must not reach the Swarm either; not the peer's fault per se
            peer_id = stream.muxed_conn.peer_id
            log.debug("pubsub stream from %s failed: %r", peer_id, exc)
            self._node._count("pubsub-stream-error")
            await quiet_reset(stream)
            self._handle_dead_peer(peer_id)

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        # Workaround 7: yamux splits a write into 64 KiB frames and locks per frame, and pubsub
        # writes to a peer's stream from several tasks (the queue sender, gossipsub's replay of
        # recent messages and flush of pending ones). Two RPCs over 64 KiB written at once
        # interleave their frames and the receiver sees garbage (DecodeError): one writer at a
        # time per stream.
        lock = getattr(stream, "_qudag_write_lock", None)
        if lock is None:
            lock = trio.Lock()
            stream._qudag_write_lock = lock  # type: ignore[attr-defined]
        async with lock:
            return await super().write_msg(stream, rpc_msg)

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        # Every message copy a peer sends, duplicates included (libp2p drops those before the
        # validator runs), proves its connection alive: liveness pings skip that connection.
        self._node._heard_at[msg_forwarder] = trio.current_time()
        await super().push_msg(msg_forwarder, msg)

    async def _teardown_if_connected(self, peer_id: ID) -> None:
        # Workaround 9: the library version does `del self.peers[peer_id]` after awaiting a
        # reset; if `_handle_dead_peer` removed the peer meanwhile, the KeyError fails the task
        # and the service manager then cancels the whole Pubsub service (no more gossip).
        stream = self.peers.get(peer_id)
        if stream is not None:
            await quiet_reset(stream)
            if peer_id in self.peers:
                self._handle_dead_peer(peer_id)
        self._forget_all_subscriptions(peer_id)

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        for topic in publish_message.topicIDs:
            if topic in self.topic_ids:
                try:
                    self.subscribed_topics_send[topic].send_nowait(publish_message)
                except trio.WouldBlock:
                    self._node._count("delivery-overflow")
                except trio.BrokenResourceError:
                    pass  # unsubscribed meanwhile


class Router(GossipSub):
    """GossipSub with our IDONTWANT policy (`NetConfig.idontwant_min_size`)."""

    def __init__(self, *args: Any, idontwant_min_size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idontwant_min_size = idontwant_min_size
        # message id -> (forwarder, origin, size) of the message being relayed, for
        # `_emit_idontwant_for_message`, which the library calls with the id only
        self._relaying: dict[bytes, tuple[ID, ID, int]] = {}

    async def publish(self, msg_forwarder: ID, pubsub_msg: rpc_pb2.Message) -> None:
        assert self.pubsub is not None
        msg_id = self.pubsub.get_message_id(pubsub_msg)
        self._relaying[msg_id] = (msg_forwarder, ID(pubsub_msg.from_id), len(pubsub_msg.data))
        try:
            await super().publish(msg_forwarder, pubsub_msg)
        finally:
            self._relaying.pop(msg_id, None)

    async def _emit_idontwant_for_message(self, msg_id: bytes, topic_ids: Iterable[str]) -> None:
        relaying = self._relaying.get(msg_id)
        if self.pubsub is None or relaying is None:
            return
        forwarder, origin, size = relaying
        if size < self._idontwant_min_size or forwarder == self.pubsub.my_id:
            return
        peers: set[ID] = set()
        for topic in topic_ids:
            peers.update(self.mesh.get(topic, ()))
        peers.difference_update((forwarder, origin))
        for peer_id in peers:
            if self.peer_protocol.get(peer_id) in _IDONTWANT_PROTOCOLS:
                await self.emit_idontwant([msg_id], peer_id)


class ConnectionWatch(INotifee):
    """Network notifee: reports connections so blacklisted peers are disconnected (Workaround 5).

    Notifee callbacks run inline on libp2p's connection path, so this only hands the peer id to
    a task of ours and never awaits anything that could block there."""

    def __init__(self, on_connected: Callable[[ID], None]) -> None:
        self._on_connected = on_connected

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._on_connected(conn.muxed_conn.peer_id)
        await trio.lowlevel.checkpoint()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        await trio.lowlevel.checkpoint()

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        await trio.lowlevel.checkpoint()

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        await trio.lowlevel.checkpoint()
