"""The held-out study (simulations/holdout_study.py) is reproducible: its figures in
docs/reliability.md are a function of the command beside them, and its gap column compares
one score with the same score."""

from __future__ import annotations

import json
from typing import cast

import pytest

from qudag.evolution.engine import Evolution
from qudag.evolution.tasks import get_task
from qudag.simulations import holdout_study
from qudag.simulations.holdout_study import draw_seed, study

# Small enough for the fast tier; digits, so refitted and random-feature cheats are flagged
# and the counts compared below are not all zero.
SMALL = ["--task", "digits", "--seeds", "1", "--generations", "5", "--publish-every", "5"]
SWEEP = ["--draws", "3", "--z", "2.58", "3.09", "--fraction", "0.9", "0.6667"]


def test_the_same_seed_prints_the_same_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    lines = []
    for _ in range(2):
        holdout_study.main([*SMALL, *SWEEP])
        lines.append(capsys.readouterr().out)
    assert lines[0] == lines[1]
    result = json.loads(lines[0])
    assert result["seed"] == 0 and result["draws"] == 3
    assert result["overfit_flagged"] > 0 and result["refit_checks"] == 3
    holdout_study.main(["--task", "iris", "--seeds", "1", "--generations", "1", "--seed", "7"])
    assert json.loads(capsys.readouterr().out)["seed"] == 7


def test_a_checks_draws_depend_only_on_the_template_and_the_draw_number() -> None:
    """Run k of a study is the same whatever other runs it includes, so a study over seeds
    0..1 counts what the studies over 0 and over 1 count together."""
    digits = get_task("digits")
    settings = ((2.58, 0.9), (3.09, 0.6667))
    kwargs = {"seeds": 1, "generations": 5, "publish_every": 5, "draws": 2}
    both = study(digits, seed=0, **{**kwargs, "seeds": 2}, settings=settings)
    parts = [study(digits, seed=s, **kwargs, settings=settings) for s in (0, 1)]
    for i, row in enumerate(_sweep(both)):
        assert row["false_flagged_publications"] <= row["false_flags"]
        keys = ("false_flags", "false_flagged_publications", "overfit_flagged", "refit_flagged")
        for key in keys:
            assert row[key] == sum(_sweep(p)[i][key] for p in parts)
    names = {
        draw_seed(kind, run, gen, d)
        for kind in ("honest", "refit", "cheat")
        for run in (0, 1)
        for gen in (0, 5)
        for d in (0, 1)
    }
    assert len(names) == 24


def _sweep(result: dict[str, object]) -> list[dict[str, int]]:
    return cast(list[dict[str, int]], result["sweep"])


def test_val_minus_test_compares_the_tasks_score_on_both_splits() -> None:
    """The gap is accuracy minus accuracy, not the validation fitness (accuracy minus 1e-4
    x cross-entropy) minus a test accuracy."""
    iris = get_task("iris")
    result = study(iris, seeds=1, generations=10, publish_every=10, draws=1)
    evo = Evolution(iris, seed=0)
    for _ in range(10):
        evo.step()
    best = evo.best.genome
    gap = iris.score(best, "val") - iris.score(best, "test")
    assert result["score"] == "accuracy"
    assert result["honest_val_minus_test_mean"] == result["honest_val_minus_test_max"] == gap
    assert evo.best.task_fitness != iris.score(best, "val")  # the two measures differ here


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seed", "-1"], "--seed must be at least 0"),
        (["--draws", "0"], "--draws must be at least 1"),
        (["--fraction", "1.5"], "--fraction in (0, 1]"),
    ],
)
def test_bad_arguments_are_one_clear_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        holdout_study.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
