"""Issue 13, "sharp edges a new user hits": each test tries a command the wrong way, as a new
user would, and checks that nothing of the user's is lost and the error is one line (exit 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from qudag.evolution.engine import Evolution
from qudag.evolution.template import load_template
from qudag.node.cli import main
from qudag.node.errors import UserError
from qudag.node.ops.outdir import MARKER, OutDir


def _no_nodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Stop `testnet` where it would start its first node (after it prepared --out)."""
    started: list[Path] = []

    def fake_start(name: str, data_dir: Path, *args: object, **kw: object) -> None:
        started.append(data_dir)
        raise UserError("no nodes in this test")

    monkeypatch.setattr("qudag.node.commands.testnet.start_node", fake_start)
    return started


def _one_line_error(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


# --- item 1: --out never deletes what the command did not create -------------------------


def test_testnet_out_refuses_a_users_directory_and_deletes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started = _no_nodes(monkeypatch)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("four years of work")
    assert main(["testnet", "--nodes", "1", "--out", str(precious)]) == 2
    _one_line_error(capsys, "not written by qudag-node testnet", "nothing was deleted")
    assert (precious / "thesis.txt").read_text() == "four years of work"
    assert main(["testnet", "--nodes", "1", "--out", str(precious), "--force"]) == 2
    _one_line_error(capsys, "nothing was deleted")
    assert (precious / "thesis.txt").exists()
    monkeypatch.chdir(precious)
    assert main(["testnet", "--nodes", "1", "--out", "."]) == 2
    _one_line_error(capsys, "--out .")
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.txt"]
    assert started == []


def test_testnet_force_replaces_only_its_own_earlier_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started = _no_nodes(monkeypatch)
    out = tmp_path / "net"
    earlier = OutDir(out, "testnet")
    earlier.prepare(["node0", "summary.json"])
    earlier.record("node0", "summary.json")
    (out / "node0").mkdir()
    (out / "node0" / "ledger.sqlite3").write_text("old")
    (out / "summary.json").write_text("{}")
    (out / "notes.txt").write_text("mine")  # the user's, added later
    assert main(["testnet", "--nodes", "1", "--out", str(out)]) == 2
    _one_line_error(capsys, "earlier run", "--force", "--keep")
    assert (out / "node0" / "ledger.sqlite3").exists() and started == []
    assert main(["testnet", "--nodes", "1", "--out", str(out), "--force"]) == 2  # fake start
    assert not (out / "node0" / "ledger.sqlite3").exists()
    assert not (out / "summary.json").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert started == [out / "node0"]
    # a file the user named like one of ours, in our directory, is not ours either
    (out / "best_fitness.png").write_text("the user's plot")
    assert main(["testnet", "--nodes", "1", "--out", str(out), "--force"]) == 2
    assert (out / "best_fitness.png").read_text() == "the user's plot"


def test_evolve_out_asks_for_force_and_keeps_the_users_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "best.template").write_text("not a template: the user's file")
    assert main(["evolve", "--task", "xor", "--generations", "2", "--out", str(mine)]) == 2
    assert (
        main(["evolve", "--task", "xor", "--generations", "2", "--out", str(mine), "--force"]) == 2
    )
    assert (mine / "best.template").read_text() == "not a template: the user's file"
    out = tmp_path / "run"
    assert main(["evolve", "--task", "xor", "--generations", "2", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["evolve", "--task", "xor", "--generations", "2", "--out", str(out)]) == 2
    _one_line_error(capsys, "earlier run", "--force", "--resume")
    assert (
        main(["evolve", "--task", "xor", "--generations", "2", "--out", str(out), "--force"]) == 0
    )
    assert (out / "notes.txt").read_text() == "mine"
    assert main(["evolve", "--resume", str(out), "--generations", "3"]) == 0
    assert (out / MARKER).exists()


def test_template_export_asks_before_overwriting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["evolve", "--task", "xor", "--generations", "2", "--out", str(out)]) == 0
    target = tmp_path / "model.onnx"
    target.write_text("the user's model")
    tpl = str(out / "best.template")
    capsys.readouterr()
    assert main(["template", "export", tpl, "--format", "onnx", "-o", str(target)]) == 2
    _one_line_error(capsys, "exists", "--force")
    assert target.read_text() == "the user's model"
    assert main(["template", "export", tpl, "--format", "onnx", "-o", str(target), "--force"]) == 0
    assert target.stat().st_size > 100


# --- items 5 and 6: evolve stops where asked, and Ctrl-C keeps the best net -------------


def test_ctrl_c_during_evolve_saves_the_best_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = Evolution.step
    calls = {"n": 0}

    def interrupted_step(self: Evolution) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self)  # type: ignore[no-any-return]

    monkeypatch.setattr(Evolution, "step", interrupted_step)
    out = tmp_path / "run"
    argv = ["evolve", "--task", "digits", "--population", "8", "--generations", "50"]
    assert main([*argv, "--out", str(out)]) == 130
    template = load_template(out / "best.template")
    assert template.task == "digits"
    assert (out / "checkpoint.qcp").exists() and (out / "logbook.csv").exists()


def test_evolve_until_fitness_and_max_seconds(tmp_path: Path) -> None:
    import json

    from qudag.node.commands.evolve import stop_reason

    args = argparse.Namespace(until_fitness=0.5, max_seconds=None)
    assert stop_reason(0.6, 0.0, args) == "reached --until-fitness 0.5"
    assert stop_reason(0.4, 0.0, args) is None
    out = tmp_path / "run"
    argv = ["evolve", "--task", "xor", "--no-early-stop", "--generations", "500", "--json"]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([*argv, "--out", str(out), "--until-fitness=-1e9"]) == 0
    summary = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert summary["generations"] == 0 and summary["stopped_by"].startswith("reached")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([*argv, "--out", str(out), "--force", "--max-seconds", "0.001"]) == 0
    summary = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert summary["generations"] == 0 and summary["stopped_by"].startswith("spent")
