"""A published task: what a `task` ledger vertex says, decoded strictly.

Why a task is a ledger object: a `csv:PATH` task works only where every peer has the same file
at the same path. A published task names its data by content address (BLAKE3 of the bytes,
plus a BLAKE3 per chunk so a peer can fetch it piece by piece from anyone and check every
piece), and fixes everything that shapes fitness (target, features, split seed and fractions,
fitness definition, genome limits). Its id is the id of the vertex that carries it, so a
template naming `task:<id hex>` names exactly one data set and one way of scoring on it.

Why it lives in `evolution`: like a template, a task is data that evolution knows; the ledger
checks only the field it indexes and the node plugs `TaskSpec.from_dict` in as the payload
decoder (`dag.payloads`), the pattern templates follow. The byte format is specified in
docs/vertex-format.md ("task").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import blake3

from qudag.crypto.canonical import DecodeError, fields, pack, unpack
from qudag.evolution.genome import DEFAULT_LIMITS, GenomeLimits

SPEC_VERSION = 1
TASK_PREFIX = "task:"  # a published task's name: "task:" + its vertex id in lowercase hex
TASK_ID_HEX = 64
CHUNK_SIZE = 256 * 1024  # bytes of data per chunk (the last chunk may be shorter)
MAX_DATA_BYTES = 64 * 2**20  # = tasks.CSV_MAX_BYTES; an announcement of more is refused
MAX_CHUNKS = MAX_DATA_BYTES // CHUNK_SIZE
HASH_SIZE = 32
MAX_NAME = 64  # code points of a task name, a column name
MAX_DESCRIPTION = 2048
MAX_LICENCE = 64
MAX_FEATURES = 1024  # = GenomeLimits.max_inputs
FORMATS = ("csv",)
SEPARATORS = (",", ";", "\t", "|")
FEATURE_TYPES = ("float",)
# The fitness kind and its metric go together (evolution/tasks.py, module doc): accuracy
# (with the cross-entropy tie-break) for classification, R^2 for regression.
METRICS = {"classification": "accuracy", "regression": "r2"}
DEFAULT_SPLIT = (60, 20, 20)  # train, val, test in percent (= tasks.py's csv split)
MAX_PAYLOAD_BYTES = 64 * 1024

_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "v": int,
    "name": str,
    "description": str,
    "licence": str,
    "data": dict,
    "target": str,
    "features": list,
    "split": dict,
    "fitness": dict,
    "limits": dict,
}
_DATA_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "sep": str,
    "header": bool,
    "size": int,
    "blake3": bytes,
    "chunk_size": int,
    "chunks": list,
}
_SPLIT_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "seed": int,
    "train": int,
    "val": int,
    "test": int,
}
_FITNESS_SCHEMA: dict[str, type | tuple[type, ...]] = {"kind": str, "metric": str}
# The optional last key: the author's private held-out rows, by commitment only (the rows
# never leave the author's node; the author is the task's designated verifier, issue 17).
PRIVATE_KEY = "private_holdout"
_PRIVATE_SCHEMA: dict[str, type | tuple[type, ...]] = {"blake3": bytes, "rows": int}
MAX_PRIVATE_ROWS = 2**20  # = dag.payloads.MAX_HOLDOUT_N, the largest `n` an attestation carries
_LIMITS_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "max_layers": int,
    "max_width": int,
    "max_params": int,
}


def chunk_hashes(data: bytes, chunk_size: int = CHUNK_SIZE) -> tuple[bytes, ...]:
    """BLAKE3-256 of each `chunk_size` piece of `data`, in order (the last may be shorter)."""
    return tuple(
        blake3.blake3(data[i : i + chunk_size]).digest() for i in range(0, len(data), chunk_size)
    )


def n_chunks(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    return math.ceil(size / chunk_size)


@dataclass(frozen=True)
class DataRef:
    """The task's data by content address: whole-file BLAKE3 and one BLAKE3 per chunk."""

    format: str
    sep: str
    header: bool
    size: int
    blake3: bytes
    chunk_size: int
    chunks: tuple[bytes, ...]

    @property
    def hex(self) -> str:
        return self.blake3.hex()

    def chunk_range(self, index: int) -> tuple[int, int]:
        """(start, end) byte offsets of chunk `index`."""
        start = index * self.chunk_size
        return start, min(self.size, start + self.chunk_size)


def chunk_ok(ref: DataRef, index: int, data: bytes) -> bool:
    """Whether `data` is chunk `index` of `ref`: the right length and the listed BLAKE3."""
    if not 0 <= index < len(ref.chunks):
        return False
    start, end = ref.chunk_range(index)
    return len(data) == end - start and blake3.blake3(data).digest() == ref.chunks[index]


@dataclass(frozen=True)
class PrivateHoldout:
    """A commitment to the author's private held-out rows: BLAKE3 of the csv file (in the
    task's format) and its number of data rows, so a later reveal can be audited."""

    blake3: bytes
    rows: int


@dataclass(frozen=True)
class TaskSpec:
    """A `task` vertex's payload. Build with `TaskSpec.from_dict` (strict) or `make_spec`."""

    name: str
    description: str
    licence: str
    data: DataRef
    target: str
    features: tuple[tuple[str, str], ...]  # (column name, type) in input order
    split_seed: int
    split: tuple[int, int, int]  # train, val, test in percent, sum 100
    kind: str  # "classification" | "regression"
    metric: str
    limits: GenomeLimits
    private: PrivateHoldout | None = None

    def to_dict(self) -> dict[str, Any]:
        d = self.data
        out = {
            "v": SPEC_VERSION,
            "name": self.name,
            "description": self.description,
            "licence": self.licence,
            "data": {
                "format": d.format,
                "sep": d.sep,
                "header": d.header,
                "size": d.size,
                "blake3": d.blake3,
                "chunk_size": d.chunk_size,
                "chunks": list(d.chunks),
            },
            "target": self.target,
            "features": [[name, kind] for name, kind in self.features],
            "split": {
                "seed": self.split_seed,
                "train": self.split[0],
                "val": self.split[1],
                "test": self.split[2],
            },
            "fitness": {"kind": self.kind, "metric": self.metric},
            "limits": {
                "max_layers": self.limits.max_layers,
                "max_width": self.limits.max_width,
                "max_params": self.limits.max_params,
            },
        }
        if self.private is not None:
            out[PRIVATE_KEY] = {"blake3": self.private.blake3, "rows": self.private.rows}
        return out

    def to_bytes(self) -> bytes:
        return pack(self.to_dict())

    @classmethod
    def from_bytes(cls, raw: bytes) -> TaskSpec:
        return cls.from_dict(unpack(raw, MAX_PAYLOAD_BYTES))

    @classmethod
    def from_dict(cls, value: Any) -> TaskSpec:
        """Decode a payload; raise `DecodeError` for anything not exactly the format."""
        schema = (
            _SCHEMA | {PRIVATE_KEY: dict}
            if isinstance(value, dict) and PRIVATE_KEY in value
            else _SCHEMA
        )
        v = fields(value, schema, "task")
        if v["v"] != SPEC_VERSION:
            raise DecodeError("bad-version", f"task.v must be {SPEC_VERSION}")
        name = _text(v["name"], 1, MAX_NAME, "task.name")
        description = _text(v["description"], 0, MAX_DESCRIPTION, "task.description")
        licence = _text(v["licence"], 0, MAX_LICENCE, "task.licence")
        data = _data(v["data"])
        target = _text(v["target"], 1, MAX_NAME, "task.target")
        features = _features(v["features"])
        if target in {n for n, _ in features}:
            raise DecodeError("bad-payload", "task.target is also a feature")
        s = fields(v["split"], _SPLIT_SCHEMA, "task.split")
        if not 0 <= s["seed"] <= 2**32 - 1:
            raise DecodeError("range", "task.split.seed")
        split = (s["train"], s["val"], s["test"])
        if any(p < 1 for p in split) or sum(split) != 100:
            raise DecodeError("range", "task.split: train, val, test >= 1 percent, sum 100")
        f = fields(v["fitness"], _FITNESS_SCHEMA, "task.fitness")
        if METRICS.get(f["kind"]) != f["metric"]:
            raise DecodeError("bad-payload", "task.fitness: classification/accuracy|regression/r2")
        lim = fields(v["limits"], _LIMITS_SCHEMA, "task.limits")
        for key in _LIMITS_SCHEMA:
            if not 1 <= lim[key] <= getattr(DEFAULT_LIMITS, key):
                raise DecodeError("range", f"task.limits.{key}: 1..{getattr(DEFAULT_LIMITS, key)}")
        limits = GenomeLimits(
            max_layers=lim["max_layers"],
            max_width=lim["max_width"],
            max_inputs=DEFAULT_LIMITS.max_inputs,
            max_params=lim["max_params"],
        )
        private = _private(v[PRIVATE_KEY]) if PRIVATE_KEY in v else None
        return cls(
            name, description, licence, data, target, features, s["seed"], split,
            f["kind"], f["metric"], limits, private,
        )  # fmt: skip


def _text(value: str, low: int, high: int, what: str) -> str:
    if not low <= len(value) <= high:
        raise DecodeError("range", f"{what}: {low}..{high} characters")
    if any(ord(c) < 32 and c not in "\t\n" for c in value):
        raise DecodeError("bad-payload", f"{what}: control characters")
    return value


def _data(value: Any) -> DataRef:
    d = fields(value, _DATA_SCHEMA, "task.data")
    if d["format"] not in FORMATS:
        raise DecodeError("bad-payload", f"task.data.format: one of {', '.join(FORMATS)}")
    if d["sep"] not in SEPARATORS:
        raise DecodeError("bad-payload", "task.data.sep")
    if not 1 <= d["size"] <= MAX_DATA_BYTES:
        raise DecodeError("oversize", f"task.data.size: 1..{MAX_DATA_BYTES} bytes")
    if len(d["blake3"]) != HASH_SIZE:
        raise DecodeError("type", "task.data.blake3 is 32 bytes")
    if d["chunk_size"] != CHUNK_SIZE:
        raise DecodeError("range", f"task.data.chunk_size must be {CHUNK_SIZE}")
    chunks = d["chunks"]
    if len(chunks) != n_chunks(d["size"]):
        raise DecodeError("range", "task.data.chunks: one hash per chunk")
    if not all(isinstance(c, bytes) and len(c) == HASH_SIZE for c in chunks):
        raise DecodeError("type", "task.data.chunks are 32-byte hashes")
    return DataRef(
        d["format"], d["sep"], d["header"], d["size"], d["blake3"], d["chunk_size"], tuple(chunks)
    )


def _private(value: Any) -> PrivateHoldout:
    p = fields(value, _PRIVATE_SCHEMA, "task.private_holdout")
    if len(p["blake3"]) != HASH_SIZE:
        raise DecodeError("type", "task.private_holdout.blake3 is 32 bytes")
    if not 1 <= p["rows"] <= MAX_PRIVATE_ROWS:
        raise DecodeError("range", f"task.private_holdout.rows: 1..{MAX_PRIVATE_ROWS}")
    return PrivateHoldout(p["blake3"], p["rows"])


def _features(items: list[Any]) -> tuple[tuple[str, str], ...]:
    if not 1 <= len(items) <= MAX_FEATURES:
        raise DecodeError("range", f"task.features: 1..{MAX_FEATURES}")
    out = []
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, str) for x in item)
        ):
            raise DecodeError("type", "task.features: [name, type] pairs")
        name = _text(item[0], 1, MAX_NAME, "task.features name")
        if item[1] not in FEATURE_TYPES:
            raise DecodeError("bad-payload", f"task.features type: one of {FEATURE_TYPES}")
        out.append((name, item[1]))
    if len({n for n, _ in out}) != len(out):
        raise DecodeError("bad-payload", "task.features: duplicate names")
    return tuple(out)


def task_name(task_id: bytes) -> str:
    """The name templates carry for the task published as vertex `task_id`."""
    return TASK_PREFIX + task_id.hex()


def task_id_of(name: str) -> bytes | None:
    """The vertex id in a published task's name, or None if `name` is not one."""
    if not name.startswith(TASK_PREFIX):
        return None
    hexpart = name[len(TASK_PREFIX) :]
    if len(hexpart) != TASK_ID_HEX or hexpart != hexpart.lower():
        return None
    try:
        return bytes.fromhex(hexpart)
    except ValueError:
        return None
