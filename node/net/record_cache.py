"""Caches for py-libp2p 0.8.1 signed peer records on the gossip path (transport Workaround 11).

py-libp2p attaches the sender's signed peer record (an ed25519-signed envelope of its peer id
and addresses) to *every* pubsub RPC it sends, data and control alike, and the receiver parses
and verifies it on every RPC (`maybe_consume_signed_record`). Measured on this machine: 0.21 ms
to attach (`env_to_send_in_RPC`: listing the host's addresses and re-marshalling the cached
envelope) and 0.24 ms to consume, per RPC. In an 8-node mesh with D=6 a node sends and
receives about 24 RPCs per gossiped vertex (copies and IDONTWANTs), so ~5 ms of CPU per vertex
per node went to re-checking bytes it had already checked.

The caches change no bytes on the wire and accept nothing that was not verified before:

- sending: the envelope bytes are reused for `SEND_TTL_S`, after which libp2p's own function
  runs again (it reissues the record if the host's addresses changed);
- receiving: an RPC whose record is byte-identical to the last record this host accepted from
  the same peer within `RECEIVE_TTL_S` is accepted without verifying it again (libp2p's own
  function verified those exact bytes, bound to that peer id); anything else goes through
  libp2p's check. Expiry re-consumes the record, which refreshes its peerstore TTL (2 h).

Installed process-wide (the functions are module globals in libp2p), idempotently.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from libp2p.peer import peerstore as peerstore_module
from libp2p.pubsub import floodsub as floodsub_module
from libp2p.pubsub import gossipsub as gossipsub_module
from libp2p.pubsub import pubsub as pubsub_module
from libp2p.pubsub import utils as pubsub_utils

SEND_TTL_S = 1.0
RECEIVE_TTL_S = 60.0
MAX_PEERS_CACHED = 1024

_original_env = peerstore_module.env_to_send_in_RPC
_original_consume = pubsub_utils.maybe_consume_signed_record
_sent: weakref.WeakKeyDictionary[Any, tuple[float, tuple[bytes, bool]]] = (
    weakref.WeakKeyDictionary()
)
_received: weakref.WeakKeyDictionary[Any, dict[Any, tuple[float, bytes]]] = (
    weakref.WeakKeyDictionary()
)


def cached_env_to_send_in_rpc(host: Any) -> tuple[bytes, bool]:
    now = time.monotonic()
    hit = _sent.get(host)
    if hit is not None and now - hit[0] < SEND_TTL_S:
        return hit[1][0], False
    result = _original_env(host)
    _sent[host] = (now, result)
    return result


def cached_consume_signed_record(msg: Any, host: Any, peer_id: Any) -> bool:
    if not msg.HasField("senderRecord"):
        return True
    record = bytes(msg.senderRecord)
    now = time.monotonic()
    per_host = _received.setdefault(host, {})
    hit = per_host.get(peer_id)
    if hit is not None and hit[1] == record and now - hit[0] < RECEIVE_TTL_S:
        return True
    ok = bool(_original_consume(msg, host, peer_id))
    if ok:
        if len(per_host) >= MAX_PEERS_CACHED and peer_id not in per_host:
            per_host.pop(next(iter(per_host)))
        per_host[peer_id] = (now, record)
    else:
        per_host.pop(peer_id, None)
    return ok


def install() -> None:
    """Point libp2p's pubsub modules at the cached versions (they import the names)."""
    for module in (gossipsub_module, pubsub_module, floodsub_module):
        module.env_to_send_in_RPC = cached_env_to_send_in_rpc  # type: ignore[attr-defined]
        module.maybe_consume_signed_record = cached_consume_signed_record  # type: ignore[attr-defined]
