"""`qudag-node evolve`: JSON summary, files written, resume, clean errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from qudag.evolution.checkpoint import load_checkpoint
from qudag.evolution.template import load_template
from qudag.evolution.verify import claim_holds


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qudag.node", "evolve", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_evolve_xor_json_and_files(tmp_path: Path) -> None:
    out = tmp_path / "xor"
    result = run("--task", "xor", "--seed", "1", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("task", "generations", "evaluations", "best_fitness", "test_score"):
        assert key in summary
    assert summary["task"] == "xor" and summary["test_score"] == 1.0
    assert summary["solved_at"] is not None
    template = load_template(summary["template"])
    assert len(template.to_bytes()) == summary["template_bytes"]
    assert template.fitness == summary["best_fitness"]
    assert claim_holds(template)[0]
    rows = list(csv.DictReader(open(out / "logbook.csv")))
    assert len(rows) == summary["generations"] + 1 and rows[0]["gen"] == "0"
    assert (out / "fitness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_checkpoint(out).generation == summary["generations"]


def test_evolve_resume_continues_to_the_total(tmp_path: Path) -> None:
    out = tmp_path / "iris"
    common = ("--task", "iris", "--population", "6", "--json")
    first = run(*common, "--generations", "2", "--out", str(out))
    assert first.returncode == 0, first.stderr
    again = run("--resume", str(out), "--generations", "4", "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["generations"] == 4
    straight = run(*common, "--generations", "4", "--out", str(tmp_path / "straight"))
    assert (
        json.loads(straight.stdout.strip().splitlines()[-1])["best_fitness"]
        == (summary["best_fitness"])
    )
    assert (out / "checkpoint.qcp").read_bytes() == (
        tmp_path / "straight" / "checkpoint.qcp"
    ).read_bytes()


def test_bad_inputs_exit_2_without_traceback(tmp_path: Path) -> None:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,x\n2,x\n")
    cases = [
        ("--task", "no-such-task"),
        ("--task", f"csv:{bad_csv}"),
        ("--task", "xor", "--generations", "0"),
        ("--resume", str(tmp_path / "nothing-here")),
        (),
    ]
    for args in cases:
        result = run(*args, "--out", str(tmp_path / "o"))
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert "error:" in result.stderr
