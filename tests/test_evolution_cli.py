"""`qudag-node evolve`: JSON summary, files written, resume, clean errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from qudag.evolution.checkpoint import load_checkpoint
from qudag.evolution.template import load_template
from qudag.evolution.verify import claim_holds
from qudag.node.cli import main
from qudag.node.commands.evolve import PROGRESS_PREFIX


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qudag.node", "evolve", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.multiprocess
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


def test_evolve_progress_jsonl_is_one_line_per_generation(tmp_path: Path, capsys) -> None:
    """What the MCP server's evolution jobs parse: a line before the first generation, then
    one per generation, each matching the logbook; the JSON summary stays stdout's last line."""
    out = tmp_path / "iris"
    args = ["--task", "iris", "--population", "6", "--generations", "3", "--json"]
    assert main(["evolve", *args, "--progress", "jsonl", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.startswith(PROGRESS_PREFIX)]
    records = [json.loads(ln[len(PROGRESS_PREFIX) :]) for ln in lines]
    assert [r["generation"] for r in records] == [0, 1, 2, 3]
    assert all(r["total"] == 3 for r in records)
    logbook = list(csv.DictReader(open(out / "logbook.csv")))
    assert [float(row["best"]) for row in logbook] == [r["best"] for r in records]
    assert json.loads(captured.out.strip().splitlines()[-1])["generations"] == 3


@pytest.mark.multiprocess
def test_evolve_resume_continues_to_the_total(tmp_path: Path, capsys) -> None:
    out = tmp_path / "iris"
    common = ["--task", "iris", "--population", "6", "--json"]
    assert main(["evolve", *common, "--generations", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    # The resume runs in another process: the run must not depend on in-process state.
    again = run("--resume", str(out), "--generations", "4", "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["generations"] == 4
    straight = tmp_path / "straight"
    assert main(["evolve", *common, "--generations", "4", "--out", str(straight)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["best_fitness"] == summary["best_fitness"]
    assert (out / "checkpoint.qcp").read_bytes() == (straight / "checkpoint.qcp").read_bytes()


@pytest.mark.multiprocess
def test_bad_task_exits_2_without_traceback(tmp_path: Path) -> None:
    result = run("--task", "no-such-task", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: unknown task 'no-such-task'" in result.stderr


def test_bad_inputs_are_user_errors(tmp_path: Path, capsys) -> None:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,x\n2,x\n")
    cases = [
        (["--task", f"csv:{bad_csv}"], "only one class"),
        (["--task", "xor", "--generations", "0"], "--generations must be at least 1"),
        (["--task", "xor", "--lamarck-steps", "-1"], "--lamarck-steps must be >= 0"),
        (["--resume", str(tmp_path / "nothing-here")], "no checkpoint"),
        ([], "--task is required"),
    ]
    for args, message in cases:
        assert main(["evolve", *args, "--out", str(tmp_path / "o")]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
