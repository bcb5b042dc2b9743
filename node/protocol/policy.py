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

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from qudag.dag.records import TemplateEntry
from qudag.evolution.holdout import Holdout
from qudag.evolution.verify import claim_within
from qudag.node.protocol import quorum
from qudag.node.protocol.reputation import (
    ATTESTATION_FALSE,
    ATTESTATION_UNSURE,
    Reputation,
    ReputationPolicy,
)

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
    """A held-out measurement of a template, by `verifier` (evolution/holdout.py). How to
    recompute its draw (the beacon ids) stays in the attestation vertex that carries it."""

    verifier: bytes
    holdout: Holdout
    overfit: bool
    # The attestation vertex that carries it (None: ours, kept out of the ledger): the one a
    # recomputation of its draw measures and judges (`TrustPolicy.held_out_rechecked`). For
    # our recomputation of an attester's draw, that attester's attestation.
    attestation: bytes | None = None


@dataclass(frozen=True)
class Designated:
    """The score a task's author measured on its private held-out rows (the task vertex's
    `private_holdout`): nobody else holds the rows, so nobody can reproduce it. Shown as such,
    beside the claim; it decides nothing (docs/reliability.md, "Designated verifier")."""

    verifier: bytes  # the task's author
    fitness: float
    n: int


# The held-out records of one template as the ledger holds them: by verifier, and the task
# author's designated score. What `HeldOutSource` reads from the attestation vertices.
HeldOutRecords = tuple[list[HeldOut], Designated | None]
HeldOutSource = Callable[[bytes], HeldOutRecords]

# Bounds of the held-out cache (`HeldOutBook`): templates whose records are kept (least
# recently used evicted; above what one ranking judges, `ranked_templates`' limit + 200 per
# task), others' records kept per template (a flood of attestations of one template by free
# identities must not grow it), and templates whose own measurements we keep (on our draw, and
# on proven attesters' draws we recomputed).
MAX_HELD_OUT_TEMPLATES = 4096
MAX_HELD_OUT_RECORDS = 32
MAX_OWN_HELD_OUT = 4096
# A recomputed held-out score contradicts an attester's record (a ban) only beyond the
# draw's own scale: this many of its n rows (n = 324 on digits: about 0.9 %) and at least
# `false_attestation_margin` claim tolerances, in score and in standard error, and in score
# also the draw's standard error (`TrustPolicy.held_out_rechecked`).
# The claim tolerance of a data task (1e-6) is below one row (1/n), and a row whose logits
# sit within rounding of a tie can flip between an honest attester's machine and ours.
RECHECK_MARGIN_ROWS = 3
# The judgement of a recomputation that measured nothing (the driver failed): it is not
# asked for again in this run, and the attester's flag does not count (`_held_out`).
RECHECK_FAILED = "failed"


@dataclass
class _Entry:
    records: dict[bytes, HeldOut] = field(default_factory=dict)  # others', by verifier
    designated: Designated | None = None


@dataclass
class _Own:
    """Our held-out measurements of one template: on our own draw, and on the draws of proven
    attesters that flagged it, recomputed by us (`TrustPolicy.held_out_rechecked`); or, for a
    template of ours, our draw of it, which is shown and decides nothing
    (`TrustPolicy.authored_held_out`)."""

    draw: HeldOut | None = None
    # By the attester: our measurement of its draw (its `attestation` says which record we
    # recomputed), or None for a recomputation that measured nothing (given up).
    rechecked: dict[bytes, HeldOut | None] = field(default_factory=dict)
    authored: HeldOut | None = None


class HeldOutBook:
    """Held-out records by template: a bounded cache over the ledger, which is their truth.

    Why a cache and not a table: every held-out record that matters after a restart is in an
    attestation vertex (ours are published whenever they flag a template overfit, `attests`),
    so the book reads a template's records from the ledger when first asked (`source`, given
    by the core) and a restart loses nothing the ledger holds. It keeps `MAX_HELD_OUT_TEMPLATES`
    templates, evicting the least recently used (by number, not age: a template the node keeps
    ranking stays), and per template proven attesters' records and then the newest others up
    to `MAX_HELD_OUT_RECORDS`.

    Our own measurements are in one place, `_own` (the newest `MAX_OWN_HELD_OUT` templates):
    those we made in this run, including those kept out of the ledger (the attestation
    sortition did not draw us, and they flag nothing) and our recomputations of attesters'
    draws, and the one our attestation carries, read from the ledger with the others'.
    Evicting a template's own record drops its cached entry too, so the next read brings back
    whatever the ledger holds of ours. One lost to eviction or a restart only leaves the score
    shown to a proven attester's, and a recomputation to be made again (a flag it confirmed
    does not count until then, `TrustPolicy.held_out_of`); a flag of our own draw is in the
    ledger (an attestation published whatever the sortition says)."""

    def __init__(self, me: bytes, proven: Callable[[bytes], bool]) -> None:
        self.me = me
        self._proven = proven
        self.source: HeldOutSource | None = None
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._own: OrderedDict[bytes, _Own] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, template_id: bytes) -> _Entry:
        entry = self._entries.get(template_id)
        if entry is not None:
            self._entries.move_to_end(template_id)
            return entry
        entry = _Entry()
        if self.source is not None:
            records, entry.designated = self.source(template_id)
            ours = next((r for r in reversed(records) if r.verifier == self.me), None)
            if ours is not None and self._own_of(template_id).draw is None:
                self._own[template_id].draw = ours
            others = [r for r in records if r.verifier != self.me]
            keep = sorted(
                enumerate(others), key=lambda ir: (not self._proven(ir[1].verifier), -ir[0])
            )
            for _, record in keep[:MAX_HELD_OUT_RECORDS]:
                entry.records[record.verifier] = record
        self._entries[template_id] = entry
        while len(self._entries) > MAX_HELD_OUT_TEMPLATES:
            self._entries.popitem(last=False)
        return entry

    def _own_of(self, template_id: bytes) -> _Own:
        """Our measurements of a template, made the newest; the oldest template beyond
        `MAX_OWN_HELD_OUT` is evicted with its cached entry (read again from the ledger)."""
        own = self._own.setdefault(template_id, _Own())
        self._own.move_to_end(template_id)
        while len(self._own) > MAX_OWN_HELD_OUT:
            evicted, _ = self._own.popitem(last=False)
            self._entries.pop(evicted, None)
        return own

    def add(self, template_id: bytes, record: HeldOut) -> None:
        """A measurement on its verifier's own draw: ours, or one an attestation carries
        (already in the ledger)."""
        if record.verifier == self.me:
            self._entry(template_id)  # first, so that the ledger's copy cannot replace it
            self._own_of(template_id).draw = record
            return
        records = self._entry(template_id).records
        if record.verifier in records or len(records) < MAX_HELD_OUT_RECORDS:
            records[record.verifier] = record
        elif self._proven(record.verifier):
            drop = next((v for v in records if not self._proven(v)), None)
            if drop is not None:
                del records[drop]
                records[record.verifier] = record

    def recheck(self, template_id: bytes, attester: bytes, record: HeldOut | None) -> None:
        """Our measurement (`record`) of the draw `attester`'s attestation recorded, or None:
        the recomputation measured nothing."""
        self._own_of(template_id).rechecked[attester] = record

    def author(self, template_id: bytes, record: HeldOut) -> None:
        """Our measurement of a template of ours on its held-out draw (display only)."""
        self._own_of(template_id).authored = record

    def authored(self, template_id: bytes) -> HeldOut | None:
        """Our measurement of a template of ours, if we hold one (not in the ledger: lost to
        a restart or an eviction, and measured again when the template is next judged)."""
        own = self._own.get(template_id)
        return None if own is None else own.authored

    def designate(self, template_id: bytes, score: Designated) -> None:
        """The task author's designated score of a template (its attestation)."""
        self._entry(template_id).designated = score

    def records(self, template_id: bytes) -> dict[bytes, HeldOut]:
        """Each verifier's measurement on its own draw: ours under our key."""
        entry = self._entry(template_id)
        own = self._own.get(template_id)
        draw = None if own is None else own.draw
        return entry.records if draw is None else {**entry.records, self.me: draw}

    def rechecked(self, template_id: bytes) -> dict[bytes, HeldOut | None]:
        """Our measurements of attesters' draws of a template, by attester."""
        own = self._own.get(template_id)
        return {} if own is None else own.rechecked

    def designated(self, template_id: bytes) -> Designated | None:
        return self._entry(template_id).designated


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
    # The held-out score shown beside the claim, and whose it is (`TrustPolicy.held_out_of`:
    # ours, or a proven attester's; for a template of ours, our draw of it unless what we go
    # by flags it, shown only: `TrustPolicy.judge`); None when nobody we trust measured one.
    held_out: HeldOut | None = None
    # The task author's score on its private rows (display only, not reproducible).
    designated: Designated | None = None
    # A proven attester's flag that our own draw contradicts awaits our recomputation of its
    # draw (the core queues it); meanwhile `held_out` is ours and the flag does not count.
    awaiting_recheck: bool = False

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
        # Held-out measurements by template, then by verifier: ours and those in attestations
        # (a bounded cache over the ledger; the core gives it its `source`).
        self.held_outs = HeldOutBook(me, self.reputation.proven_attester)

    # --- evidence: what we measured and what was proven --------------------------------
    @staticmethod
    def claim_valid(claimed: float, measured: float, tolerance: float) -> bool:
        """A claim holds if our measurement is within the task's claim tolerance of it
        (`evolution.verify.claim_within`, the rule the evolution side judges by too)."""
        return claim_within(claimed, measured, tolerance)

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

    def held_out(self, template_id: bytes, record: HeldOut) -> None:
        """Record a held-out measurement: ours, or one an attestation carries."""
        self.held_outs.add(template_id, record)

    def authored_held_out(self, template_id: bytes, record: HeldOut) -> None:
        """Record our held-out measurement of a template of ours (the driver measured the draw
        `PeerCore.next_reevaluation` asked for after we published it). Display only, so that
        a lone node can tell whether its best net generalises: it neither verifies nor flags
        anything (`_held_out` never reads it; `judge` only shows it), it is not an
        attestation and never reaches the ledger, and other peers never see it (an author's
        word on its own net counts for nothing with them)."""
        self.held_outs.author(template_id, record)

    def designated_score(self, template_id: bytes, score: Designated) -> None:
        """Record the task author's score on its private rows (display only)."""
        self.held_outs.designate(template_id, score)

    def held_out_of(self, template_id: bytes, measured: bool = False) -> HeldOut | None:
        """The held-out measurement we go by (`_held_out`; `measured`: we measured the claim)."""
        return self._held_out(template_id, measured)[0]

    def may_start_recheck(self, record: HeldOut) -> bool:
        """Whether a new held-out record can make a recomputation wanted: only a proven
        attester's overfit flag (asked first, so that the ingest path skips the fuller
        `recheck_wanted` for every other attestation)."""
        return record.overfit and self.reputation.proven_attester(record.verifier)

    def recheck_wanted(self, template_id: bytes, measured: bool) -> HeldOut | None:
        """A proven attester's overfit flag of a template whose claim we measured (`measured`)
        and our own draw passed, whose draw we have not recomputed yet: the core asks the
        driver to measure that draw (the beacon its attestation, `HeldOut.attestation`,
        records) and reports it to `held_out_rechecked`."""
        return self._held_out(template_id, measured)[1]

    def _held_out(
        self, template_id: bytes, measured: bool
    ) -> tuple[HeldOut | None, HeldOut | None]:
        """(the held-out measurement we go by, a proven attester's flag awaiting our
        recomputation of its draw).

        - Without a measurement of our own (`measured` False and no draw of ours): the
          lowest of proven attesters' (their flag counts before our own check).
        - With our draw flagging the template: ours.
        - With our draw passing it, or lost (we measured the claim, and a draw of ours that
          flagged it would be in the ledger: such an attestation is published whatever the
          sortition says): a proven attester's draw that flags it is recomputed by us, and
          its flag never counts by itself, because a record costs one right "valid"
          attestation and free identities with one each could otherwise keep an honest
          template we verified out of the migrants. Our measurement of that draw counts if
          it flags the template too (study 3's sampled nets: docs/studies.md), lowest first.
          A recomputation that contradicts the attester's record bans it
          (`held_out_rechecked`), which takes its record out of the proven ones. Otherwise
          ours (not in memory: the lowest passing proven attester's), with the first flag
          still awaiting its recomputation.
        """
        records = self.held_outs.records(template_id)
        own = records.get(self.me)
        trusted = sorted(
            (r for v, r in records.items() if v != self.me and self.reputation.proven_attester(v)),
            key=lambda r: (r.holdout.fitness, r.verifier),
        )
        if own is None and not measured:
            return (trusted[0] if trusted else None), None
        if own is not None and own.overfit:
            return own, None
        rechecked = self.held_outs.rechecked(template_id)
        awaiting: HeldOut | None = None
        for record in trusted:
            if not record.overfit:
                continue
            if record.verifier not in rechecked:
                awaiting = awaiting or record
                continue
            ours = rechecked[record.verifier]
            if ours is not None and ours.attestation != record.attestation:
                awaiting = awaiting or record  # a newer record of the attester: not measured
            elif ours is not None and ours.overfit:
                return ours, None
        if own is None:  # ours not in memory: shown, a proven attester's that passes it
            own = next((r for r in trusted if not r.overfit), None)
        return own, awaiting

    def held_out_rechecked(
        self,
        template_id: bytes,
        record: HeldOut,
        ours: Holdout | None,
        claimed: float,
        tolerance: float,
    ) -> tuple[str, bool, Outcome] | None:
        """We measured the draw of an attester's held-out `record` of a template (the beacon
        its attestation records) at `ours` (None or not finite: the driver measured nothing,
        `RECHECK_FAILED`, not asked for again and the flag does not count). The measurement
        is kept, and flags the template if it is overfit on that draw too (`held_out_of`).
        The record is judged as a "valid" attestation's claim is
        (`Reputation.attestation_judged`), on the draw's scale: right within the task's
        claim tolerance in score and standard error (a record); off by more than the larger
        of `false_attestation_margin` tolerances and `RECHECK_MARGIN_ROWS` rows in standard
        error, or in score by more than that or the draw's standard error (ours), a false
        attestation (the ban a lie costs; the evidence is
        the signed template, the signed attestation with its beacon, and this measurement,
        which anyone can repeat); in between, or a draw of another size (its n follows code
        constants, not the task version), neither. Returns the judgement, whether our
        measurement flags the template, and what the core must do; or None for our own."""
        attester = record.verifier
        if attester == self.me:
            return None
        if ours is None or not (math.isfinite(ours.fitness) and math.isfinite(ours.stderr)):
            self.held_outs.recheck(template_id, attester, None)
            return RECHECK_FAILED, False, Outcome()
        theirs = record.holdout
        overfit = self.overfit(True, ours, claimed, tolerance)
        mine = HeldOut(self.me, ours, overfit, record.attestation)
        self.held_outs.recheck(template_id, attester, mine)
        if ours.n != theirs.n or ours.n <= 0:
            return ATTESTATION_UNSURE, overfit, Outcome()
        score_off = abs(ours.fitness - theirs.fitness)
        stderr_off = abs(ours.stderr - theirs.stderr)
        rows = max(
            self.rules.reputation.false_attestation_margin * tolerance, RECHECK_MARGIN_ROWS / ours.n
        )
        false = score_off > max(rows, ours.stderr) or stderr_off > rows
        right = max(score_off, stderr_off) <= tolerance
        was_banned = self.banned(attester)
        judged = self.reputation.attestation_judged(attester, right, false)
        now_banned = judged == ATTESTATION_FALSE and not was_banned and self.banned(attester)
        # Not `proved`: the attestation, the evidence, spread when it came (its author was not
        # banned then); what the core must do is drop the attester's connection.
        return judged, overfit, Outcome(disconnect=now_banned)

    @staticmethod
    def overfit(valid: bool, holdout: Holdout, claimed: float, tolerance: float) -> bool:
        """Whether a held-out measurement flags a claim overfit: only a claim found valid (a
        false one is a lie, judged as such) whose held-out score falls short of it beyond the
        sampling error (`Holdout.overfit`)."""
        return valid and holdout.overfit(claimed, tolerance)

    @staticmethod
    def designates(verifier: bytes, task_author: bytes | None) -> bool:
        """Whether `verifier`'s designated score (on a task's private rows) counts: only the
        author of the template's published task holds those rows; anyone else's number is
        one nobody can check, so it is ignored."""
        return task_author is not None and verifier == task_author

    def designated_of(self, template_id: bytes) -> Designated | None:
        """The task author's designated score of a template, unless the author is banned.
        Display only: nobody can check it, so it neither verifies nor flags a template."""
        score = self.held_outs.designated(template_id)
        return None if score is None or self.banned(score.verifier) else score

    # --- which templates --------------------------------------------------------------
    def judge(
        self, entry: TemplateEntry, ours: float | None, remeasurable: bool
    ) -> TemplateStanding | None:
        """How we hold one template (None: left out). `ours` is our measurement of it (our
        engine's for our own template); `remeasurable`: we could re-measure it ourselves.

        - Left out: a banned author's template.
        - Verified: we measured it valid, or at least `min_attestations` valid verdicts of
          attesters with a proven record vouch for it *and* we could re-measure it; and in
          either case not flagged overfit by a held-out measurement we go by (`_held_out`:
          a proven attester's flag of a claim we measured counts only once our recomputation
          of its draw flags the template too).
        - Fitness shown as verified: a measurement, ours; never the number an attester typed.
        - Held-out score shown: the one we go by; for a template of ours that nothing we go by
          flags, our own draw of it (`authored_held_out`), with its overfit mark. It is shown
          only: our template stays verified (its claim is our engine's measurement), and
          nothing is sampled, attested or recomputed because of it.
        """
        if self.banned(entry.author):
            return None
        attested = entry.verifications >= self.rules.min_attestations and remeasurable
        # Our own template has no draw of ours (we do not re-measure it): attesters' go.
        held, awaiting = self._held_out(entry.id, ours is not None and entry.author != self.me)
        verified = (ours is not None or attested) and not (held is not None and held.overfit)
        by = self.me if ours is not None else None
        designated = self.designated_of(entry.id)
        shown = held
        if entry.author == self.me and not (held is not None and held.overfit):
            shown = self.held_outs.authored(entry.id) or held
        waits = awaiting is not None
        return TemplateStanding(entry, verified, ours, by, shown, designated, waits)

    def sampleable(self, standing: TemplateStanding) -> bool:
        """A migrant: verified and another author's."""
        return standing.verified and standing.author != self.me

    def attests(
        self, template_id: bytes, network_size: int, overfit: bool, designated: bool = False
    ) -> bool:
        """Whether we publish our verdict as an attestation vertex: if the sortition draws us
        (`quorum.attests`), and always when our held-out score flags the template overfit,
        so the evidence reaches the ledger and survives our restart, or when we are the
        task's designated verifier with a score on its private rows (nobody else has one)."""
        if overfit or designated:
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
