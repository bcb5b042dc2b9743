"""What the parts of `P2PNode` share: the node's state and helpers that more than one part uses.

`P2PNode` (node/net/transport.py) is composed of the sync protocol, liveness and discovery
(sync_protocol.py, liveness.py, discovery.py). Each part declares what it reads of the node so
that it type-checks on its own; what several parts use is declared once, here. `P2PNode` sets
and defines all of it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from libp2p.abc import IHost
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.peer.id import ID

if TYPE_CHECKING:
    from qudag.node.net.transport import NetConfig


class NodeParts:
    """Declarations only: the node's configuration, host, DHT, counters and peer checks."""

    config: NetConfig
    host: IHost
    dht: KadDHT | None
    _stats: Counter[str]
    _heard_at: dict[ID, float]  # peer -> trio time of its last gossip or sync answer
    _dialing: set[ID]
    _refused: Callable[[ID], bool]
    _count: Callable[[str], None]
