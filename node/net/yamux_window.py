"""Batched yamux window updates for py-libp2p 0.8.1 (transport Workaround 12; CPU, not a crash).

py-libp2p's `YamuxStream` sends a WINDOW_UPDATE frame after *every* read that returned bytes
(`_auto_tune_and_send_window_update`: its "release on read" and "partial slack" branches fire
for any read of at least one byte, whatever `PY_YAMUX_RELEASE_ON_READ` says). Pubsub and
multistream read their varint length prefixes one byte at a time, so each gossip RPC received
(data, IHAVE, IDONTWANT alike) sends about three Noise-encrypted frames back, each a `send`
system call for this node and a decrypt and dispatch for the peer. Profiled in an 8-node mesh
(py-spy on a daemon): a fifth of the trio thread's busy samples were in these window updates.

go-yamux (and the yamux spec's intent) credits the window back with hysteresis: once the
reader has consumed half of the receive window. `batched_window_update` does that: it counts
consumed bytes and calls libp2p's own function, which then sends one update for all of them
(and keeps its window auto-tuning), only when the count reaches libp2p's threshold (half the
current target window, `YamuxStream._grow_threshold`).

Why this cannot stall a stream: libp2p keeps `recv_window + buffered + consumed-not-yet-credited
== target` (each branch of its function restores it), so when the sender's window is
exhausted (`recv_window == 0`) and the reader has read everything buffered, the consumed count
equals the target, at least the threshold, and the read that got there sent the update. A
transfer larger than the window is tested (`tests/test_net_yamux_window.py`).

Installed process-wide (a method of libp2p's class), idempotently.
"""

from __future__ import annotations

from typing import Any

from libp2p.stream_muxer.yamux.yamux import YamuxStream

_original = YamuxStream._auto_tune_and_send_window_update


async def batched_window_update(self: Any, *, bytes_read: int = 0) -> None:
    async with self.window_lock:
        if bytes_read > 0:
            self._pending_recv_release += bytes_read
        due = self._pending_recv_release >= max(1, self._grow_threshold())
    if due:  # libp2p's own path: one update for everything consumed, and its auto-tuning
        await _original(self, bytes_read=0)


def install() -> None:
    YamuxStream._auto_tune_and_send_window_update = batched_window_update  # type: ignore[method-assign]


def uninstall() -> None:
    """For tests that measure libp2p's own behaviour."""
    YamuxStream._auto_tune_and_send_window_update = _original  # type: ignore[method-assign]
