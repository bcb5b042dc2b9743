"""The one trust policy (node/protocol/policy.py): its rules, and the places that used to
decide on their own."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_node_core import (
    TASK,
    author_history,
    deliver_all,
    forged_attestation,
    make_core,
)

from qudag.crypto.signing import Identity
from qudag.dag.payloads import VERDICT_INVALID
from qudag.dag.records import TemplateEntry
from qudag.evolution.holdout import Holdout
from qudag.node.protocol.policy import (
    HeldOut,
    Outcome,
    PeerOffences,
    TrustPolicy,
    TrustRules,
)


@pytest.fixture(scope="module")
def identities() -> list[Identity]:
    return [Identity.generate() for _ in range(3)]


def test_a_strangers_invalid_verdict_does_not_hide_a_claim_from_our_backlog_at_restart(
    identities: list[Identity], tmp_path: Path
) -> None:
    """Only our verdicts decide what we still have to check: the store's default (every
    verifier counts) let one "invalid" attestation from a free identity keep an honest claim
    out of the re-evaluation backlog rebuilt at start, so it was never checked again."""
    author, sybil = make_core(identities[0]), make_core(identities[2], eager_identity=True)
    history = author_history(author, 1)
    path = tmp_path / "node.sqlite3"
    node = make_core(identities[1], path)
    for core in (node, sybil):
        deliver_all(history, core, "author-peer")
    template_id = [e.id for e in node.store.templates(TASK, 5, trusted="every-verifier")][0]
    deliver_all(forged_attestation(sybil, template_id, 0.0, VERDICT_INVALID), node, "sybil-peer")
    assert node.reevaluation_backlog() == 1
    node.store.close()
    restarted = make_core(identities[1], path)
    assert restarted.reevaluation_backlog() == 1
    job = restarted.next_reevaluation()
    assert job is not None and job.template_id == template_id


def entry(author: bytes, verifications: int = 0) -> TemplateEntry:
    return TemplateEntry(b"\x07" * 32, author, TASK, 1, 0.9, None, verifications)


def test_judge_verifies_on_our_measurement_or_proven_attesters_we_could_check() -> None:
    me, other, attester = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    policy = TrustPolicy(me, TrustRules(min_attestations=2))
    measured = policy.judge(entry(other), 0.9, remeasurable=True)
    assert measured is not None and measured.verified and measured.measured_by == me
    assert policy.sampleable(measured)
    on_word = policy.judge(entry(other, verifications=2), None, remeasurable=True)
    assert on_word is not None and on_word.verified and on_word.measured_fitness is None
    skewed = policy.judge(entry(other, verifications=5), None, remeasurable=False)
    assert skewed is not None and not skewed.verified  # nothing we cannot re-measure
    ours = policy.judge(entry(me), 0.9, remeasurable=True)
    assert ours is not None and ours.verified and not policy.sampleable(ours)
    # A held-out flag we go by (ours) un-verifies even our own measurement of a valid claim.
    policy.held_out(b"\x07" * 32, HeldOut(me, Holdout(240, 0.8, 0.01), overfit=True))
    flagged = policy.judge(entry(other), 0.9, remeasurable=True)
    assert flagged is not None and flagged.overfit and not flagged.verified
    # A stranger's flag is not one we go by; a proven attester's is.
    fresh = TrustPolicy(me, TrustRules())
    fresh.held_out(b"\x07" * 32, HeldOut(attester, Holdout(240, 0.8, 0.01), True))
    assert fresh.held_out_of(b"\x07" * 32) is None
    assert fresh.attestation_measured(attester, 0.5, 0.5, 1e-6)[0] == "right"
    held = fresh.held_out_of(b"\x07" * 32)
    assert held is not None and held.verifier == attester


def test_banned_authors_are_left_out_and_strikes_drop_a_peer() -> None:
    me, liar = b"\x01" * 32, b"\x02" * 32
    policy = TrustPolicy(me, TrustRules(max_peer_strikes=3))
    policy.claim_measured(liar, False)
    assert policy.banned(liar) and policy.judge(entry(liar), 0.9, True) is None
    assert [policy.strike("p") for _ in range(3)] == [False, False, True]
    assert not policy.relays_pending(liar, 5, 4)  # banned: never relayed
    assert policy.relays_pending(me, 5, 4) and not policy.relays_pending(me, 5, 2)


def test_peer_offences_refuse_for_the_cooldown_and_blacklist_at_the_threshold() -> None:
    offences = PeerOffences(ban_threshold=2, cooldown_s=30.0)
    assert offences.seeks("p")
    assert offences.offend("p", 100.0) is False
    assert offences.refuses("p", 129.9) and not offences.refuses("p", 130.0)
    assert not offences.seeks("p")  # accepted after its cooldown, never dialled again
    assert offences.offend("q", 101.0) is False
    assert offences.offend("p", 140.0) is True  # the second offence blacklists
    assert offences.refuses("p", 1e9) and "p" in offences.blacklisted
    assert offences.offend("p", 150.0) is False  # blacklisted once: nothing more to carry out
    assert not offences.refuses("q", 131.0)
    offences.blacklist("r")  # a banned author's peer, whatever its count
    assert offences.refuses("r", 0.0) and not offences.seeks("r")


def test_the_policy_says_what_the_core_does_with_each_piece_of_evidence() -> None:
    """The core acts on `Outcome`s only: a lie bans and disconnects, a right claim promotes
    its author, a false attestation spreads once as evidence and disconnects its attester,
    an equivocation spreads once; an author already banned is not weighed again."""
    me, honest, liar, attester, twin = (bytes([i]) * 32 for i in range(1, 6))
    policy = TrustPolicy(me, TrustRules())
    assert policy.claim_valid(0.9, 0.905, 0.01) and not policy.claim_valid(0.9, 0.88, 0.01)
    right = policy.claim_measured(honest, True)
    assert right.promote and not right.disconnect and policy.reevaluated_first(honest)
    lie = policy.claim_measured(liar, False)
    assert lie.disconnect and not lie.promote and policy.banned(liar)
    judged, outcome = policy.attestation_measured(attester, 1.0, 0.5, 0.01)
    assert judged == "false" and outcome.disconnect and outcome.proved
    judged, again = policy.attestation_measured(attester, 1.0, 0.5, 0.01)
    assert judged == "false" and not again.disconnect and not again.proved  # banned already
    assert policy.attestation_measured(honest, 1.0, 0.985, 0.01)[0] == "unsure"
    assert policy.attestation_measured(honest, 1.0, 1.0, 0.01)[0] == "right"
    assert honest in policy.trusted_verifiers() and attester not in policy.trusted_verifiers()
    proof = policy.equivocation_proven(twin)
    assert proof.proved and proof.disconnect and policy.banned(twin)
    assert policy.equivocation_proven(twin) == policy.equivocation_proven(me) == Outcome()


def test_only_a_valid_claim_is_overfit_and_only_the_task_author_designates() -> None:
    short, close = Holdout(240, 0.8, 0.01), Holdout(240, 0.995, 0.01)
    assert TrustPolicy.overfit(True, short, 1.0, 0.01)
    assert not TrustPolicy.overfit(False, short, 1.0, 0.01)  # a false claim is a lie instead
    assert not TrustPolicy.overfit(True, close, 1.0, 0.01)  # within the sampling error
    author, stranger = b"\x01" * 32, b"\x02" * 32
    assert TrustPolicy.designates(author, author)
    assert not TrustPolicy.designates(stranger, author)
    assert not TrustPolicy.designates(author, None)  # we do not hold the task vertex


def test_a_proven_attesters_recorded_draw_is_judged_on_the_draws_scale() -> None:
    """Our recomputation of a proven attester's draw judges its held-out record: within 1
    claim tolerance right; off by more than the draw's scale (the larger of 2 tolerances,
    the draw's standard error and `RECHECK_MARGIN_ROWS` rows) false, a ban and its
    connection; in between, or a draw of another size (n follows code constants), neither.
    Until then its flag does not count (the template stays verified on our draw); after, the
    template goes by our measurement of that draw if it flags it, unless the attester's
    record was false: then by our own draw (the attester chose its beacon)."""
    me, template, n = b"\x01" * 32, b"\x07" * 32, 324
    row = 1 / n
    ours = HeldOut(me, Holdout(n, 0.995, 0.01), overfit=False)
    theirs = Holdout(n, 0.9, 0.01)
    judged: dict[str, tuple[str, bool, bool]] = {}
    for name, measured, tolerance in [
        ("same", theirs, 0.01),
        ("in the margin", Holdout(n, 0.915, 0.01), 0.01),
        ("score off", Holdout(n, 0.95, 0.01), 0.01),
        ("stderr off", Holdout(n, 0.9, 0.05), 0.01),
        ("other size", Holdout(200, 0.95, 0.01), 0.01),
        # A data task's tolerance (1e-6) is below one row: a flipped near-tie row is not a lie,
        ("one row off", Holdout(n, 0.9 + row, 0.01), 1e-6),
        ("three rows off", Holdout(n, 0.9 + 3 * row, 0.01), 1e-6),
        # ... a score several standard errors off is.
        ("three stderr off", Holdout(n, 0.93, 0.01), 1e-6),
    ]:
        attester = bytes([len(judged) + 2]) * 32
        policy = TrustPolicy(me, TrustRules())
        assert policy.attestation_measured(attester, 0.5, 0.5, tolerance)[0] == "right"
        policy.held_out(template, ours)
        record = HeldOut(attester, theirs, overfit=True, attestation=b"\x0a" * 32)
        policy.held_out(template, record)
        assert policy.recheck_wanted(template, measured=True) == record
        standing = policy.judge(entry(b"\x09" * 32), 1.0, remeasurable=True)
        assert standing is not None and standing.verified and standing.awaiting_recheck
        assert standing.held_out == ours  # our draw, while its flag awaits us
        result = policy.held_out_rechecked(template, record, measured, 1.0, tolerance)
        assert result is not None and policy.recheck_wanted(template, measured=True) is None
        verdict, overfit, outcome = result
        judged[name] = (verdict, overfit, outcome.disconnect)
        expected = (
            ours
            if verdict == "false" or not overfit
            else HeldOut(me, measured, True, record.attestation)
        )
        assert policy.held_out_of(template) == expected
    assert judged == {
        "same": ("right", True, False),
        "in the margin": ("unsure", True, False),
        "score off": ("false", True, True),
        "stderr off": ("false", False, True),
        "other size": ("unsure", True, False),
        "one row off": ("unsure", True, False),
        "three rows off": ("unsure", True, False),
        "three stderr off": ("false", True, True),
    }


def test_a_recheck_measures_the_record_it_was_asked_for_and_gives_up_on_a_failed_one() -> None:
    """The recomputation belongs to one attestation (`HeldOut.attestation`): a newer record
    of the attester is recomputed again. One that measured nothing is not asked for again,
    bans nobody, and its flag does not count. Without a measurement of ours (neither the
    claim nor a draw), a proven attester's flag counts and nothing is recomputed."""
    me, attester, template = b"\x01" * 32, b"\x02" * 32, b"\x07" * 32
    policy = TrustPolicy(me, TrustRules())
    assert policy.attestation_measured(attester, 0.5, 0.5, 1e-6)[0] == "right"
    first = HeldOut(attester, Holdout(324, 0.5, 0.02), overfit=True, attestation=b"\x0a" * 32)
    policy.held_out(template, first)
    assert policy.recheck_wanted(template, measured=False) is None
    assert policy.held_out_of(template) == first  # not measured by us: its flag counts
    assert policy.recheck_wanted(template, measured=True) == first  # our draw lost (restart)
    agreed = Holdout(324, 0.5, 0.02)
    judged = policy.held_out_rechecked(template, first, agreed, 1.0, 1e-6)
    assert judged is not None and judged[:2] == ("right", True)
    assert policy.held_out_of(template, measured=True) == HeldOut(
        me, agreed, True, first.attestation
    )
    newer = HeldOut(attester, Holdout(324, 0.4, 0.02), overfit=True, attestation=b"\x0b" * 32)
    policy.held_out(template, newer)
    assert policy.recheck_wanted(template, measured=True) == newer
    assert policy.held_out_of(template, measured=True) is None  # awaiting: no flag counts
    for failed in (None, Holdout(324, float("nan"), 0.02)):
        assert policy.held_out_rechecked(template, newer, failed, 1.0, 1e-6) == (
            "failed",
            False,
            Outcome(),
        )
        assert policy.recheck_wanted(template, measured=True) is None
        assert policy.held_out_of(template, measured=True) is None
        assert not policy.banned(attester)
