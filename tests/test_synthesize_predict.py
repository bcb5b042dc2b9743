"""Issue 13 items 10-12 and 16 (export): what `synthesize` tells a user about a prediction.

Templates of csv tasks record their feature, target and class names (the optional "columns"
key of the template format, docs/vertex-format.md); `synthesize` reads files by column name,
reports probabilities and class names, scores a file that carries the target, and refuses
outputs that overflowed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_evolution_template import make_template

from qudag.crypto.canonical import DecodeError, pack, unpack
from qudag.evolution.genome import Genome
from qudag.evolution.tasks import get_task
from qudag.evolution.template import Template, from_genome, save_template
from qudag.node.cli import main


def circle_csv(path: Path, n: int = 30) -> None:
    rng = np.random.default_rng(3)
    lines = ["x,y,label"]
    for _ in range(n):
        x, y = rng.uniform(-1, 1, 2)
        lines.append(f"{x:.3f},{y:.3f},{'inside' if x * x + y * y < 0.5 else 'outside'}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture()
def csv_template(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "circle.csv"
    circle_csv(data)
    task = get_task(f"csv:{data}")
    genome = Genome.random(np.random.default_rng(0), task.n_inputs, [4], task.n_outputs)
    tpl = save_template(from_genome(genome, task, 0.5, latency_repeats=1), tmp_path / "c.tpl")
    return tpl, data


def test_template_records_column_names_and_old_templates_still_decode(
    csv_template: tuple[Path, Path],
) -> None:
    t = Template.from_bytes(csv_template[0].read_bytes())
    assert t.feature_names == ("x", "y") and t.target_name == "label"
    assert t.class_names == ("inside", "outside")
    m = t.to_dict()
    assert list(m)[-1] == "columns"
    old = {k: v for k, v in m.items() if k != "columns"}  # a template from before names
    assert Template.from_bytes(pack(old)).feature_names == ()
    plain = make_template()
    assert "columns" not in plain.to_dict()  # no names: the bytes are as before


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: {"columns": m.pop("columns"), **m}, "last key"),
        (lambda m: m["columns"].update(features=["x"]), "1 feature names for 2 inputs"),
        (lambda m: m["columns"].update(classes=["a", "a"]), "duplicate"),
        (lambda m: m["columns"].update(target=7), "target"),
        (lambda m: m["columns"].update(features=["x" * 65, "y"]), "1..64"),
        (lambda m: m.update(columns={"features": [], "target": "", "classes": []}), "empty"),
        (lambda m: m["columns"].update(extra=1), "columns"),
    ],
)
def test_columns_are_decoded_strictly(
    csv_template: tuple[Path, Path], mutate: object, reason: str
) -> None:
    m = unpack(csv_template[0].read_bytes(), max_size=1 << 20)
    result = mutate(m)  # type: ignore[operator]
    m = result if isinstance(result, dict) else m
    with pytest.raises(DecodeError, match=reason):
        Template.from_bytes(pack(m))


def test_synthesize_gives_class_names_and_probabilities(
    csv_template: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["synthesize", str(csv_template[0]), "--input", "[[0, 0], [0.9, 0.9]]"]) == 0
    for line in capsys.readouterr().out.splitlines():
        record = json.loads(line)
        assert record["class"] in ("inside", "outside")
        probs = record["probabilities"]
        assert set(probs) == {"inside", "outside"} and sum(probs.values()) == pytest.approx(1)
        assert record["class"] == max(probs, key=probs.get)


def test_synthesize_regression_value_is_in_target_units(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "r.csv"
    data.write_text("a,b,price\n" + "".join(f"{i},{i % 7},{1000 + 3.5 * i}\n" for i in range(25)))
    task = get_task(f"csv:{data}")
    genome = Genome.random(np.random.default_rng(0), task.n_inputs, [4], 1)
    t = from_genome(genome, task, 0.0, latency_repeats=1)
    tpl = save_template(t, tmp_path / "r.tpl")
    assert main(["synthesize", str(tpl), "--input", "[3, 3]"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["target"] == "price"
    assert record["value"] == pytest.approx(
        float(t.genome.forward(task.standardize(np.array([[3, 3]], np.float32)))[0, 0]), rel=1e-5
    )
    assert main(["synthesize", str(tpl), "--csv", str(data)]) == 0
    score = json.loads(capsys.readouterr().err)["score"]
    assert set(score) == {"rows", "r2", "mae"} and score["rows"] == 25


def test_synthesize_scores_the_training_file_and_reads_columns_by_name(
    csv_template: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tpl, data = csv_template
    out = tmp_path / "pred.csv"
    assert main(["synthesize", str(tpl), "--csv", str(data), "-o", str(out)]) == 0
    score = json.loads(capsys.readouterr().out)["score"]
    assert score["rows"] == 30 and 0 <= score["accuracy"] <= 1
    assert score["classes"] == ["inside", "outside"]
    assert sum(map(sum, score["confusion_matrix"])) == 30
    with open(out, newline="") as fh:
        pred = list(csv.reader(fh))
    assert pred[0] == ["prediction", "p_inside", "p_outside"] and len(pred) == 31
    # The same rows with the columns reordered (target first, y before x): same predictions.
    rows = list(csv.reader(data.read_text().splitlines()))
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("\n".join(",".join([r[2], r[1], r[0]]) for r in rows) + "\n")
    out2 = tmp_path / "pred2.csv"
    assert main(["synthesize", str(tpl), "--csv", str(shuffled), "-o", str(out2)]) == 0
    assert out2.read_text() == out.read_text()
    # Without the target: predictions only, on stdout.
    no_target = tmp_path / "features.csv"
    no_target.write_text("\n".join(",".join(r[:2]) for r in rows) + "\n")
    capsys.readouterr()
    assert main(["synthesize", str(tpl), "--csv", str(no_target)]) == 0
    captured = capsys.readouterr()
    assert captured.out == out.read_text() and captured.err == ""
    # A missing feature column is named.
    (tmp_path / "bad.csv").write_text("x,z\n1,2\n")
    assert main(["synthesize", str(tpl), "--csv", str(tmp_path / "bad.csv")]) == 2
    assert "no column 'y'" in capsys.readouterr().err


@pytest.mark.filterwarnings("error")  # no RuntimeWarning on the way
def test_overflow_is_an_error_not_nan(
    csv_template: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["synthesize", str(csv_template[0]), "--input", "[1e308, 1e308]"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "overflow" in captured.err and len(captured.err.strip().splitlines()) == 1


def test_export_format_follows_the_extension(
    csv_template: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tpl = str(csv_template[0])
    assert main(["template", "export", tpl, "-o", str(tmp_path / "m.onnx")]) == 0
    assert "onnx" in capsys.readouterr().out
    assert main(["template", "export", tpl, "-o", str(tmp_path / "m.net")]) in (0, 2)
    assert main(["template", "export", tpl, "-o", str(tmp_path / "m.bin")]) == 2
    assert "name it .onnx, .net, .wasm or .c" in capsys.readouterr().err
