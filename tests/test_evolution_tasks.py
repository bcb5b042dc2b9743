"""Tasks: fixed splits, the published two-spirals set, clear errors for bad specs and CSV files."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from qudag.evolution.genome import Genome, GenomeError, GenomeLimits
from qudag.evolution.tasks import TaskError, get_task, list_tasks, two_spirals_points


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_sklearn_splits_are_fixed_disjoint_and_stratified() -> None:
    t = get_task("digits")
    assert (t.n_inputs, t.n_outputs, t.version) == (64, 10, 1)
    assert len(t.x_train) + len(t.x_val) + len(t.x_test) == 1797
    assert abs(len(t.x_test) - 360) <= 1 and abs(len(t.x_val) - 360) <= 1
    # Same split when rebuilt from scratch (not just the cache).
    from qudag.evolution import tasks as tasks_mod

    fresh = tasks_mod._sklearn("digits")
    assert _digest(t.x_val, t.y_val, t.x_test) == _digest(fresh.x_val, fresh.y_val, fresh.x_test)
    # Every class is present in every split (stratified).
    for y in (t.y_train, t.y_val, t.y_test):
        assert set(np.unique(y)) == set(range(10))
    assert t.input_mean.dtype == np.float32 and t.input_scale.dtype == np.float32
    assert np.all(t.input_scale > 0)


@pytest.mark.parametrize(
    "name,n_in,n_out", [("iris", 4, 3), ("wine", 13, 3), ("breast-cancer", 30, 2)]
)
def test_other_sklearn_tasks(name: str, n_in: int, n_out: int) -> None:
    t = get_task(name)
    assert (t.n_inputs, t.n_outputs, t.kind) == (n_in, n_out, "classification")
    assert t.x_train.dtype == np.float32 and t.y_train.dtype == np.int64


def test_two_spirals_is_the_cmu_set() -> None:
    x, y = two_spirals_points()
    assert x.shape == (194, 2) and int(y.sum()) == 97
    # First point: i=0, radius 6.5, angle 0 -> (0, 6.5) class 1, and its mirror class 0.
    assert np.allclose(x[0], [0.0, 6.5]) and y[0] == 1
    assert np.allclose(x[1], [0.0, -6.5]) and y[1] == 0
    i = 96
    r, a = 6.5 * (104 - i) / 104, i * math.pi / 16
    assert np.allclose(x[2 * i], [r * math.sin(a), r * math.cos(a)], atol=1e-6)
    t = get_task("two-spirals")
    # Memorisation task: every split is the whole set (documented).
    assert np.array_equal(t.x_train, t.x_val) and np.array_equal(t.x_val, t.x_test)
    with pytest.raises(ValueError):  # shared, cached task data is read-only
        t.x_val[0, 0] = 1.0


def test_parity_truth_table() -> None:
    t = get_task("parity-4")
    assert t.x_train.shape == (16, 4)
    assert np.array_equal(t.y_train, t.x_train.sum(1).astype(int) % 2)
    xor = get_task("xor")
    assert xor.y_train.tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize("spec", ["nope", "parity-1", "parity-99", "parity-x", "", "csv:"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(TaskError):
        get_task(spec)
    assert "digits" in list_tasks()


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "data.csv"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    "text,spec_tail,message",
    [
        ("", "", "empty file"),
        ("a,b,label\n", "", "no data rows"),
        ("a,b,label\n1,2,x\n3,4,y\n", ":target=nope", "no column named 'nope'"),
        ("a,b,label\n1,zz,x\n3,4,y\n", "", "non-numeric value 'zz'"),
        ("a,b,label\n1,2,x\n3,4,x\n", "", "only one class"),
        ("a,b,label\n1,2\n", "", "has 2 fields"),
        ("a,b,label\n1,2,\n", "", "empty target"),
        ("a,b,label\n1,nan,0\n2,3,1\n", "", "non-finite"),
    ],
)
def test_bad_csv_files(tmp_path: Path, text: str, spec_tail: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(TaskError, match=message):
        get_task(f"csv:{path}{spec_tail}")


def test_missing_csv_file(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="not found"):
        get_task(f"csv:{tmp_path / 'absent.csv'}")


def test_csv_classification_and_regression(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    lines = ["f1,f2,f3,cls,value"]
    for row in x:
        lines.append(
            ",".join(f"{v:.5f}" for v in row) + f",{'ab'[int(row[0] > 0)]},{row.sum():.5f}"
        )
    path = _write(tmp_path, "\n".join(lines) + "\n")
    t = get_task(f"csv:{path}:target=cls")
    assert t.kind == "classification" and t.n_outputs == 2 and t.n_inputs == 4
    assert t.class_names == ("a", "b")
    numeric = ["f1,f2,f3,value"] + [
        ",".join(line.split(",")[:3] + line.split(",")[4:]) for line in lines[1:]
    ]
    path2 = str(tmp_path / "reg.csv")
    Path(path2).write_text("\n".join(numeric) + "\n")
    r = get_task(f"csv:{path2}")  # default target: the last column
    assert r.kind == "regression" and r.n_outputs == 1
    assert ":target=value:kind=regression:blake3=" in r.name
    assert len(r.x_train) == 36 and len(r.x_val) == 12 and len(r.x_test) == 12
    forced = get_task(f"csv:{path2}:target=value:kind=regression")
    assert forced.kind == "regression"


def test_fitness_rejects_wrong_shape_and_over_limit() -> None:
    t = get_task("xor")
    rng = np.random.default_rng(0)
    with pytest.raises(GenomeError):
        t.fitness([Genome.random(rng, 3, (4,), 2)])
    with pytest.raises(GenomeError):
        t.fitness([Genome.random(rng, 2, (40,), 2)], limits=GenomeLimits(max_params=50))


def test_cartpole_is_deterministic_and_bounded() -> None:
    t = get_task("cartpole")
    rng = np.random.default_rng(1)
    gs = [Genome.random(rng, 4, (4,), 2) for _ in range(5)]
    a = t.fitness(gs)
    b = np.array([t.fitness([g])[0] for g in gs])
    assert a.tobytes() == b.tobytes()
    assert np.all((a >= 1) & (a <= 500))


# --- issue 13 item 13: csv reading a new user trips over ---------------------------------
def test_csv_without_header_keeps_its_first_row(tmp_path: Path) -> None:
    rows = [f"{i},{i % 3},{i % 2}" for i in range(10)]
    path = _write(tmp_path, "\n".join(rows) + "\n")
    t = get_task(f"csv:{path}")
    assert t.x_train is not None and len(t.x_train) == 10  # < 20 rows: every row in each split
    assert t.feature_names == ("col1", "col2") and t.target_name == "col3"
    assert ":header=no" in t.name
    with pytest.raises(TaskError, match="duplicate column names"):  # '0,0,0' as names
        get_task(f"csv:{path}:header=yes")


def test_csv_without_header_and_string_labels_keeps_its_first_row(tmp_path: Path) -> None:
    rows = [f"{i},{i % 3},{'in' if i % 2 else 'out'}" for i in range(10)]
    t = get_task(f"csv:{_write(tmp_path, chr(10).join(rows) + chr(10))}")
    assert t.x_train is not None and len(t.x_train) == 10 and t.class_names == ("in", "out")


def test_csv_default_target_is_stated(tmp_path: Path) -> None:
    path = _write(tmp_path, "label,a,b\n" + "".join(f"{i % 2},{i},{i * 0.37}\n" for i in range(9)))
    t = get_task(f"csv:{path}")
    assert t.target_name == "b" and "default: the last column" in t.description
    assert "set :target=COLUMN" in t.description
    assert any("the last column, by default" in n for n in t.notes)
    given = get_task(f"csv:{path}:target=label")
    assert given.kind == "classification" and "given" in given.description
    assert given.notes == ()


def test_evolve_shows_the_default_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qudag.node.cli import main

    path = _write(tmp_path, "label,a,b\n" + "".join(f"{i % 2},{i},{i * 0.37}\n" for i in range(9)))
    out = tmp_path / "run"
    assert main(["evolve", "--task", f"csv:{path}", "--generations", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "note: " in err and "target column 'b'" in err


def test_csv_semicolons_are_sniffed(tmp_path: Path) -> None:
    path = _write(tmp_path, "a;b;label\n" + "".join(f"{i};{i * 2};{i % 2}\n" for i in range(8)))
    t = get_task(f"csv:{path}")
    assert t.n_inputs == 2 and t.feature_names == ("a", "b") and ":sep=;" in t.name
    assert get_task(t.name).digest == t.digest


def test_csv_unknown_option_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "a,b,label\n1,2,x\n3,4,y\n")
    with pytest.raises(TaskError, match="unknown csv option 'foo'"):
        get_task(f"csv:{path}:foo=bar")
