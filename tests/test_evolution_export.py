"""Exports: ONNX equals our runtime under onnxruntime; FANN text is libfann's and round-trips."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_evolution_template import make_template

from qudag.evolution.export import MAX_FANN_TEXT, ExportError, export_fann, export_onnx, import_fann
from qudag.evolution.genome import Genome
from qudag.evolution.synthesis import synthesize
from qudag.evolution.template import Template

SHAPES = [(2, (), 1), (2, (4,), 1), (13, (8, 6), 3), (64, (32,), 10), (30, (16, 16, 8), 2)]
FANN_ACTS = ["tanh", "sigmoid", "sin", "identity"]


def raw_inputs(t: Template, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (t.input_mean + rng.standard_normal((n, t.genome.n_inputs)) * 2 * t.input_scale).astype(
        np.float32
    )


def run_onnx(model: bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("act", ["tanh", "relu", "sigmoid", "sin", "identity"])
@pytest.mark.parametrize(("n_in", "hidden", "n_out"), SHAPES)
def test_onnx_equals_our_network(act: str, n_in: int, hidden: tuple[int, ...], n_out: int) -> None:
    t = make_template(
        seed=n_in + len(hidden), n_inputs=n_in, hidden=hidden, n_outputs=n_out, act=act
    )
    model = export_onnx(t)
    x = raw_inputs(t, 25)
    ours = synthesize(t)(x)
    theirs = run_onnx(model, x)
    assert theirs.shape == ours.shape and theirs.dtype == np.float32
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run_onnx(model, x[:1]), ours[:1], rtol=1e-5, atol=1e-5)


def test_onnx_model_is_valid_and_carries_metadata() -> None:
    t = make_template()
    model = onnx.load_from_string(export_onnx(t))
    onnx.checker.check_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["task"] == "iris" and props["task_version"] == "1"
    assert props["output"] == "logits" and float(props["fitness"]) == t.fitness
    assert [i.name for i in model.graph.input] == ["x"]
    assert [o.name for o in model.graph.output] == ["y"]


# --- FANN ----------------------------------------------------------------------------------
def fann_run(text: str, x: np.ndarray) -> np.ndarray:
    """An independent reading of libfann's fann_run (float build) over the file text."""
    fields = dict(line.split("=", 1) for line in text.splitlines()[1:] if "=" in line)
    sizes = [int(s) for s in fields["layer_sizes"].split()]
    neurons = re.findall(
        r"\((\d+), (\d+), ([^)]+)\)",
        fields["neurons (num_inputs, activation_function, activation_steepness)"],
    )
    conns = re.findall(r"\((\d+), ([^)]+)\)", fields["connections (connected_to_neuron, weight)"])
    values = np.zeros(sum(sizes), dtype=np.float32)
    values[: sizes[0] - 1] = x
    values[sizes[0] - 1] = 1.0
    c = 0
    start = sizes[0]
    for size in sizes[1:]:
        for k in range(start, start + size - 1):
            n_in, fn, steep = int(neurons[k][0]), int(neurons[k][1]), np.float32(neurons[k][2])
            total = np.float32(0)
            for _ in range(n_in):
                src, w = conns[c]
                c += 1
                total += np.float32(w) * values[int(src)]
            s = steep * total
            limit = np.float32(150) / steep
            s = np.clip(s, -limit, limit)
            if fn == 0:
                v = s
            elif fn == 3:
                v = 1 / (1 + np.exp(-2 * s))
            elif fn == 5:
                v = 2 / (1 + np.exp(-2 * s)) - 1
            elif fn == 14:
                v = np.sin(s)
            else:
                raise AssertionError(fn)
            values[k] = v
        values[start + size - 1] = 1.0  # bias neuron
        start += size
    return values[start - sizes[-1] : start - 1]


@pytest.mark.parametrize("act", FANN_ACTS)
@pytest.mark.parametrize(("n_in", "hidden", "n_out"), SHAPES[:4])
def test_fann_text_runs_like_our_network(
    act: str, n_in: int, hidden: tuple[int, ...], n_out: int
) -> None:
    t = make_template(seed=5, n_inputs=n_in, hidden=hidden, n_outputs=n_out, act=act)
    text = export_fann(t)
    x = raw_inputs(t, 4, seed=2)
    ours = synthesize(t)(x)
    for row, expected in zip(x, ours, strict=True):
        np.testing.assert_allclose(fann_run(text, row), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act", FANN_ACTS)
@pytest.mark.parametrize(("n_in", "hidden", "n_out"), SHAPES)
def test_fann_export_import_round_trip(
    act: str, n_in: int, hidden: tuple[int, ...], n_out: int
) -> None:
    t = make_template(seed=7, n_inputs=n_in, hidden=hidden, n_outputs=n_out, act=act)
    text = export_fann(t)
    genome = import_fann(text)
    assert genome.layer_sizes == t.genome.layer_sizes
    assert genome.activations == t.genome.activations
    x = raw_inputs(t, 20, seed=3)
    # the imported genome has the standardisation folded into its first layer, the runtime
    # standardises each sample: the same arithmetic rounded in another order
    np.testing.assert_allclose(genome.forward(x), synthesize(t)(x), rtol=1e-4, atol=1e-5)
    # importing and exporting again gives the same text: weights survive %.20e exactly
    n = genome.n_inputs
    again = Template(
        "iris",
        1,
        genome,
        np.zeros(n, np.float32),
        np.ones(n, np.float32),
        "logits",
        0.0,
        genome.n_params,
        genome.n_bytes,
        0,
    )
    assert export_fann(again) == text


def test_relu_is_refused_for_fann() -> None:
    with pytest.raises(ExportError, match="relu"):
        export_fann(make_template(act="relu"))


# Trailing spaces are part of libfann's format (it prints "%u " / FANNPRINTF" " per item).
Z = "0.00000000000000000000e+00"
ONE = "1.00000000000000000000e+00"
HAND_CHECKED = "\n".join(
    [
        "FANN_FLO_2.1",
        "num_layers=3",
        "learning_rate=0.700000",
        "connection_rate=1.000000",
        "network_type=0",
        "learning_momentum=0.000000",
        "training_algorithm=2",
        "train_error_function=1",
        "train_stop_function=0",
        "cascade_output_change_fraction=0.010000",
        "quickprop_decay=-0.000100",
        "quickprop_mu=1.750000",
        "rprop_increase_factor=1.200000",
        "rprop_decrease_factor=0.500000",
        "rprop_delta_min=0.000000",
        "rprop_delta_max=50.000000",
        "rprop_delta_zero=0.100000",
        "cascade_output_stagnation_epochs=12",
        "cascade_candidate_change_fraction=0.010000",
        "cascade_candidate_stagnation_epochs=12",
        "cascade_max_out_epochs=150",
        "cascade_min_out_epochs=50",
        "cascade_max_cand_epochs=150",
        "cascade_min_cand_epochs=50",
        "cascade_num_candidate_groups=2",
        "bit_fail_limit=3.49999994039535522461e-01",
        "cascade_candidate_limit=1.00000000000000000000e+03",
        "cascade_weight_multiplier=4.00000005960464477539e-01",
        "cascade_activation_functions_count=10",
        "cascade_activation_functions=3 5 7 8 10 11 14 15 16 17 ",
        "cascade_activation_steepnesses_count=4",
        "cascade_activation_steepnesses="
        + "2.50000000000000000000e-01 5.00000000000000000000e-01 "
        + f"7.50000000000000000000e-01 {ONE} ",
        "layer_sizes=3 2 2 ",
        "scale_included=0",
        "neurons (num_inputs, activation_function, activation_steepness)="
        + f"(0, 0, {Z}) " * 3
        + f"(3, 5, {ONE}) (0, 0, {Z}) "
        + f"(2, 0, {ONE}) (0, 0, {Z}) ",
        "connections (connected_to_neuron, weight)="
        + "(0, 5.00000000000000000000e-01) (1, 2.00000000000000000000e+00) "
        + f"(2, {Z}) (3, -1.50000000000000000000e+00) "
        + "(4, 2.50000000000000000000e-01) ",
        "",
    ]
)


def test_hand_checked_tiny_fann_file() -> None:
    """2 inputs -> 1 tanh -> 1 linear; mean (1, 0), scale (2, 1) folds W0 to (0.5, 2), b0 to 0.

    Neurons: inputs 0, 1, bias 2 | hidden 3, bias 4 | output 5, unused bias 6 (libfann keeps a
    bias neuron in the output layer too, hence layer_sizes 3 2 2). tanh is SIGMOID_SYMMETRIC (5)
    with steepness 1; identity is LINEAR (0) with steepness 1.
    """
    w0 = np.array([[1.0], [2.0]], np.float32)
    w1 = np.array([[-1.5]], np.float32)
    g = Genome(
        2,
        (1, 1),
        ("tanh", "identity"),
        (w0, w1),
        (np.array([0.5], np.float32), np.array([0.25], np.float32)),
    )
    t = Template(
        "xor",
        1,
        g,
        np.array([1, 0], np.float32),
        np.array([2, 1], np.float32),
        "values",
        1.0,
        g.n_params,
        g.n_bytes,
        0,
    )
    assert export_fann(t) == HAND_CHECKED
    x = np.array([3.0, -0.5], np.float32)  # standardised (1, -0.5): hidden tanh(1*1 - 1 + 0.5)
    expected = -1.5 * np.tanh(0.5) + 0.25
    assert fann_run(HAND_CHECKED, x) == pytest.approx(expected, abs=1e-6)
    assert synthesize(t)(x)[0] == pytest.approx(expected, abs=1e-6)
    assert import_fann(HAND_CHECKED).forward(x[None])[0, 0] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda s: "garbage", "not a FANN_FLO_2.1"),
        (lambda s: s.replace("FANN_FLO_2.1", "FANN_FIX_2.1"), "not a FANN_FLO_2.1"),
        (lambda s: s.replace("network_type=0", "network_type=1"), "fully connected"),
        (
            lambda s: s.replace("connection_rate=1.000000", "connection_rate=0.500000"),
            "fully connected",
        ),
        (lambda s: s.replace("num_layers=3", "num_layers=4"), "num_layers"),
        (lambda s: s.replace("scale_included=0", "scale_included=1"), "scale_included"),
        (lambda s: s.replace("(3, 5, 1.0", "(3, 12, 1.0"), "activation function 12"),
        (lambda s: s.replace("(3, 5, 1.0", "(2, 5, 1.0"), "whole previous layer"),
        (lambda s: s.replace("(3, -1.5", "(2, -1.5"), "layer order"),
        (lambda s: s.replace(" (4, 2.50000000000000000000e-01)", ""), "connections"),
        (lambda s: s.replace("(2, 0, 1.00000000000000000000e+00)", "(2, 0, 0.0)"), "steepness"),
        (lambda s: s.replace("layer_sizes=3 2 2", "layer_sizes=x"), "malformed"),
        (
            lambda s: "\n".join(ln for ln in s.splitlines() if not ln.startswith("layer_sizes")),
            "layer_sizes",
        ),
        (lambda s: s + "#" * MAX_FANN_TEXT, "larger"),
    ],
)
def test_import_fann_rejects_what_it_cannot_represent(mutate: object, needle: str) -> None:
    text = mutate(HAND_CHECKED)  # type: ignore[operator]
    with pytest.raises(ExportError, match=needle):
        import_fann(text)
