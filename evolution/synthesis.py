"""Synthesis: turn a template (object or bytes) into a runnable net in microseconds.

This is the "ephemeral intelligence" runtime: build a net from template bytes, run it, drop it.
Everything here is arranged so that building and running cost as few numpy calls as possible,
because at these sizes (tens to thousands of parameters) per-call interpreter overhead, not
arithmetic, is the whole cost:

- A version-2 template keeps its net in one fixed binary field (evolution/netformat.py). Its
  float values are read through one structured dtype per shape, so every layer, the mean and the
  scale are zero-copy, read-only views of one aligned copy of the float bytes: nothing is
  reshaped, folded or converted.
- Each layer is held as one (fan_in + 1, width) float32 matrix whose last row is the bias (the
  parameter layout already is that stacking).
- The input is standardised at call time, `(x - mean) / scale` in float32 exactly as the task's
  `standardize` does it, into a preallocated buffer: two ufunc calls per sample. Folding it into
  the first layer at synthesis instead would save one call per sample but cost a dozen numpy
  calls (~4 us) per synthesis, more than the whole budget of a synthesis from bytes.
- A single sample runs through preallocated buffers that end in a constant 1, so a layer is one
  `np.dot(..., out=...)` plus one in-place activation: no bias add and no allocation except the
  returned output vector. A batch allocates its activations (unavoidable) and adds the bias row.
- `sigmoid(z) = 0.5 * tanh(0.5 z) + 0.5` (the genome's definition): the inner 0.5 is folded into
  the layer's weights at synthesis (a power-of-two scale, so the result is bit-identical).
- What depends only on a net's shape (buffer offsets, activation codes) is computed once per
  shape and kept in a bounded cache keyed by the shape's exact header bytes.

The single-sample buffers make a `Network` unsafe to call from several threads at once; make
one per thread (synthesis is cheap).

Telemetry per instance: `synthesis_ns` (decode + build), `inference_count`, `inference_ns`
(total wall time inside calls), `bytes_held` (arrays the instance keeps alive; 0 after `close`).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, NamedTuple

import numpy as np

from qudag.crypto.canonical import unpack
from qudag.evolution.genome import DEFAULT_LIMITS
from qudag.evolution.netformat import (
    ACTIVATION_CODES,
    NetShape,
    float_region,
    params_finite,
    shape_of,
)
from qudag.evolution.template import (
    MAX_TEMPLATE_BYTES,
    ParsedTemplate,
    Template,
    parse_template_map,
    walk_template_layout,
)

_TANH, _RELU, _SIGMOID, _SIN = (ACTIVATION_CODES[a] for a in ("tanh", "relu", "sigmoid", "sin"))
_HALF = np.float32(0.5)
_ZEROS = np.zeros(DEFAULT_LIMITS.max_width, dtype=np.float32)  # read-only ReLU operand
_ZEROS.flags.writeable = False
_MAX_PLANS = 4096

_perf_ns = time.perf_counter_ns
_ndarray = np.ndarray
_new_network = object.__new__


class NetworkClosedError(RuntimeError):
    """The network was closed; synthesize the template again to run it."""


_Steps = tuple[tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray], ...]


class _Plan(NamedTuple):
    """What a `Network` of one shape needs beyond its weights, computed once per shape."""

    shape: NetShape
    n_outputs: int
    sigmoid: tuple[bool, ...] | None  # which layers get the inner 0.5, None if none does
    arena: np.ndarray  # read-only ones: [input, 1, h_0, 1, ..., h_{k-2}, 1], copied per net
    hidden: tuple[tuple[int, int, int, np.ndarray], ...]  # (start, width, code, ReLU operand)
    held: int  # bytes a net of this shape keeps alive


_PLANS: dict[bytes, _Plan] = {}


def _plan(shape: NetShape) -> _Plan:
    plan = _PLANS.get(shape.header)
    if plan is not None:
        return plan
    n = shape.n_inputs
    hidden = []
    start = n + 1
    for width, code in zip(shape.layer_sizes[:-1], shape.codes[:-1], strict=True):
        zeros = _ZEROS[:width] if code == _RELU else _ZEROS
        hidden.append((start, width, code, zeros))
        start += width + 1
    arena = np.ones(start, dtype=np.float32)
    arena.flags.writeable = False
    sigmoid = tuple(a == "sigmoid" for a in shape.activations)
    plan = _Plan(
        shape,
        shape.layer_sizes[-1],
        sigmoid if any(sigmoid) else None,
        arena,
        tuple(hidden),
        arena.nbytes + 4 * shape.n_floats,
    )
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[shape.header] = plan
    return plan


class Network:
    """A synthesized net: raw features in, task outputs (logits or values) out.

    Call it with one sample (1-D, `n_inputs` values) for a 1-D output, or a batch (2-D,
    `(batch, n_inputs)`) for a 2-D output. Not thread-safe (see module docstring).
    Built by `synthesize`, never directly.
    """

    __slots__ = (
        "task",
        "task_version",
        "n_inputs",
        "synthesis_ns",
        "inference_count",
        "inference_ns",
        "_spec",
        "_run",
        "_layers",
        "_batch_plan",
    )

    task: str
    task_version: int
    n_inputs: int
    synthesis_ns: int
    inference_count: int
    inference_ns: int
    _spec: _Plan
    # (single-sample layer steps, last layer (input, weights), mean, scale, standardised input
    # buffer); None once closed
    _run: tuple[_Steps, tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray, np.ndarray] | None
    _layers: list[np.ndarray]
    _batch_plan: tuple[tuple[np.ndarray, np.ndarray, int], ...]  # set on the first batch

    @property
    def output(self) -> str:
        return self._spec.shape.output

    @property
    def n_outputs(self) -> int:
        return self._spec.n_outputs

    @property
    def n_params(self) -> int:
        return self._spec.shape.n_params

    # --- running -----------------------------------------------------------------------
    def __call__(self, x: Any) -> np.ndarray:
        """Outputs for one raw sample (1-D) or a batch of raw samples (2-D), float32."""
        t0 = _perf_ns()
        run = self._run
        if run is None:
            raise NetworkClosedError("network is closed")
        a = np.asarray(x, dtype=np.float32)
        if a.ndim == 1:
            if a.shape[0] != self.n_inputs:
                raise ValueError(f"expected {self.n_inputs} input values, got {a.shape[0]}")
            steps, (src, w), mean, scale, x_std = run
            np.subtract(a, mean, out=x_std)
            np.divide(x_std, scale, out=x_std)
            for s, wi, out, code, zeros in steps:
                np.dot(s, wi, out=out)
                if code == _TANH:
                    np.tanh(out, out=out)
                elif code == _RELU:
                    np.maximum(out, zeros, out=out)
                elif code == _SIGMOID:
                    np.tanh(out, out=out)
                    np.multiply(out, _HALF, out=out)
                    np.add(out, _HALF, out=out)
                elif code == _SIN:
                    np.sin(out, out=out)
            result: np.ndarray = np.dot(src, w)
            _activate(result, self._spec.shape.codes[-1])
        elif a.ndim == 2:
            if a.shape[1] != self.n_inputs:
                raise ValueError(f"expected {self.n_inputs} input columns, got {a.shape[1]}")
            try:
                plan = self._batch_plan
            except AttributeError:  # built on first use: most nets only see single samples
                plan = self._batch_plan = tuple(
                    (w[:-1], w[-1], code)
                    for w, code in zip(self._layers, self._spec.shape.codes, strict=True)
                )
            result = (a - run[2]) / run[3]
            for w, b, code in plan:
                result = np.dot(result, w)
                result += b
                _activate(result, code)
        else:
            raise ValueError(f"expected a 1-D sample or a 2-D batch, got {a.ndim} dimensions")
        self.inference_ns += _perf_ns() - t0
        self.inference_count += 1
        return result

    def predict(self, x: Any) -> np.ndarray:
        """Class indices for 'logits' nets (argmax), the outputs themselves for 'values' nets."""
        out = self(x)
        if self.output == "logits":
            indices: np.ndarray = np.argmax(out, axis=-1)
            return indices
        return out

    # --- lifecycle ---------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._run is None

    @property
    def bytes_held(self) -> int:
        return 0 if self._run is None else self._spec.held

    def close(self) -> None:
        """Drop every array; later calls raise `NetworkClosedError`. Idempotent."""
        self._run = None
        self._batch_plan = ()
        self._layers = []

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def telemetry(self) -> dict[str, int | float]:
        """Lifecycle figures of this instance (JSON-friendly)."""
        mean = self.inference_ns / self.inference_count if self.inference_count else 0.0
        return {
            "synthesis_ns": self.synthesis_ns,
            "inference_count": self.inference_count,
            "inference_ns": self.inference_ns,
            "mean_inference_ns": mean,
            "bytes_held": self.bytes_held,
        }

    def __repr__(self) -> str:
        state = "closed" if self._run is None else f"{self.n_params} params"
        return (
            f"<Network {self.task} v{self.task_version} {self.n_inputs}->{self.n_outputs} {state}>"
        )


def _activate(h: np.ndarray, code: int) -> None:
    if code == _TANH:
        np.tanh(h, out=h)
    elif code == _RELU:
        np.maximum(h, _ZERO, out=h)
    elif code == _SIGMOID:
        np.tanh(h, out=h)
        h *= _HALF
        h += _HALF
    elif code == _SIN:
        np.sin(h, out=h)


_ZERO = np.float32(0.0)


def _network(
    shape: NetShape,
    rec: np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
    task: str,
    task_version: int,
    started: int,
) -> Network:
    """The `Network` of a checked float region `rec` (a 0-d array of `shape.dtype`)."""
    spec = _PLANS.get(shape.header) or _plan(shape)
    fields = shape.layer_fields
    layers = (
        [rec[fields[0]], rec[fields[1]]] if len(fields) == 2 else list(map(rec.__getitem__, fields))
    )
    if spec.sigmoid is not None:
        layers = [w * _HALF if s else w for w, s in zip(layers, spec.sigmoid, strict=True)]
    arena = spec.arena.copy()
    n = shape.n_inputs
    hidden = spec.hidden
    # One and two hidden layers (the usual nets) written out: a loop costs more than its body.
    if len(hidden) == 1:
        (start, width, code, zeros), w = hidden[0], layers[0]
        src = arena[start : start + width + 1]
        steps: _Steps = ((arena[: n + 1], w, src[:width], code, zeros),)
    elif len(hidden) == 2:
        (s0, w0, c0, z0), (s1, w1, c1, z1) = hidden
        h0 = arena[s0 : s0 + w0 + 1]
        src = arena[s1 : s1 + w1 + 1]
        steps = ((arena[: n + 1], layers[0], h0[:w0], c0, z0), (h0, layers[1], src[:w1], c1, z1))
    else:
        src = arena[: n + 1]
        plan = []
        for (start, width, code, zeros), w in zip(hidden, layers, strict=False):
            buf = arena[start : start + width + 1]
            plan.append((src, w, buf[:width], code, zeros))
            src = buf
        steps = tuple(plan)
    net = _new_network(Network)
    net.task = task
    net.task_version = task_version
    net.n_inputs = n
    net.inference_count = 0
    net.inference_ns = 0
    net._spec = spec
    net._run = (steps, (src, layers[-1]), mean, scale, arena[:n])
    net._layers = layers
    net.synthesis_ns = _perf_ns() - started
    return net


def synthesize(source: Template | ParsedTemplate | bytes | bytearray | memoryview) -> Network:
    """Build a `Network` from a template, a parsed template, or template bytes.

    Bytes are strictly decoded first (`DecodeError` on anything malformed); the time for that is
    part of `synthesis_ns`, since "from bytes to a running net" is what a peer pays. Canonical
    bytes of a valid version-2 template take the byte walker's path; anything else (version 1
    included) goes through the generic decoder, which gives the verdict.
    """
    started = _perf_ns()
    if type(source) is bytes or isinstance(source, bytes | bytearray | memoryview):
        data = source if type(source) is bytes else bytes(source)
        w = walk_template_layout(data)
        if w is not None:
            shape = w[2]
            at = w[3]
            rec = _ndarray((), shape.dtype, data[at : at + shape.float_bytes])
            if params_finite(shape, rec["params"]):
                return _network(shape, rec, w[4], w[5], w[0], w[1], started)
        parsed = parse_template_map(unpack(data, max_size=MAX_TEMPLATE_BYTES))  # the verdict
    elif isinstance(source, ParsedTemplate):
        parsed = source
    elif isinstance(source, Template):
        g = source.genome
        shape = shape_of(g.n_inputs, g.layer_sizes, g.activations, source.output)
        floats = float_region(g.flat_params(), source.input_mean, source.input_scale)
        rec = _ndarray((), shape.dtype, floats)
        return _network(
            shape, rec, rec["mean"], rec["scale"], source.task, source.task_version, started
        )
    else:
        raise TypeError(f"cannot synthesize from {type(source).__name__}")
    rec = parsed.rec
    return _network(
        parsed.net, rec, rec["mean"], rec["scale"], parsed.task, parsed.task_version, started
    )


def measure_latency_ns(template: Template, repeats: int = 41) -> int:
    """Median single-sample inference time of the synthesized template, in ns.

    The sample is the task's mean input (a typical raw sample); one warm-up call is not timed.
    """
    net = synthesize(template)
    try:
        x = np.array(template.input_mean, dtype=np.float32)
        net(x)
        times = []
        for _ in range(max(1, repeats)):
            t0 = _perf_ns()
            net(x)
            times.append(_perf_ns() - t0)
        return int(statistics.median(times))
    finally:
        net.close()
