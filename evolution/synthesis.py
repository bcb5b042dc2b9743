"""Synthesis: turn a template (object or bytes) into a runnable net in microseconds.

This is the "ephemeral intelligence" runtime: build a net from template bytes, run it, drop it.
Everything here is arranged so that building and running cost as few numpy calls as possible,
because at these sizes (tens to thousands of parameters) per-call interpreter overhead, not
arithmetic, is the whole cost:

- Each layer is held as one (fan_in + 1, width) float32 matrix whose last row is the bias. The
  genome's byte layout (W row-major, then b, layer after layer) already is that stacking, so from
  bytes every layer but the first is a zero-copy view of the decoded weight blob.
- The template's input standardisation `(x - mean) / scale` is folded into the first layer once
  at synthesis (`W0 / scale`, `b0 - (mean / scale) @ W0`), so the net takes
  raw features and spends nothing on preprocessing per call.
- A single sample runs through preallocated buffers that end in a constant 1, so a layer is one
  `np.dot(..., out=...)` plus one in-place activation: no bias add and no allocation except the
  returned output vector. A batch allocates its activations (unavoidable) and adds the bias row.
- `sigmoid(z) = 0.5 * tanh(0.5 z) + 0.5` (the genome's definition): the inner 0.5 is folded into
  the layer's weights (a power-of-two scale, so the result is bit-identical).

The single-sample buffers make a `Network` unsafe to call from several threads at once; make
one per thread (synthesis is cheap).

Telemetry per instance: `synthesis_ns` (decode + build), `inference_count`, `inference_ns`
(total wall time inside calls), `bytes_held` (arrays the instance keeps alive; 0 after `close`).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from qudag.evolution.genome import DEFAULT_LIMITS
from qudag.evolution.template import (
    ParsedTemplate,
    Template,
    all_finite,
    parse_template_bytes,
    walk_template_layout,
    walked_floats,
)

_IDENTITY, _TANH, _RELU, _SIGMOID, _SIN = range(5)
_ACT_CODES = {"identity": _IDENTITY, "tanh": _TANH, "relu": _RELU, "sigmoid": _SIGMOID, "sin": _SIN}
_HALF = np.float32(0.5)
_ZEROS = np.zeros(DEFAULT_LIMITS.max_width, dtype=np.float32)  # read-only ReLU operand
_ZEROS.flags.writeable = False

_perf_ns = time.perf_counter_ns


class NetworkClosedError(RuntimeError):
    """The network was closed; synthesize the template again to run it."""


def _fold_layers(
    n_inputs: int,
    layers_ext: tuple[np.ndarray, ...],
    activations: tuple[str, ...],
    mean: np.ndarray,
    scale: np.ndarray,
) -> list[np.ndarray]:
    """Per-layer (fan_in + 1, width) float32 matrices with standardisation and sigmoid folded."""
    w0 = layers_ext[0]
    w0_body = w0[:n_inputs]
    inv = np.reciprocal(scale)
    first = np.empty(w0.shape, dtype=np.float32)
    np.multiply(w0_body, inv[:, None], out=first[:n_inputs])
    # (mean / scale) @ W0 == mean @ (W0 / scale): the second reuses the scaled rows (one call
    # fewer; `_synthesize_walked` does exactly the same, so both give bit-identical nets).
    np.subtract(w0[n_inputs], np.dot(mean, first[:n_inputs]), out=first[n_inputs])
    layers = [first, *layers_ext[1:]]
    for i, act in enumerate(activations):
        if act == "sigmoid":
            layers[i] = layers[i] * _HALF
    return layers


class Network:
    """A synthesized net: raw features in, task outputs (logits or values) out.

    Call it with one sample (1-D, `n_inputs` values) for a 1-D output, or a batch (2-D,
    `(batch, n_inputs)`) for a 2-D output. Not thread-safe (see module docstring).
    """

    __slots__ = (
        "task",
        "task_version",
        "output",
        "n_inputs",
        "n_outputs",
        "n_params",
        "synthesis_ns",
        "inference_count",
        "inference_ns",
        "_plan",
        "_batch_plan",
        "_layers",
        "_codes",
        "_in",
        "_in_view",
        "_last",
        "_last_act",
        "_held",
        "_closed",
    )

    def __init__(
        self,
        *,
        task: str,
        task_version: int,
        output: str,
        n_inputs: int,
        layers: list[np.ndarray],
        activations: tuple[str, ...],
        started_ns: int,
        n_params: int = -1,
    ) -> None:
        self.task = task
        self.task_version = task_version
        self.output = output
        self.n_inputs = n_inputs
        self.n_outputs = int(layers[-1].shape[1])
        self.n_params = n_params if n_params >= 0 else sum(int(w.size) for w in layers)
        self.inference_count = 0
        self.inference_ns = 0
        self._closed = False
        codes = [_ACT_CODES[a] for a in activations]
        # Single-sample plan: buffers [h_0 .. h_{k-1}, 1.0]; layer i reads buffer i, writes
        # the first `width` entries of buffer i + 1. The last layer allocates its result.
        # One allocation holds every buffer; ReLU's zero operand is a slice of a shared zero row.
        widths = [int(w.shape[1]) for w in layers[:-1]]
        arena = np.empty(n_inputs + 1 + sum(widths) + len(widths), dtype=np.float32)
        arena.fill(1.0)  # (np.ones costs twice as much: a Python-level wrapper)
        self._in = arena[: n_inputs + 1]
        self._in_view = arena[:n_inputs]
        held = arena.nbytes
        plan = []
        src = self._in
        start = n_inputs + 1
        for w, code, width in zip(layers[:-1], codes[:-1], widths, strict=True):
            buf = arena[start : start + width + 1]
            start += width + 1
            zeros = _ZEROS[:width] if code == _RELU else _ZEROS  # ReLU operand, read-only
            plan.append((src, w, buf[:width], code, zeros))
            src = buf
        self._plan = tuple(plan)
        self._last = (src, layers[-1])
        self._last_act = codes[-1]
        self._layers = layers
        self._codes = codes
        self._batch_plan: tuple[tuple[np.ndarray, np.ndarray, int], ...] | None = None
        held += 4 * self.n_params
        self._held = held
        self.synthesis_ns = _perf_ns() - started_ns

    # --- running -----------------------------------------------------------------------
    def __call__(self, x: Any) -> np.ndarray:
        """Outputs for one raw sample (1-D) or a batch of raw samples (2-D), float32."""
        t0 = _perf_ns()
        if self._closed:
            raise NetworkClosedError("network is closed")
        a = np.asarray(x, dtype=np.float32)
        if a.ndim == 1:
            if a.shape[0] != self.n_inputs:
                raise ValueError(f"expected {self.n_inputs} input values, got {a.shape[0]}")
            self._in_view[:] = a
            for src, w, out, code, zeros in self._plan:
                np.dot(src, w, out=out)
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
            src, w = self._last
            result: np.ndarray = np.dot(src, w)
            _activate(result, self._last_act)
        elif a.ndim == 2:
            if a.shape[1] != self.n_inputs:
                raise ValueError(f"expected {self.n_inputs} input columns, got {a.shape[1]}")
            plan = self._batch_plan
            if plan is None:  # built on first use: most nets only ever see single samples
                plan = self._batch_plan = tuple(
                    (w[:-1], w[-1], code) for w, code in zip(self._layers, self._codes, strict=True)
                )
            result = a
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
        return self._closed

    @property
    def bytes_held(self) -> int:
        return 0 if self._closed else self._held

    def close(self) -> None:
        """Drop every array; later calls raise `NetworkClosedError`. Idempotent."""
        self._closed = True
        self._plan = ()
        self._batch_plan = ()
        self._layers = []
        empty = np.empty(0, dtype=np.float32)
        self._last = (empty, empty)
        self._in = self._in_view = empty

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
        state = "closed" if self._closed else f"{self.n_params} params"
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


def synthesize(source: Template | ParsedTemplate | bytes | bytearray | memoryview) -> Network:
    """Build a `Network` from a template, a parsed template, or template bytes.

    Bytes are strictly decoded first (`DecodeError` on anything malformed); the time for that is
    part of `synthesis_ns`, since "from bytes to a running net" is what a peer pays. Canonical
    bytes of a valid template take the byte walker's path (`_synthesize_walked`); anything
    else goes through the generic decoder, which gives the verdict.
    """
    started = _perf_ns()
    if isinstance(source, Template):
        g = source.genome
        flat = g.flat_params()
        layers_ext = []
        offset = 0
        fan_in = g.n_inputs
        for size in g.layer_sizes:
            n = (fan_in + 1) * size
            layers_ext.append(flat[offset : offset + n].reshape(fan_in + 1, size))
            offset += n
            fan_in = size
        layers = _fold_layers(
            g.n_inputs, tuple(layers_ext), g.activations, source.input_mean, source.input_scale
        )
        return Network(
            task=source.task,
            task_version=source.task_version,
            output=source.output,
            n_inputs=g.n_inputs,
            layers=layers,
            activations=g.activations,
            started_ns=started,
        )
    if isinstance(source, ParsedTemplate):
        parsed = source
    elif isinstance(source, bytes | bytearray | memoryview):
        data = source if type(source) is bytes else bytes(source)
        net = _synthesize_walked(data, started)
        if net is not None:
            return net
        parsed = parse_template_bytes(data)
    else:
        raise TypeError(f"cannot synthesize from {type(source).__name__}")
    layers = _fold_layers(
        parsed.n_inputs,
        parsed.layers_ext,
        parsed.activations,
        parsed.input_mean,
        parsed.input_scale,
    )
    return Network(
        task=parsed.task,
        task_version=parsed.task_version,
        output=parsed.output,
        n_inputs=parsed.n_inputs,
        layers=layers,
        activations=parsed.activations,
        started_ns=started,
    )


def _synthesize_walked(data: bytes, started: int) -> Network | None:
    """`synthesize(bytes)` on the byte walker's path, or None: take the generic one.

    Same validation as `parse_template_bytes` (the walker checks everything but the float
    values; `all_finite` and a count of non-zero scales check those)
    and the same arithmetic as `_fold_layers`, with no intermediate `ParsedTemplate`.
    """
    w = walk_template_layout(data)
    if w is None:
        return None
    n = w.n_inputs
    n_params = w.n_params
    vec = walked_floats(data, w)
    scale = vec[n_params + n :]
    if not all_finite(vec) or np.count_nonzero(scale) != n:
        return None  # the generic decoder gives the verdict (and the error)
    inv = np.reciprocal(scale)
    sizes = w.layer_sizes
    width = sizes[0]
    end = (n + 1) * width
    w0 = vec[:end].reshape(n + 1, width)
    w0_body = w0[:n]
    first = np.empty((n + 1, width), dtype=np.float32)
    np.multiply(w0_body, inv[:, None], out=first[:n])
    np.subtract(w0[n], np.dot(vec[n_params:-n], first[:n]), out=first[n])
    layers = [first]
    fan_in = width
    for size in sizes[1:]:
        start = end
        end += (fan_in + 1) * size
        layers.append(vec[start:end].reshape(fan_in + 1, size))
        fan_in = size
    acts = w.activations
    if "sigmoid" in acts:
        for i, act in enumerate(acts):
            if act == "sigmoid":
                layers[i] = layers[i] * _HALF
    return Network(
        task=w.task,
        task_version=w.task_version,
        output=w.output,
        n_inputs=n,
        layers=layers,
        activations=acts,
        started_ns=started,
        n_params=n_params,
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
