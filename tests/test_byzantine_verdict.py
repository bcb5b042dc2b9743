"""Issue 17's verdict on Byzantine runs: the time to target judged against honest baselines."""

from __future__ import annotations

from typing import Any

from qudag.simulations.byzantine_study import HONEST_ONLY, ISOLATED, byzantine_verdicts
from qudag.simulations.stats import liar_migrant_figures


def _row(strategy: str, fraction: float, honest: int, t: float | None, seed: int) -> dict[str, Any]:
    return {
        "strategy": strategy,
        "fraction": fraction,
        "peers": 20,
        "honest": honest,
        "seed": seed,
        "honest_all_reached": int(t is not None),
        "all_reached_t_s": t,
        "reached_t_s": None if t is None else t - 2,
        "migrants_from_liars": 0,
        "liars_banned_frac": float("nan") if strategy == HONEST_ONLY else 1.0,
        "liar_isolation_t_ms_max": None,
    }


def _baselines() -> list[dict[str, Any]]:
    rows = []
    for seed, (full, alone) in enumerate([(20, 24), (22, 26), (21, 25), (19, 27)]):
        rows.append({**_row(HONEST_ONLY, 0.0, 20, full, seed), "peers": 20})
        rows.append({**_row(HONEST_ONLY, 0.0, 15, alone, seed), "peers": 15})
        rows.append({**_row(ISOLATED, 0.0, 20, None, seed), "peers": 20})
    return rows


def _verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    (verdict,) = byzantine_verdicts(_baselines() + rows)
    return verdict


def test_attacked_times_are_judged_against_the_same_honest_peers_alone() -> None:
    """Liars that take 5 of 20 peers: the 15 honest peers are as fast as 15 peers alone
    (goal met), although slower than 20 honest peers; later than the 15 alone, it is not."""
    inside = _verdict([_row("sybil", 0.25, 15, t, s) for s, t in enumerate([25, 26, 24, 27])])
    assert inside["vs_honest_only"] == "inside" and inside["honest_only_peers"] == 15
    assert inside["vs_full_network"] == "above" and inside["full_network_peers"] == 20
    assert inside["time_goal_met"] is True
    assert inside["honest_all_time_to_target_s"] == 25.5
    assert inside["honest_time_to_target_s"] == 23.5  # the first honest peer's, as before
    later = _verdict([_row("sybil", 0.25, 15, t, s) for s, t in enumerate([35, 36, 34, 37])])
    assert later["vs_honest_only"] == "above" and later["time_goal_met"] is False
    sooner = _verdict([_row("sybil", 0.25, 15, t, s) for s, t in enumerate([15, 16, 14, 17])])
    assert sooner["vs_honest_only"] == "below" and sooner["time_goal_met"] is True


def test_a_run_that_never_reaches_the_target_misses_the_goal() -> None:
    times = [25, None, 24, 26]
    missed = _verdict([_row("collude", 0.25, 15, t, s) for s, t in enumerate(times)])
    assert missed["honest_reached_target"] == 3 and missed["time_goal_met"] is False
    at_40 = _verdict([_row("collude", 0.4, 15, t, s) for s, t in enumerate([60, 70, 65, 80])])
    assert at_40["time_goal_met"] is True  # at 40 % only reaching the target counts
    at_50 = _verdict([_row("collude", 0.5, 15, t, s) for s, t in enumerate(times)])
    assert at_50["time_goal_met"] is None  # no goal above 40 %


def test_a_baseline_that_missed_the_target_in_some_run_judges_nothing() -> None:
    """Its mean would be of its lucky runs only."""
    rows = [r for r in _baselines() if not (r["peers"] == 15 and r["seed"] == 0)]
    rows.append(_row(HONEST_ONLY, 0.0, 15, None, 0) | {"peers": 15})
    (verdict,) = byzantine_verdicts(rows + [_row("sybil", 0.25, 15, 25, 0)])
    assert verdict["honest_only_reached_target"] == 3 and verdict["vs_honest_only"] is None
    assert verdict["time_goal_met"] is False


def test_only_liar_migrants_that_generalise_worse_than_the_honest_best_count_as_worse() -> None:
    """A refitted liar net can score above every honest net on the test split: sampling it
    does no harm, so it is not counted as worse; one below the honest best is. The bar is
    the best over every process's honest peers, and the verdict keeps counting every liar
    migrant as sampled."""
    parts = [
        {"liar_migrant_tests": [0.99, 0.95], "honest_best_test": 0.96},
        {"liar_migrant_tests": [0.97], "honest_best_test": 0.972},
    ]
    figures = liar_migrant_figures(parts)
    assert figures["honest_best_test"] == 0.972
    assert figures["liar_migrants_worse"] == 2  # 0.95 and 0.97; 0.99 generalises better
    assert (figures["liar_migrant_test_min"], figures["liar_migrant_test_max"]) == (0.95, 0.99)
    none = liar_migrant_figures([{"liar_migrant_tests": [], "honest_best_test": 0.9}])
    assert none["liar_migrants_worse"] == 0 and none["liar_migrant_test_max"] is None
    unpublished = liar_migrant_figures([{"liar_migrant_tests": [], "honest_best_test": None}])
    assert unpublished["liar_migrants_worse"] == 0  # isolated peers: nothing sampled
    rows = [
        {**_row("overfit", 0.25, 15, 30, s), "migrants_from_liars": 3, "liar_migrants_worse": w}
        for s, w in enumerate([2, 0, 1, 0])
    ]
    verdict = _verdict(rows)
    assert verdict["bad_templates_sampled"] == 12
    assert verdict["liar_migrants_worse_than_honest_best"] == 3
