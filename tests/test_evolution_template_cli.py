"""`qudag-node template show|export` and `qudag-node synthesize`, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from test_evolution_template import make_template

from qudag.evolution.export import import_fann
from qudag.evolution.synthesis import synthesize
from qudag.evolution.template import save_template
from qudag.node.cli import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """One real subprocess run, to check the console entry point end to end."""
    return subprocess.run(
        [sys.executable, "-m", "qudag.node", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture()
def tpl(tmp_path: Path) -> Path:
    return save_template(make_template(seed=11), tmp_path / "best.qtpl")


def test_show_prints_a_json_summary(tpl: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["template", "show", str(tpl)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task"] == "iris" and summary["layers"] == [4, 2]
    assert summary["parents"] == [bytes(range(32)).hex()]
    assert summary["template_bytes"] == tpl.stat().st_size


def test_export_onnx_and_fann(tpl: Path, tmp_path: Path) -> None:
    t = make_template(seed=11)
    x = np.array([[0.5, -1.0, 2.0], [3.0, 1.0, 0.0]], np.float32)
    ours = synthesize(t)(x)
    assert (
        main(["template", "export", str(tpl), "--format", "onnx", "-o", str(tmp_path / "m.onnx")])
        == 0
    )
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ours, rtol=1e-5, atol=1e-5)
    assert (
        main(["template", "export", str(tpl), "--format", "fann", "-o", str(tmp_path / "m.net")])
        == 0
    )
    text = (tmp_path / "m.net").read_text()
    assert text.startswith("FANN_FLO_2.1\n")
    np.testing.assert_allclose(import_fann(text).forward(x), ours, rtol=1e-6, atol=1e-6)


def test_synthesize_input_and_csv(
    tpl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = make_template(seed=11)
    assert main(["synthesize", str(tpl), "--input", "[0.5, -1, 2]"]) == 0
    record = json.loads(capsys.readouterr().out)
    expected = synthesize(t)(np.array([0.5, -1, 2], np.float32))
    probs = np.exp(expected - expected.max()) / np.exp(expected - expected.max()).sum()
    assert list(record["probabilities"].values()) == pytest.approx(probs.tolist(), abs=1e-5)
    assert record["class"] == int(np.argmax(expected))  # no class names recorded: the index
    csv_path = tmp_path / "x.csv"
    csv_path.write_text("a,b,c\n0.5,-1,2\n3,1,0\n")
    assert main(["synthesize", str(tpl), "--csv", str(csv_path), "--telemetry"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "prediction,p_0,p_1" and len(lines) == 3
    assert lines[1].split(",")[0] == str(int(np.argmax(expected)))
    telemetry = json.loads(captured.err)
    assert telemetry["inference_count"] == 1 and telemetry["synthesis_ns"] > 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["synthesize", "{tpl}", "--input", "[1, 2]"], "takes 3"),
        (["synthesize", "{tpl}", "--input", "[1, 2, NaN]"], "non-finite"),
        (["synthesize", "{tpl}", "--input", "not json"], "not valid JSON"),
        (["synthesize", "{tpl}", "--input", '["a", 1, 2]'], "expected numbers"),
        (["synthesize", "{tpl}", "--input", "[]"], "non-empty"),
        (["synthesize", "{tpl}", "--input", "[[1,2,3],[1,2]]"], "row 2"),
        (["synthesize", "{tpl}", "--csv", "{tmp}/missing.csv"], "cannot read"),
        (["synthesize", "{tpl}", "--csv", "{tmp}/bad.csv"], "non-numeric"),
        (["synthesize", "{tmp}/corrupt.qtpl", "--input", "[1,2,3]"], "not a valid QuDAG template"),
        (["template", "show", "{tmp}/missing.qtpl"], "cannot read"),
        (["template", "show", "{tmp}/corrupt.qtpl"], "not a valid QuDAG template"),
        (["template", "export", "{relu}", "--format", "fann", "-o", "{tmp}/r.net"], "relu"),
        (["template", "export", "{tpl}", "--format", "onnx", "-o", "{tmp}"], "directory"),
        (
            ["template", "export", "{tpl}", "--format", "onnx", "-o", "{tmp}/no/dir/m.onnx"],
            "cannot write",
        ),
    ],
)
def test_bad_input_is_one_clean_line(
    tpl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    (tmp_path / "bad.csv").write_text("1,2,3\n4,x,6\n")
    (tmp_path / "corrupt.qtpl").write_bytes(tpl.read_bytes()[:-5])
    relu = save_template(make_template(act="relu"), tmp_path / "relu.qtpl")
    filled = [a.format(tpl=tpl, tmp=tmp_path, relu=relu) for a in args]
    assert main(filled) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.multiprocess
def test_console_entry_point_end_to_end(tpl: Path, tmp_path: Path) -> None:
    ok = run("synthesize", str(tpl), "--input", "[[1,2,3],[0,0,0]]")
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.splitlines()) == 2
    bad = run("synthesize", str(tpl), "--input", "[1]")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "takes 3" in bad.stderr
