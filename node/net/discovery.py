"""Discovery: bootstrap, then Kademlia refreshes that find and dial more peers.

A mixin of `P2PNode`: the loop that keeps a node connected to several others, backing off
while nothing changes (its period doubles up to `NetConfig.discovery_idle_interval`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

from qudag.node.net.node_parts import NodeParts
from qudag.node.protocol.policy import PeerOffences

# One logger for the whole network layer, so its configuration does not depend on the split.
log = logging.getLogger("qudag.node.net.transport")


class Discovery(NodeParts):
    """The discovery part of `P2PNode`: the node's state it alone uses is declared here."""

    _bootstrap: list[multiaddr.Multiaddr]
    _dial_failures: Counter[ID]
    _offences: PeerOffences[ID]
    _unblock: Callable[[ID], None]

    async def _dial(self, info: PeerInfo, forget: bool = True) -> None:
        """Dial a peer; after 3 failures it leaves the DHT routing table unless not `forget`
        (a peer lost to a dead link is expected to fail until the link is back)."""
        pid = info.peer_id
        if pid in self._dialing:
            return
        self._dialing.add(pid)
        try:
            self._unblock(pid)
            with trio.fail_after(self.config.connect_timeout):
                await self.host.connect(info)
            self._dial_failures.pop(pid, None)
            self._stats["dials"] += 1
        except Exception as exc:  # TooSlowError, SwarmException, OSError...
            self._dial_failures[pid] += 1
            log.debug("dial %s failed: %r", pid, exc)
            if forget and self._dial_failures[pid] >= 3 and self.dht is not None:
                # a dead peer stays in the routing table otherwise, costing a dial each round
                self.dht.routing_table.remove_peer(pid)
        finally:
            self._dialing.discard(pid)

    async def _bootstrap_once(self, nursery: trio.Nursery) -> None:
        me = self.host.get_id()
        for addr in self._bootstrap:
            try:
                info = info_from_p2p_addr(addr)
            except Exception:
                log.warning("bad bootstrap multiaddr %s (needs /p2p/<peer id>)", addr)
                continue
            if info.peer_id == me or self._refused(info.peer_id):
                continue
            if info.peer_id not in self.host.get_connected_peers():
                nursery.start_soon(self._dial, info)

    async def _discovery_sleep(self, delay: float, connected: set[ID] | None) -> None:
        """Sleep `delay`, but wake within `discovery_interval` once the connected peers are no
        longer `connected` (a peer lost or new), so a backed-off loop reacts like a settled one."""
        deadline = trio.current_time() + delay
        while (left := deadline - trio.current_time()) > 0:
            await trio.sleep(min(left, self.config.discovery_interval))
            if connected is not None and set(self.host.get_connected_peers()) != connected:
                return

    async def _discovery_loop(self) -> None:
        """Bootstrap, then periodically refresh the DHT and dial the peers it found.

        Each node knows only its bootstrap peers; a DHT refresh asks them (and everyone found
        since) for peers near random keys, so every node ends up connected to several others and
        losing any one node, the seed included, does not partition the rest."""
        delay = 0.5
        me = self.host.get_id()
        seen: tuple[set[ID], set[ID]] | None = None  # connected, routing table: last round
        async with trio.open_nursery() as dials:
            await self._bootstrap_once(dials)
            while True:
                await self._discovery_sleep(delay, seen[0] if seen else None)
                slept, delay = delay, min(delay * 2, self.config.discovery_interval)
                connected = set(self.host.get_connected_peers())
                if not connected:
                    await self._bootstrap_once(dials)
                if self.dht is None:
                    continue
                for pid in connected:
                    if not self._refused(pid):
                        await self.dht.add_peer(pid, skip_server_mode_check=True)
                with trio.move_on_after(2 * self.config.connect_timeout):
                    try:
                        await self.dht.refresh_routing_table()
                    except Exception as exc:
                        log.debug("DHT refresh failed: %r", exc)
                connected = set(self.host.get_connected_peers())
                table = set(self.dht.routing_table.get_peer_ids())
                if seen == (connected, table):  # settled: nothing to find, refresh less often
                    idle = max(self.config.discovery_idle_interval, self.config.discovery_interval)
                    delay = min(slept * 2, idle)
                seen = (set(connected), table)  # before the dials below add to `connected`
                for pid in table:
                    if len(connected) >= self.config.max_peers:
                        break
                    # Not a peer that broke the protocol with us (`PeerOffences.seeks`).
                    if pid == me or pid in connected or not self._offences.seeks(pid):
                        continue
                    info = self.dht.routing_table.get_peer_info(pid)
                    if info is not None and info.addrs:
                        dials.start_soon(self._dial, info)
                        connected.add(pid)
