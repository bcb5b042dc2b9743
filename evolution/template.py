"""Templates: the portable, self-describing form of an evolved net.

A template is what a peer publishes and what a user downloads: the genome, the task it was
evolved for (id and version), the task's input standardisation (so a user feeds *raw* features,
exactly as in the task's data), the objectives the author claims (fitness on the task's
validation split, parameter count, bytes, measured single-sample latency), its genetic parents
(template vertex ids on the ledger), the operator that made it and its generation.

Its byte form is the canonical msgpack of `Template.to_dict()` (field order fixed). Version 2,
what new templates are written in, keeps the net itself (shape, activations, output kind,
weights, standardisation) in one `net` field of a fixed binary layout (evolution/netformat.py),
so that synthesis reads it with zero-copy views; version 1 (the genome and the standardisation
as nested maps, float32 blobs inside) is still decoded, so old ledgers stay readable, and a
template keeps the version it was decoded from (`format_version`), so its bytes round-trip.
The same bytes are the ledger payload and the template *file* format: `save_template` writes
them, `load_template` reads them back and turns any problem (missing file, truncated or corrupt
bytes, wrong format) into one `TemplateError` that names the file and the reason.

Decoding is strict, like everything that crosses a boundary here: unknown or missing fields,
wrong types, non-canonical encodings, oversize input, trailing bytes, non-finite numbers and
inconsistent objectives (a `params` claim that does not match the genome) are `DecodeError`s.
Sizes are checked from the declared layer widths before any array is built. `parse_template_bytes`
(what synthesis uses) first tries a byte walker that accepts exactly the canonical encodings of
valid version-2 templates in a fraction of the time, and leaves everything else to the generic
decoder.
"""

from __future__ import annotations

import math
import os
import re
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
from qudag.evolution.netformat import (
    OUTPUT_KINDS,
    NetShape,
    check_floats,
    encode_net,
    float_region,
    params_finite,
    parse_header,
    parse_net,
    shape_of,
    standardisation_ok,
)

TEMPLATE_FORMAT_VERSION = 2  # what new templates are written in
TEMPLATE_FORMAT_VERSIONS = (1, 2)  # what is decoded
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

_TEMPLATE_SCHEMA_V2: dict[str, type | tuple[type, ...]] = {
    "v": int,
    "task": str,
    "task_version": int,
    "net": bytes,
    "objectives": dict,
    "parents": list,
    "operator": str,
    "generation": int,
}
_TEMPLATE_SCHEMA: dict[str, type | tuple[type, ...]] = {  # version 1
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
    # The byte format `to_dict` writes: new templates get the current one; a decoded template
    # keeps the one it came in, so that its bytes (signed, hashed) round-trip exactly.
    format_version: int = TEMPLATE_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version not in TEMPLATE_FORMAT_VERSIONS:
            raise TemplateError(f"format_version must be one of {TEMPLATE_FORMAT_VERSIONS}")
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
        g = self.genome
        objectives = {
            "fitness": self.fitness,
            "params": self.n_params,
            "bytes": self.n_bytes,
            "latency_ns": self.latency_ns,
        }
        body: dict[str, Any]
        if self.format_version == 1:
            body = {
                "v": 1,
                "task": self.task,
                "task_version": self.task_version,
                "genome": g.to_dict(),
                "pre": {
                    "mean": self.input_mean.astype("<f4").tobytes(),
                    "scale": self.input_scale.astype("<f4").tobytes(),
                },
                "output": self.output,
                "objectives": objectives,
            }
        else:
            floats = float_region(g.flat_params(), self.input_mean, self.input_scale)
            body = {
                "v": self.format_version,
                "task": self.task,
                "task_version": self.task_version,
                "net": encode_net(g.n_inputs, g.layer_sizes, g.activations, self.output, floats),
                "objectives": objectives,
            }
        body |= {
            "parents": list(self.parents),
            "operator": self.operator,
            "generation": self.generation,
        }
        if self.has_columns:
            body[COLUMNS_KEY] = {
                "features": list(self.feature_names),
                "target": self.target_name,
                "classes": list(self.class_names),
            }
        return body

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
                input_mean=p.input_mean,
                input_scale=p.input_scale,
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
                format_version=p.format_version,
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
            "format": self.format_version,
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
    """A validated template, with its net as a zero-copy structured view of the float values.

    `rec` is a read-only 0-d array of `net.dtype` (evolution/netformat.py): `rec["l{i}"]` is the
    (fan_in + 1, width) float32 matrix of layer i whose last row is the bias, `rec["mean"]` and
    `rec["scale"]` the standardisation. The synthesis runtime builds a `Network` straight from
    it, skipping the `Genome` copies.
    """

    task: str
    task_version: int
    net: NetShape
    rec: np.ndarray
    fitness: float
    latency_ns: int
    parents: tuple[bytes, ...]
    operator: str
    generation: int
    feature_names: tuple[str, ...] = ()
    target_name: str = ""
    class_names: tuple[str, ...] = ()
    format_version: int = TEMPLATE_FORMAT_VERSION

    @property
    def n_inputs(self) -> int:
        return self.net.n_inputs

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return self.net.layer_sizes

    @property
    def activations(self) -> tuple[str, ...]:
        return self.net.activations

    @property
    def output(self) -> str:
        return self.net.output

    @property
    def n_params(self) -> int:
        return self.net.n_params

    @property
    def n_bytes(self) -> int:
        return 4 * self.net.n_params

    @property
    def layers_ext(self) -> tuple[np.ndarray, ...]:
        return tuple(self.rec[f] for f in self.net.layer_fields)

    @property
    def input_mean(self) -> np.ndarray:
        mean: np.ndarray = self.rec["mean"]
        return mean

    @property
    def input_scale(self) -> np.ndarray:
        scale: np.ndarray = self.rec["scale"]
        return scale

    def key(self) -> tuple[Any, ...]:
        """Everything it holds as a comparable value (the float values as their bytes)."""
        return (*self[:2], self.net.header, self.rec.tobytes(), *self[4:])


_FAST_SHAPES: dict[int, tuple[tuple[str, ...], tuple[type, ...]]] = {}


def _fields(value: Any, schema: dict[str, type | tuple[type, ...]], what: str) -> dict[str, Any]:
    """`canonical.fields`, with a fast path for the exact types msgpack produces.

    Anything that is not plainly well-formed falls through to `fields` for its verdict.
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


def _v1_net(d: dict[str, Any]) -> tuple[NetShape, np.ndarray]:
    """The net of a version-1 map (genome and pre maps), as version 2 holds it."""
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
    pre = _fields(d["pre"], _PRE_SCHEMA, "template.pre")
    if len(pre["mean"]) != 4 * n_inputs or len(pre["scale"]) != 4 * n_inputs:
        raise DecodeError("size", "template.pre vectors must have n_inputs float32 values")
    shape = shape_of(n_inputs, layers, acts, d["output"])
    rec = np.ndarray((), shape.dtype, pre["mean"] + pre["scale"] + g["params"])
    check_floats(shape, rec)
    return shape, rec


def parse_template_map(value: Any) -> ParsedTemplate:
    """Validate a decoded template map completely; raises `DecodeError` on anything wrong.

    The map has the keys of `_TEMPLATE_SCHEMA_V2` (version 2) or `_TEMPLATE_SCHEMA` (version 1)
    in that order, optionally followed by "columns" (and nothing else): templates written
    before names were recorded still decode.
    """
    columns: Any = None
    if type(value) is dict and COLUMNS_KEY in value:
        if next(reversed(value)) != COLUMNS_KEY:
            raise DecodeError("value", "template.columns must be the last key")
        columns = value[COLUMNS_KEY]
        value = {k: v for k, v in value.items() if k != COLUMNS_KEY}
    version = value.get("v") if type(value) is dict else None
    if type(version) is int and version not in TEMPLATE_FORMAT_VERSIONS:
        raise DecodeError("version", f"template format {version}")
    d = _fields(value, _TEMPLATE_SCHEMA if version == 1 else _TEMPLATE_SCHEMA_V2, "template")
    if d["v"] not in TEMPLATE_FORMAT_VERSIONS:
        raise DecodeError("version", f"template format {d['v']}")
    task = d["task"]
    if not 0 < len(task) <= MAX_TASK_CHARS:
        raise DecodeError("size", "template.task length")
    operator = d["operator"]
    if not 0 < len(operator) <= MAX_OPERATOR_CHARS:
        raise DecodeError("size", "template.operator length")
    shape, rec = _v1_net(d) if version == 1 else parse_net(d["net"])
    n_params = shape.n_params

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
        if not (c["features"] or c["target"] or c["classes"]):
            raise DecodeError("value", "template.columns is empty (leave the key out)")
        if shape.output == "values" and c["classes"]:
            raise DecodeError("value", "template.columns.classes on a 'values' template")
        why = check_names(
            c["features"], c["target"], c["classes"], shape.n_inputs, shape.layer_sizes[-1]
        )
        if why is not None:
            raise DecodeError("value", f"template.columns: {why}")
        names = (tuple(c["features"]), c["target"], tuple(c["classes"]))

    return ParsedTemplate(
        task=task,
        task_version=_nonneg_int(d["task_version"], "task_version"),
        net=shape,
        rec=rec,
        fitness=o["fitness"],
        latency_ns=latency,
        parents=tuple(parents),
        operator=operator,
        generation=_nonneg_int(d["generation"], "generation"),
        feature_names=names[0],
        target_name=names[1],
        class_names=names[2],
        format_version=d["v"],
    )


def parse_template_bytes(data: bytes) -> ParsedTemplate:
    """Strictly decode template bytes into a `ParsedTemplate` (no `Genome` is built).

    The byte walker `walk_template_bytes` accepts exactly the canonical encodings of valid
    version-2 templates in a few microseconds; whatever it does not accept goes through the
    generic decoder (`unpack` + `parse_template_map`), which gives the verdict and the error.
    """
    parsed = walk_template_bytes(data)
    if parsed is not None:
        return parsed
    return parse_template_map(unpack(data, max_size=MAX_TEMPLATE_BYTES))


# --- the byte walker ---------------------------------------------------------------------
# Synthesis from bytes is timed in microseconds, and the generic decoder (msgpack unpack, a
# re-encode to prove canonical form, then the map checks) costs ~15 us. A template's encoding is
# mostly constant: the keys, their order and the nesting never change, so the walker below
# compares those constant runs of bytes in one `startswith` each and decodes only the variable
# items (strings, integers, the float, the parents), each only in its one canonical (shortest)
# msgpack form. The `net` field's bin header and its net header are looked up together, by their
# exact bytes, in a bounded cache of ones validated before. The walker returns None, never
# raises, for anything else (version-1 templates included), so it can only be *narrower* than
# the generic decoder; the tests and the fuzz target `template-walk` check that on every valid
# template it gives the same result, and that it never accepts what the generic one rejects.


def _key(name: str) -> bytes:
    return pack(name)


_W_HEAD = {0x88: False, 0x89: True}  # map of 8 keys, or 9 with "columns"
_W_V = _key("v") + pack(TEMPLATE_FORMAT_VERSION) + _key("task")
_W_TASK_VERSION = _key("task_version")
_W_NET = _key("net")
_W_OBJECTIVES = _key("objectives") + b"\x84" + _key("fitness") + b"\xcb"
_W_PARENTS = _key("parents")
_W_OPERATOR = _key("operator")
_W_GENERATION = _key("generation")
_W_COLUMNS = _key(COLUMNS_KEY) + b"\x83" + _key("features")
_W_TARGET = _key("target")
_W_CLASSES = _key("classes")
_W_MAX_SHAPES = 4096
_F64 = struct.Struct(">d")
_ndarray = np.ndarray


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


_STR, _ARR = range(2)


def _w_len(data: bytes, pos: int, kind: int) -> tuple[int, int]:
    """Length of a str or array header (`kind` is _STR or _ARR) in its shortest form at
    `pos`: (length, pos of the payload). ValueError for anything else."""
    b = data[pos]
    if kind == _STR:
        if 0xA0 <= b <= 0xBF:
            return b - 0xA0, pos + 1
        if b == 0xD9 and data[pos + 1] > 31:
            return data[pos + 1], pos + 2
        if b == 0xDA:
            n = int.from_bytes(data[pos + 1 : pos + 3], "big")
            if n > 0xFF:
                return n, pos + 3
        elif b == 0xDB:
            n = int.from_bytes(data[pos + 1 : pos + 5], "big")
            if n > 0xFFFF:
                return n, pos + 5
        raise ValueError("not a canonical str header")
    if 0x90 <= b <= 0x9F:
        return b - 0x90, pos + 1
    if b == 0xDC:
        n = int.from_bytes(data[pos + 1 : pos + 3], "big")
        if n > 15:
            return n, pos + 3
    raise ValueError("not a canonical array header")


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


# Canonical (shortest-form) msgpack pieces as regular expressions over bytes, for the part of a
# template after its float values: one `fullmatch` in C checks every constant key, the
# objectives, the parents, the operator and the generation at once.
_RE_UINT = (
    rb"(?:[\x00-\x7f]|\xcc[\x80-\xff]|\xcd[\x01-\xff].|\xce(?:[\x01-\xff].|\x00[\x01-\xff]).."
    rb"|\xcf(?:[\x01-\xff]...|\x00[\x01-\xff]..|\x00\x00[\x01-\xff].|\x00\x00\x00[\x01-\xff])....)"
)
# An ASCII operator name of 1..64 bytes (others are left to the generic decoder).
_RE_OPERATOR = (
    b"("
    + b"|".join(
        re.escape(bytes([0xA0 + n]) if n < 32 else bytes([0xD9, n])) + b"[\x00-\x7f]{%d}" % n
        for n in range(1, MAX_OPERATOR_CHARS + 1)
    )
    + b")"
)
_PARENT_BYTES = 2 + PARENT_ID_BYTES


def _tail_pattern(objectives_tail: bytes) -> re.Pattern[bytes]:
    """Everything after the float values, for nets whose objectives' constant bytes (params,
    bytes, the latency key) are `objectives_tail`. Groups: fitness (8 bytes, finite: not an
    all-ones exponent), latency, parents' array header, the parents, operator, generation,
    and the rest (the "columns" entry, if any)."""
    return re.compile(
        re.escape(_W_OBJECTIVES)
        + rb"((?![\x7f\xff][\xf0-\xff]).{8})"
        + re.escape(objectives_tail)
        + b"(" + _RE_UINT + b")"
        + re.escape(_W_PARENTS)
        + rb"([\x90-\x98])((?:\xc4\x20.{32}){0,8})"
        + re.escape(_W_OPERATOR)
        + _RE_OPERATOR
        + re.escape(_W_GENERATION)
        + b"(" + _RE_UINT + b")"
        + b"(.*)",
        re.DOTALL,
    )  # fmt: skip


def _split_parents(parents: bytes) -> list[bytes]:
    """The items (bin header + id) of the parents matched by `_tail_pattern`."""
    return [parents[i : i + _PARENT_BYTES] for i in range(0, len(parents), _PARENT_BYTES)]


def _uint_value(item: bytes) -> int:
    """The value of a canonical msgpack unsigned integer matched by `_RE_UINT`."""
    return item[0] if item[0] < 0x80 else int.from_bytes(item[1:], "big")


class WalkedTemplate(NamedTuple):
    """A walked template: its net as a checked float region `rec` (as `ParsedTemplate.rec`);
    the items after the floats are still the groups of `tail` (see `_tail_pattern`), decoded
    only by the callers that want them. `mean` and `scale` are checked, read-only, and shared
    by every template walked with the same bytes before its parameters."""

    task: str
    task_version: int
    net: NetShape
    rec: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    tail: re.Match[bytes]
    names: tuple[tuple[str, ...], str, tuple[str, ...]]


def walk_template_bytes(data: bytes) -> ParsedTemplate | None:
    """The template these bytes canonically encode, or None: decode with the generic decoder."""
    w = walk_template_layout(data)
    if w is None:
        return None
    fitness, latency, _, parents, operator, generation = w.tail.group(1, 2, 3, 4, 5, 6)
    return ParsedTemplate(
        w.task,
        w.task_version,
        w.net,
        w.rec,
        _F64.unpack(fitness)[0],
        _uint_value(latency),
        tuple(parents[i + 2 : i + _PARENT_BYTES] for i in range(0, len(parents), _PARENT_BYTES)),
        operator[1 if operator[0] != 0xD9 else 2 :].decode("ascii"),
        _uint_value(generation),
        *w.names,
        TEMPLATE_FORMAT_VERSION,
    )


def walk_template_layout(data: bytes) -> WalkedTemplate | None:
    """Validate canonical version-2 template bytes and view their float region, or None.

    Everything is checked (the parameters finite, with `netformat.params_finite`); only the
    items after the floats are left undecoded, in `tail`. The float region is copied once, so
    that it is aligned, and read through the shape's structured dtype: every layer is a view."""
    try:
        if type(data) is not bytes or len(data) > MAX_TEMPLATE_BYTES:
            return None
        i = data.find(_W_NET, len(_W_V) + 1)
        at = i + 6 if data[i + 4] == 0xC4 else i + 7
        end = at + ((8 + 3 * data[at + 1]) & ~3)  # netformat.header_size, inlined
        prefix = data[:end]
        hit = _W_PREFIX_CACHE.get(prefix) or _w_prefix(prefix)
        if hit is None:
            return None
        has_columns, task, task_version, shape, pattern, std = hit
        if std is _NO_STANDARDISATION or not data.startswith(std[0], end):  # a new one
            checked = _w_standardisation(data, end, shape.n_inputs)
            if checked is None:
                return None
            std = checked
            _W_PREFIX_CACHE[prefix] = (has_columns, task, task_version, shape, pattern, std)
        mean, scale = std[1], std[2]
        m = pattern.fullmatch(data, at + shape.size)
        if m is None:
            return None
        n_parents, parents, rest = m.group(3, 4, 7)
        n = n_parents[0] - 0x90
        if len(parents) != _PARENT_BYTES * n:
            return None
        if n > 1 and (
            parents[:_PARENT_BYTES] == parents[_PARENT_BYTES:]
            if n == 2
            else len(set(_split_parents(parents))) != n
        ):
            return None  # duplicate parents
        names: tuple[tuple[str, ...], str, tuple[str, ...]] = ((), "", ())
        if has_columns:
            names = _w_columns(rest, shape)
        elif rest:
            return None
        rec = _ndarray((), shape.dtype, data[end : end + shape.float_bytes])
        if not params_finite(shape, rec["params"]):
            return None
        return tuple.__new__(
            WalkedTemplate, (task, task_version, shape, rec, mean, scale, m, names)
        )
    except (ValueError, IndexError, TypeError, KeyError, struct.error):  # + UnicodeDecodeError
        return None


# The bytes from the `net` field's bin marker to the end of its net header -> the shape they
# encode and the pattern of what follows the float values (`_tail_pattern`). Keyed by the bytes
# themselves, so a hit proves an identical, already validated encoding.
_W_NET_CACHE: dict[bytes, tuple[NetShape, re.Pattern[bytes]]] = {}


def _w_net(key: bytes) -> tuple[NetShape, re.Pattern[bytes]] | None:
    """First sight of a `net` field's bin header and net header: validate both strictly."""
    if key[0] == 0xC4:
        at, length = 2, key[1]
    elif key[0] == 0xC5:
        at, length = 3, int.from_bytes(key[1:3], "big")
        if length <= 0xFF:
            return None  # not the shortest bin header
    else:
        return None
    try:
        shape = parse_header(key[at:])
    except DecodeError:
        return None
    if length != shape.size:
        return None
    n = shape.n_params
    tail = _key("params") + pack(n) + _key("bytes") + pack(4 * n) + _key("latency_ns")
    if len(_W_NET_CACHE) >= _W_MAX_SHAPES:
        _W_NET_CACHE.clear()
    found = _W_NET_CACHE[key] = (shape, _tail_pattern(tail))
    return found


# Every template of one task and net shape begins with the same bytes up to its float values
# (map header, version, task, task version, the `net` field's headers): those bytes -> what they
# encode, after one full walk. A hit is an exact match of a prefix that was walked completely
# and ended exactly there, so it is correct however the end was found. The entry also holds the
# standardisation last seen after it (every template of a task carries the task's): its bytes
# and its checked arrays, so the next template with the same bytes there skips the checks.
_Standardisation = tuple[bytes, np.ndarray, np.ndarray]
_Prefix = tuple[bool, str, int, NetShape, re.Pattern[bytes], _Standardisation]
_W_PREFIX_CACHE: dict[bytes, _Prefix] = {}
_W_MAX_PREFIXES = 1024  # of at most ~2 KB each (a task name of 512 characters)
_NO_STANDARDISATION: _Standardisation = (b"", np.empty(0, np.float32), np.empty(0, np.float32))


def _w_prefix(data: bytes) -> _Prefix | None:
    """Walk a template's bytes up to its float values (`data` ends there), strictly."""
    has_columns = _W_HEAD[data[0]]
    if not data.startswith(_W_V, 1):
        return None
    task, pos = _w_str(data, 1 + len(_W_V))
    if not 0 < len(task) <= MAX_TASK_CHARS or not data.startswith(_W_TASK_VERSION, pos):
        return None
    task_version, pos = _w_uint(data, pos + len(_W_TASK_VERSION))
    if not data.startswith(_W_NET, pos):
        return None
    pos += len(_W_NET)
    found = _W_NET_CACHE.get(data[pos:]) or _w_net(data[pos:])
    if found is None:
        return None
    shape, pattern = found
    if len(_W_PREFIX_CACHE) >= _W_MAX_PREFIXES:
        _W_PREFIX_CACHE.clear()
    hit = _W_PREFIX_CACHE[data] = (
        has_columns,
        task,
        task_version,
        shape,
        pattern,
        _NO_STANDARDISATION,
    )
    return hit


def _w_standardisation(data: bytes, at: int, n: int) -> _Standardisation | None:
    """The mean and scale at `at` (n float32 each) as aligned read-only arrays, if they are
    finite and no scale is zero, with their bytes; None otherwise."""
    raw = data[at : at + 8 * n]
    if len(raw) != 8 * n:
        return None
    mean = np.frombuffer(raw[: 4 * n], np.dtype("<f4"))  # slices of bytes: aligned copies
    scale = np.frombuffer(raw[4 * n :], np.dtype("<f4"))
    if not standardisation_ok(mean, scale):
        return None
    return raw, mean, scale


def _w_columns(data: bytes, shape: NetShape) -> tuple[tuple[str, ...], str, tuple[str, ...]]:
    """The "columns" entry that ends a template; ValueError if it is not a valid one."""
    if not data.startswith(_W_COLUMNS):
        raise ValueError("not a columns entry")
    features, pos = _w_strs(data, len(_W_COLUMNS))
    if not data.startswith(_W_TARGET, pos):
        raise ValueError("not a columns entry")
    target, pos = _w_str(data, pos + len(_W_TARGET))
    if not data.startswith(_W_CLASSES, pos):
        raise ValueError("not a columns entry")
    classes, pos = _w_strs(data, pos + len(_W_CLASSES))
    if pos != len(data) or not (features or target or classes):
        raise ValueError("not a columns entry")
    if shape.output == "values" and classes:
        raise ValueError("classes of a 'values' net")
    n_out = shape.layer_sizes[-1]
    if check_names(features, target, classes, shape.n_inputs, n_out) is not None:
        raise ValueError("column names")
    return tuple(features), target, tuple(classes)


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
