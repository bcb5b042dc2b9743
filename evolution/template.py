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
Sizes are checked from the declared layer widths before any array is built.
"""

from __future__ import annotations

import math
import os
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
    """Strictly decode template bytes into a `ParsedTemplate` (no `Genome` is built)."""
    return parse_template_map(unpack(data, max_size=MAX_TEMPLATE_BYTES))


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
