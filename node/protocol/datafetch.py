"""Fetching a published task's data by content address, chunk by chunk, from any peer.

Why chunks with their own hashes: the `task` vertex lists a BLAKE3 per 256 KiB chunk
(evolution/taskspec.py), so every piece is checked the moment it arrives, a bad piece is
pinned on the one peer that sent it (a strike, `PeerCore._strike`), and the file can come from
several peers at once and resume after a restart with only the missing pieces.

`DataFetch` is the decision logic for one file, sans-IO: which chunk to ask for, from whom,
what an answer means. It spreads the chunks over the connected peers at random (a peer that
says it lacks the file is left alone for `lacks_backoff_ms`), keeps at most `window` chunks in
flight, and asks again elsewhere when an answer does not come within `timeout_ms`.
`TaskData` holds the fetches of one node and its content-addressed cache
(evolution/blobcache.py): the storage the core is given, as it is given its ledger, so the
daemon and the simulator drive the same code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from qudag.evolution.blobcache import BlobCache, BlobError, PartialBlob
from qudag.evolution.taskspec import CHUNK_SIZE, DataRef, chunk_ok
from qudag.node.protocol import messages


@dataclass(frozen=True)
class DataFetchPolicy:
    window: int = 4  # chunks in flight per file
    timeout_ms: int = 15_000  # an unanswered chunk request is sent elsewhere after this
    lacks_backoff_ms: int = 10_000  # a peer that lacks the file is asked again after this


OK = "ok"
BAD = "bad-chunk"  # the bytes are not the listed chunk: a strike against the sender
LACKS = "lacks"  # the peer does not hold the file
UNASKED = "unasked"  # not a chunk we are waiting for from that peer (late, or unrequested)


@dataclass
class DataFetch:
    """The chunks of one file still missing and the requests in flight (no I/O)."""

    ref: DataRef
    missing: set[int]
    policy: DataFetchPolicy = field(default_factory=DataFetchPolicy)
    in_flight: dict[int, tuple[str, int]] = field(default_factory=dict)  # index -> peer, sent
    lacks: dict[str, int] = field(default_factory=dict)  # peer -> when it said so

    @property
    def done(self) -> bool:
        return not self.missing

    def requests(self, now_ms: int, peers: list[str], rng: random.Random) -> list[tuple[str, int]]:
        """(peer, chunk index) to ask for now."""
        for index, (_, sent) in list(self.in_flight.items()):
            if now_ms - sent >= self.policy.timeout_ms:
                del self.in_flight[index]
        asked = [
            p for p in peers if now_ms - self.lacks.get(p, -self.policy.lacks_backoff_ms)
            >= self.policy.lacks_backoff_ms
        ]  # fmt: skip
        if not asked:
            return []
        out = []
        for index in sorted(self.missing - set(self.in_flight)):
            if len(self.in_flight) >= self.policy.window:
                break
            peer = rng.choice(asked)
            self.in_flight[index] = (peer, now_ms)
            out.append((peer, index))
        return out

    def on_chunk(self, peer: str, msg: messages.Chunk, now_ms: int) -> str:
        """What an answer means: OK (the chunk is good: store it), BAD, LACKS or UNASKED."""
        asked = self.in_flight.get(msg.index)
        if asked is None or asked[0] != peer:
            return UNASKED
        del self.in_flight[msg.index]
        if not msg.have:
            self.lacks[peer] = now_ms
            return LACKS
        if not chunk_ok(self.ref, msg.index, msg.bytes):
            return BAD
        self.missing.discard(msg.index)
        return OK

    def on_failed(self, peer: str) -> None:
        """`peer`'s stream broke or timed out: its requests go elsewhere at the next tick."""
        for index, (asker, _) in list(self.in_flight.items()):
            if asker == peer:
                del self.in_flight[index]


class TaskData:
    """A node's task data: the cache it serves from and the fetches under way."""

    def __init__(self, cache: BlobCache, policy: DataFetchPolicy | None = None) -> None:
        self.cache = cache
        self.policy = policy or DataFetchPolicy()
        self.fetches: dict[bytes, tuple[DataFetch, PartialBlob]] = {}
        self.failed: dict[bytes, str] = {}  # data whose chunks did not make up the file

    def has(self, digest: bytes) -> bool:
        return self.cache.has(digest)

    def want(self, ref: DataRef) -> None:
        """Fetch `ref` unless it is held or under way; chunks kept from an earlier run count."""
        if self.cache.has(ref.blake3) or ref.blake3 in self.fetches:
            return
        partial = self.cache.partial(ref)
        missing = set(range(len(ref.chunks))) - partial.held
        self.fetches[ref.blake3] = (DataFetch(ref, missing, self.policy), partial)
        if not missing:
            self._finish(ref.blake3)

    def progress(self, digest: bytes) -> tuple[int, int] | None:
        """(chunks held, chunks in all) of a fetch under way, or None."""
        if digest not in self.fetches:
            return None
        fetch, _ = self.fetches[digest]
        total = len(fetch.ref.chunks)
        return total - len(fetch.missing), total

    def serve(self, msg: messages.GetChunk) -> messages.Chunk:
        """The answer to a chunk request: the bytes of a file we hold whole, else `have` false.
        Every task's chunks are `CHUNK_SIZE` long (the spec decoder allows no other size)."""
        start = msg.index * CHUNK_SIZE
        piece = self.cache.read_range(msg.data, start, start + CHUNK_SIZE)
        if piece is None or not piece:
            return messages.Chunk(msg.data, msg.index, False, b"")
        return messages.Chunk(msg.data, msg.index, True, piece)

    def requests(
        self, now_ms: int, peers: list[str], rng: random.Random
    ) -> list[tuple[str, bytes]]:
        out = []
        for digest, (fetch, _) in list(self.fetches.items()):
            for peer, index in fetch.requests(now_ms, peers, rng):
                out.append((peer, messages.encode(messages.GetChunk(digest, index))))
        return out

    def on_chunk(self, peer: str, msg: messages.Chunk, now_ms: int) -> str:
        """Apply an answer; returns what it meant (`BAD` is the caller's strike)."""
        entry = self.fetches.get(msg.data)
        if entry is None:
            return UNASKED
        fetch, partial = entry
        outcome = fetch.on_chunk(peer, msg, now_ms)
        if outcome == OK:
            partial.write_chunk(msg.index, msg.bytes)
            if fetch.done:
                self._finish(msg.data)
        return outcome

    def on_failed(self, peer: str) -> None:
        for fetch, _ in self.fetches.values():
            fetch.on_failed(peer)

    def _finish(self, digest: bytes) -> None:
        _, partial = self.fetches.pop(digest)
        try:
            partial.finish()
        except BlobError as exc:
            self.failed[digest] = str(exc)
