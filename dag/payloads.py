"""Vertex kinds and the structural rules for their payloads.

Kinds are few on purpose: `identity` (an author publishes its ML-DSA-65 public key once, as its
seq-0 vertex), `template` (a signed template: evolution's `Template.to_dict()`),
`attestation` (a verifier's re-measured fitness and verdict for one template vertex), and
`task` (a published task: its data by content address and how fitness is defined on it,
evolution's `TaskSpec.to_dict()`; the task id is the vertex id). Heads gossip is a network
message, not a ledger entry, so it is not a kind.

`dag` must not import `evolution` (dependency direction crypto <- dag <- node): template
payloads are checked here only for the fields the ledger indexes, and the node passes
evolution's strict `Template.from_dict` as a payload decoder (`Store.open(decoders=...)`) so
that a template the evolution engine would refuse never enters its ledger. Decoders are a
parameter, not process state, so that two stores in one process (the simulator's peers, a
test's) each get exactly the checks they were opened with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from qudag.crypto.canonical import DecodeError, fields
from qudag.crypto.signing import PUBLIC_KEY_SIZE, Identity, key_id
from qudag.dag.errors import VertexError

ID_SIZE = 32  # vertex ids and author key ids
MAX_PARENTS = 8  # causal parents of a vertex, and genetic parents of a template
MAX_TASK_LEN = 512  # = evolution.template.MAX_TASK_CHARS (csv:PATH specs can be long)

KIND_IDENTITY = "identity"
KIND_TEMPLATE = "template"
KIND_ATTESTATION = "attestation"
KIND_TASK = "task"
KINDS = (KIND_IDENTITY, KIND_TEMPLATE, KIND_ATTESTATION, KIND_TASK)

VERDICT_VALID = "valid"
VERDICT_INVALID = "invalid"
VERDICTS = (VERDICT_VALID, VERDICT_INVALID)

PayloadDecoder = Callable[[Any], object]
"""A strict decoder for one kind's payload: raises `DecodeError` for anything it refuses (its
`reason` is passed through); any other exception counts as a refusal ("bad-payload"), so hostile
bytes never crash the caller; its return value is ignored."""
PayloadDecoders = Mapping[str, PayloadDecoder]
NO_DECODERS: PayloadDecoders = MappingProxyType({})  # dag's own checks only

_IDENTITY_SCHEMA: dict[str, type | tuple[type, ...]] = {"public_key": bytes}
_ATTESTATION_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "template": bytes,
    "fitness": float,
    "verdict": str,
}
# The optional last key of an attestation: the verifier's held-out measurement (issue 17,
# evolution/holdout.py). `beacon`: the vertex ids whose hash with the template id fixes the
# held-out draw, each also a parent of the attestation (so they were stored before it was
# signed); `n`: samples or episodes measured; `fitness`: the score; `stderr`: the standard error
# of (claim - score) that the overfit test compares against.
HOLDOUT_KEY = "holdout"
_HOLDOUT_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "beacon": list,
    "n": int,
    "fitness": float,
    "stderr": float,
}
MAX_BEACON = MAX_PARENTS - 2  # the template and the verifier's own previous vertex take two
MAX_HOLDOUT_N = 2**20
# The optional key after it: the score of the task's designated verifier (the author of the
# template's published task) on the task's private held-out rows, which nobody else holds
# (issue 17): `n` rows, `fitness` the task's fitness on them. The ledger checks its form; who
# may carry it is the node's rule (an attestation by anyone else is valid, its score ignored).
DESIGNATED_KEY = "designated"
_DESIGNATED_SCHEMA: dict[str, type | tuple[type, ...]] = {"n": int, "fitness": float}


def payload_decoders(decoders: Mapping[str, PayloadDecoder]) -> PayloadDecoders:
    """Check `decoders` (kind -> decoder) once and freeze it: a typo in a kind would otherwise
    silently skip the check it was meant to add."""
    for kind in decoders:
        if kind not in KINDS:
            raise ValueError(f"unknown vertex kind {kind!r}")
    return MappingProxyType(dict(decoders))


def identity_payload(identity: Identity) -> dict[str, Any]:
    return {"public_key": identity.public_key}


def attestation_payload(
    template_id: bytes,
    fitness: float,
    verdict: str,
    holdout: tuple[tuple[bytes, ...], int, float, float] | None = None,
    designated: tuple[int, float] | None = None,
) -> dict[str, Any]:
    """The payload of an attestation: re-measured `fitness` and a verdict on `template_id`,
    and optionally the held-out measurement (beacon ids, n, fitness, stderr) and the
    designated score on the task's private rows (n, fitness).

    The attestation vertex must also list `template_id` and every beacon id among its causal
    parents.
    """
    payload: dict[str, Any] = {
        "template": template_id,
        "fitness": float(fitness),
        "verdict": verdict,
    }
    if holdout is not None:
        beacon, n, score, stderr = holdout
        payload[HOLDOUT_KEY] = {
            "beacon": sorted(beacon),
            "n": n,
            "fitness": float(score),
            "stderr": float(stderr),
        }
    if designated is not None:
        rows, fitness_private = designated
        payload[DESIGNATED_KEY] = {"n": rows, "fitness": float(fitness_private)}
    return payload


def attestation_holdout(payload: dict[str, Any]) -> tuple[tuple[bytes, ...], int, float, float]:
    """(beacon, n, fitness, stderr) of a checked attestation payload's held-out measurement,
    or raise `KeyError` when it has none (attestations before issue 17 have none)."""
    h = payload[HOLDOUT_KEY]
    return tuple(h["beacon"]), h["n"], h["fitness"], h["stderr"]


def attestation_designated(payload: dict[str, Any]) -> tuple[int, float]:
    """(n, fitness) of a checked attestation payload's designated score, or raise `KeyError`
    when it has none."""
    d = payload[DESIGNATED_KEY]
    return d["n"], d["fitness"]


def template_index(payload: dict[str, Any]) -> tuple[str, int, float, tuple[bytes, ...]]:
    """(task, task_version, claimed fitness, genetic parents) of a checked template payload."""
    return (
        payload["task"],
        payload["task_version"],
        payload["objectives"]["fitness"],
        tuple(payload["parents"]),
    )


def check_payload(
    kind: str,
    payload: dict[str, Any],
    author: bytes,
    parents: tuple[bytes, ...],
    *,
    decoders: PayloadDecoders = NO_DECODERS,
) -> None:
    """Check the payload of a vertex of `kind`, then run `decoders[kind]` on it if there is
    one; raise `VertexError` if it is refused."""
    if kind == KIND_IDENTITY:
        fields(payload, _IDENTITY_SCHEMA, "identity")
        public_key = payload["public_key"]
        if len(public_key) != PUBLIC_KEY_SIZE:
            raise VertexError("bad-payload", "identity public key size")
        if key_id(public_key) != author:
            raise VertexError("author-mismatch", "author is not BLAKE3(public_key)")
    elif kind == KIND_TEMPLATE:
        _check_template(payload)
    elif kind == KIND_TASK:
        task_data_hash(payload)
    elif kind == KIND_ATTESTATION:
        schema = dict(_ATTESTATION_SCHEMA)
        for key in (HOLDOUT_KEY, DESIGNATED_KEY):
            if key in payload:
                schema[key] = dict
        fields(payload, schema, "attestation")
        if HOLDOUT_KEY in payload:
            _check_holdout(payload[HOLDOUT_KEY], parents)
        if DESIGNATED_KEY in payload:
            _check_designated(payload[DESIGNATED_KEY])
        target = payload["template"]
        if len(target) != ID_SIZE:
            raise VertexError("type", "attestation.template is a 32-byte vertex id")
        if not math.isfinite(payload["fitness"]):
            raise VertexError("bad-payload", "attestation fitness is not finite")
        if payload["verdict"] not in VERDICTS:
            raise VertexError("bad-payload", "attestation verdict")
        if target not in parents:
            raise VertexError("bad-attestation", "the attested template must be a parent")
    decoder = decoders.get(kind)
    if decoder is not None:
        try:
            decoder(payload)
        except VertexError:
            raise
        except DecodeError as exc:
            raise VertexError(exc.reason, f"{kind} payload: {exc}") from None
        except Exception as exc:  # a plug-in decoder's bug or strictness: refuse, never crash
            raise VertexError("bad-payload", f"{kind} payload: {type(exc).__name__}") from None


def _check_holdout(value: dict[str, Any], parents: tuple[bytes, ...]) -> None:
    """An attestation's `holdout`: closed, typed, finite, its beacon sorted, distinct ids that
    are parents of the attestation (so anyone holding it can recompute the draw)."""
    fields(value, _HOLDOUT_SCHEMA, "attestation.holdout")
    beacon = value["beacon"]
    if len(beacon) > MAX_BEACON:
        raise VertexError("bad-payload", f"attestation.holdout.beacon has over {MAX_BEACON} ids")
    for item in beacon:
        if not isinstance(item, bytes) or len(item) != ID_SIZE:
            raise VertexError("type", "a beacon id is a 32-byte vertex id")
        if item not in parents:
            raise VertexError("bad-attestation", "a beacon id must be a parent")
    if beacon != sorted(set(beacon)):
        raise VertexError("non-canonical", "attestation.holdout.beacon is sorted, no repeats")
    if not 1 <= value["n"] <= MAX_HOLDOUT_N:
        raise VertexError("range", f"attestation.holdout.n is in 1..{MAX_HOLDOUT_N}")
    if not math.isfinite(value["fitness"]):
        raise VertexError("bad-payload", "attestation holdout fitness is not finite")
    stderr = value["stderr"]
    if not math.isfinite(stderr) or stderr < 0.0:
        raise VertexError("bad-payload", "attestation holdout stderr is finite and >= 0")


def _check_designated(value: dict[str, Any]) -> None:
    """An attestation's `designated` score: closed, typed, n in range, fitness finite."""
    fields(value, _DESIGNATED_SCHEMA, "attestation.designated")
    if not 1 <= value["n"] <= MAX_HOLDOUT_N:
        raise VertexError("range", f"attestation.designated.n is in 1..{MAX_HOLDOUT_N}")
    if not math.isfinite(value["fitness"]):
        raise VertexError("bad-payload", "attestation designated fitness is not finite")


def _check_template(payload: dict[str, Any]) -> None:
    """The fields the ledger indexes (CONTRACTS: task, task_version, fitness, parents)."""
    for key in ("task", "task_version", "objectives", "parents"):
        if key not in payload:
            raise VertexError("missing-field", f"template: {key}")
    task = payload["task"]
    version = payload["task_version"]
    objectives = payload["objectives"]
    genetic = payload["parents"]
    if not isinstance(task, str) or not 0 < len(task) <= MAX_TASK_LEN:
        raise VertexError("type", "template.task is a non-empty string")
    if not isinstance(version, int) or isinstance(version, bool):
        raise VertexError("type", "template.task_version is an int")
    if not 0 <= version <= 2**63 - 1:
        raise VertexError("range", "template.task_version is in 0..2**63-1")
    if not isinstance(objectives, dict) or "fitness" not in objectives:
        raise VertexError("missing-field", "template.objectives.fitness")
    fitness = objectives["fitness"]
    if not isinstance(fitness, float):
        raise VertexError("type", "template.objectives.fitness is a float")
    if not math.isfinite(fitness):
        raise VertexError("bad-payload", "template fitness is not finite")
    if not isinstance(genetic, list):
        raise VertexError("type", "template.parents is a list")
    if len(genetic) > MAX_PARENTS:
        raise VertexError("too-many-parents", "template has more than 8 genetic parents")
    for item in genetic:
        if not isinstance(item, bytes) or len(item) != ID_SIZE:
            raise VertexError("type", "a genetic parent is a 32-byte vertex id")


def task_data_hash(payload: dict[str, Any]) -> bytes:
    """The BLAKE3 content address of a task payload's data: the one field the ledger reads
    (a peer serves and fetches data by it). The rest is checked by the node's decoder."""
    data = payload.get("data")
    if not isinstance(data, dict) or "blake3" not in data:
        raise VertexError("missing-field", "task.data.blake3")
    digest = data["blake3"]
    if not isinstance(digest, bytes) or len(digest) != ID_SIZE:
        raise VertexError("type", "task.data.blake3 is 32 bytes")
    return digest
