"""Per-author reputation from re-evaluated fitness claims.

Why per author (ML-DSA key id) and not per connection: a claim is signed by its author, so the
author is who lied, whichever peer relayed it. The daemon maps authors to connections through
the authenticated sync handshake and disconnects a banned author's peer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReputationPolicy:
    reward_valid: float = 1.0
    penalty_invalid: float = 5.0
    penalty_malformed: float = 2.0
    # Two validly signed vertices with one (author, seq) are as much a proof as a claim we
    # re-measured false, so they cost what a lie costs: with the cap at 0, a ban.
    penalty_equivocation: float = 5.0
    ban_below: float = -4.0
    # Honest claims do not bank credit: otherwise a liar republishing copies of honest
    # templates could pre-pay for its lies. With the cap at 0, one proven false claim (-5)
    # bans its author.
    max_score: float = 0.0


class Reputation:
    def __init__(self, policy: ReputationPolicy | None = None) -> None:
        self.policy = policy or ReputationPolicy()
        self._score: dict[bytes, float] = {}
        self._right: dict[bytes, int] = {}  # claims we re-measured and found valid, by author

    def score(self, author: bytes) -> float:
        return self._score.get(author, 0.0)

    def claim_checked(self, author: bytes, valid: bool) -> None:
        if valid:
            self._right[author] = self._right.get(author, 0) + 1
        delta = self.policy.reward_valid if valid else -self.policy.penalty_invalid
        self._score[author] = min(self.policy.max_score, self.score(author) + delta)

    def misbehaved(self, author: bytes) -> None:
        """Signed-but-invalid content: the author provably did it."""
        self._score[author] = self.score(author) - self.policy.penalty_malformed

    def equivocated(self, author: bytes) -> None:
        """Two validly signed vertices with the same (author, seq): proof, like a proven lie."""
        self._score[author] = self.score(author) - self.policy.penalty_equivocation

    def proven(self, author: bytes) -> bool:
        """A record: we re-measured at least one claim of `author` and found it right, and it
        is not banned. (The score cannot say it: honest claims bank no credit, `max_score`.)"""
        return self._right.get(author, 0) > 0 and not self.banned(author)

    def banned(self, author: bytes) -> bool:
        return self.score(author) < self.policy.ban_below

    def banned_authors(self) -> set[bytes]:
        return {a for a, s in self._score.items() if s < self.policy.ban_below}
