"""Published tasks as a node finds them in its ledger: list, resolve by id prefix, record.

The `task` vertices are the truth (signed, validated, gossiped); a node copies the payload of
each task it works on into DATA_DIR/tasks/ (`evolution.published.save_spec`) so that its
evolution and re-evaluation processes, which know no ledger, can load the task by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qudag.dag.payloads import KIND_TASK
from qudag.dag.store import Store
from qudag.evolution.published import blob_cache, save_spec
from qudag.evolution.taskspec import TaskSpec, task_name
from qudag.node.errors import UserError

MIN_PREFIX = 8  # hex characters of an abbreviated task id


@dataclass(frozen=True)
class LedgerTask:
    id: bytes
    author: bytes
    ts_ms: int
    spec: TaskSpec

    @property
    def name(self) -> str:
        """What templates of this task carry as their `task`."""
        return task_name(self.id)


def ledger_tasks(store: Store) -> list[LedgerTask]:
    """Every task vertex in the ledger, oldest first."""
    found = []
    for vid in store.task_vertex_ids():
        task = ledger_task(store, vid)
        assert task is not None  # the store listed it
        found.append(task)
    return sorted(found, key=lambda t: (t.ts_ms, t.id))


def ledger_task(store: Store, vid: bytes) -> LedgerTask | None:
    """The task vertex `vid` (one lookup by id), or None if the ledger holds no vertex
    `vid`; `UserError` if that vertex is not a task."""
    vertex = store.vertex(vid)
    if vertex is None:
        return None
    if vertex.kind != KIND_TASK:
        raise UserError(f"task {vid.hex()}: that vertex is not a task")
    spec = TaskSpec.from_dict(vertex.payload)  # validated on ingest by NODE_DECODERS
    return LedgerTask(vid, vertex.author, vertex.ts_ms, spec)


def match_task(ref: str, ids: list[str]) -> str:
    """The one id in `ids` (hex) that `ref` names: the id, `task:ID`, or a unique prefix of
    at least 8 hex digits; `UserError` otherwise."""
    want = ref.removeprefix("task:").lower()
    if len(want) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in want):
        raise UserError(f"task {ref!r}: give a task id or a unique prefix of >= {MIN_PREFIX} hex")
    matches = [i for i in ids if i.startswith(want)]
    if not matches:
        raise UserError(
            f"unknown task {ref!r}: no such task vertex in this ledger (yet); "
            "`qudag-node task list` shows the known ones"
        )
    if len(matches) > 1:
        raise UserError(f"task prefix {ref!r} is ambiguous ({len(matches)} tasks)")
    return matches[0]


def record_task(root: Path, task: LedgerTask) -> bool:
    """Copy the task's spec into the data dir; True if its data is already cached here."""
    save_spec(root, task.id, task.spec)
    return blob_cache(root).has(task.spec.data.blake3)


def task_json(task: LedgerTask, held: bool) -> dict[str, Any]:
    """A task as `task list|show` and `GET /api/tasks` show it."""
    s = task.spec
    return {
        "id": task.id.hex(),
        "name": s.name,
        "author": task.author.hex(),
        "kind": s.kind,
        "metric": s.metric,
        "target": s.target,
        "features": [n for n, _ in s.features],
        "data": {"blake3": s.data.hex, "bytes": s.data.size, "format": s.data.format,
                 "chunks": len(s.data.chunks), "held": held},
        "split": {"seed": s.split_seed, "train_val_test_percent": list(s.split)},
        "limits": {"max_layers": s.limits.max_layers, "max_width": s.limits.max_width,
                   "max_params": s.limits.max_params},
        "description": s.description,
        "licence": s.licence,
        # The author's private held-out rows, by commitment: the author is the task's
        # designated verifier (its attestations carry scores nobody else can reproduce).
        "private_holdout": None if s.private is None
        else {"blake3": s.private.blake3.hex(), "rows": s.private.rows},
    }  # fmt: skip
