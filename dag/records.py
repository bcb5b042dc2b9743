"""The values the ledger store hands out and takes in: results, rows and errors.

Why apart from `Store`: callers (the peer core, the CLI, the simulator) name these types
without needing the SQLite code that produces them.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol

Cursor = tuple[int, bytes]  # (depth, id): a position in the parents-first order of `since_page`


class StoreError(Exception):
    """The store file cannot be used (not a database, a newer schema, corrupt)."""


class IngestStatus(StrEnum):
    ACCEPTED = "accepted"  # validated and stored now
    DUPLICATE = "duplicate"  # already stored (nothing re-checked, nothing changed)
    PENDING = "pending"  # parents missing: buffered as an orphan (or already buffered)
    REJECTED = "rejected"  # invalid; `reason` says why; nothing stored


class IngestResult(NamedTuple):
    """The outcome of offering one vertex to the store.

    - `id`: the vertex id (None when the bytes did not even decode).
    - `reason`: for REJECTED, a `VertexError.reason` label.
    - `missing`: for PENDING, the parent ids not stored yet (fetch these).
    - `released`: orphans accepted because this vertex arrived, in acceptance order (they are
      new vertices too: forward them as the vertex itself would be forwarded).
    - `dropped`: released orphans that then failed validation, as (id, reason).
    - `equivocation`: the accepted vertex shares (author, seq) with another stored vertex;
      both are kept and the author is flagged.
    - `equivocators`: the author of every vertex accepted now (this one or a released orphan)
      that shares (author, seq) with another stored vertex: a released orphan can be the
      second vertex too.
    - `author`, `seq`: for PENDING, the vertex's (signed, if the author's key is known)
      author and seq, to judge it by (`last_seq`) before its parents arrive.
    """

    status: IngestStatus
    id: bytes | None
    reason: str | None = None
    missing: tuple[bytes, ...] = ()
    released: tuple[bytes, ...] = ()
    dropped: tuple[tuple[bytes, str], ...] = ()
    equivocation: bool = False
    equivocators: tuple[bytes, ...] = ()
    author: bytes | None = None
    seq: int | None = None

    @property
    def accepted(self) -> bool:
        return self.status is IngestStatus.ACCEPTED


class BatchRejected(Exception):
    """An atomic batch held an invalid vertex: nothing of the batch was stored."""

    def __init__(self, index: int, result: IngestResult) -> None:
        super().__init__(f"vertex #{index} rejected: {result.reason}")
        self.index = index
        self.result = result


class BlobStore(Protocol):
    """Where a store keeps vertex bytes instead of its own `vertices.raw` column.

    Content-addressed by vertex id (BLAKE3 of the bytes), so stores may share one: the
    simulator runs a thousand stores in one process, and with full replication each held the
    same ~4 KB signed vertices, which were 90 % of its memory. Only the bytes move; every rule,
    row and query of the store is the same (tests/test_dag_blobs.py). A blob put during a
    transaction that is rolled back stays: harmless, since its id names its bytes.
    """

    def put(self, vid: bytes, raw: bytes) -> None: ...

    def get(self, vid: bytes) -> bytes | None: ...


class SharedBlobs:
    """An in-memory `BlobStore` (a dict), to share between stores of one process."""

    def __init__(self) -> None:
        self._raws: dict[bytes, bytes] = {}

    def put(self, vid: bytes, raw: bytes) -> None:
        self._raws.setdefault(vid, raw)

    def get(self, vid: bytes) -> bytes | None:
        return self._raws.get(vid)

    def __len__(self) -> int:
        return len(self._raws)

    def nbytes(self) -> int:
        return sum(len(raw) for raw in self._raws.values())


@dataclass(frozen=True, slots=True)
class TemplateEntry:
    """A template vertex as the sampler sees it (see `Store.templates` for the ordering)."""

    id: bytes
    author: bytes
    task: str
    task_version: int
    claimed_fitness: float
    verified_fitness: float | None  # min re-measured fitness over trusted "valid" verdicts
    verifications: int  # trusted "valid" verdicts counted


@dataclass(frozen=True, slots=True)
class Verification:
    template: bytes
    verifier: bytes
    fitness: float
    verdict: str
    ts_ms: int
    attestation: bytes | None  # the attestation vertex id, or None if recorded locally


@dataclass(frozen=True, slots=True)
class AuthorInfo:
    author: bytes
    public_key: bytes
    flagged: bool
    vertices: int
    max_seq: int


@dataclass(frozen=True, slots=True)
class Head:
    """An author's latest vertex: highest seq (several ids if the author equivocated)."""

    author: bytes
    seq: int
    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    vertices: int
    invalid: int
    orphans: int
    tips: int
    problems: tuple[str, ...]  # human-readable, at most 20

    def summary(self) -> dict[str, int]:
        return {
            "vertices": self.vertices,
            "invalid": self.invalid,
            "orphans": self.orphans,
            "tips": self.tips,
        }
