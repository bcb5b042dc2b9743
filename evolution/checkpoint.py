"""Checkpoint/resume of an `Evolution` run in our own format (canonical msgpack, no pickle).

One file holds everything the future of a run depends on, so that `load_checkpoint` followed by
`step()`s produces exactly the same populations and fitness bits as a run that never stopped:

```
{"v": 1, "format": "qudag-evolution-checkpoint",
 "task": str, "task_version": int, "task_digest": bytes32 (Task.digest),
 "config": EvolutionConfig.to_dict(),
 "seed": int, "generation": int, "evaluations": int, "gradient_steps": int,
 "solved_at": int (-1 = not solved),
 "rng": {"state": bytes16 big-endian, "inc": bytes16, "has_uint32": int, "uinteger": int},
 "population": [individual, ...], "hall_of_fame": [individual, ...],
 "logbook": [[value per LOGBOOK_FIELDS], ...]}
individual = {"genome": Genome.to_dict(), "sigma": float, "objectives": [float, float, float],
              "parents": [bytes32, ...], "operator": str, "born": int}
```

The numpy generator is PCG64; its 128-bit state words are stored as 16 big-endian bytes
(msgpack integers stop at 64 bits). Python's `random` state is not stored because it carries no
information: `Evolution.step()` re-seeds it from the numpy generator every generation (see
engine.py). Floats are msgpack float64, which round-trips Python floats exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qudag.crypto.canonical import DecodeError, fields, pack, unpack
from qudag.crypto.files import write_file_atomic
from qudag.evolution.engine import LOGBOOK_FIELDS, Evolution, EvolutionConfig
from qudag.evolution.genome import Genome
from qudag.evolution.tasks import TaskError, get_task
from qudag.evolution.toolbox import Individual

CHECKPOINT_FORMAT = "qudag-evolution-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.qcp"
MAX_CHECKPOINT_BYTES = 512 * 2**20


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the task it names."""


def _u128(value: int) -> bytes:
    return int(value).to_bytes(16, "big")


def _individual_to_dict(ind: Individual) -> dict[str, Any]:
    return {
        "genome": ind.genome.to_dict(),
        "sigma": float(ind.sigma),
        "objectives": [float(v) for v in ind.fitness.values],
        "parents": [bytes(p) for p in ind.parents],
        "operator": ind.operator,
        "born": int(ind.born),
    }


def _individual_from_dict(value: Any, evo: Evolution) -> Individual:
    d = fields(
        value,
        {
            "genome": dict,
            "sigma": float,
            "objectives": list,
            "parents": list,
            "operator": str,
            "born": int,
        },
        "individual",
    )
    genome = Genome.from_dict(d["genome"], evo.limits)
    objectives = d["objectives"]
    if len(objectives) != 3 or not all(isinstance(v, float) for v in objectives):
        raise DecodeError("type", "individual.objectives must be three floats")
    if not all(isinstance(p, bytes) and len(p) == 32 for p in d["parents"]):
        raise DecodeError("type", "individual.parents must be 32-byte ids")
    ind = Individual(genome, d["sigma"], tuple(d["parents"]), d["operator"], d["born"])
    ind.fitness.values = tuple(objectives)
    return ind


def to_dict(evo: Evolution) -> dict[str, Any]:
    """The canonical checkpoint map of a run (see module doc)."""
    st = evo.rng.bit_generator.state
    if st["bit_generator"] != "PCG64":
        raise CheckpointError(f"unsupported bit generator {st['bit_generator']}")
    return {
        "v": CHECKPOINT_VERSION,
        "format": CHECKPOINT_FORMAT,
        "task": evo.task.name,
        "task_version": evo.task.version,
        "task_digest": evo.task.digest,
        "config": evo.config.to_dict(),
        "seed": evo.seed,
        "generation": evo.generation,
        "evaluations": evo.evaluations,
        "gradient_steps": evo.gradient_steps,
        "solved_at": -1 if evo.solved_at is None else evo.solved_at,
        "rng": {
            "state": _u128(st["state"]["state"]),
            "inc": _u128(st["state"]["inc"]),
            "has_uint32": int(st["has_uint32"]),
            "uinteger": int(st["uinteger"]),
        },
        "population": [_individual_to_dict(i) for i in evo.population],
        "hall_of_fame": [_individual_to_dict(i) for i in evo.hall_of_fame],
        "logbook": [[row[k] for k in LOGBOOK_FIELDS] for row in evo.logbook],
    }


def to_bytes(evo: Evolution) -> bytes:
    return pack(to_dict(evo))


def from_bytes(data: bytes) -> Evolution:
    """Rebuild a run from checkpoint bytes; raises `CheckpointError` on any problem."""
    try:
        return _from_value(unpack(data, max_size=MAX_CHECKPOINT_BYTES))
    except DecodeError as exc:
        raise CheckpointError(f"not a valid checkpoint ({exc})") from None


def _from_value(value: Any) -> Evolution:
    d = fields(
        value,
        {
            "v": int,
            "format": str,
            "task": str,
            "task_version": int,
            "task_digest": bytes,
            "config": dict,
            "seed": int,
            "generation": int,
            "evaluations": int,
            "gradient_steps": int,
            "solved_at": int,
            "rng": dict,
            "population": list,
            "hall_of_fame": list,
            "logbook": list,
        },
        "checkpoint",
    )
    if d["format"] != CHECKPOINT_FORMAT or d["v"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"unsupported checkpoint {d['format']!r} v{d['v']}")
    try:
        task = get_task(d["task"])
    except TaskError as exc:
        raise CheckpointError(f"checkpoint task: {exc}") from None
    if task.version != d["task_version"]:
        raise CheckpointError(
            f"checkpoint is for {task.name} v{d['task_version']}, this build has v{task.version}"
        )
    if task.digest != d["task_digest"]:
        raise CheckpointError(
            f"the data of task {task.name} differ from the data this checkpoint was made on"
        )
    try:
        config = EvolutionConfig.from_dict(d["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint config: {exc}") from None
    evo = Evolution(task, config, d["seed"], _restore=d)
    rng = fields(
        d["rng"], {"state": bytes, "inc": bytes, "has_uint32": int, "uinteger": int}, "rng"
    )
    if len(rng["state"]) != 16 or len(rng["inc"]) != 16:
        raise DecodeError("size", "rng state words must be 16 bytes")
    evo.rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {
            "state": int.from_bytes(rng["state"], "big"),
            "inc": int.from_bytes(rng["inc"], "big"),
        },
        "has_uint32": rng["has_uint32"],
        "uinteger": rng["uinteger"],
    }
    evo.generation = d["generation"]
    evo.evaluations = d["evaluations"]
    evo.gradient_steps = d["gradient_steps"]
    evo.solved_at = None if d["solved_at"] < 0 else d["solved_at"]
    evo.population = [_individual_from_dict(v, evo) for v in d["population"]]
    evo.hall_of_fame = [_individual_from_dict(v, evo) for v in d["hall_of_fame"]]
    if not evo.population or not evo.hall_of_fame:
        raise DecodeError("value", "empty population or hall of fame")
    for row in d["logbook"]:
        if not isinstance(row, list) or len(row) != len(LOGBOOK_FIELDS):
            raise DecodeError("type", "logbook rows must be lists of the logbook fields")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in row):
            raise DecodeError("type", "logbook values must be numbers")
        evo.logbook.append(dict(zip(LOGBOOK_FIELDS, row, strict=True)))
    return evo


def save_checkpoint(evo: Evolution, path: str | os.PathLike[str]) -> Path:
    """Write the checkpoint atomically; a directory path gets `CHECKPOINT_FILE` inside it."""
    target = Path(path)
    if target.is_dir():
        target = target / CHECKPOINT_FILE
    try:
        write_file_atomic(target, to_bytes(evo))
    except OSError as exc:
        raise CheckpointError(f"{target}: cannot write checkpoint: {exc.strerror or exc}") from None
    return target


def load_checkpoint(path: str | os.PathLike[str]) -> Evolution:
    """Resume a run from a checkpoint file (or a directory holding `CHECKPOINT_FILE`)."""
    target = Path(path)
    if target.is_dir():
        target = target / CHECKPOINT_FILE
    try:
        with open(target, "rb") as fh:
            data = fh.read(MAX_CHECKPOINT_BYTES + 1)
    except FileNotFoundError:
        raise CheckpointError(f"{target}: no checkpoint there") from None
    except OSError as exc:
        raise CheckpointError(f"{target}: cannot read checkpoint: {exc.strerror or exc}") from None
    return from_bytes(data)
