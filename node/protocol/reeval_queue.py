"""The queue of others' fitness claims waiting for our re-measurement, built so that a flood of
identities cannot push a proven author's claim back (issue 17).

Order: claims of authors with a record (`TrustPolicy.reevaluated_first`: we re-measured a claim
of theirs and found it right) before claims of authors without one (fresh identities cost nothing).
Proven authors' claims go by claimed fitness, highest first (their numbers have been right).
The others go in a random order drawn by the caller: a stranger's claimed number is the one
thing a liar chooses, so ranking strangers by it let a stream of fresh keys with inflated
claims take every check, and an honest author never got the first check that gives it a
record (docs/studies.md, `sybil`). Drawn at random, honest strangers get their share of checks
however high the lies are. Ties by id. Bounds: at most `per_author` claims of one author (a
further claim replaces the author's lowest-ranked queued one if it ranks higher, else it is
dropped), and at most `capacity` claims in all (a claim that ranks above the lowest queued one
replaces it, else it is dropped), so 100 throwaway identities cannot keep a proven author out.

An author can only gain a record while queued (records are never lost; a banned author's
claims are skipped by the caller), so `promote` moves that author's queued claims up.
"""

from __future__ import annotations

import heapq
from typing import NamedTuple

# (group: 0 proven author, 1 no record; -claimed fitness (proven) or the caller's random draw
# (no record); template id): smallest first.
_Key = tuple[int, float, bytes]


class _Queued(NamedTuple):
    """A live claim: its place in the order, its author, and its claimed fitness (a stranger's
    key holds the random draw instead, and `promote` needs the claim to re-key it)."""

    key: _Key
    author: bytes
    claimed: float


class ReevaluationQueue:
    def __init__(self, capacity: int, per_author: int) -> None:
        self.capacity = max(0, capacity)
        self.per_author = max(1, per_author)
        self._heap: list[tuple[_Key, bytes]] = []  # (key, author); stale entries skipped
        self._live: dict[bytes, _Queued] = {}  # template id -> the claim
        self._by_author: dict[bytes, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, template_id: bytes) -> bool:
        return template_id in self._live

    def push(
        self, template_id: bytes, author: bytes, claimed: float, proven: bool, draw: float
    ) -> bool:
        """Queue a claim; False if it was dropped (a bound, and it ranks below what holds it).
        `draw`: a uniform random number in [0, 1) from the caller's randomness, the claim's
        place among the claims of authors without a record."""
        if template_id in self._live or self.capacity == 0:
            return template_id in self._live
        key: _Key = (0, -claimed, template_id) if proven else (1, draw, template_id)
        mine = self._by_author.get(author, set())
        if len(mine) >= self.per_author:
            worst = max(mine, key=lambda vid: self._live[vid].key)
            if key >= self._live[worst].key:
                return False
            self._remove(worst)
        if len(self._live) >= self.capacity:
            worst = max(self._live, key=lambda vid: self._live[vid].key)
            if key >= self._live[worst].key:
                return False
            self._remove(worst)
        self._live[template_id] = _Queued(key, author, claimed)
        self._by_author.setdefault(author, set()).add(template_id)
        heapq.heappush(self._heap, (key, author))
        self._compact()
        return True

    def pop(self) -> tuple[bytes, bytes] | None:
        """The first claim in order as (template id, author), removed; None if empty."""
        while self._heap:
            key, author = heapq.heappop(self._heap)
            vid = key[2]
            live = self._live.get(vid)
            if live is None or live.key != key:
                continue  # replaced, evicted or promoted since
            self._remove(vid)
            return vid, author
        return None

    def promote(self, author: bytes) -> None:
        """`author` has a record now: its queued claims move to the proven group."""
        for vid in self._by_author.get(author, ()):
            queued = self._live[vid]
            if queued.key[0] != 0:
                new: _Key = (0, -queued.claimed, vid)
                self._live[vid] = queued._replace(key=new)
                heapq.heappush(self._heap, (new, author))
        self._compact()

    def _remove(self, vid: bytes) -> None:
        author = self._live.pop(vid).author
        mine = self._by_author[author]
        mine.discard(vid)
        if not mine:
            del self._by_author[author]

    def _compact(self) -> None:
        """Stale heap entries (replaced, evicted, promoted) stay until popped: rebuild the heap
        from the live ones when they outnumber them, so a flood cannot grow it without bound."""
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = [(queued.key, queued.author) for queued in self._live.values()]
            heapq.heapify(self._heap)


__all__ = ["ReevaluationQueue"]
