"""Liveness: noticing dead connections and redialling the peers lost with them.

libp2p never notices a dead connection (Workaround 10 in node/net/transport.py): this mixin of
`P2PNode` pings every silent connection, closes the ones that stopped answering and redials
their peers until they come back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import multiaddr
import trio
from libp2p.abc import INetConn
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from qudag.node.net.libp2p_patches import probe_connection
from qudag.node.net.node_parts import NodeParts

# One logger for the whole network layer, so its configuration does not depend on the split.
log = logging.getLogger("qudag.node.net.transport")


class Liveness(NodeParts):
    """The liveness part of `P2PNode`: the node's state it alone uses is declared here."""

    _alive_at: dict[INetConn, float]
    _probing: set[INetConn]
    _lost: dict[ID, tuple[float, list[multiaddr.Multiaddr]]]
    _close_connection: Callable[[INetConn], Awaitable[None]]
    _dial: Callable[[PeerInfo, bool], Awaitable[None]]

    async def _liveness_loop(self) -> None:
        """Ping every connection; close the ones that stopped answering (Workaround 10).

        A bug here must not take the node down (everything runs in the node's nursery), so a
        failing round is logged and the next one runs."""
        previous = trio.current_time()
        async with trio.open_nursery() as tasks:
            while True:
                await trio.sleep(self.config.liveness_interval)
                now = trio.current_time()
                lag = now - previous - self.config.liveness_interval
                previous = now
                try:
                    self._liveness_round(tasks, now, lag)
                except Exception:
                    log.exception("liveness round failed")
                    self._count("liveness-error")

    def _liveness_round(self, tasks: trio.Nursery, now: float, lag: float) -> None:
        cfg = self.config
        network = self.host.get_network()
        # Our own loop stalled (CPU starvation, a long synchronous step): pongs may be sitting
        # unread in the socket, so the stall does not count as the peers' silence.
        if lag > 0.5:
            self._stats["loop-stall-s"] += round(lag)
            if lag > 2.0:
                log.info("event loop stalled for %.1f s", lag)
            for conn in self._alive_at:
                self._alive_at[conn] += lag
        current = [c for conns in network.get_connections_map().values() for c in conns]
        for conn in set(self._alive_at) - set(current):
            del self._alive_at[conn]
        live = set(network.get_connections_map())
        for pid in set(self._heard_at) - live:
            del self._heard_at[pid]
        for conn in current:
            pid = conn.muxed_conn.peer_id
            last = max(self._alive_at.setdefault(conn, now), self._heard_at.get(pid, 0.0))
            if now - last > cfg.liveness_timeout:
                log.info(
                    "connection to %s silent for %.1f s (%s, %d streams, %d connections"
                    " to the peer): closing",
                    pid,
                    now - last,
                    getattr(conn, "direction", "?"),
                    len(conn.get_streams()),
                    len(network.get_connections(pid)),
                )
                self._count("connection-dead")
                del self._alive_at[conn]
                addrs = self._known_addrs(pid)
                if addrs and not self._refused(pid):
                    self._lost[pid] = (now + cfg.redial_for, addrs)
                tasks.start_soon(self._close_connection, conn)
            elif conn not in self._probing and now - last >= cfg.liveness_interval:
                # Only a connection silent for a whole interval is pinged: one that carried a
                # pong, gossip or a sync answer since the last round already proved alive.
                self._probing.add(conn)
                tasks.start_soon(self._probe, conn)

    async def _probe(self, conn: INetConn) -> None:
        try:
            if await probe_connection(conn, self.config.probe_timeout) and conn in self._alive_at:
                self._alive_at[conn] = trio.current_time()
        except Exception as exc:  # the connection went away under the probe
            log.debug("ping probe failed: %r", exc)
        finally:
            self._probing.discard(conn)

    async def _redial_loop(self) -> None:
        """Redial peers whose connection died until they answer again (or `redial_for` ends):
        after a partition heals, the halves reconnect within a redial period."""
        async with trio.open_nursery() as dials:
            while True:
                await trio.sleep(self.config.redial_interval)
                now = trio.current_time()
                connected = set(self.host.get_connected_peers())
                for pid, (until, addrs) in list(self._lost.items()):
                    if pid in connected or now > until or self._refused(pid) or not addrs:
                        del self._lost[pid]
                    elif pid not in self._dialing:
                        try:
                            info = PeerInfo(pid, addrs)
                        except Exception:  # never let bookkeeping take the node down
                            log.exception("cannot redial %s", pid)
                            del self._lost[pid]
                            continue
                        dials.start_soon(self._dial, info, False)

    def _known_addrs(self, pid: ID) -> list[multiaddr.Multiaddr]:
        """Where `pid` listens, as far as we know: the peerstore (which forgets a peer once it
        is disconnected, and raises for an unknown one), else the DHT routing table."""
        try:
            addrs = list(self.host.get_peerstore().addrs(pid))
        except Exception:  # PeerStoreError: peer ID not found
            addrs = []
        if not addrs and self.dht is not None:
            info = self.dht.routing_table.get_peer_info(pid)
            if info is not None:
                addrs = list(info.addrs)
        return addrs
