"""Each study's --quick form, run for real, asserting the properties the study is about."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qudag.simulations.studies import STUDIES, StudyArgs, StudyResult


def run_study(name: str, out: Path) -> StudyResult:
    result = STUDIES[name](StudyArgs(out=out, quick=True))
    for ext in ("csv", "png", "md"):
        assert (out / f"{name}.{ext}").stat().st_size > 0
    report = (out / f"{name}.md").read_text()
    assert report.startswith("# Study")
    assert "Command: `" in report and "code version" in report and "seeds:" in report
    return result


def by(rows: list[dict], **match: object) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def test_sharing_compares_modes_at_equal_budgets(tmp_path: Path) -> None:
    result = run_study("sharing", tmp_path)
    rows = result.rows
    for task in ("xor", "two-spirals", "digits"):
        for seed in (0, 1):
            iso = by(rows, task=task, seed=seed, mode="isolation")[0]
            pan = by(rows, task=task, seed=seed, mode="panmictic")[0]
            share = by(rows, task=task, seed=seed, mode="sharing")[0]
            # Same number of peers x population and generations: the same evaluation budget.
            assert iso["evaluations"] == pan["evaluations"] == iso["budget"]
            # Sharing also pays for migrants and re-evaluations.
            assert share["evaluations"] > iso["evaluations"]
    # Migration happened (digits runs only 2 generations in --quick: too short to migrate).
    assert sum(r.get("migrants", 0) for r in by(rows, mode="sharing", task="two-spirals")) > 0
    assert {r["mode"] for r in result.summary} == {"sharing", "isolation", "panmictic"}


def test_byzantine_liars_are_isolated_flagged_and_never_sampled(tmp_path: Path) -> None:
    rows = run_study("byzantine", tmp_path).rows
    attacked = [r for r in rows if r["strategy"] not in ("honest-only", "isolated")]
    for row in attacked:
        assert row["liars"] == 2
        assert row["identical_honest_sets"] == 1, row["strategy"]
        assert row["reached_frac"] == 1.0, row["strategy"]  # honest convergence holds
        assert row["orphans_max"] <= 500
    inflate = by(rows, strategy="inflate")[0]
    assert inflate["liars_isolated_frac"] == 1.0
    assert inflate["liars_banned_frac"] > 0
    assert inflate["migrants_from_liars"] == 0  # inflated claims are never sampled
    assert by(rows, strategy="badsig")[0]["liars_isolated_frac"] == 1.0
    assert by(rows, strategy="equivocate")[0]["liars_flagged_frac"] == 1.0
    collude = by(rows, strategy="collude")[0]
    assert collude["migrants_from_liars"] == 0  # two sybils' "valid" weigh nothing
    assert collude["attesters_banned_frac"] == 1.0  # every honest peer that re-measured bans


def test_partition_heals_and_churn_settles(tmp_path: Path) -> None:
    rows = run_study("partition", tmp_path).rows
    part = by(rows, scenario="partition-2")[0]
    assert part["heal_t_ms"] is not None
    assert part["covered_after_heal_ms"] is not None
    for row in rows:
        assert row["identical_honest_sets"] == 1, row["scenario"]
        assert row["identical_t_ms"] is not None, row["scenario"]


def test_scale_the_quorum_rules_keep_a_peers_ledger_from_growing_with_the_network(
    tmp_path: Path,
) -> None:
    """Issue 14: under full replication every peer writes, so a peer's ledger grows with the
    network; under the daemon's quorum rules it grows with what is found. Both converge."""
    rows = run_study("scale", tmp_path).rows
    runs = {(r["design"], r["size"]): r for r in rows}
    assert set(runs) == {(d, n) for d in ("full", "quorum") for n in (10, 30)}
    for row in rows:
        assert row["identical_honest_sets"] == 1, row
        assert row["cpu_ms_per_peer_gen"] > 0
    full_growth = runs["full", 30]["vertices_mean"] / runs["full", 10]["vertices_mean"]
    quorum_growth = runs["quorum", 30]["vertices_mean"] / runs["quorum", 10]["vertices_mean"]
    assert full_growth > 2.5  # ~3x the peers: ~3x the vertices
    assert quorum_growth < 2.0
    assert runs["quorum", 30]["vertices_mean"] < runs["full", 30]["vertices_mean"]


@pytest.mark.parametrize("name", ["topology"])
def test_topology_publication_rate_shapes_the_ledger(name: str, tmp_path: Path) -> None:
    rows = run_study(name, tmp_path).rows
    assert len(rows) == 4
    for topo in ("ring", "random-regular"):
        often = by(rows, topology=topo, publish_every=1)[0]
        rarely = by(rows, topology=topo, publish_every=5)[0]
        assert often["vertices_mean"] > rarely["vertices_mean"]
        assert often["identical_honest_sets"] == 1


def test_collective_sharing_peers_pool_results_and_speedups_come_from_the_rows(
    tmp_path: Path,
) -> None:
    from qudag.simulations.collective import summarise

    result = run_study("collective", tmp_path)
    rows = result.rows
    sharing = by(rows, mode="sharing")
    isolated = by(rows, mode="isolated")
    for row in sharing:
        if row["peers"] > 1:
            assert row["es_sets_pooled"] > 0  # sharing peers received and used result sets
            assert row["messages_per_peer"] > 0
    assert all(r["es_sets_pooled"] == 0 and r["messages_per_peer"] == 0 for r in isolated)
    # One peer alone is the same run in both columns.
    for seed in (0, 1):
        assert (
            by(rows, mode="sharing", peers=1, seed=seed)[0]["time_to_target"]
            == by(rows, mode="isolated", peers=1, seed=seed)[0]["time_to_target"]
        )
    (summary,) = result.summary
    # recomputed from the rows alone (as JSON: a CI of one value is NaN, never equal to itself)
    assert json.dumps(summary) == json.dumps(summarise(rows, (1, 2, 4), 2)[0])
    times = {n: [r["time_to_target"] for r in by(sharing, peers=n)] for n in (1, 2, 4)}
    assert all(t is not None for ts in times.values() for t in ts)  # quick target reached
    for n in (2, 4):
        expected = (sum(times[1]) / 2) / (sum(times[n]) / 2)
        assert abs(summary["speedup"][str(n)] - expected) < 1e-9
    assert by(rows, mode="cma-es")  # the one-machine baselines ran in the same study
    neat = by(rows, mode="neat")
    assert [r["seed"] for r in neat] == [0, 1]
    for row in neat:  # the same budget of evaluations as one peer and CMA-ES, never more
        assert row["budget"] == by(rows, mode="cma-es", seed=row["seed"])[0]["budget"]
        assert row["evaluations"] <= row["budget"] and row["pop_size"] == 16
        assert row["reached"] == (row["evals_to_target"] is not None)
    assert summary["neat_success"] == sum(r["reached"] for r in neat)
    assert summary["neat_pop_size"] == 16 and summary["baseline_budget"] == neat[0]["budget"]
    assert "neat_time" in summary and "cma_es_time" in summary
    csv_header = (tmp_path / "collective-summary.csv").read_text().splitlines()[0].split(",")
    assert {"neat_time", "neat_success", "cma_es_time", "cma_es_success"} <= set(csv_header)
    assert "One machine: NEAT" in (tmp_path / "collective.md").read_text()
