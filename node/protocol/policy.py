"""The one trust policy: whom we trust, whom we ban, which templates may be sampled, listed as
verified or attested (issue 17, section 1).

Why one module: when the rules lived in the reputation table, the core's ranking, the store's
SQL, the daemon's HTTP route and the transport (a threshold of its own), a change to one left
the others deciding differently. Here each rule is stated once; the core, the simulator (which
drives the core), the HTTP routes (`PeerCore.ranked_templates`, whose judgement is `judge`) and
the CLI (which reads those routes) all ask it, and the transport only reports offences
(`PeerOffences`). The store still runs the SQL that gathers verdicts, with the verifier list
this policy gives it (`trusted_verifiers`).

Sans-IO like the core: no clock of its own (time is passed in), no sockets, no threads.
docs/ARCHITECTURE.md, "Trust", lists where each rule lives.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from qudag.dag.records import TemplateEntry
from qudag.evolution.holdout import Holdout
from qudag.node.protocol import quorum
from qudag.node.protocol.reputation import ATTESTATION_FALSE, Reputation, ReputationPolicy

PeerKey = TypeVar("PeerKey", bound=Hashable)


@dataclass(frozen=True)
class TrustRules:
    """The thresholds of the policy, in one place (the core copies them from `CoreConfig`)."""

    # Valid verdicts of attesters with a proven record that make a template verified before
    # our own check (only if we could re-measure it ourselves).
    min_attestations: int = 2
    # Protocol faults of one forwarding peer (garbage it sent) before we drop it.
    max_peer_strikes: int = 20
    # About this many of the peers that re-measure a claim publish their verdict (0: all).
    attest_quorum: int = 6
    reputation: ReputationPolicy = field(default_factory=ReputationPolicy)


@dataclass(frozen=True)
class Outcome:
    """What the core must carry out after the policy weighed one piece of evidence about an
    author (`claim_measured`, `attestation_measured`, `equivocation_proven`)."""

    # The author is banned: drop the connections its key holds (not the peers that relayed it).
    disconnect: bool = False
    # This evidence was just held against the author (an equivocation, or a false attestation
    # that banned it): the vertex carrying it spreads once although its author is banned now,
    # so that every honest peer holds the evidence and judges the author itself.
    proved: bool = False
    # The author has a record: its queued claims go before strangers' (`reevaluated_first`).
    promote: bool = False


@dataclass(frozen=True)
class HeldOut:
    """A held-out measurement of a template, by `verifier` (evolution/holdout.py)."""

    verifier: bytes
    beacon: tuple[bytes, ...]
    holdout: Holdout
    overfit: bool


@dataclass(frozen=True)
class TemplateStanding:
    """A template as this peer judges it (`TrustPolicy.judge`, the one rule)."""

    entry: TemplateEntry
    # May be sampled as a migrant, listed as verified and pulled as verified.
    verified: bool
    # A fitness measured, never one an attester typed: our re-measurement that found the claim
    # valid (or, for our own template, what our engine measured); None if we measured nothing.
    measured_fitness: float | None
    measured_by: bytes | None  # whose measurement `measured_fitness` is (today: our key id)
    # The held-out score shown beside the claim, and whose it is (ours first, else a proven
    # attester's); None when nobody we trust measured one.
    held_out: HeldOut | None = None

    @property
    def id(self) -> bytes:
        return self.entry.id

    @property
    def author(self) -> bytes:
        return self.entry.author

    @property
    def overfit(self) -> bool:
        return self.held_out is not None and self.held_out.overfit


class TrustPolicy:
    """Every trust decision of one peer (`me`), over its reputation table."""

    def __init__(self, me: bytes, rules: TrustRules) -> None:
        self.me = me
        self.rules = rules
        self.reputation = Reputation(rules.reputation)
        self.strikes: dict[str, int] = {}
        # Held-out measurements by template, then by verifier: ours and those in attestations.
        self._held_out: dict[bytes, dict[bytes, HeldOut]] = {}

    # --- evidence: what we measured and what was proven --------------------------------
    @staticmethod
    def claim_valid(claimed: float, measured: float, tolerance: float) -> bool:
        """A claim holds if our measurement is within the task's claim tolerance of it."""
        return abs(measured - claimed) <= tolerance

    def claim_measured(self, author: bytes, valid: bool) -> Outcome:
        """We re-measured a claim of `author` (or recall such a verdict of ours at start): a
        valid one gives it a record, a false one costs what a lie costs (a ban)."""
        self.reputation.claim_checked(author, valid)
        return Outcome(disconnect=self.banned(author), promote=self.reputation.proven(author))

    def attestation_measured(
        self, attester: bytes, claimed: float, measured: float, tolerance: float
    ) -> tuple[str, Outcome]:
        """`attester` signed a "valid" attestation of a claim of fitness `claimed` that we
        measured at `measured`. Returns the judgement (`Reputation.attestation_checked`:
        right gives the attester a record, provably false costs what the lie costs its
        claimant, unsure neither) and what the core must do: a false attester banned by this
        attestation is disconnected, and the attestation spreads once as the evidence."""
        was_banned = self.banned(attester)
        judged = self.reputation.attestation_checked(attester, abs(measured - claimed), tolerance)
        now_banned = judged == ATTESTATION_FALSE and not was_banned and self.banned(attester)
        return judged, Outcome(disconnect=now_banned, proved=now_banned)

    def equivocation_proven(self, author: bytes) -> Outcome:
        """Two validly signed vertices of `author` with one seq: proof, which costs what a
        proven lie costs (a ban and its own connection). Ours, or an author already banned,
        is not weighed again (its vertices are not relayed any more)."""
        if author == self.me or self.banned(author):
            return Outcome()
        self.reputation.equivocated(author)
        return Outcome(disconnect=self.banned(author), proved=True)

    # --- whom we ban ------------------------------------------------------------------
    def banned(self, author: bytes) -> bool:
        return self.reputation.banned(author)

    def banned_authors(self) -> set[bytes]:
        return self.reputation.banned_authors()

    def strike(self, peer: str) -> bool:
        """A forwarding peer sent provable garbage (`peer` is a connection, not an author:
        relayed bytes prove nothing about their signer). True: drop it now."""
        self.strikes[peer] = self.strikes.get(peer, 0) + 1
        return self.strikes[peer] >= self.rules.max_peer_strikes

    def relays_pending(self, author: bytes | None, seq: int | None, last_seq: int | None) -> bool:
        """Relay a pending vertex only if its author is not banned and we hold the author's
        previous vertex (seq - 1): invented parents are not flooded (issue 17)."""
        if author is None or seq is None or self.banned(author):
            return False
        return last_seq == seq - 1

    # --- whom we trust ----------------------------------------------------------------
    def trusted_verifiers(self) -> list[bytes]:
        """Whose verdicts count in the store's ranking: ours and attesters with a proven
        record (`Reputation.proven_attester`, never a banned one)."""
        return [self.me, *sorted(self.reputation.proven_attesters() - {self.me})]

    def reevaluated_first(self, author: bytes) -> bool:
        """Claims of authors with a record jump the re-evaluation queue (not strangers')."""
        return self.reputation.proven(author)

    # --- held-out scores --------------------------------------------------------------
    def seeds_draws(self, author: bytes) -> bool:
        """Whether a vertex of `author` signed after a template may seed our held-out draw of
        it: ours, or an author or attester with a record (ML-DSA signatures are randomised,
        so an honest vertex's id is unknowable before it is signed; a free identity's ids
        could be ground by the template's author)."""
        return (
            author == self.me
            or self.reputation.proven(author)
            or self.reputation.proven_attester(author)
        )

    def held_out(self, verifier: bytes, template_id: bytes, record: HeldOut) -> None:
        """Record a held-out measurement: ours, or one an attestation carries."""
        self._held_out.setdefault(template_id, {})[verifier] = record

    def held_out_of(self, template_id: bytes) -> HeldOut | None:
        """The held-out measurement we go by: ours, else the lowest of proven attesters'."""
        records = self._held_out.get(template_id)
        if not records:
            return None
        if self.me in records:
            return records[self.me]
        trusted = [r for v, r in records.items() if self.reputation.proven_attester(v)]
        return min(trusted, key=lambda r: r.holdout.fitness, default=None)

    # --- which templates --------------------------------------------------------------
    def judge(
        self, entry: TemplateEntry, ours: float | None, remeasurable: bool
    ) -> TemplateStanding | None:
        """How we hold one template (None: left out). `ours` is our measurement of it (our
        engine's for our own template); `remeasurable`: we could re-measure it ourselves.

        - Left out: a banned author's template.
        - Verified: we measured it valid, or at least `min_attestations` valid verdicts of
          attesters with a proven record vouch for it *and* we could re-measure it; and in
          either case not flagged overfit by a held-out measurement we go by.
        - Fitness shown as verified: a measurement, ours; never the number an attester typed.
        """
        if self.banned(entry.author):
            return None
        attested = entry.verifications >= self.rules.min_attestations and remeasurable
        held = self.held_out_of(entry.id)
        verified = (ours is not None or attested) and not (held is not None and held.overfit)
        return TemplateStanding(entry, verified, ours, self.me if ours is not None else None, held)

    def sampleable(self, standing: TemplateStanding) -> bool:
        """A migrant: verified and another author's."""
        return standing.verified and standing.author != self.me

    def attests(self, template_id: bytes, network_size: int, overfit: bool) -> bool:
        """Whether we publish our verdict as an attestation vertex: if the sortition draws us
        (`quorum.attests`), and always when our held-out score flags the template overfit,
        so the evidence reaches the ledger and survives our restart."""
        if overfit:
            return True
        return quorum.attests(template_id, self.me, self.rules.attest_quorum, network_size)


@dataclass
class PeerOffences(Generic[PeerKey]):
    """What the transport does with a peer that broke the protocol (it reports, this decides):
    each offence refuses the peer's connections for `cooldown_s`, and `ban_threshold`
    offences blacklist it; a peer whose key the trust policy banned is blacklisted too
    (`blacklist`). Time is the driver's, passed in (trio's clock in the daemon); a peer is
    whatever key the driver names peers by (a libp2p peer id there)."""

    ban_threshold: int = 3
    cooldown_s: float = 30.0
    counts: dict[PeerKey, int] = field(default_factory=dict)
    blacklisted: set[PeerKey] = field(default_factory=set)
    refused_until: dict[PeerKey, float] = field(default_factory=dict)  # cooldowns not yet over

    def offend(self, peer: PeerKey, now: float) -> bool:
        """One more offence: the peer is refused for `cooldown_s` from `now`. True: this
        offence blacklists it (it was not before)."""
        self.counts[peer] = self.counts.get(peer, 0) + 1
        self.refused_until[peer] = now + self.cooldown_s
        if self.counts[peer] >= self.ban_threshold and peer not in self.blacklisted:
            self.blacklisted.add(peer)
            return True
        return False

    def blacklist(self, peer: PeerKey) -> None:
        """Refuse `peer` from now on whatever its count (its key's author is banned)."""
        self.blacklisted.add(peer)

    def refuses(self, peer: PeerKey, now: float) -> bool:
        """Whether to refuse a connection from or to `peer` at `now`: blacklisted, or within
        the cooldown of its last offence."""
        if peer in self.blacklisted:
            return True
        until = self.refused_until.get(peer)
        if until is None:
            return False
        if now < until:
            return True
        del self.refused_until[peer]  # bounded by the peers in a cooldown
        return False

    def seeks(self, peer: PeerKey) -> bool:
        """Whether discovery may dial `peer`: never one that broke the protocol with us (its
        connections are accepted once its cooldown is over, but the DHT, which learns it from
        our neighbours, would otherwise re-dial it as the cooldown ends) nor a blacklisted
        one."""
        return peer not in self.counts and peer not in self.blacklisted
