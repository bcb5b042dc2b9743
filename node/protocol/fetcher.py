"""Which missing vertices to ask for, from whom, and when: the Narwhal-style synchronizer.

Pure bookkeeping (time is passed in, randomness comes from the caller's `random.Random`): the
peer core tells it which ids it wants and who hinted at them (the peer that forwarded an orphan,
or announced a head); it answers with the requests that are due now. The first try goes to the
hinting peer, later tries to other connected peers with exponential backoff, so one peer that
withholds cannot stall us and a burst of orphans does not become a burst of requests.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class _Want:
    hint: str | None
    attempts: int = 0
    next_try_ms: int = 0
    tried: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FetchPolicy:
    first_timeout_ms: int = 1_000
    max_backoff_ms: int = 16_000
    max_attempts: int = 12
    max_ids_per_request: int = 256
    max_wanted: int = 100_000


class MissingFetcher:
    def __init__(self, policy: FetchPolicy | None = None) -> None:
        self.policy = policy or FetchPolicy()
        self._wanted: dict[bytes, _Want] = {}
        self._given_up: list[bytes] = []

    def __len__(self) -> int:
        return len(self._wanted)

    def __contains__(self, vertex_id: bytes) -> bool:
        return vertex_id in self._wanted

    def want(self, ids: Iterable[bytes], hint: str | None, now_ms: int) -> None:
        """Remember that we miss `ids`; `hint` is the peer most likely to have them."""
        for vid in ids:
            if vid in self._wanted:
                if self._wanted[vid].hint is None and hint is not None:
                    self._wanted[vid].hint = hint
                continue
            if len(self._wanted) >= self.policy.max_wanted:
                return
            self._wanted[vid] = _Want(hint=hint, next_try_ms=now_ms)

    def received(self, ids: Iterable[bytes]) -> None:
        for vid in ids:
            self._wanted.pop(vid, None)

    def forget_peer(self, peer: str) -> None:
        """A peer left or was banned: no more hints point at it."""
        for want in self._wanted.values():
            if want.hint == peer:
                want.hint = None

    def due(
        self, now_ms: int, peers: Sequence[str], rng: random.Random
    ) -> list[tuple[str, list[bytes]]]:
        """Requests to send now, grouped by peer. Ids past `max_attempts` are given up."""
        batches: dict[str, list[bytes]] = {}
        for vid, want in list(self._wanted.items()):
            if want.next_try_ms > now_ms:
                continue
            if want.attempts >= self.policy.max_attempts:
                del self._wanted[vid]
                self._given_up.append(vid)
                continue
            peer = self._choose(want, peers, rng)
            if peer is None:
                continue
            batch = batches.setdefault(peer, [])
            if len(batch) >= self.policy.max_ids_per_request:
                continue
            batch.append(vid)
            want.attempts += 1
            want.tried.append(peer)
            backoff = self.policy.first_timeout_ms * (2 ** (want.attempts - 1))
            want.next_try_ms = now_ms + min(backoff, self.policy.max_backoff_ms)
        return sorted(batches.items())

    def take_given_up(self) -> list[bytes]:
        """Ids abandoned by `due` since the last call: the caller drops what waits on them."""
        gone, self._given_up = self._given_up, []
        return gone

    @staticmethod
    def _choose(want: _Want, peers: Sequence[str], rng: random.Random) -> str | None:
        if not peers:
            return None
        if want.attempts == 0 and want.hint is not None and want.hint in peers:
            return want.hint
        untried = [p for p in peers if p not in want.tried]
        return rng.choice(sorted(untried) if untried else sorted(peers))
