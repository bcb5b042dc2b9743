"""Templates: the portable, self-describing form of an evolved net.

A template is what a peer publishes and what a user downloads: the genome, the task it was
evolved for (id and version), the task's input standardisation (so a user feeds *raw* features,
exactly as in the task's data), the objectives the author claims (fitness on the task's
validation split, parameter count, bytes, measured single-sample latency), its genetic parents
(template vertex ids on the ledger), the operator that made it and its generation.

Its byte form is the canonical msgpack of `Template.to_dict()` (field order fixed, weights and
standardisation constants as little-endian float32 blobs). The same bytes are the ledger payload
and the template *file* format: `save_template` writes them, `load_template` reads them back and
turns any problem (missing file, truncated or corrupt bytes, wrong format) into one
`TemplateError` that names the file and the reason.

Decoding is strict, like everything that crosses a boundary here: unknown or missing fields,
wrong types, non-canonical encodings, oversize input, trailing bytes, non-finite numbers and
inconsistent objectives (a `params` claim that does not match the genome) are `DecodeError`s.
Sizes are checked from the declared layer widths before any array is built. `parse_template_bytes`
(what synthesis uses) first tries a byte walker that accepts exactly the canonical encodings of
valid templates in a fraction of the time, and leaves everything else to the generic decoder.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from qudag.crypto.canonical import DecodeError, fields, pack, unpack
from qudag.crypto.files import write_file_atomic
from qudag.evolution.genome import (
    ACTIVATIONS,
    DEFAULT_LIMITS,
    GENOME_FORMAT_VERSION,
    Genome,
    GenomeError,
)

TEMPLATE_FORMAT_VERSION = 1
OUTPUT_KINDS = ("logits", "values")
MAX_PARENTS = 8
PARENT_ID_BYTES = 32
MAX_TASK_CHARS = 512
MAX_OPERATOR_CHARS = 64
# The optional "columns" map (feature, target and class names): each name 1..64 characters,
# all of them together at most 16,384 characters, so a template stays small and bounded.
MAX_NAME_CHARS = 64
MAX_NAMES_TOTAL_CHARS = 16_384
COLUMNS_KEY = "columns"
# Largest genome + standardisation for the widest input + parents + strings + msgpack framing.
MAX_TEMPLATE_BYTES = (
    4 * DEFAULT_LIMITS.max_params
    + 8 * DEFAULT_LIMITS.max_inputs
    + MAX_PARENTS * (PARENT_ID_BYTES + 2)
    + 4 * (MAX_TASK_CHARS + MAX_OPERATOR_CHARS)
    + 4 * MAX_NAMES_TOTAL_CHARS
    + 3 * (DEFAULT_LIMITS.max_inputs + DEFAULT_LIMITS.max_width + 1)
    + 4096
)

_TEMPLATE_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "v": int,
    "task": str,
    "task_version": int,
    "genome": dict,
    "pre": dict,
    "output": str,
    "objectives": dict,
    "parents": list,
    "operator": str,
    "generation": int,
}
_GENOME_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "v": int,
    "n_inputs": int,
    "layers": list,
    "acts": list,
    "params": bytes,
}
_COLUMNS_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "features": list,
    "target": str,
    "classes": list,
}
_PRE_SCHEMA: dict[str, type | tuple[type, ...]] = {"mean": bytes, "scale": bytes}
_OBJECTIVES_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "fitness": float,
    "params": int,
    "bytes": int,
    "latency_ns": int,
}


def check_names(
    features: Sequence[str], target: str, classes: Sequence[str], n_inputs: int, n_outputs: int
) -> str | None:
    """Why these column names cannot go in a template, or None if they can.

    Features are none or one per input, classes none or one per output, all of them distinct
    non-empty strings within `MAX_NAME_CHARS`, together within `MAX_NAMES_TOTAL_CHARS`.
    """
    if len(features) not in (0, n_inputs):
        return f"{len(features)} feature names for {n_inputs} inputs"
    if len(classes) not in (0, n_outputs):
        return f"{len(classes)} class names for {n_outputs} outputs"
    total = 0
    for group in (features, classes, [target] if target else []):
        for name in group:
            if type(name) is not str or not 0 < len(name) <= MAX_NAME_CHARS:
                return f"names must be strings of 1..{MAX_NAME_CHARS} characters"
            total += len(name)
        if len(set(group)) != len(group):
            return "duplicate names"
    if total > MAX_NAMES_TOTAL_CHARS:
        return f"names longer than {MAX_NAMES_TOTAL_CHARS} characters in all"
    return None


class TemplateError(ValueError):
    """A template that cannot be built, or a template file that cannot be read."""


class TaskLike(Protocol):
    """What `from_genome` needs from a task (see evolution/tasks.py `Task`)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def kind(self) -> str: ...

    @property
    def input_mean(self) -> np.ndarray: ...

    @property
    def input_scale(self) -> np.ndarray: ...


def _f32_vector(value: Any, n: int, what: str) -> np.ndarray:
    arr = np.array(value, dtype=np.float32, copy=True)  # never freeze the caller's array
    if arr.shape != (n,):
        raise TemplateError(f"{what} must have shape ({n},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise TemplateError(f"{what} has non-finite values")
    return arr


@dataclass(frozen=True, eq=False)
class Template:
    """An evolved net plus everything needed to run, re-check and trace it.

    Construction validates every field, so any `Template` that exists can be encoded and will
    decode back to an equal one. Equality is equality of the canonical bytes.
    """

    task: str
    task_version: int
    genome: Genome
    input_mean: np.ndarray
    input_scale: np.ndarray
    output: str
    fitness: float
    n_params: int
    n_bytes: int
    latency_ns: int
    parents: tuple[bytes, ...] = ()
    operator: str = "init"
    generation: int = 0
    # What the inputs, the target and the output classes are called in the task's data
    # (empty: not recorded). They let a user feed a csv file by column name and read a class
    # name instead of an index; encoded as the optional last key "columns".
    feature_names: tuple[str, ...] = ()
    target_name: str = ""
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.genome, Genome):
            raise TemplateError("genome must be a Genome")
        try:
            DEFAULT_LIMITS.check(self.genome.n_inputs, self.genome.layer_sizes)
        except GenomeError as exc:
            raise TemplateError(f"genome exceeds the template limits: {exc}") from None
        if not isinstance(self.task, str) or not 0 < len(self.task) <= MAX_TASK_CHARS:
            raise TemplateError(f"task must be a string of 1..{MAX_TASK_CHARS} characters")
        if not isinstance(self.operator, str) or not 0 < len(self.operator) <= MAX_OPERATOR_CHARS:
            raise TemplateError(f"operator must be a string of 1..{MAX_OPERATOR_CHARS} characters")
        for name in ("task_version", "n_params", "n_bytes", "latency_ns", "generation"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise TemplateError(f"{name} must be a non-negative integer")
            object.__setattr__(self, name, int(value))
        if isinstance(self.fitness, bool) or not isinstance(self.fitness, float | int | np.number):
            raise TemplateError("fitness must be a number")
        fitness = float(self.fitness)
        if not math.isfinite(fitness):
            raise TemplateError("fitness must be finite")
        object.__setattr__(self, "fitness", fitness)
        if self.output not in OUTPUT_KINDS:
            raise TemplateError(f"output must be one of {', '.join(OUTPUT_KINDS)}")
        n_in = self.genome.n_inputs
        mean = _f32_vector(self.input_mean, n_in, "input_mean")
        scale = _f32_vector(self.input_scale, n_in, "input_scale")
        if np.any(scale == 0):
            raise TemplateError("input_scale must not contain zeros")
        mean.flags.writeable = False
        scale.flags.writeable = False
        object.__setattr__(self, "input_mean", mean)
        object.__setattr__(self, "input_scale", scale)
        if self.n_params != self.genome.n_params:
            raise TemplateError(
                f"n_params {self.n_params} != genome parameter count {self.genome.n_params}"
            )
        if self.n_bytes != self.genome.n_bytes:
            raise TemplateError(f"n_bytes {self.n_bytes} != genome bytes {self.genome.n_bytes}")
        parents = tuple(self.parents)
        if len(parents) > MAX_PARENTS:
            raise TemplateError(f"at most {MAX_PARENTS} parents")
        for p in parents:
            if not isinstance(p, bytes) or len(p) != PARENT_ID_BYTES:
                raise TemplateError(f"each parent must be {PARENT_ID_BYTES} bytes")
        if len(set(parents)) != len(parents):
            raise TemplateError("duplicate parent ids")
        object.__setattr__(self, "parents", parents)
        features = tuple(self.feature_names)
        classes = tuple(self.class_names)
        if not isinstance(self.target_name, str):
            raise TemplateError("target_name must be a string")
        if self.output == "values" and classes:
            raise TemplateError("a 'values' template has no class names")
        why = check_names(
            features, self.target_name, classes, self.genome.n_inputs, self.genome.n_outputs
        )
        if why is not None:
            raise TemplateError(f"column names: {why}")
        object.__setattr__(self, "feature_names", features)
        object.__setattr__(self, "class_names", classes)

    @property
    def has_columns(self) -> bool:
        return bool(self.feature_names or self.target_name or self.class_names)

    # --- bytes -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The canonical map (key order is part of the format; see module docstring)."""
        return {
            "v": TEMPLATE_FORMAT_VERSION,
            "task": self.task,
            "task_version": self.task_version,
            "genome": self.genome.to_dict(),
            "pre": {
                "mean": self.input_mean.astype("<f4").tobytes(),
                "scale": self.input_scale.astype("<f4").tobytes(),
            },
            "output": self.output,
            "objectives": {
                "fitness": self.fitness,
                "params": self.n_params,
                "bytes": self.n_bytes,
                "latency_ns": self.latency_ns,
            },
            "parents": list(self.parents),
            "operator": self.operator,
            "generation": self.generation,
        } | (
            {
                COLUMNS_KEY: {
                    "features": list(self.feature_names),
                    "target": self.target_name,
                    "classes": list(self.class_names),
                }
            }
            if self.has_columns
            else {}
        )

    def to_bytes(self) -> bytes:
        return pack(self.to_dict())

    @classmethod
    def from_dict(cls, value: Any) -> Template:
        """Strictly rebuild a template from its canonical map; raises `DecodeError`."""
        p = parse_template_map(value)
        weights = []
        biases = []
        fan_in = p.n_inputs
        for w_ext in p.layers_ext:
            weights.append(np.array(w_ext[:fan_in], dtype=np.float32))
            biases.append(np.array(w_ext[fan_in], dtype=np.float32))
            fan_in = w_ext.shape[1]
        try:
            genome = Genome(p.n_inputs, p.layer_sizes, p.activations, tuple(weights), tuple(biases))
            return cls(
                task=p.task,
                task_version=p.task_version,
                genome=genome,
                input_mean=p.input_mean.copy(),
                input_scale=p.input_scale.copy(),
                output=p.output,
                fitness=p.fitness,
                n_params=p.n_params,
                n_bytes=p.n_bytes,
                latency_ns=p.latency_ns,
                parents=p.parents,
                operator=p.operator,
                generation=p.generation,
                feature_names=p.feature_names,
                target_name=p.target_name,
                class_names=p.class_names,
            )
        except (TemplateError, GenomeError) as exc:
            raise DecodeError("value", str(exc)) from None

    @classmethod
    def from_bytes(cls, data: bytes) -> Template:
        return cls.from_dict(unpack(data, max_size=MAX_TEMPLATE_BYTES))

    # --- convenience -------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Template):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description (no weights), for `qudag-node template show`."""
        return {
            "format": TEMPLATE_FORMAT_VERSION,
            "task": self.task,
            "task_version": self.task_version,
            "n_inputs": self.genome.n_inputs,
            "n_outputs": self.genome.n_outputs,
            "layers": list(self.genome.layer_sizes),
            "activations": list(self.genome.activations),
            "output": self.output,
            "fitness": self.fitness,
            "params": self.n_params,
            "bytes": self.n_bytes,
            "template_bytes": len(self.to_bytes()),
            "latency_ns": self.latency_ns,
            "parents": [p.hex() for p in self.parents],
            "operator": self.operator,
            "generation": self.generation,
        } | (
            {
                "features": list(self.feature_names),
                "target": self.target_name,
                "classes": list(self.class_names),
            }
            if self.has_columns
            else {}
        )


class ParsedTemplate(NamedTuple):
    """A validated template map, with the layers as zero-copy views of the weight blob.

    `layers_ext[i]` is the (fan_in + 1, width) float32 matrix whose last row is the bias: the
    genome's flat layout (W row-major, then b) already *is* that stacking, so no copy is made.
    The synthesis runtime builds a `Network` straight from this, skipping the `Genome` copies.
    """

    task: str
    task_version: int
    n_inputs: int
    layer_sizes: tuple[int, ...]
    activations: tuple[str, ...]
    layers_ext: tuple[np.ndarray, ...]
    input_mean: np.ndarray
    input_scale: np.ndarray
    output: str
    fitness: float
    n_params: int
    n_bytes: int
    latency_ns: int
    parents: tuple[bytes, ...]
    operator: str
    generation: int
    feature_names: tuple[str, ...] = ()
    target_name: str = ""
    class_names: tuple[str, ...] = ()


_FAST_SHAPES: dict[int, tuple[tuple[str, ...], tuple[type, ...]]] = {}


def _fields(value: Any, schema: dict[str, type | tuple[type, ...]], what: str) -> dict[str, Any]:
    """`canonical.fields`, with a fast path for the exact types msgpack produces.

    Synthesis from bytes is measured in microseconds, and the generic check costs several of
    them; anything that is not plainly well-formed falls through to `fields` for its verdict.
    """
    shape = _FAST_SHAPES.get(id(schema))
    if shape is None:
        kinds = tuple(k if isinstance(k, type) else object for k in schema.values())
        shape = _FAST_SHAPES[id(schema)] = (tuple(schema), kinds)
    if (
        type(value) is dict
        and tuple(value) == shape[0]
        and tuple(map(type, value.values())) == shape[1]
    ):
        return value
    return fields(value, schema, what)


def _nonneg_int(value: int, what: str) -> int:
    if value < 0:
        raise DecodeError("value", f"{what} must be non-negative")
    return value


def parse_template_map(value: Any) -> ParsedTemplate:
    """Validate a decoded template map completely; raises `DecodeError` on anything wrong.

    The map has the keys of `_TEMPLATE_SCHEMA` in that order, optionally followed by
    "columns" (and nothing else): templates written before names were recorded still decode.
    """
    columns: Any = None
    if type(value) is dict and COLUMNS_KEY in value:
        if next(reversed(value)) != COLUMNS_KEY:
            raise DecodeError("value", "template.columns must be the last key")
        columns = value[COLUMNS_KEY]
        value = {k: v for k, v in value.items() if k != COLUMNS_KEY}
    d = _fields(value, _TEMPLATE_SCHEMA, "template")
    if d["v"] != TEMPLATE_FORMAT_VERSION:
        raise DecodeError("version", f"template format {d['v']}")
    task = d["task"]
    if not 0 < len(task) <= MAX_TASK_CHARS:
        raise DecodeError("size", "template.task length")
    operator = d["operator"]
    if not 0 < len(operator) <= MAX_OPERATOR_CHARS:
        raise DecodeError("size", "template.operator length")
    if d["output"] not in OUTPUT_KINDS:
        raise DecodeError("value", f"template.output {d['output']!r}")

    g = _fields(d["genome"], _GENOME_SCHEMA, "genome")
    if g["v"] != GENOME_FORMAT_VERSION:
        raise DecodeError("version", f"genome format {g['v']}")
    layers = g["layers"]
    acts = g["acts"]
    for s in layers:
        if type(s) is not int:
            raise DecodeError("type", "genome.layers must be integers")
    for a in acts:
        if type(a) is not str:
            raise DecodeError("type", "genome.acts must be strings")
        if a not in ACTIVATIONS:
            raise DecodeError("value", f"unknown activation {a!r}")
    if len(acts) != len(layers):
        raise DecodeError("value", "one activation per layer is required")
    n_inputs = g["n_inputs"]
    try:
        n_params = DEFAULT_LIMITS.check(n_inputs, layers)
    except GenomeError as exc:
        raise DecodeError("limit", str(exc)) from None
    if len(g["params"]) != 4 * n_params:
        raise DecodeError("size", "params length does not match layer sizes")
    flat = np.frombuffer(g["params"], dtype="<f4")
    if not np.isfinite(flat).all():
        raise DecodeError("value", "non-finite parameter")
    if flat.dtype != np.float32:  # big-endian host: convert once
        flat = flat.astype(np.float32)
    layers_ext = []
    offset = 0
    fan_in = n_inputs
    for size in layers:
        n = (fan_in + 1) * size
        layers_ext.append(flat[offset : offset + n].reshape(fan_in + 1, size))
        offset += n
        fan_in = size

    pre = _fields(d["pre"], _PRE_SCHEMA, "template.pre")
    if len(pre["mean"]) != 4 * n_inputs or len(pre["scale"]) != 4 * n_inputs:
        raise DecodeError("size", "template.pre vectors must have n_inputs float32 values")
    # One array for both vectors: one finiteness check instead of two (synthesis is timed).
    mean_scale = np.frombuffer(pre["mean"] + pre["scale"], dtype="<f4").astype(
        np.float32, copy=False
    )
    if not np.isfinite(mean_scale).all():
        raise DecodeError("value", "non-finite standardisation constant")
    mean = mean_scale[:n_inputs]
    scale = mean_scale[n_inputs:]
    if np.count_nonzero(scale) != n_inputs:
        raise DecodeError("value", "zero input scale")

    o = _fields(d["objectives"], _OBJECTIVES_SCHEMA, "template.objectives")
    if not math.isfinite(o["fitness"]):
        raise DecodeError("value", "non-finite fitness")
    if o["params"] != n_params:
        raise DecodeError("value", "objectives.params does not match the genome")
    if o["bytes"] != 4 * n_params:
        raise DecodeError("value", "objectives.bytes does not match the genome")
    latency = _nonneg_int(o["latency_ns"], "objectives.latency_ns")

    parents = d["parents"]
    if len(parents) > MAX_PARENTS:
        raise DecodeError("limit", f"more than {MAX_PARENTS} parents")
    for p in parents:
        if not isinstance(p, bytes) or len(p) != PARENT_ID_BYTES:
            raise DecodeError("type", f"parents must be {PARENT_ID_BYTES}-byte ids")
    if len(set(parents)) != len(parents):
        raise DecodeError("value", "duplicate parent ids")

    names: tuple[tuple[str, ...], str, tuple[str, ...]] = ((), "", ())
    if columns is not None:
        c = fields(columns, _COLUMNS_SCHEMA, "template.columns")
        n_outputs = layers[-1]
        if not (c["features"] or c["target"] or c["classes"]):
            raise DecodeError("value", "template.columns is empty (leave the key out)")
        if d["output"] == "values" and c["classes"]:
            raise DecodeError("value", "template.columns.classes on a 'values' template")
        why = check_names(c["features"], c["target"], c["classes"], n_inputs, n_outputs)
        if why is not None:
            raise DecodeError("value", f"template.columns: {why}")
        names = (tuple(c["features"]), c["target"], tuple(c["classes"]))

    return ParsedTemplate(
        task=task,
        task_version=_nonneg_int(d["task_version"], "task_version"),
        n_inputs=n_inputs,
        layer_sizes=tuple(layers),
        activations=tuple(acts),
        layers_ext=tuple(layers_ext),
        input_mean=mean,
        input_scale=scale,
        output=d["output"],
        fitness=o["fitness"],
        n_params=n_params,
        n_bytes=4 * n_params,
        latency_ns=latency,
        parents=tuple(parents),
        operator=operator,
        generation=_nonneg_int(d["generation"], "generation"),
        feature_names=names[0],
        target_name=names[1],
        class_names=names[2],
    )


def parse_template_bytes(data: bytes) -> ParsedTemplate:
    """Strictly decode template bytes into a `ParsedTemplate` (no `Genome` is built).

    The byte walker `walk_template_bytes` accepts exactly the canonical encodings of valid
    templates in a few microseconds; whatever it does not accept goes through the generic
    decoder (`unpack` + `parse_template_map`), which gives the verdict and the error.
    """
    parsed = walk_template_bytes(data)
    if parsed is not None:
        return parsed
    return parse_template_map(unpack(data, max_size=MAX_TEMPLATE_BYTES))


# --- the byte walker ---------------------------------------------------------------------
# Synthesis from bytes is timed in microseconds, and the generic decoder (msgpack unpack, a
# re-encode to prove canonical form, then the map checks) costs ~15 us of it. A template's
# encoding is mostly constant: the keys, their order and the nesting never change, so the walker
# below compares those constant runs of bytes in one `startswith` each and decodes only the
# variable items (strings, integers, the float, the blobs), each only in its one canonical
# (shortest) msgpack form. It returns None, never raises, for anything else, so it can only be
# *narrower* than the generic decoder; the tests check that on every valid template they build
# it gives the same result, and on mutated bytes it never accepts what the generic one rejects.


def _key(name: str) -> bytes:
    return pack(name)


_W_HEAD = {0x8A: False, 0x8B: True}  # map of 10 keys, or 11 with "columns"
_W_V = _key("v") + pack(TEMPLATE_FORMAT_VERSION) + _key("task")
_W_TASK_VERSION = _key("task_version")
_W_GENOME = _key("genome") + b"\x85" + _key("v") + pack(GENOME_FORMAT_VERSION) + _key("n_inputs")
_W_LAYERS = _key("layers")
_W_ACTS = _key("acts")
_W_PARAMS = _key("params")
_W_PRE_MEAN = _key("pre") + b"\x82" + _key("mean")
_W_SCALE = _key("scale")
_W_OUTPUT = _key("output")
_W_OUTPUT_KINDS = {pack(k): k for k in OUTPUT_KINDS}
_W_OBJECTIVES = _key("objectives") + b"\x84" + _key("fitness") + b"\xcb"
_W_BYTES = _key("bytes")
_W_LATENCY = _key("latency_ns")
_W_PARENTS = _key("parents")
_W_PARENT = b"\xc4" + bytes([PARENT_ID_BYTES])
_W_OPERATOR = _key("operator")
_W_GENERATION = _key("generation")
_W_COLUMNS = _key(COLUMNS_KEY) + b"\x83" + _key("features")
_W_TARGET = _key("target")
_W_CLASSES = _key("classes")
_W_ACT_NAMES = {pack(a): a for a in ACTIVATIONS}
_W_MAX_SHAPES = 4096
_F64 = struct.Struct(">d")


def _w_uint(data: bytes, pos: int) -> tuple[int, int]:
    """A non-negative integer in its shortest msgpack form at `pos`: (value, next pos).

    Raises ValueError for anything else (negative, non-minimal, not an integer)."""
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
    if b == 0xCC:
        v = data[pos + 1]
        if v >= 0x80:
            return v, pos + 2
    elif 0xCD <= b <= 0xCF:
        n = 1 << (b - 0xCC)  # 2, 4, 8 bytes
        v = int.from_bytes(data[pos + 1 : pos + 1 + n], "big")
        if len(data) >= pos + 1 + n and v >= 1 << (4 * n):
            return v, pos + 1 + n
    raise ValueError("not a canonical unsigned integer")


def _w_len(data: bytes, pos: int, kind: int) -> tuple[int, int]:
    """Length of a str, bin or array header (`kind` is _STR, _BIN or _ARR) in its shortest
    form at `pos`: (length, pos of the payload). ValueError for anything else."""
    b = data[pos]
    if kind == _STR:
        if 0xA0 <= b <= 0xBF:
            return b - 0xA0, pos + 1
        if b == 0xD9 and data[pos + 1] > 31:
            return data[pos + 1], pos + 2
        first = 0xDA
    elif kind == _BIN:
        if b == 0xC4:
            return data[pos + 1], pos + 2
        first = 0xC5
    else:
        if 0x90 <= b <= 0x9F:
            return b - 0x90, pos + 1
        if b == 0xDC:
            n = int.from_bytes(data[pos + 1 : pos + 3], "big")
            if n > 15:
                return n, pos + 3
        raise ValueError("not a canonical array header")
    if b == first:
        n = int.from_bytes(data[pos + 1 : pos + 3], "big")
        if n > 0xFF:
            return n, pos + 3
    elif b == first + 1:
        n = int.from_bytes(data[pos + 1 : pos + 5], "big")
        if n > 0xFFFF:
            return n, pos + 5
    raise ValueError("not a canonical length")


_STR, _BIN, _ARR = range(3)


def _w_str(data: bytes, pos: int) -> tuple[str, int]:
    n, pos = _w_len(data, pos, _STR)
    end = pos + n
    if end > len(data):
        raise ValueError("truncated")
    return data[pos:end].decode("utf-8"), end


def _w_strs(data: bytes, pos: int) -> tuple[list[str], int]:
    n, pos = _w_len(data, pos, _ARR)
    out = []
    for _ in range(n):
        s, pos = _w_str(data, pos)
        out.append(s)
    return out, pos


class WalkedTemplate(NamedTuple):
    """Everything of a template but its float blobs, which stay in the bytes at these offsets."""

    task: str
    task_version: int
    n_inputs: int
    layer_sizes: tuple[int, ...]
    activations: tuple[str, ...]
    output: str
    fitness: float
    n_params: int
    latency_ns: int
    parents: tuple[bytes, ...]
    operator: str
    generation: int
    names: tuple[tuple[str, ...], str, tuple[str, ...]]
    params_at: int
    mean_at: int
    scale_at: int


def walk_template_bytes(data: bytes) -> ParsedTemplate | None:
    """The template these bytes canonically encode, or None: decode with the generic decoder."""
    w = walk_template_layout(data)
    if w is None:
        return None
    vec = walked_floats(data, w)
    n_inputs = w.n_inputs
    n_params = w.n_params
    flat = vec[:n_params]
    mean = vec[n_params : n_params + n_inputs]
    scale = vec[n_params + n_inputs :]
    if not all_finite(vec) or np.count_nonzero(scale) != n_inputs:
        return None
    layers_ext = []
    offset = 0
    fan_in = n_inputs
    for size in w.layer_sizes:
        n = (fan_in + 1) * size
        layers_ext.append(flat[offset : offset + n].reshape(fan_in + 1, size))
        offset += n
        fan_in = size
    return ParsedTemplate(
        w.task,
        w.task_version,
        n_inputs,
        w.layer_sizes,
        w.activations,
        tuple(layers_ext),
        mean,
        scale,
        w.output,
        w.fitness,
        w.n_params,
        4 * w.n_params,
        w.latency_ns,
        w.parents,
        w.operator,
        w.generation,
        *w.names,
    )


# Read-only 2^-100 as long as the longest float vector of a template (params, mean, scale).
_TINY = np.full(
    DEFAULT_LIMITS.max_params + 2 * DEFAULT_LIMITS.max_inputs, 2.0**-100, dtype=np.float32
)
_TINY.flags.writeable = False


def all_finite(vec: np.ndarray) -> bool:
    """Whether a float32 vector of a template has no NaN or infinity, in one BLAS call.

    The dot with 2^-100 keeps NaN and infinities and cannot overflow (|x| 2^-100 <= 2.7e8, and a
    template has < 16k values), so it is finite exactly when every value is; it costs half of
    `isfinite(v).all()`. (Not a dot with zeros: inf * 0 raises numpy's "invalid value" warning;
    only a vector holding both +inf and -inf still does, and it is rejected all the same.)
    """
    return math.isfinite(float(np.dot(vec, _TINY[: vec.shape[0]])))


def walked_floats(data: bytes, w: WalkedTemplate) -> np.ndarray:
    """params, mean and scale of walked bytes as one aligned, read-only float32 vector.

    Joining the three blobs costs one small copy and buys one array (so one finiteness check)
    that is aligned whatever the blobs' offsets in `data` are."""
    p, m, s = w.params_at, w.mean_at, w.scale_at
    n = 4 * w.n_inputs
    vec = np.frombuffer(
        b"".join((data[p : p + 4 * w.n_params], data[m : m + n], data[s : s + n])), dtype="<f4"
    )
    if vec.dtype != np.float32:  # big-endian host
        vec = vec.astype(np.float32)
        vec.flags.writeable = False
    return vec


def walk_template_layout(data: bytes) -> WalkedTemplate | None:
    """Validate everything but the float values of canonical template bytes, or None.

    The float blobs' sizes are checked; their values (finite; scale non-zero) are the
    caller's to check, once, on whatever arrays it builds from them."""
    try:
        return _walk(data)
    except (ValueError, IndexError, TypeError, KeyError, struct.error):  # + UnicodeDecodeError
        return None


class _Shape(NamedTuple):
    """A genome shape already validated once, and the constant bytes that follow it."""

    n_inputs: int
    layer_sizes: tuple[int, ...]
    activations: tuple[str, ...]
    n_params: int
    pre: bytes  # "pre" key, its map header, "mean" key and the mean blob's bin header
    scale: bytes  # "scale" key and the scale blob's bin header
    objectives_tail: bytes  # "params" n, "bytes" 4n, "latency_ns" key


# Canonical bytes of a genome map from its "genome" key to its params blob's bin header ->
# what they encode. Keyed by the bytes themselves, so a hit proves an identical encoding.
_W_SHAPE_CACHE: dict[bytes, _Shape] = {}
_W_OUTPUTS = {_W_OUTPUT + pack(k): k for k in OUTPUT_KINDS}
_W_BIN_HEADER = {0xC4: 2, 0xC5: 3, 0xC6: 5}


def _bin_header(n: int) -> bytes:
    return pack(bytes(n))[:-n] if n else pack(b"")


def _w_shape(data: bytes, pos: int) -> tuple[_Shape, int] | None:
    """The genome shape encoded at `pos` ("genome" key) and the params blob's position."""
    end = data.find(_W_PARAMS, pos + len(_W_GENOME), pos + 160)
    if end < 0:
        return None
    end += len(_W_PARAMS)
    end += _W_BIN_HEADER[data[end]]
    key = data[pos:end]
    shape = _W_SHAPE_CACHE.get(key)
    if shape is not None:
        return shape, end
    # First sight of this encoding: walk it strictly, item by item.
    if not data.startswith(_W_GENOME, pos):
        return None
    n_inputs, pos = _w_uint(data, pos + len(_W_GENOME))
    if not data.startswith(_W_LAYERS, pos):
        return None
    n_layers, pos = _w_len(data, pos + len(_W_LAYERS), _ARR)
    layer_list = []
    for _ in range(n_layers):
        size, pos = _w_uint(data, pos)
        layer_list.append(size)
    layers = tuple(layer_list)
    if not data.startswith(_W_ACTS, pos) or data[pos + len(_W_ACTS)] != 0x90 + n_layers:
        return None
    pos += len(_W_ACTS) + 1
    act_list = []
    for _ in range(n_layers):
        act = _W_ACT_NAMES[data[pos : pos + 1 + (data[pos] & 0x1F)]]  # KeyError: not an act
        act_list.append(act)
        pos += 1 + len(act)
    try:
        n_params = DEFAULT_LIMITS.check(n_inputs, layers)
    except GenomeError:
        return None
    if (
        not data.startswith(_W_PARAMS + _bin_header(4 * n_params), pos)
        or pos + len(_W_PARAMS) + len(_bin_header(4 * n_params)) != end
    ):
        return None
    shape = _Shape(
        n_inputs,
        layers,
        tuple(act_list),
        n_params,
        _W_PRE_MEAN + _bin_header(4 * n_inputs),
        _W_SCALE + _bin_header(4 * n_inputs),
        _W_PARAMS + pack(n_params) + _W_BYTES + pack(4 * n_params) + _W_LATENCY,
    )
    if len(_W_SHAPE_CACHE) >= _W_MAX_SHAPES:
        _W_SHAPE_CACHE.clear()
    _W_SHAPE_CACHE[key] = shape
    return shape, end


def _walk(data: bytes) -> WalkedTemplate | None:
    if type(data) is not bytes or len(data) > MAX_TEMPLATE_BYTES:
        return None
    has_columns = _W_HEAD[data[0]]
    if not data.startswith(_W_V, 1):
        return None
    task, pos = _w_str(data, 1 + len(_W_V))
    if not 0 < len(task) <= MAX_TASK_CHARS or not data.startswith(_W_TASK_VERSION, pos):
        return None
    task_version, pos = _w_uint(data, pos + len(_W_TASK_VERSION))
    found = _w_shape(data, pos)
    if found is None:
        return None
    shape, params_at = found
    n_params = shape.n_params
    n_inputs = shape.n_inputs
    pos = params_at + 4 * n_params
    if not data.startswith(shape.pre, pos):
        return None
    mean_at = pos + len(shape.pre)
    pos = mean_at + 4 * n_inputs
    if not data.startswith(shape.scale, pos):
        return None
    scale_at = pos + len(shape.scale)
    pos = scale_at + 4 * n_inputs
    output = _W_OUTPUTS[data[pos : pos + 14]]
    pos += 14
    if not data.startswith(_W_OBJECTIVES, pos):
        return None
    pos += len(_W_OBJECTIVES)
    fitness = _F64.unpack_from(data, pos)[0]
    pos += 8
    if not data.startswith(shape.objectives_tail, pos):
        return None
    latency, pos = _w_uint(data, pos + len(shape.objectives_tail))
    if not data.startswith(_W_PARENTS, pos):
        return None
    n_parents, pos = _w_len(data, pos + len(_W_PARENTS), _ARR)
    parents = []
    for _ in range(n_parents):
        if not data.startswith(_W_PARENT, pos):
            return None
        parents.append(data[pos + 2 : pos + 2 + PARENT_ID_BYTES])
        pos += 2 + PARENT_ID_BYTES
    if not data.startswith(_W_OPERATOR, pos):
        return None
    operator, pos = _w_str(data, pos + len(_W_OPERATOR))
    if not data.startswith(_W_GENERATION, pos):
        return None
    generation, pos = _w_uint(data, pos + len(_W_GENERATION))
    names: tuple[tuple[str, ...], str, tuple[str, ...]] = ((), "", ())
    if has_columns:
        if not data.startswith(_W_COLUMNS, pos):
            return None
        features, pos = _w_strs(data, pos + len(_W_COLUMNS))
        if not data.startswith(_W_TARGET, pos):
            return None
        target, pos = _w_str(data, pos + len(_W_TARGET))
        if not data.startswith(_W_CLASSES, pos):
            return None
        classes, pos = _w_strs(data, pos + len(_W_CLASSES))
        if not (features or target or classes) or (output == "values" and classes):
            return None
        if check_names(features, target, classes, n_inputs, shape.layer_sizes[-1]) is not None:
            return None
        names = (tuple(features), target, tuple(classes))
    if (
        pos != len(data)
        or len(parents) > MAX_PARENTS
        or len(set(parents)) != len(parents)
        or not 0 < len(operator) <= MAX_OPERATOR_CHARS
        or not math.isfinite(fitness)
    ):
        return None
    return WalkedTemplate(
        task,
        task_version,
        n_inputs,
        shape.layer_sizes,
        shape.activations,
        output,
        fitness,
        n_params,
        latency,
        tuple(parents),
        operator,
        generation,
        names,
        params_at,
        mean_at,
        scale_at,
    )


def output_kind(task_kind: str) -> str:
    """Regression nets emit values; classification and control nets emit logits (argmax)."""
    return "values" if task_kind == "regression" else "logits"


def from_genome(
    genome: Genome,
    task: TaskLike,
    fitness: float,
    parents: Sequence[bytes] = (),
    operator: str = "init",
    generation: int = 0,
    *,
    latency_repeats: int = 41,
) -> Template:
    """Package an evolved genome as a template of `task`, measuring its inference latency.

    `latency_ns` is the median wall time of one single-sample call of the synthesized network
    (the way a user runs it), over `latency_repeats` calls after a warm-up call. Repeated parent
    ids (a genome crossed with itself) are kept once, in first-seen order.
    """
    from qudag.evolution.synthesis import measure_latency_ns

    unique_parents = tuple(dict.fromkeys(bytes(p) for p in parents))
    features = tuple(getattr(task, "feature_names", ()))
    target = str(getattr(task, "target_name", ""))
    classes = tuple(getattr(task, "class_names", ())) if task.kind == "classification" else ()
    if check_names(features, target, classes, genome.n_inputs, genome.n_outputs) is not None:
        # Names a template cannot hold (too long, too many) are left out rather than stopping
        # the evolution: the template still runs, fed by position.
        features, target, classes = (), "", ()
    draft = Template(
        task=task.name,
        task_version=task.version,
        genome=genome,
        input_mean=task.input_mean,
        input_scale=task.input_scale,
        output=getattr(task, "template_output", None) or output_kind(task.kind),
        fitness=fitness,
        n_params=genome.n_params,
        n_bytes=genome.n_bytes,
        latency_ns=0,
        parents=unique_parents,
        operator=operator,
        generation=generation,
        feature_names=features,
        target_name=target,
        class_names=classes,
    )
    latency = measure_latency_ns(draft, repeats=latency_repeats)
    return Template(
        task=draft.task,
        task_version=draft.task_version,
        genome=genome,
        input_mean=draft.input_mean,
        input_scale=draft.input_scale,
        output=draft.output,
        fitness=draft.fitness,
        n_params=draft.n_params,
        n_bytes=draft.n_bytes,
        latency_ns=latency,
        parents=draft.parents,
        operator=operator,
        generation=generation,
        feature_names=features,
        target_name=target,
        class_names=classes,
    )


# --- files ---------------------------------------------------------------------------------
def save_template(template: Template, path: str | os.PathLike[str]) -> Path:
    """Write the template's canonical bytes to `path` atomically (temp file + rename)."""
    target = Path(path)
    try:
        write_file_atomic(target, template.to_bytes())
    except OSError as exc:
        raise TemplateError(f"{target}: cannot write template: {exc.strerror or exc}") from None
    return target


def read_template_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a template file, refusing files larger than any valid template."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            data = fh.read(MAX_TEMPLATE_BYTES + 1)
    except IsADirectoryError:
        raise TemplateError(f"{p}: is a directory, not a template file") from None
    except OSError as exc:
        raise TemplateError(f"{p}: cannot read template: {exc.strerror or exc}") from None
    if not data:
        raise TemplateError(f"{p}: empty file, not a template")
    if len(data) > MAX_TEMPLATE_BYTES:
        raise TemplateError(f"{p}: larger than any valid template ({MAX_TEMPLATE_BYTES} bytes)")
    return data


def load_template(path: str | os.PathLike[str]) -> Template:
    """Read and strictly decode a template file; every failure is one `TemplateError`."""
    data = read_template_file(path)
    try:
        return Template.from_bytes(data)
    except DecodeError as exc:
        raise TemplateError(f"{path}: not a valid QuDAG template ({exc})") from None
