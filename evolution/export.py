"""Export templates to ONNX and to libfann's FANN `.net` text, and import FANN back.

Both exports take *raw* features, like the template itself: the template's input
standardisation is folded into the first layer (`W0 / scale`, `b0 - (mean / scale) @ W0`).
The synthesis runtime standardises each sample instead (folding cost more per synthesis than
it saved per call), so an exported net and a synthesized `Network` agree to float32 rounding,
not bit for bit.

ONNX: one MatMul + Add per layer, then the activation node (Tanh, Relu, Sigmoid, Sin; nothing
for identity); input `x` of shape (N, n_inputs), output `y` of shape (N, n_outputs), opset 17.
The task id, version, output kind and claimed fitness are stored as metadata.

FANN (`FANN_FLO_2.1`, the format `fann_save` writes and `fann_create_from_file` reads, checked
against libfann's fann_io.c): a fully connected layered net (`network_type=0`), one bias neuron
at the end of every layer (the output layer's is unused, as in libfann), neurons listed as
`(num_inputs, activation_function, activation_steepness)` and connections as
`(connected_to_neuron, weight)` in neuron order; a neuron's last connection is the previous
layer's bias neuron, so its weight is the bias. libfann computes `s = steepness * sum`, clips
`s` to +-(150 / steepness), then applies (fann_activation.h):

    FANN_LINEAR (0)            s                      identity: steepness 1
    FANN_SIGMOID (3)           1 / (1 + exp(-2 s))     sigmoid(x) = that with steepness 0.5
    FANN_SIGMOID_SYMMETRIC (5) 2 / (1 + exp(-2 s)) - 1 = tanh(s): tanh with steepness 1
    FANN_SIN_SYMMETRIC (14)    sin(s)                 sin: steepness 1

(So tanh maps to SIGMOID_SYMMETRIC with steepness **1**, not 0.5; 0.5 is sigmoid's.) ReLU has no
exact FANN 2.1 activation (LINEAR_PIECE clamps to [0, 1]; LINEAR_PIECE_RECT only exists in later
libfann versions), so a template with a ReLU layer is refused with `ExportError`. The clip means
identity and sin layers are exact only while |pre-activation| <= 150; tanh and sigmoid saturate
long before it in float32, so they are exact everywhere. Input scaling is not written as
`scale_included=1` because `fann_run` does not apply it (the caller must call fann_scale_input);
it is folded into the weights instead.

`import_fann` reads such a file back (any steepness: it is folded into the weights, which is exact
for the power-of-two steepnesses written here) into a `Genome` that takes raw features.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from qudag.evolution.genome import DEFAULT_LIMITS, Genome, GenomeError
from qudag.evolution.template import Template

ONNX_OPSET = 17
FANN_VERSION = "FANN_FLO_2.1"
FANN_LINEAR = 0
FANN_SIGMOID = 3
FANN_SIGMOID_SYMMETRIC = 5
FANN_SIN_SYMMETRIC = 14
# our activation -> (FANN activation function, steepness)
_TO_FANN: dict[str, tuple[int, float]] = {
    "identity": (FANN_LINEAR, 1.0),
    "sigmoid": (FANN_SIGMOID, 0.5),
    "tanh": (FANN_SIGMOID_SYMMETRIC, 1.0),
    "sin": (FANN_SIN_SYMMETRIC, 1.0),
}
# FANN activation -> (our activation, factor: our pre-activation = factor * steepness * sum)
_FROM_FANN: dict[int, tuple[str, float]] = {
    FANN_LINEAR: ("identity", 1.0),
    FANN_SIGMOID: ("sigmoid", 2.0),
    FANN_SIGMOID_SYMMETRIC: ("tanh", 1.0),
    FANN_SIN_SYMMETRIC: ("sin", 1.0),
}
MAX_FANN_TEXT = 4 * 1024 * 1024  # a 12.8k-parameter net is ~0.6 MB of text


class ExportError(ValueError):
    """The template cannot be expressed exactly in the requested format, or bad input to import."""


def folded_layers(template: Template) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W, b) per layer, float32, with the input standardisation folded into the first layer.

    The exports run raw features through these, so they need no standardisation step of their
    own: W0' = W0 / scale (row-wise), b0' = b0 - (mean / scale) @ W0, computed as
    mean @ W0'. (The runtime, `synthesize`, standardises each sample instead: folding costs
    more per synthesis than it saves per call there.) Sigmoid's internal 0.5 scale is not
    applied here: exports use each format's own sigmoid.
    """
    g = template.genome
    mean = template.input_mean
    scale = template.input_scale
    first = (g.weights[0] * np.reciprocal(scale)[:, None]).astype(np.float32)
    layers = [(first, (g.biases[0] - np.dot(mean, first)).astype(np.float32))]
    layers += [
        (w.astype(np.float32), b.astype(np.float32))
        for w, b in zip(g.weights[1:], g.biases[1:], strict=True)
    ]
    return [(np.ascontiguousarray(w), np.ascontiguousarray(b)) for w, b in layers]


# --- ONNX ----------------------------------------------------------------------------------
def export_onnx(template: Template) -> bytes:
    """A serialized ONNX model computing the template's outputs from raw features."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = template.genome
    nodes = []
    inits = []
    current = "x"
    for i, ((w, b), act) in enumerate(zip(folded_layers(template), g.activations, strict=True)):
        inits.append(numpy_helper.from_array(w, name=f"W{i}"))
        inits.append(numpy_helper.from_array(b, name=f"b{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"W{i}"], [f"mm{i}"]))
        pre = f"z{i}"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [pre]))
        op = {"tanh": "Tanh", "relu": "Relu", "sigmoid": "Sigmoid", "sin": "Sin"}.get(act)
        if op is None:
            current = pre
        else:
            nodes.append(helper.make_node(op, [pre], [f"h{i}"]))
            current = f"h{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    graph = helper.make_graph(
        nodes,
        f"qudag_{re.sub(r'[^A-Za-z0-9_]', '_', template.task)}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", g.n_inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", g.n_outputs])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="qudag-evo",
        doc_string="QuDAG-Evo template; input: raw features (standardisation folded in).",
    )
    model.ir_version = 8  # readable by onnxruntime >= 1.10
    helper.set_model_props(
        model,
        {
            "task": template.task,
            "task_version": str(template.task_version),
            "output": template.output,
            "fitness": repr(template.fitness),
        },
    )
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


# --- FANN ----------------------------------------------------------------------------------
def _fe(value: float) -> str:
    """libfann's FANNPRINTF for float builds: "%.20e" of the (float-promoted) value."""
    return f"{float(np.float32(value)):.20e}"


_FANN_HEADER = (
    "learning_rate=0.700000\n"
    "connection_rate=1.000000\n"
    "network_type=0\n"
    "learning_momentum=0.000000\n"
    "training_algorithm=2\n"
    "train_error_function=1\n"
    "train_stop_function=0\n"
    "cascade_output_change_fraction=0.010000\n"
    "quickprop_decay=-0.000100\n"
    "quickprop_mu=1.750000\n"
    "rprop_increase_factor=1.200000\n"
    "rprop_decrease_factor=0.500000\n"
    "rprop_delta_min=0.000000\n"
    "rprop_delta_max=50.000000\n"
    "rprop_delta_zero=0.100000\n"
    "cascade_output_stagnation_epochs=12\n"
    "cascade_candidate_change_fraction=0.010000\n"
    "cascade_candidate_stagnation_epochs=12\n"
    "cascade_max_out_epochs=150\n"
    "cascade_min_out_epochs=50\n"
    "cascade_max_cand_epochs=150\n"
    "cascade_min_cand_epochs=50\n"
    "cascade_num_candidate_groups=2\n"
    f"bit_fail_limit={_fe(0.35)}\n"
    f"cascade_candidate_limit={_fe(1000.0)}\n"
    f"cascade_weight_multiplier={_fe(0.4)}\n"
    "cascade_activation_functions_count=10\n"
    "cascade_activation_functions=3 5 7 8 10 11 14 15 16 17 \n"
    "cascade_activation_steepnesses_count=4\n"
    "cascade_activation_steepnesses=" + "".join(f"{_fe(s)} " for s in (0.25, 0.5, 0.75, 1.0)) + "\n"
)


def export_fann(template: Template) -> str:
    """The template as libfann `FANN_FLO_2.1` text, or `ExportError` if it cannot be exact."""
    g = template.genome
    for act in g.activations:
        if act not in _TO_FANN:
            raise ExportError(
                f"activation {act!r} has no exact FANN 2.1 equivalent "
                "(FANN_LINEAR_PIECE clamps to [0, 1]); export this template to ONNX instead"
            )
    layers = folded_layers(template)
    sizes = [g.n_inputs, *g.layer_sizes]
    neurons: list[str] = []
    zero = _fe(0.0)
    neurons += [f"(0, 0, {zero}) "] * (g.n_inputs + 1)
    connections: list[str] = []
    first_prev = 0  # index of the previous layer's first neuron
    for (w, b), act, fan_in, width in zip(
        layers, g.activations, sizes[:-1], sizes[1:], strict=True
    ):
        fn, steepness = _TO_FANN[act]
        neurons += [f"({fan_in + 1}, {fn}, {_fe(steepness)}) "] * width
        neurons.append(f"(0, 0, {zero}) ")  # bias neuron (unused after the output layer)
        for j in range(width):
            for i in range(fan_in):
                connections.append(f"({first_prev + i}, {_fe(w[i, j])}) ")
            connections.append(f"({first_prev + fan_in}, {_fe(b[j])}) ")
        first_prev += fan_in + 1
    return (
        f"{FANN_VERSION}\n"
        f"num_layers={len(sizes)}\n"
        + _FANN_HEADER
        + "layer_sizes="
        + "".join(f"{s + 1} " for s in sizes)
        + "\n"
        + "scale_included=0\n"
        + "neurons (num_inputs, activation_function, activation_steepness)="
        + "".join(neurons)
        + "\n"
        + "connections (connected_to_neuron, weight)="
        + "".join(connections)
        + "\n"
    )


_TUPLE3 = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*,\s*([-+0-9.eEinfINFaA]+)\s*\)")
_TUPLE2 = re.compile(r"\(\s*(\d+)\s*,\s*([-+0-9.eEinfINFaA]+)\s*\)")


def _field(lines: dict[str, str], key: str) -> str:
    if key not in lines:
        raise ExportError(f"FANN file has no {key!r} line")
    return lines[key]


def import_fann(text: str) -> Genome:
    """Read a fully connected, layered `FANN_FLO_2.0/2.1` net into a `Genome`.

    The genome takes the same inputs as the FANN net (for our exports: raw features) and gives
    the same outputs, except that libfann clips pre-activations at +-150 / steepness (see the
    module docstring). Raises `ExportError` for anything it cannot represent or parse.
    """
    if len(text) > MAX_FANN_TEXT:
        raise ExportError(f"FANN text larger than {MAX_FANN_TEXT} bytes")
    raw_lines = text.splitlines()
    if not raw_lines or raw_lines[0].strip() not in ("FANN_FLO_2.1", "FANN_FLO_2.0"):
        raise ExportError("not a FANN_FLO_2.1 (floating point) network file")
    lines: dict[str, str] = {}
    for line in raw_lines[1:]:
        key, sep, value = line.partition("=")
        if sep:
            lines[key.strip()] = value.strip()
    try:
        num_layers = int(_field(lines, "num_layers"))
        network_type = int(_field(lines, "network_type"))
        connection_rate = float(_field(lines, "connection_rate"))
        sizes_raw = [int(s) for s in _field(lines, "layer_sizes").split()]
    except ExportError:
        raise
    except ValueError:
        raise ExportError("malformed FANN header value") from None
    if network_type != 0 or connection_rate != 1.0:
        raise ExportError("only fully connected layered FANN nets (network_type=0) are supported")
    if len(sizes_raw) != num_layers or num_layers < 2:
        raise ExportError("layer_sizes does not match num_layers")
    if lines.get("scale_included", "0") != "0":
        raise ExportError("FANN files with scale_included=1 are not supported")
    sizes = [s - 1 for s in sizes_raw]  # drop each layer's bias neuron
    try:
        DEFAULT_LIMITS.check(sizes[0], sizes[1:])
    except GenomeError as exc:
        raise ExportError(f"FANN net exceeds genome limits: {exc}") from None
    neuron_text = _field(lines, "neurons (num_inputs, activation_function, activation_steepness)")
    conn_text = _field(lines, "connections (connected_to_neuron, weight)")
    neurons = [(int(a), int(f), float(s)) for a, f, s in _TUPLE3.findall(neuron_text)]
    try:
        conns = [(int(i), np.float32(w)) for i, w in _TUPLE2.findall(conn_text)]
    except ValueError:
        raise ExportError("malformed FANN connection weight") from None
    if len(neurons) != sum(sizes_raw):
        raise ExportError(f"expected {sum(sizes_raw)} neurons, found {len(neurons)}")
    expected_conns = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    if len(conns) != expected_conns:
        raise ExportError(f"expected {expected_conns} connections, found {len(conns)}")

    weights: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    acts: list[str] = []
    n_pos = sizes_raw[0]
    c_pos = 0
    first_prev = 0
    for fan_in, width in zip(sizes[:-1], sizes[1:], strict=True):
        layer_neurons = neurons[n_pos : n_pos + width]
        fns = {(f, s) for _, f, s in layer_neurons}
        if len(fns) != 1:
            raise ExportError("all neurons of a layer must share one activation and steepness")
        fn, steepness = fns.pop()
        if fn not in _FROM_FANN:
            raise ExportError(f"FANN activation function {fn} has no equivalent here")
        if not np.isfinite(steepness) or steepness <= 0:
            raise ExportError("activation steepness must be positive")
        act, factor = _FROM_FANN[fn]
        if any(n_in != fan_in + 1 for n_in, _, _ in layer_neurons):
            raise ExportError("every neuron must connect to the whole previous layer and its bias")
        ext = np.empty((fan_in + 1, width), dtype=np.float32)
        for j in range(width):
            for i in range(fan_in + 1):
                src, w = conns[c_pos]
                c_pos += 1
                if src != first_prev + i:
                    raise ExportError("connections are not in fully connected layer order")
                ext[i, j] = w
        if not np.all(np.isfinite(ext)):
            raise ExportError("non-finite weight")
        ext = (ext * np.float32(factor * steepness)).astype(np.float32)
        weights.append(np.ascontiguousarray(ext[:fan_in]))
        biases.append(np.ascontiguousarray(ext[fan_in]))
        acts.append(act)
        n_pos += width + 1
        first_prev += fan_in + 1
    return Genome(sizes[0], tuple(sizes[1:]), tuple(acts), tuple(weights), tuple(biases))


def supported_formats() -> Sequence[str]:
    return ("onnx", "fann")
