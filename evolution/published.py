"""Published tasks: a `TaskSpec` from the ledger plus its data from the content-addressed cache.

`get_task("task:<id hex>")` lands here. Evolution knows no ledger, so it reads what the node
wrote into its data dir (the directory named by the environment variable `QUDAG_TASK_ROOT`,
which the node sets for itself and so for its child processes, whose tasks are named by
string):

    ROOT/tasks/<task id hex>.task   the task vertex's payload (canonical msgpack), written by
                                    the node after the vertex passed validation
    ROOT/blobs/<blake3 hex>         the data (evolution/blobcache.py), checked on every load
    ROOT/private/<task id hex>.csv  the private held-out rows of a task this node published
                                    (`task publish --private-holdout`): outside blobs/, so the
                                    chunk protocol never serves them; checked against the
                                    BLAKE3 and row count the task vertex commits to

The csv is read and split by the same code as a `csv:` task (`tasks.csv_columns`,
`tasks.columns_task`), with the split seed, fractions, kind and genome limits the spec fixes;
a file whose columns are not the spec's features is refused, not reinterpreted.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import blake3
import numpy as np

from qudag.crypto.canonical import DecodeError
from qudag.crypto.files import write_file_atomic
from qudag.evolution.blobcache import BlobCache, BlobError
from qudag.evolution.genome import DEFAULT_LIMITS, GenomeLimits
from qudag.evolution.tasks import (
    SPLIT_SEED,
    CsvColumns,
    CsvTable,
    Task,
    TaskError,
    columns_task,
    csv_columns,
    parse_csv_bytes,
)
from qudag.evolution.taskspec import (
    CHUNK_SIZE,
    DEFAULT_SPLIT,
    MAX_DATA_BYTES,
    MAX_PRIVATE_ROWS,
    METRICS,
    DataRef,
    PrivateHoldout,
    TaskSpec,
    chunk_hashes,
    task_id_of,
)

log = logging.getLogger(__name__)

TASK_ROOT_ENV = "QUDAG_TASK_ROOT"
_LOADED: dict[str, Task] = {}
_PRIVATE: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}


def task_root() -> Path | None:
    """The data dir whose published tasks this process can load, if one is set."""
    root = os.environ.get(TASK_ROOT_ENV)
    return Path(root) if root else None


def set_task_root(root: str | os.PathLike[str]) -> None:
    """Make `root`'s published tasks loadable here and in child processes started later."""
    os.environ[TASK_ROOT_ENV] = str(root)


def blob_cache(root: Path) -> BlobCache:
    return BlobCache(root / "blobs")


def spec_path(root: Path, task_id: bytes) -> Path:
    return root / "tasks" / f"{task_id.hex()}.task"


def save_spec(root: Path, task_id: bytes, spec: TaskSpec) -> None:
    """Record a validated task vertex's payload (once; the id fixes the content)."""
    path = spec_path(root, task_id)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(path, spec.to_bytes())


def load_spec(root: Path, task_id: bytes) -> TaskSpec:
    path = spec_path(root, task_id)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TaskError(
            f"unknown task {task_id.hex()} (not on this node's ledger; "
            "`qudag-node task list` shows the known ones)"
        ) from None
    try:
        return TaskSpec.from_bytes(raw)
    except DecodeError as exc:
        raise TaskError(f"{path}: not a task spec ({exc})") from None


def private_path(root: Path, task_id: bytes) -> Path:
    return root / "private" / f"{task_id.hex()}.csv"


def save_private(root: Path, task_id: bytes, data: bytes) -> Path:
    """Keep the private held-out rows of a task this node publishes, owner-readable only,
    under ROOT/private/ (never ROOT/blobs/, which the chunk protocol serves from)."""
    path = private_path(root, task_id)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)  # an existing folder too: the file is written before its chmod
    write_file_atomic(path, data)
    path.chmod(0o600)
    return path


class PrivateRowsError(TaskError):
    """Private held-out rows that are not rows of their task: the CLI names the private
    file in the message, not the task's data."""


def private_ref(data: bytes, spec: TaskSpec, public: CsvTable, task: Task) -> PrivateHoldout:
    """What a task vertex commits to of private held-out rows (`data`, a csv file's bytes
    in the task's format); `PrivateRowsError` if they are not rows of the task
    (`private_rows_of`)."""
    try:
        x, _ = private_rows_of(data, spec, public, task)
    except TaskError as exc:
        raise PrivateRowsError(str(exc)) from None
    if x.shape[0] > MAX_PRIVATE_ROWS:  # the task vertex could not carry the count
        raise PrivateRowsError(f"more than {MAX_PRIVATE_ROWS} private held-out rows")
    return PrivateHoldout(blake3.blake3(data).digest(), int(x.shape[0]))


def private_rows_of(
    data: bytes, spec: TaskSpec, public: CsvTable, task: Task
) -> tuple[np.ndarray, np.ndarray]:
    """(standardised x, y) of private rows: read as the task's data (`public`, its table
    as read once by the caller) is, by the same code, with the same columns in the same
    order and only labels the data has.

    They are read as the first rows of one table with the public rows after them: the
    label indices are then the task's (a private set may hold one class only, which a table
    of its own would refuse), and a bad cell is reported at its line of the private file."""
    label = "private held-out rows"
    mine = parse_csv_bytes(data, label, spec.data.header, spec.data.sep)
    if mine.header != public.header:
        raise TaskError(f"{label}: its columns are not the task's features and target")
    rows = len(mine.rows)
    if rows == 0:
        raise TaskError(f"{label}: no data rows")
    cols = csv_columns(replace(mine, rows=mine.rows + public.rows), label, spec.target, spec.kind)
    if cols.class_names != task.class_names:
        extra = sorted(set(cols.class_names) - set(task.class_names))
        raise TaskError(f"{label}: labels the task's data does not have: {extra[:5]}")
    return task.standardize(cols.x[:rows]), cols.y[:rows]


def private_rows(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The private held-out rows of published task `name`, if this node holds them (it
    published the task with them) and they are what the task vertex commits to; else None
    (a warning is logged when the file is there but edited). Read once per process, as a
    task is."""
    if name not in _PRIVATE:
        _PRIVATE[name] = _read_private(name)
    return _PRIVATE[name]


def _read_private(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    task_id = task_id_of(name)
    root = task_root()
    if task_id is None or root is None:
        return None
    spec = load_spec(root, task_id)
    if spec.private is None:
        return None
    try:
        data = private_path(root, task_id).read_bytes()
    except FileNotFoundError:
        return None
    if len(data) > MAX_DATA_BYTES or blake3.blake3(data).digest() != spec.private.blake3:
        # Edited after publishing: scoring it would vouch for rows nobody committed to. The
        # caller caches the None, so the operator reads this once per task, not per template.
        log.warning(
            "%s: not the private held-out file task %s commits to (its BLAKE3 differs); "
            "no designated score is measured for this task",
            private_path(root, task_id),
            task_id.hex(),
        )
        return None
    public = _public_table(spec, _public_bytes(name, root, spec))
    task = _LOADED.get(name) or _table_task(name, spec, public)
    _LOADED[name] = task
    x, y = private_rows_of(data, spec, public, task)
    if x.shape[0] != spec.private.rows:
        raise TaskError(f"{name}: the private held-out file is not the one the task commits to")
    return x, y


def build_task(name: str, spec: TaskSpec, data: bytes) -> Task:
    """The task a spec defines on `data` (already checked against `spec.data.blake3`)."""
    return _table_task(name, spec, _public_table(spec, data))


def _data_label(spec: TaskSpec) -> str:
    return f"data {spec.data.hex[:16]}"


def _public_table(spec: TaskSpec, data: bytes) -> CsvTable:
    """The task's data read as its spec says (separator, header)."""
    return parse_csv_bytes(data, _data_label(spec), spec.data.header, spec.data.sep)


def _table_task(name: str, spec: TaskSpec, table: CsvTable) -> Task:
    """The task a spec defines on its data's table (`_public_table`)."""
    label = _data_label(spec)
    return _spec_task(name, spec, csv_columns(table, label, spec.target, spec.kind), label)


def _spec_task(name: str, spec: TaskSpec, cols: CsvColumns, label: str) -> Task:
    """The task a spec defines on the columns read from its data."""
    if cols.feature_names != tuple(n for n, _ in spec.features):
        raise TaskError(f"{label}: its columns are not the task's features")
    return columns_task(
        name,
        cols,
        spec.description or f"{spec.name}: {spec.kind} of {spec.target!r}",
        seed=spec.split_seed,
        percent=spec.split,
        limits=spec.limits,
    )


def published_task(name: str) -> Task:
    """`get_task` of a published task's name; `TaskError` says what is missing."""
    if name in _LOADED:
        return _LOADED[name]
    task_id = task_id_of(name)
    if task_id is None:
        raise TaskError(f"{name!r}: a published task is task:<64 lowercase hex digits>")
    root = task_root()
    if root is None:
        raise TaskError(f"{name}: published tasks need a node's data dir ({TASK_ROOT_ENV})")
    spec = load_spec(root, task_id)
    task = build_task(name, spec, _public_bytes(name, root, spec))
    _LOADED[name] = task
    return task


def _public_bytes(name: str, root: Path, spec: TaskSpec) -> bytes:
    """The task's data from the cache (checked against its BLAKE3 there)."""
    try:
        return blob_cache(root).read(spec.data.blake3, MAX_DATA_BYTES)
    except BlobError as exc:
        raise TaskError(f"{name}: its data is not here yet ({exc})") from None


def make_spec(
    data: bytes,
    *,
    target: str | None,
    name: str,
    description: str = "",
    licence: str = "",
    kind: str | None = None,
    header: bool | None = None,
    sep: str | None = None,
    split_seed: int = SPLIT_SEED,
    split: tuple[int, int, int] = DEFAULT_SPLIT,
    limits: GenomeLimits = DEFAULT_LIMITS,
    private: bytes | None = None,
) -> TaskSpec:
    """The spec that publishes `data` (a csv file's bytes) with these choices; the task is
    built once here, so a spec that could not be evaluated is never published. With
    `private` (a csv file's bytes) the spec commits to those held-out rows (`private_ref`,
    `PrivateRowsError` if they are not rows of the task), read against the same table.

    The file is read once and hashed twice (whole, and per chunk): the columns read to
    choose the features are the ones the task is built from, since reading the file again
    with the separator and header found here gives the same table."""
    if len(data) > MAX_DATA_BYTES:
        raise TaskError(f"data larger than {MAX_DATA_BYTES} bytes")
    if not data:
        raise TaskError("empty data file")
    table = parse_csv_bytes(data, name, header, sep)
    cols = csv_columns(table, name, target, kind)
    ref = DataRef(
        "csv",
        table.sep,
        table.has_header,
        len(data),
        blake3.blake3(data).digest(),
        CHUNK_SIZE,
        chunk_hashes(data),
    )
    spec = TaskSpec(
        name=name,
        description=description,
        licence=licence,
        data=ref,
        target=cols.target,
        features=tuple((n, "float") for n in cols.feature_names),
        split_seed=split_seed,
        split=split,
        kind=cols.kind,
        metric=METRICS[cols.kind],
        limits=limits,
    )
    try:
        spec = TaskSpec.from_dict(spec.to_dict())  # the published form must decode
    except DecodeError as exc:
        raise TaskError(f"cannot publish: {exc}") from None
    task = _spec_task(name, spec, cols, name)
    if private is not None:
        spec = replace(spec, private=private_ref(private, spec, table, task))
    return spec
