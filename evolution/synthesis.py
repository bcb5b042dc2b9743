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
- Those buffers belong to the shape and the thread, not to the net (`_Scratch`, a
  `threading.local` in the shape's plan): a call overwrites every buffer it reads before reading
  it and returns a fresh output, so nets of one shape can share them, and a synthesis neither
  allocates nor slices any. A net keeps one tuple of what a call reads, bound to the buffers of
  the thread that synthesized or last called it; a call checks the thread's id and, from
  another thread, binds it again to that thread's buffers (built on the thread's first use).
- `sigmoid(z) = 0.5 * tanh(0.5 z) + 0.5` (the genome's definition): the inner 0.5 is folded into
  the layer's weights at synthesis (a power-of-two scale, so the result is bit-identical).
- What depends only on a net's shape (buffer offsets, activation codes, the getter of its layer
  views, the buffers) is computed once per shape and kept in a bounded cache keyed by the
  shape's exact header bytes.

A `Network` may be called from several threads at once; only its telemetry counters are not
updated atomically (concurrent calls may count fewer calls and less time than they took).

Telemetry per instance: `synthesis_ns` (decode + build), `inference_count`, `inference_ns`
(total wall time inside calls), `bytes_held` (arrays the instance keeps alive; 0 after `close`).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np

from qudag.crypto.canonical import unpack
from qudag.evolution.genome import DEFAULT_LIMITS
from qudag.evolution.netformat import (
    ACTIVATION_CODES,
    NetShape,
    float_region,
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


# (input buffer, output buffer, activation code, ReLU operand) of a hidden layer
_Buffers = tuple[np.ndarray, np.ndarray, int, np.ndarray]
# (input buffer, weights, output buffer, activation code, ReLU operand) of a hidden layer
_Steps = tuple[tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray], ...]
# (thread id, hidden steps, (last input buffer, last weights, last code), mean, scale, input
# buffer): everything a single-sample call reads, in one tuple
_Last = tuple[np.ndarray, np.ndarray, int]
_Bound = tuple[int | None, _Steps, _Last, np.ndarray, np.ndarray, np.ndarray]
_Hidden = tuple[tuple[int, int, int, np.ndarray], ...]  # (start, width, code, ReLU operand)
_get_ident = threading.get_ident


class _Scratch(threading.local):
    """One thread's single-sample buffers for the nets of one shape.

    `bufs` is (standardised input, the hidden layers' buffers, the last hidden output): views of
    one arena laid out [input, 1, h_0, 1, ..., h_{k-2}, 1] whose ones are never written, so each
    layer's input ends in the constant 1 that multiplies the bias row. Built in each thread on
    its first use (`threading.local` calls `__init__` again there).
    """

    bufs: tuple[np.ndarray, tuple[_Buffers, ...], np.ndarray]

    def __init__(self, n_inputs: int, hidden: _Hidden, size: int) -> None:
        arena = np.ones(size, dtype=np.float32)
        src = arena[: n_inputs + 1]
        steps = []
        for start, width, code, zeros in hidden:
            buf = arena[start : start + width + 1]
            steps.append((src, buf[:width], code, zeros))
            src = buf
        self.bufs = (arena[:n_inputs], tuple(steps), src)


def _bind(
    spec: _Plan, layers: tuple[np.ndarray, ...], mean: np.ndarray, scale: np.ndarray
) -> _Bound:
    """A net's single-sample run on the calling thread's buffers: its weights beside them."""
    x_std, hidden, src = spec.scratch.bufs
    # One and two hidden layers (the usual nets) written out: a loop costs more than its body.
    if not hidden:
        steps: _Steps = ()
    elif len(hidden) == 1:
        (s, out, code, zeros), w = hidden[0], layers[0]
        steps = ((s, w, out, code, zeros),)
    elif len(hidden) == 2:
        (s0, o0, c0, z0), (s1, o1, c1, z1) = hidden
        steps = ((s0, layers[0], o0, c0, z0), (s1, layers[1], o1, c1, z1))
    else:
        steps = tuple(
            (s, w, out, code, zeros)
            for (s, out, code, zeros), w in zip(hidden, layers, strict=False)
        )
    return (_get_ident(), steps, (src, layers[-1], spec.last_code), mean, scale, x_std)


class _Plan(NamedTuple):
    """What a `Network` of one shape needs beyond its weights, computed once per shape."""

    shape: NetShape
    n_outputs: int
    last_code: int  # the output layer's activation
    sigmoid: tuple[bool, ...] | None  # which layers get the inner 0.5, None if none does
    layers: Callable[[np.ndarray], tuple[np.ndarray, ...]] | None  # rec -> its layer views;
    # None for a net of one layer (an itemgetter of one field gives the view, not a tuple)
    scratch: _Scratch
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
    sigmoid = tuple(a == "sigmoid" for a in shape.activations)
    fields = shape.layer_fields
    plan = _Plan(
        shape,
        shape.layer_sizes[-1],
        shape.codes[-1],
        sigmoid if any(sigmoid) else None,
        itemgetter(*fields) if len(fields) > 1 else None,
        _Scratch(n, tuple(hidden), start),
        4 * shape.n_floats,
    )
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[shape.header] = plan
    return plan


class Network:
    """A synthesized net: raw features in, task outputs (logits or values) out.

    Call it with one sample (1-D, `n_inputs` values) for a 1-D output, or a batch (2-D,
    `(batch, n_inputs)`) for a 2-D output. Built by `synthesize`, never directly.
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
        "_bound",
        "_batch_plan",
    )

    task: str
    task_version: int
    n_inputs: int
    synthesis_ns: int
    inference_count: int
    inference_ns: int
    _spec: _Plan
    # (the layers as (fan_in + 1, width) matrices, mean, scale); None once closed
    _run: tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray] | None
    _bound: _Bound  # the single-sample run on the buffers of the thread that called last
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
        bound = self._bound
        if bound[0] != _get_ident():  # another thread's buffers, or closed
            bound = self._rebind()
        a = np.asarray(x, dtype=np.float32)
        if a.ndim == 1:
            if a.shape[0] != self.n_inputs:
                raise ValueError(f"expected {self.n_inputs} input values, got {a.shape[0]}")
            _, steps, (src, w, last), mean, scale, x_std = bound
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
            if last:  # 0 is identity, the usual output layer
                _activate(result, last)
        elif a.ndim == 2:
            if a.shape[1] != self.n_inputs:
                raise ValueError(f"expected {self.n_inputs} input columns, got {a.shape[1]}")
            try:
                plan = self._batch_plan
            except AttributeError:  # built on first use: most nets only see single samples
                run = self._run
                if run is None:  # closed by another thread since this call began
                    raise NetworkClosedError("network is closed") from None
                plan = self._batch_plan = tuple(
                    (w[:-1], w[-1], code)
                    for w, code in zip(run[0], self._spec.shape.codes, strict=True)
                )
            result = (a - bound[3]) / bound[4]
            for w, b, code in plan:
                result = np.dot(result, w)
                result += b
                _activate(result, code)
        else:
            raise ValueError(f"expected a 1-D sample or a 2-D batch, got {a.ndim} dimensions")
        self.inference_ns += _perf_ns() - t0
        self.inference_count += 1
        return result

    def _rebind(self) -> _Bound:
        """The run on this thread's buffers (a net called from a thread other than the last)."""
        run = self._run
        if run is None:
            raise NetworkClosedError("network is closed")
        bound = self._bound = _bind(self._spec, *run)
        return bound

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
        self._bound = _CLOSED
        self._batch_plan = ()

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
_EMPTY = np.empty(0, dtype=np.float32)
_CLOSED: _Bound = (None, (), (_EMPTY, _EMPTY, 0), _EMPTY, _EMPTY, _EMPTY)  # no thread's id


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
    get = spec.layers
    layers = get(rec) if get is not None else (rec["l0"],)
    if spec.sigmoid is not None:
        layers = tuple(w * _HALF if s else w for w, s in zip(layers, spec.sigmoid, strict=True))
    net = _new_network(Network)
    net.task = task
    net.task_version = task_version
    net.n_inputs = shape.n_inputs
    net.inference_count = 0
    net.inference_ns = 0
    net._spec = spec
    net._run = (layers, mean, scale)
    net._bound = _bind(spec, layers, mean, scale)
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
            return _network(w[2], w[3], w[4], w[5], w[0], w[1], started)
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
