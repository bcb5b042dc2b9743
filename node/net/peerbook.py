"""The peers a node was connected to, remembered across restarts (`peers.json` in its data dir).

Why: a node restarted on `tcp/0` comes back on a new port. Its peers cannot find it (they know
its old address, and it knows nobody, so no DHT record or gossip can tell them the new one).
With this book the restarted node dials the peers it was connected to, whose addresses rarely
changed at the same moment, and they learn its new address from that connection (identify).
The daemon's redial loop (`Daemon._redial_known_loop`) reads and feeds it.

The file is small, bounded (`MAX_PEERS` peers, `MAX_ADDRS` addresses each, `MAX_FILE_BYTES`),
written atomically (`qudag.crypto.files.write_file_atomic`) and decoded strictly: anything
unexpected makes the whole file be ignored with one warning (the node then starts with its
`--bootstrap` peers only, as before). It is JSON, never unpickled.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import multiaddr
from libp2p.peer.id import ID

from qudag.crypto.files import write_file_atomic

log = logging.getLogger(__name__)

PEERS_FILE = "peers.json"
FORMAT_VERSION = 1
MAX_PEERS = 64  # the least recently seen are forgotten first
MAX_ADDRS = 8  # per peer, most recently learned first
MAX_ADDR_CHARS = 256
MAX_FILE_BYTES = 256 * 1024
_UNSPECIFIED = {"0.0.0.0", "::"}


class PeerBookError(ValueError):
    """A peers file that is not what this module writes."""


@dataclass
class KnownPeer:
    addrs: list[str]  # dialable multiaddrs without `/p2p/<id>`, most recently learned first
    seen_ms: int  # when we were last connected to it


def valid_peer_id(text: str) -> bool:
    """A base58 libp2p peer id: an identity or sha2-256 multihash (py-libp2p's `from_base58`
    accepts any base58 string, so the multihash is checked here)."""
    if not isinstance(text, str) or not 1 <= len(text) <= 128:
        return False
    try:
        raw = ID.from_base58(text).to_bytes()
    except Exception:  # ValueError for a non-base58 character
        return False
    if len(raw) < 3 or raw[1] != len(raw) - 2:
        return False
    return raw[0] == 0x00 or (raw[0] == 0x12 and raw[1] == 32)


def dialable(addr: str) -> str | None:
    """`addr` as the book keeps it (without `/p2p/<id>`), or None if it cannot be dialled: not a
    multiaddr, no TCP port, or an unspecified host (0.0.0.0, ::). Loopback and real addresses
    alike are kept: nodes on one machine meet on 127.0.0.1."""
    if not isinstance(addr, str) or len(addr) > MAX_ADDR_CHARS:
        return None
    try:
        ma = multiaddr.Multiaddr(addr)
        names = [p.name for p in ma.protocols()]
        if "p2p" in names:
            ma = ma.decapsulate(f"/p2p/{ma.value_for_protocol('p2p')}")
            names = [p.name for p in ma.protocols()]
        if "tcp" not in names:
            return None
        for proto in ("ip4", "ip6"):
            if proto in names and ma.value_for_protocol(proto) in _UNSPECIFIED:
                return None
        return str(ma)
    except Exception:  # multiaddr raises several types for garbage
        return None


class PeerBook:
    """Peer id -> `KnownPeer`, loaded from and saved to one file. Used on the trio thread only."""

    def __init__(self, path: Path, peers: dict[str, KnownPeer] | None = None) -> None:
        self.path = path
        self._peers: dict[str, KnownPeer] = dict(peers or {})
        self.dirty = False  # peers or addresses changed since the last save

    # --- reading ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path) -> PeerBook:
        """The book in `path`; an empty one if there is none, or (with a warning) if it is
        unreadable or not exactly what `encode` writes."""
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            log.warning("cannot read %s (%s): starting without remembered peers", path, exc)
            return cls(path)
        try:
            if len(data) > MAX_FILE_BYTES:
                raise PeerBookError(f"larger than {MAX_FILE_BYTES} bytes")
            return cls(path, decode(data))
        except PeerBookError as exc:
            log.warning("ignoring %s: %s; starting without remembered peers", path, exc)
            return cls(path)

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def peers(self) -> dict[str, KnownPeer]:
        return {peer: KnownPeer(list(p.addrs), p.seen_ms) for peer, p in self._peers.items()}

    def addrs(self, peer_id: str) -> list[str]:
        known = self._peers.get(peer_id)
        return list(known.addrs) if known else []

    # --- writing ------------------------------------------------------------------------
    def note(self, peer_id: str, addrs: list[str], now_ms: int) -> None:
        """We are connected to `peer_id`, which listens at `addrs` (newest knowledge first):
        those go first, the addresses remembered before follow (a peer's old address is
        harmless to keep, bounded, and may still be the one that works)."""
        clean = [a for a in (dialable(x) for x in addrs) if a is not None]
        if not clean or not valid_peer_id(peer_id):
            return
        known = self._peers.get(peer_id)
        old = known.addrs if known else []
        merged = list(dict.fromkeys([*clean, *old]))[:MAX_ADDRS]
        if known is None or merged != known.addrs:
            self.dirty = True
        self._peers[peer_id] = KnownPeer(merged, now_ms)
        if len(self._peers) > MAX_PEERS:
            oldest = min(self._peers, key=lambda p: self._peers[p].seen_ms)
            del self._peers[oldest]
            self.dirty = True

    def forget(self, peer_id: str) -> None:
        """A peer we banned or blacklisted is not sought out again after a restart."""
        if self._peers.pop(peer_id, None) is not None:
            self.dirty = True

    def save(self) -> None:
        """Write the book atomically; a failure is a warning (the node runs on without it)."""
        try:
            write_file_atomic(self.path, encode(self._peers))
        except OSError as exc:
            log.warning("cannot save remembered peers to %s: %s", self.path, exc)
            return
        self.dirty = False


def encode(peers: dict[str, KnownPeer]) -> bytes:
    body = {
        "version": FORMAT_VERSION,
        "peers": {
            peer: {"addrs": p.addrs, "seen_ms": p.seen_ms} for peer, p in sorted(peers.items())
        },
    }
    return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()


def _reject_constant(name: str) -> Any:
    raise PeerBookError(f"not JSON: {name}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise PeerBookError("duplicate key")
    return out


def decode(data: bytes) -> dict[str, KnownPeer]:
    """The peers in a file written by `encode`; PeerBookError for anything else (unknown or
    missing keys, wrong types, invalid peer ids or addresses, more than the bounds)."""
    try:
        body = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PeerBookError(f"not JSON: {exc}") from None
    if not isinstance(body, dict) or set(body) != {"version", "peers"}:
        raise PeerBookError("expected exactly the keys 'version' and 'peers'")
    if body["version"] != FORMAT_VERSION or type(body["version"]) is not int:
        raise PeerBookError(f"unknown version {body['version']!r}")
    peers = body["peers"]
    if not isinstance(peers, dict) or len(peers) > MAX_PEERS:
        raise PeerBookError(f"'peers' must be an object of at most {MAX_PEERS} peers")
    out = {}
    for peer, entry in peers.items():
        if not valid_peer_id(peer):
            raise PeerBookError(f"invalid peer id {peer[:60]!r}")
        if not isinstance(entry, dict) or set(entry) != {"addrs", "seen_ms"}:
            raise PeerBookError(f"peer {peer}: expected exactly 'addrs' and 'seen_ms'")
        addrs, seen = entry["addrs"], entry["seen_ms"]
        if type(seen) is not int or seen < 0:
            raise PeerBookError(f"peer {peer}: 'seen_ms' must be a non-negative integer")
        if not isinstance(addrs, list) or not 1 <= len(addrs) <= MAX_ADDRS:
            raise PeerBookError(f"peer {peer}: 'addrs' must list 1 to {MAX_ADDRS} addresses")
        for addr in addrs:
            if dialable(addr) != addr:
                raise PeerBookError(f"peer {peer}: not a dialable address: {str(addr)[:80]!r}")
        if len(set(addrs)) != len(addrs):
            raise PeerBookError(f"peer {peer}: duplicate address")
        out[peer] = KnownPeer(list(addrs), seen)
    return out
