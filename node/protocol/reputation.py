"""Per-author reputation from re-evaluated fitness claims and from attestations we checked.

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
    # A "valid" attestation of a claim we proved false is a lie about a measurement, as the
    # claim was: it costs what the lie costs its claimant (with the cap at 0, a ban).
    penalty_false_attestation: float = 5.0
    # How far our measurement must be from a claim, in units of the task's claim tolerance,
    # before a "valid" attestation of it counts as false (`attestation_checked`). Why 2: an
    # honest attester said "valid" because its own measurement was within 1 tolerance of the
    # claim, so ours can be more than 2 tolerances off only if the two measurements of one
    # genome differ by more than 1 tolerance, which is what the tolerance is chosen to exclude
    # (docs/ARCHITECTURE.md, "Trust"). Between 1 and 2 tolerances: neither credit nor penalty.
    false_attestation_margin: float = 2.0
    # Honest claims do not bank credit: otherwise a liar republishing copies of honest
    # templates could pre-pay for its lies. With the cap at 0, one proven false claim (-5)
    # bans its author.
    max_score: float = 0.0


ATTESTATION_RIGHT = "right"
ATTESTATION_FALSE = "false"
ATTESTATION_UNSURE = "unsure"


class Reputation:
    def __init__(self, policy: ReputationPolicy | None = None) -> None:
        self.policy = policy or ReputationPolicy()
        self._score: dict[bytes, float] = {}
        self._right: dict[bytes, int] = {}  # claims we re-measured and found valid, by author
        # "valid" attestations we checked against our own measurement and found right, by
        # attester: its proven record (`proven_attester`).
        self._attested_right: dict[bytes, int] = {}

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

    def attestation_checked(self, attester: bytes, off_by: float, tolerance: float) -> str:
        """`attester` signed a "valid" attestation of a claim that our own measurement puts
        `off_by` away from the claimed fitness (the task's claim tolerance: `tolerance`).
        Returns the judgement: `ATTESTATION_RIGHT` (we found the claim valid too: a record),
        `ATTESTATION_FALSE` (more than `false_attestation_margin` tolerances off: the claim
        is provably false, and vouching for it costs `penalty_false_attestation`) or
        `ATTESTATION_UNSURE` (in between: an honest measurement on another machine could
        still have found it valid, so neither credit nor penalty)."""
        margin = self.policy.false_attestation_margin * tolerance
        return self.attestation_judged(attester, off_by <= tolerance, off_by > margin)

    def attestation_judged(self, attester: bytes, right: bool, false: bool) -> str:
        """Book a judgement of `attester`'s measurement made on a rule of the caller's
        (`attestation_checked`, `TrustPolicy.held_out_rechecked`): right gives a record,
        false costs `penalty_false_attestation`, neither is unsure."""
        if right:
            self._attested_right[attester] = self._attested_right.get(attester, 0) + 1
            return ATTESTATION_RIGHT
        if false:
            penalty = self.policy.penalty_false_attestation
            self._score[attester] = self.score(attester) - penalty
            return ATTESTATION_FALSE
        return ATTESTATION_UNSURE

    def proven_attester(self, attester: bytes) -> bool:
        """A record as an attester: a "valid" attestation of it that we checked against our
        own measurement and found right, and it is not banned. Only such attesters' verdicts
        make a template verified before our own check (`PeerCore.ranked_templates`): a count
        of attestations from identities that cost nothing to make proves nothing."""
        return self._attested_right.get(attester, 0) > 0 and not self.banned(attester)

    def proven_attesters(self) -> set[bytes]:
        return {a for a in self._attested_right if not self.banned(a)}

    def proven(self, author: bytes) -> bool:
        """A record: we re-measured at least one claim of `author` and found it right, and it
        is not banned. (The score cannot say it: honest claims bank no credit, `max_score`.)"""
        return self._right.get(author, 0) > 0 and not self.banned(author)

    def banned(self, author: bytes) -> bool:
        return self.score(author) < self.policy.ban_below

    def banned_authors(self) -> set[bytes]:
        return {a for a, s in self._score.items() if s < self.policy.ban_below}
