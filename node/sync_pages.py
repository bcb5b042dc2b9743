"""The daemon's sync-page pipeline: request a page, check its signatures off the trio thread,
store pages in arrival order.

Bulk catch-up is where a node spends its CPU (ML-DSA verifies): this module keeps the
pipeline's concurrency (pages in flight, verifiers, the ordering chain) in one place, apart
from the daemon's loops. The decisions (what to request, whether a page is acceptable) stay
with the sans-IO `PeerCore`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence

import trio

from qudag.dag.validate import (
    Prechecked,
    PublicKey,
    batch_keys,
    decode_batch,
    late_keyed,
    precheck,
    prechecked,
    recheck,
    verify_batch,
    with_late_keys,
)
from qudag.dag.vertex import Vertex
from qudag.node.net.sync_protocol import SyncError
from qudag.node.net.transport import P2PNode
from qudag.node.ops.metrics import NodeMetrics
from qudag.node.protocol.core import Action, PeerCore, SendRequest
from qudag.node.workers.evolution_worker import WorkerError
from qudag.node.workers.signature_worker import SignatureProcess

log = logging.getLogger("qudag.node")

# Threads that decode and verify a received sync page (ML-DSA verify releases the GIL); the
# trio thread keeps the network and SQLite meanwhile.
VERIFY_WORKERS = max(1, min(2, (os.cpu_count() or 1) - 1))
# Bulk catch-up: pages requested or held per peer, and how many of them are decoded and
# verified at once. With 2 pages in flight and 2 verifying, the next request goes out only
# when a page is stored, so each page's network round trip (20-45 ms) leaves the verifiers
# idle; with 3 and 2, a page is on its way while two are verified (quiet 2-core box, 3
# interleaved catch-ups of 20,000 vertices each: median 3,203 -> 3,696 vertices/s; 3 and
# unbounded verifiers are not better; docs/benchmarks.md "Catch-up"). With the signatures
# checked in a child process (node/workers/signature_worker.py), 5 pages instead of 3, and
# decoding on the trio thread instead of a worker thread, make no difference (same box, 2 runs
# each). PRECHECKS_AT_ONCE and VERIFY_WORKERS apply only to the thread fallback.
SYNC_PIPELINE = 3
PRECHECKS_AT_ONCE = 2


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class SyncPages:
    """Sync requests the core asks for, and the pages they bring back, checked and stored."""

    def __init__(
        self,
        core: PeerCore,
        signatures: SignatureProcess,
        metrics: NodeMetrics,
        queue: Callable[[list[Action]], None],
    ) -> None:
        """`queue`: where the core's answers go (the daemon's action queue)."""
        self.core = core
        self.signatures = signatures
        self.metrics = metrics
        self._queue = queue
        # Sync pages are stored in arrival order: each waits for the one before it (a chain of
        # events, not a lock, so that a page's signatures are checked while the page before it
        # is still being stored).
        self._ingest_tail = trio.Event()
        self._ingest_tail.set()
        self._prechecks = trio.CapacityLimiter(PRECHECKS_AT_ONCE)
        # Decoding is Python under the GIL: one page at a time is all a second thread buys.
        self._decodes = trio.CapacityLimiter(1)

    async def request(self, net: P2PNode, action: SendRequest) -> None:
        self.metrics.sync_requests.labels(direction="sent").inc()
        try:
            response = await net.request(action.peer, action.data, timeout=15.0)
        except SyncError as exc:
            # No disconnect here: a dead connection is found and replaced by the network's
            # liveness probe (transport, Workaround 10). Closing on failed requests turns load
            # into churn: every request queued on the closed connection fails too and closes
            # the fresh one (388 reconnects in 2 minutes per node in a 6-node partition run,
            # docs/reliability.md).
            log.debug("sync request to %s failed: %s", action.peer, exc)
            self.core.on_sync_failed(action.peer)
            return
        page, actions = self.core.receive_sync_response(action.peer, response, now_ms())
        self._queue(actions)  # the next page of a bulk sync is requested before this is stored
        if page is None:
            return
        before, done = self._ingest_tail, trio.Event()
        self._ingest_tail = done
        try:
            # Keys of authors whose identity is in a page not stored yet are missing here; the
            # store then checks those signatures itself (it trusts only a precheck made with
            # the key it holds), so the overlap costs speed at worst, never a rule.
            keys = self.core.store.known_keys()
            checked = await self.precheck(page.vertices, keys)
            await before.wait()
            if any(
                c.vertex is not None and c.key is None and c.vertex.author not in keys
                for c in checked
            ):
                # Authors whose identity came in an earlier page, stored since: verify their
                # vertices here too, not on the trio thread (the store would).
                checked = await self.recheck(checked, keys, self.core.store.known_keys())
            self._queue(self.core.ingest_sync_page(page, checked, now_ms()))
        finally:
            done.set()  # also on cancellation or error: later pages must not wait forever

    async def precheck(
        self, raws: tuple[bytes, ...], keys: dict[bytes, PublicKey]
    ) -> list[Prechecked]:
        """`dag.validate.precheck` of a sync page: decoded in a worker thread, signatures
        checked in the signature process (in worker threads while it is not usable)."""
        if not self.signatures.usable:
            return await trio.to_thread.run_sync(
                precheck,
                raws,
                keys,
                VERIFY_WORKERS,
                self.core.store.decoders,
                limiter=self._prechecks,
            )
        decoded = await trio.to_thread.run_sync(
            decode_batch, raws, self.core.store.decoders, limiter=self._decodes
        )
        all_keys = batch_keys(decoded, keys)
        vertices = [vertex for vertex, _ in decoded]
        good = await self._verify(vertices, all_keys)
        return prechecked(raws, decoded, good, all_keys)

    async def recheck(
        self,
        checked: list[Prechecked],
        used: dict[bytes, PublicKey],
        keys: dict[bytes, PublicKey],
    ) -> list[Prechecked]:
        """`dag.validate.recheck`, its verifies in the signature process when usable."""
        if not self.signatures.usable:
            return await trio.to_thread.run_sync(
                recheck, checked, used, keys, limiter=self._prechecks
            )
        late = late_keyed(checked, used, keys)
        good = await self._verify([checked[i].vertex for i in late], keys)
        return with_late_keys(checked, late, good, keys)

    async def _verify(
        self, vertices: Sequence[Vertex | None], keys: Mapping[bytes, PublicKey]
    ) -> list[bool]:
        """Signature checks in the signature process; in threads if it failed."""
        try:
            return await self.signatures.check(vertices, keys)
        except WorkerError as exc:
            log.warning("signature process failed, verifying in threads: %s", exc)
            return await trio.to_thread.run_sync(
                verify_batch, vertices, keys, limiter=self._prechecks
            )
