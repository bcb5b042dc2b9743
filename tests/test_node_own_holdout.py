"""Issue 17, section 3: "`templates list/show` and every leaderboard show held-out scores
beside claimed fitness", for a node's own templates too. A node measures none of its own
claims, so a lone node listed each of its templates with no held-out score and its user could
not tell whether the best net generalises. The node now measures each template it publishes
on a held-out draw, as a job the core asks its driver for; the score is shown as ours and
decides nothing: no verdict, no attestation, no record, nothing sampled or flagged for
others, and nothing we publish changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_node_core import listed, publications
from test_node_holdout import (
    NOW,
    TASK,
    deliver,
    fitted,
    flags,
    make_core,
    prove_attester,
    publish,
    report,
)

from qudag.crypto.signing import Identity
from qudag.evolution.holdout import Holdout, holdout_seed
from qudag.evolution.verify import remeasure, remeasure_holdout
from qudag.node.protocol.core import PeerCore, Reevaluation, task_topic


def entry_of(core: PeerCore, template_id: bytes) -> dict[str, Any]:
    (entry,) = [e for e in listed(core, TASK) if e["id"] == template_id.hex()]
    return entry


def own_draw(core: PeerCore) -> tuple[Reevaluation, tuple[str | None, list[Any]]]:
    """The next job, which must be the held-out draw of a template of ours, answered as both
    drivers answer every job: the claim re-measured, the held-out score for its draw."""
    job = core.next_reevaluation()
    assert job is not None and job.own and job.author == core.me
    _, measured = remeasure(job.template)
    held = remeasure_holdout(job.template, job.holdout_seed)
    return job, core.on_reevaluated(job, measured, NOW + 5, held)


def test_a_lone_nodes_template_shows_its_held_out_score_as_ours_and_decides_nothing() -> None:
    node = make_core(Identity.generate())
    vid, _ = publish(node, fitted("train", 1.0), 1)
    before = entry_of(node, vid)
    assert before["held_out"] is None and before["verified"] is True  # the gap
    job, (verdict, actions) = own_draw(node)
    assert job.template_id == vid and job.holdout_seed == holdout_seed(vid, job.beacon)
    # A lone node holds no vertex after its template but the template: the draw is fixed by
    # the template's id alone (a randomised signature, unknown before it was signed).
    assert job.beacon == ()
    assert (verdict, actions) == (None, [])  # no verdict, nothing published
    entry = entry_of(node, vid)
    expected = remeasure_holdout(fitted("train", 1.0), job.holdout_seed)
    assert expected is not None
    assert entry["held_out"] == {"fitness": expected.fitness, "n": 324, "by": "us"}
    assert entry["overfit"] is False
    # Nothing else moved: it is not a verdict (none stored, so none rebuilt at start), not an
    # attestation, and gives us no record; our template is verified as before (our engine's
    # measurement), and never a migrant of ours.
    assert {k: v for k, v in entry.items() if k not in ("held_out",)} == {
        k: v for k, v in before.items() if k not in ("held_out",)
    }
    assert node.store.verifications(vid) == [] and node.store.verdicts_by(node.me) == []
    assert node.stats.reevaluations == {} and node.stats.own_held_out == {"measured": 1}
    assert not node.trust.reputation.proven(node.me)
    assert node.migrants(TASK, 5) == []
    assert node.next_reevaluation() is None  # one draw per template
    listed(node, TASK)
    assert node.next_reevaluation() is None  # a listing does not ask for it again


def test_our_overfit_template_is_marked_and_changes_nothing_we_publish_or_others_see() -> None:
    """A net fitted on the validation split, published by us: our draw marks it overfit in
    our listing; what we publish next, and what another peer holds of it, are unchanged."""
    node, other = make_core(Identity.generate()), make_core(Identity.generate())
    vid, history = publish(node, fitted("val", 1e-8), 1)
    claim = fitted("val", 1e-8).fitness
    # What the publication rule says before the score is known (every `publish_every`
    # generations, above our best claim: a test split score never enters it).
    asked = [(g, f) for g in (5, 10) for f in (claim - 0.01, claim, claim + 0.01)]
    publishes = [node.should_publish(TASK, g, f) for g, f in asked]
    _, (verdict, actions) = own_draw(node)
    assert (verdict, actions) == (None, [])
    entry = entry_of(node, vid)
    assert entry["overfit"] is True and entry["held_out"]["by"] == "us"
    assert entry["held_out"]["fitness"] < entry["claimed_fitness"] - 0.05
    assert entry["verified"] is True  # its claim is true; the mark is what a user weighs
    assert node.stats.own_held_out == {"measured": 1, "overfit": 1}
    assert [node.should_publish(TASK, g, f) for g, f in asked] == publishes
    deliver(history, other)
    assert entry_of(other, vid)["held_out"] is None  # nothing of our score reached it


def test_a_restart_measures_our_templates_held_out_score_again(tmp_path: Path) -> None:
    """The score is not in the ledger (it is not an attestation): a restarted node asks for
    the draw again when it lists the template. Nothing was added to the ledger since, so the
    beacon, the draw and the score are the same."""
    identity = Identity.generate()
    node = make_core(identity, tmp_path / "node.sqlite3")
    vid, _ = publish(node, fitted("train", 1.0), 1)
    own_draw(node)
    before = entry_of(node, vid)
    node.store.close()
    restarted = make_core(identity, tmp_path / "node.sqlite3")
    assert restarted.next_reevaluation() is None  # nothing asked before it is listed
    assert entry_of(restarted, vid)["held_out"] is None  # not persisted ...
    own_draw(restarted)  # ... the listing asked for it
    assert entry_of(restarted, vid) == before


def test_a_proven_attesters_flag_of_our_template_still_decides_and_is_not_rechecked() -> None:
    """Our draw passes our template and a proven attester's draw flags it (here a false
    score). For another author's template our passing draw would have the attester's draw
    recomputed; for our own, our score is not evidence: the attester's flag stays what the
    template goes by, shown as such, and no recomputation is asked for."""
    node, liar, author = (make_core(Identity.generate()) for _ in range(3))
    prove_attester(author, liar, node)
    vid, _ = publish(node, fitted("train", 1.0), 2)
    ledger, more = node.store.since({}, 1000)  # our attestations included: its parents
    assert not more
    for raw in ledger:
        liar.on_gossip("node-peer", task_topic(TASK), raw, NOW + 3)
    job = liar.next_reevaluation()
    assert job is not None and job.template_id == vid
    held, _ = flags(job)
    lie = publications(report(liar, job, Holdout(held.n, 0.5, held.stderr)))
    own_draw(node)
    assert entry_of(node, vid)["overfit"] is False  # ours passes it
    for pub in lie:
        node.on_gossip("liar-peer", pub.topic, pub.data, NOW + 6)
    entry = entry_of(node, vid)
    assert entry["overfit"] is True and entry["held_out"]["by"] == liar.me.hex()
    assert entry["verified"] is False  # as before this change: a proven attester's flag
    assert node.next_reevaluation() is None and node.stats.held_out_rechecks == {}
    assert not node.trust.banned(liar.me)
