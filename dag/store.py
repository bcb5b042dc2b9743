"""The ledger on disk: an SQLite store of validated vertices, with orphans, tips and indexes.

Why SQLite (stdlib `sqlite3`): one file, transactions, crash safety and indexed queries
without a server. Settings, and why:

- ``journal_mode=WAL``: readers never block the writer; a commit is one append to the WAL.
- ``synchronous=NORMAL`` (default): in WAL mode a commit is durable against the *process*
  dying at any moment (SIGKILL, crash): the committed frames are in the OS page cache and the
  next open replays them; tests/test_dag_crash.py kills a writer many times to check that
  every vertex whose `ingest` had returned is still there. Against power loss or an OS crash
  NORMAL can lose the last few commits (never corrupt the file). Vertices from peers can be
  fetched again, but a node's *own* new vertex must not be forgotten after it was gossiped
  (re-signing that seq would be equivocation): pass ``durable=True`` to `ingest` for those, or
  open with ``synchronous="FULL"`` to fsync every commit.
- ``foreign_keys=ON``: edges, tips, template and author rows can only point at stored vertices.
- One transaction per `ingest` call, one per batch in `ingest_many` (the bulk-sync path:
  committing per vertex costs more than a signature check).

Ingest never raises for hostile bytes: it returns an `IngestResult`. A vertex whose parents are
not all stored is *pending*: it waits in the bounded orphan buffer (oldest evicted first) and
is validated and accepted automatically when its last missing parent arrives. One author holds
at most `max_orphans_per_author` of that buffer; a further orphan of it is REJECTED
("orphan-author-cap") and may come again once its parents are known.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, Protocol

from qudag.dag.errors import VertexError
from qudag.dag.payloads import (
    ID_SIZE,
    KIND_ATTESTATION,
    KIND_IDENTITY,
    KIND_TEMPLATE,
    MAX_PARENTS,
    NO_DECODERS,
    VERDICTS,
    PayloadDecoders,
    payload_decoders,
    template_index,
)
from qudag.dag.validate import (
    DEFAULT_MAX_SKEW_MS,
    KeyCache,
    ParentInfo,
    Prechecked,
    PublicKey,
    check_parents,
    check_signature,
    check_timestamp,
    depth_of,
    load_public_key,
    precheck,
    same_key,
)
from qudag.dag.vertex import Vertex, decode_vertex

SCHEMA_VERSION = 1
DEFAULT_MAX_ORPHANS = 10_000
DEFAULT_MAX_ORPHAN_BYTES = 64 * 1024 * 1024
# Orphans one author may hold in the buffer (issue 17): signed vertices with invented parents
# are cheap to make, and without this one author (or forger) filled every honest buffer.
DEFAULT_MAX_ORPHANS_PER_AUTHOR = 64
DEFAULT_META_CACHE = 200_000  # vertices whose (n, author, seq, kind, depth) stay in memory
DEFAULT_BATCH = 1000

Cursor = tuple[int, bytes]  # (depth, id): a position in the parents-first order of `since_page`

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vertices (
    n      INTEGER PRIMARY KEY,          -- local insertion number; never leaves this store
    id     BLOB NOT NULL UNIQUE CHECK (length(id) = 32),
    author BLOB NOT NULL,
    seq    INTEGER NOT NULL,
    ts_ms  INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    depth  INTEGER NOT NULL,             -- 0 without parents, else 1 + deepest parent
    raw    BLOB NOT NULL                 -- the exact wire bytes
);
CREATE INDEX IF NOT EXISTS vertices_author_seq ON vertices (author, seq);
CREATE INDEX IF NOT EXISTS vertices_depth_id ON vertices (depth, id);
CREATE TABLE IF NOT EXISTS edges (
    child  INTEGER NOT NULL REFERENCES vertices (n),
    parent INTEGER NOT NULL REFERENCES vertices (n),
    PRIMARY KEY (child, parent)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS edges_parent ON edges (parent, child);
CREATE TABLE IF NOT EXISTS tips (
    n INTEGER PRIMARY KEY REFERENCES vertices (n)
);
CREATE TABLE IF NOT EXISTS authors (
    author     BLOB PRIMARY KEY,
    public_key BLOB NOT NULL,
    identity   INTEGER NOT NULL REFERENCES vertices (n),
    flagged    INTEGER NOT NULL DEFAULT 0   -- 1 once two vertices share (author, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS orphans (
    k           INTEGER PRIMARY KEY AUTOINCREMENT,   -- arrival order: evict the smallest
    id          BLOB NOT NULL UNIQUE,
    raw         BLOB NOT NULL,
    received_ms INTEGER NOT NULL,
    verified    INTEGER NOT NULL               -- signature already checked on arrival
);
CREATE TABLE IF NOT EXISTS orphan_missing (
    missing BLOB NOT NULL,
    orphan  INTEGER NOT NULL REFERENCES orphans (k) ON DELETE CASCADE,
    PRIMARY KEY (missing, orphan)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS orphan_missing_orphan ON orphan_missing (orphan);
CREATE TABLE IF NOT EXISTS templates (
    n            INTEGER PRIMARY KEY REFERENCES vertices (n),
    task         TEXT NOT NULL,
    task_version INTEGER NOT NULL,
    fitness      REAL NOT NULL                 -- the author's claim
);
CREATE INDEX IF NOT EXISTS templates_task ON templates (task, task_version);
CREATE TABLE IF NOT EXISTS verifications (
    template BLOB NOT NULL,                    -- template vertex id
    verifier BLOB NOT NULL,                    -- key id of who re-measured it
    fitness  REAL NOT NULL,                    -- re-measured fitness
    verdict  TEXT NOT NULL CHECK (verdict IN ('valid', 'invalid')),
    ts_ms    INTEGER NOT NULL,
    vertex   INTEGER REFERENCES vertices (n)   -- the attestation; NULL if recorded locally
);
CREATE INDEX IF NOT EXISTS verifications_template ON verifications (template, verifier);
"""


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


class Store:
    """A ledger file. Not thread-safe: one Store per thread (open the file again elsewhere).

    Writes of accepted vertices are buffered in memory within a transaction and flushed with
    `executemany` before the commit (or before any read that needs them): per-statement
    overhead was the largest cost of bulk ingest after the signature check. Everything the
    ingest path must know about stored vertices (parent depth/author/seq, author keys, each
    author's highest seq) is answered from memory, with SQLite as the fallback once the
    metadata cache is full.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        max_orphans: int,
        max_orphan_bytes: int,
        max_skew_ms: int,
        meta_cache: int,
        max_orphans_per_author: int = DEFAULT_MAX_ORPHANS_PER_AUTHOR,
        synchronous: str,
        blobs: BlobStore | None = None,
        defer_commit: bool = False,
        decoders: PayloadDecoders = NO_DECODERS,
    ) -> None:
        self._conn = db  # the ingest path's own handle; every other query goes through `_db`
        self.decoders = payload_decoders(decoders)  # run on every arriving vertex's payload
        self._blobs = blobs
        self.max_orphans = max_orphans
        self.max_orphan_bytes = max_orphan_bytes
        self.max_orphans_per_author = max_orphans_per_author
        self.max_skew_ms = max_skew_ms
        self._synchronous = synchronous
        self._keys = KeyCache()
        self._meta_capacity = meta_cache
        # OrderedDict: popping the oldest entry is O(1) (a dict's next(iter()) is not once
        # deletions have left a run of dummy slots at its front).
        self._meta: OrderedDict[bytes, ParentInfo] = OrderedDict()
        self._meta_complete = False
        self._max_seq: dict[bytes, int] = {}
        self._in_tx = False
        self._defer_commit = defer_commit
        self._deferred = False  # a deferred mode's ingests are buffered in an open transaction
        self._reset_writes()
        self._load_counters()

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection for everything but the ingest path: commits deferred ingests first,
        so that every query sees (and every other write follows) exactly what `ingest`
        reported as accepted."""
        if self._deferred:
            self._commit()
        return self._conn

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        max_orphans: int = DEFAULT_MAX_ORPHANS,
        max_orphan_bytes: int = DEFAULT_MAX_ORPHAN_BYTES,
        max_orphans_per_author: int = DEFAULT_MAX_ORPHANS_PER_AUTHOR,
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
        synchronous: str = "NORMAL",
        meta_cache: int = DEFAULT_META_CACHE,
        blobs: BlobStore | None = None,
        defer_commit: bool = False,
        decoders: PayloadDecoders = NO_DECODERS,
    ) -> Store:
        """Open (creating if needed) the ledger at `path`; raise `StoreError` if unusable.

        `blobs`: keep vertex bytes there instead of in the file (see `BlobStore`); a file
        must always be opened with the same choice (its rows do not hold the bytes then).

        `defer_commit`: `ingest` (without `durable=True`) leaves what it accepted in an open
        transaction, and one commit writes a run of ingests: the first call of any other
        method that reads or writes SQL (or `durable=True`, `ingest_many`, `close`) commits
        them first, so every answer is the one a commit per ingest gives. What is given up
        is crash safety between those commits (a process death or an error inside a later
        ingest loses ingests already reported as accepted), so it is for ledgers that do not
        outlive the process: the simulator's thousand in-memory stores, where a transaction
        per gossip message is most of the cost.

        `decoders` (kind -> strict payload decoder, see `dag.payloads.PayloadDecoder`) run on
        every vertex that arrives (`ingest*`, `verify_all`), not on reads of stored bytes: the
        node passes evolution's `Template.from_dict` for templates; dag alone knows none."""
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous is NORMAL or FULL")
        if min(max_orphans, max_orphan_bytes, max_orphans_per_author) < 0 or meta_cache < 1:
            raise ValueError("orphan bounds are >= 0 and the cache holds >= 1 vertex")
        try:
            db = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=True)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open ledger {os.fspath(path)!r}: {exc}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL").fetchone()
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute("PRAGMA foreign_keys=ON")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise StoreError(f"ledger schema version {version} is not {SCHEMA_VERSION}")
            if version == 0:  # new file: create the schema atomically
                db.executescript(
                    f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
                )
            return cls(
                db,
                max_orphans=max_orphans,
                max_orphan_bytes=max_orphan_bytes,
                max_orphans_per_author=max_orphans_per_author,
                max_skew_ms=max_skew_ms,
                meta_cache=meta_cache,
                synchronous=synchronous,
                blobs=blobs,
                defer_commit=defer_commit,
                decoders=decoders,
            )
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"cannot use ledger {os.fspath(path)!r}: {exc}") from None
        except BaseException:
            db.close()
            raise

    def close(self) -> None:
        self._db.close()  # `_db`: deferred ingests are committed first

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _load_counters(self) -> None:
        """(Re)load the in-memory state from the file: at open and after a rollback."""
        db = self._conn
        self._orphans, self._orphan_bytes = db.execute(
            "SELECT count(*), coalesce(sum(length(raw)), 0) FROM orphans"
        ).fetchone()
        self._count, last_n = db.execute(
            "SELECT count(*), coalesce(max(n), 0) FROM vertices"
        ).fetchone()
        self._next_n = int(last_n) + 1
        self._max_seq = dict(db.execute("SELECT author, max(seq) FROM vertices GROUP BY author"))
        self._tips: set[int] = {row[0] for row in db.execute("SELECT n FROM tips")}
        # Every id some buffered orphan waits for (a superset: evictions and drops leave
        # entries behind until the buffer empties), so that an arrival nobody waits for costs
        # no query in `_release` (at 1,000 peers that query ran for most accepted vertices).
        self._awaited: set[bytes] = {
            row[0] for row in db.execute("SELECT DISTINCT missing FROM orphan_missing")
        }
        # Who each buffered orphan claims as author (k -> author), and how many each holds:
        # the per-author cap. Decoded from the bytes (the table has no author column).
        self._orphan_author: dict[int, bytes] = {}
        self._orphans_of: dict[bytes, int] = {}
        for k, raw in db.execute("SELECT k, raw FROM orphans"):
            self._count_orphan(k, decode_vertex(raw).author)
        self._meta.clear()
        self._meta_complete = self._count <= self._meta_capacity
        if self._meta_complete:
            for n, vid, author, seq, kind, depth in db.execute(
                "SELECT n, id, author, seq, kind, depth FROM vertices"
            ):
                self._meta[vid] = ParentInfo(author, seq, kind, depth, n)
        self._keys.clear()

    # ------------------------------------------------------------------ transactions

    def _reset_writes(self) -> None:
        self._w_vertices: list[tuple[Any, ...]] = []
        self._w_edges: list[tuple[int, int]] = []
        self._w_tips_add: set[int] = set()
        self._w_tips_del: set[int] = set()
        self._w_authors: list[tuple[bytes, bytes, int]] = []
        self._w_templates: list[tuple[int, str, int, float]] = []
        self._w_verifications: list[tuple[Any, ...]] = []
        self._w_flagged: set[bytes] = set()

    def _flush(self) -> None:
        """Write the buffered rows of accepted vertices (FK order: vertices first)."""
        if not self._w_vertices and not self._w_flagged:
            return
        # One executemany per non-empty list: most ingests fill two or three of the eight,
        # and an empty executemany still costs a statement (10 % of a 100-peer simulation).
        writes: tuple[tuple[str, Iterable[Any]], ...] = (
            (
                "INSERT INTO vertices (n, id, author, seq, ts_ms, kind, depth, raw) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                self._w_vertices,
            ),
            ("INSERT INTO edges (child, parent) VALUES (?, ?)", self._w_edges),
            ("DELETE FROM tips WHERE n = ?", [(n,) for n in self._w_tips_del]),
            ("INSERT INTO tips (n) VALUES (?)", [(n,) for n in self._w_tips_add]),
            (
                "INSERT OR IGNORE INTO authors (author, public_key, identity) VALUES (?, ?, ?)",
                self._w_authors,
            ),
            (
                "INSERT INTO templates (n, task, task_version, fitness) VALUES (?, ?, ?, ?)",
                self._w_templates,
            ),
            (
                "INSERT INTO verifications (template, verifier, fitness, verdict, ts_ms, vertex) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                self._w_verifications,
            ),
            ("UPDATE authors SET flagged = 1 WHERE author = ?", [(a,) for a in self._w_flagged]),
        )
        db = self._conn
        for sql, rows in writes:
            if rows:
                db.executemany(sql, rows)
        self._reset_writes()

    def _begin(self) -> None:
        if self._deferred:
            self._commit()
        self._conn.execute("BEGIN IMMEDIATE")
        self._in_tx = True

    def _commit(self) -> None:
        self._flush()
        self._conn.execute("COMMIT")
        self._in_tx = False
        self._deferred = False

    def _rollback(self) -> None:
        self._reset_writes()
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        self._in_tx = False
        self._deferred = False
        self._load_counters()  # memory caches may hold rolled-back vertices

    # ------------------------------------------------------------------ ingest

    def ingest(self, raw: bytes, now_ms: int, *, durable: bool = False) -> IngestResult:
        """Offer one vertex (wire bytes) received at `now_ms`; return what happened.

        Runs in its own transaction; when it returns, an accepted vertex (and any orphan it
        released) is committed (with `defer_commit`, at the next other query: `open`).
        `durable=True` also fsyncs that commit (for own vertices).
        """
        if durable and self._synchronous != "FULL":
            self._db.execute("PRAGMA synchronous=FULL")
        try:
            if not self._deferred:
                self._begin()
            try:
                result = self._ingest_one(raw, now_ms)
                if self._defer_commit and not durable:
                    self._deferred = True
                else:
                    self._commit()
            except BaseException:
                self._rollback()
                raise
        finally:
            if durable and self._synchronous != "FULL":
                self._db.execute(f"PRAGMA synchronous={self._synchronous}")
        return result

    def ingest_many(
        self,
        raws: Iterable[bytes],
        now_ms: int,
        *,
        batch_size: int = DEFAULT_BATCH,
        atomic: bool = False,
        workers: int = 1,
    ) -> list[IngestResult]:
        """Offer many vertices; commit once per `batch_size` of them (the bulk-sync path).

        Results are in input order and everything is committed when this returns. With
        `atomic=True` the whole input is one transaction and any REJECTED vertex rolls it all
        back and raises `BatchRejected` (for `qudag-node dag import`: bad input changes
        nothing). `workers > 1` decodes and verifies each batch on that many threads first
        (`dag.validate.precheck`), then applies the same rules in the same order as with 1.
        """
        if workers <= 1:
            return self._ingest_items(raws, now_ms, batch_size, atomic)
        return self._ingest_items(
            self._prechecked(raws, batch_size, workers), now_ms, batch_size, atomic
        )

    def _prechecked(
        self, raws: Iterable[bytes], chunk_size: int, workers: int
    ) -> Iterator[Prechecked]:
        """Precheck lazily, one chunk at a time: bounded memory, and each chunk sees the keys
        of the identity vertices the previous chunks stored."""
        chunk: list[bytes] = []
        for raw in raws:
            chunk.append(raw)
            if len(chunk) >= chunk_size:
                yield from precheck(chunk, self.known_keys(), workers, self.decoders)
                chunk = []
        if chunk:
            yield from precheck(chunk, self.known_keys(), workers, self.decoders)

    def ingest_prechecked(
        self, items: Iterable[Prechecked], now_ms: int, *, batch_size: int = DEFAULT_BATCH
    ) -> list[IngestResult]:
        """`ingest_many` for vertices already decoded and verified by `dag.validate.precheck`
        (e.g. in a worker thread while this thread did network I/O). A precheck's signature
        result counts only if it used the key this store holds for the author."""
        return self._ingest_items(items, now_ms, batch_size, False)

    def known_keys(self) -> dict[bytes, PublicKey]:
        """Author keys cached in memory (a snapshot for `precheck` in another thread)."""
        return self._keys.snapshot()

    def _ingest_items(
        self,
        items: Iterable[bytes | Prechecked],
        now_ms: int,
        batch_size: int,
        atomic: bool,
    ) -> list[IngestResult]:
        if self._deferred:  # an atomic batch's rollback must not take deferred ingests along
            self._commit()
        results: list[IngestResult] = []
        in_batch = 0
        try:
            for item in items:
                if not self._in_tx:
                    self._begin()
                result = self._ingest_one(item, now_ms)
                if atomic and result.status is IngestStatus.REJECTED:
                    index = len(results)
                    self._rollback()
                    raise BatchRejected(index, result)
                results.append(result)
                in_batch += 1
                if not atomic and in_batch >= batch_size:
                    self._commit()
                    in_batch = 0
            if self._in_tx:
                self._commit()
        except BaseException:
            if self._in_tx:
                self._rollback()
            raise
        return results

    def _ingest_one(self, item: bytes | Prechecked, now_ms: int) -> IngestResult:
        checked_key: PublicKey | None = None
        if isinstance(item, bytes):
            try:
                vertex = decode_vertex(item, decoders=self.decoders)
            except VertexError as exc:
                return IngestResult(IngestStatus.REJECTED, None, exc.reason)
        elif item.vertex is None:
            return IngestResult(IngestStatus.REJECTED, None, item.error)
        else:
            vertex, checked_key = item.vertex, item.key
        if self._lookup(vertex.id) is not None:
            return IngestResult(IngestStatus.DUPLICATE, vertex.id)
        parents: dict[bytes, ParentInfo] = {}
        missing: list[bytes] = []
        for parent in vertex.parents:
            meta = self._lookup(parent)
            if meta is None:
                missing.append(parent)
            else:
                parents[parent] = meta
        try:
            if missing:
                return self._buffer(vertex, missing, now_ms, checked_key)
            equivocation = self._accept(
                vertex, parents, now_ms, verified=False, checked_key=checked_key
            )
        except VertexError as exc:
            return IngestResult(IngestStatus.REJECTED, vertex.id, exc.reason)
        equivocators: tuple[bytes, ...] = (vertex.author,) if equivocation else ()
        if self._orphans:
            released, dropped, more = self._release(vertex.id)
            if not self._orphans:
                self._awaited.clear()
            return IngestResult(
                IngestStatus.ACCEPTED,
                vertex.id,
                None,
                (),
                released,
                dropped,
                equivocation,
                tuple(dict.fromkeys(equivocators + more)),
            )
        return IngestResult(
            IngestStatus.ACCEPTED, vertex.id, None, (), (), (), equivocation, equivocators
        )

    def _lookup(self, vid: bytes) -> ParentInfo | None:
        meta = self._meta.get(vid)
        if meta is not None or self._meta_complete:
            return meta
        self._flush()
        row = self._conn.execute(
            "SELECT n, author, seq, kind, depth FROM vertices WHERE id = ?", (vid,)
        ).fetchone()
        if row is None:
            return None
        return ParentInfo(row[1], row[2], row[3], row[4], row[0])

    def _author_key(self, author: bytes) -> PublicKey | None:
        key = self._keys.get(author)
        if key is None:
            self._flush()
            row = self._conn.execute(
                "SELECT public_key FROM authors WHERE author = ?", (author,)
            ).fetchone()
            if row is None:
                return None
            key = load_public_key(row[0])
            self._keys.put(author, key)
        return key

    def _accept(
        self,
        vertex: Vertex,
        parents: dict[bytes, ParentInfo],
        now_ms: int | None,
        *,
        verified: bool,
        checked_key: PublicKey | None = None,
    ) -> bool:
        """Validate a vertex whose parents are all stored, and store it. Return equivocation.

        The rules are those of `dag.validate.validate`, inlined so that the parent metadata
        and the author key come from this store's caches. `checked_key`: the signature was
        already verified with this key (a precheck); it stands if it is the author's key.
        """
        if now_ms is not None:
            check_timestamp(vertex, now_ms, self.max_skew_ms)
        check_parents(vertex, parents)
        author = vertex.author
        if vertex.kind == KIND_IDENTITY:
            key = load_public_key(vertex.payload["public_key"])
        else:
            found = self._author_key(author)
            if found is None:
                raise VertexError("unknown-author", "no identity vertex for this author")
            key = found
        if not verified and (checked_key is None or not same_key(checked_key, key)):
            check_signature(vertex, key)
        depth = depth_of(parents)
        n = self._next_n
        self._next_n += 1
        raw = vertex.raw
        if self._blobs is not None:
            self._blobs.put(vertex.id, raw)
            raw = b""
        self._w_vertices.append(
            (n, vertex.id, author, vertex.seq, vertex.ts_ms, vertex.kind, depth, raw)
        )
        # Tips are tracked in memory too (they are few), so only real tips are deleted.
        tips, tips_add = self._tips, self._w_tips_add
        for meta in parents.values():
            parent_n = meta.n
            self._w_edges.append((n, parent_n))
            if parent_n in tips:
                tips.discard(parent_n)
                if parent_n in tips_add:
                    tips_add.discard(parent_n)
                else:
                    self._w_tips_del.add(parent_n)
        tips.add(n)
        tips_add.add(n)
        kind = vertex.kind
        if kind == KIND_IDENTITY:
            self._w_authors.append((author, vertex.payload["public_key"], n))
            self._keys.put(author, key)
        elif kind == KIND_TEMPLATE:
            task, task_version, fitness, _genetic = template_index(vertex.payload)
            self._w_templates.append((n, task, task_version, fitness))
        elif kind == KIND_ATTESTATION:
            payload = vertex.payload
            self._w_verifications.append(
                (
                    payload["template"],
                    author,
                    payload["fitness"],
                    payload["verdict"],
                    vertex.ts_ms,
                    n,
                )
            )
        # The seq chain rule means an author's stored seqs are exactly 0..max, so a vertex
        # (new by id) whose seq is not above the author's max shares its seq with another.
        top = self._max_seq.get(author, -1)
        equivocation = vertex.seq <= top
        if equivocation:
            self._w_flagged.add(author)
        else:
            self._max_seq[author] = vertex.seq
        meta_cache = self._meta
        if len(meta_cache) >= self._meta_capacity:
            self._meta_complete = False
            meta_cache.popitem(last=False)
        meta_cache[vertex.id] = ParentInfo(author, vertex.seq, kind, depth, n)
        self._count += 1
        return equivocation

    def _count_orphan(self, k: int, author: bytes) -> None:
        self._orphan_author[k] = author
        self._orphans_of[author] = self._orphans_of.get(author, 0) + 1

    def _delete_orphan(self, k: int, size: int) -> None:
        """Remove buffered orphan `k` (`size` bytes) and its share of its author's cap."""
        self._conn.execute("DELETE FROM orphans WHERE k = ?", (k,))
        self._orphans -= 1
        self._orphan_bytes -= size
        author = self._orphan_author.pop(k, None)
        if author is not None:
            left = self._orphans_of.get(author, 0) - 1
            if left > 0:
                self._orphans_of[author] = left
            else:
                self._orphans_of.pop(author, None)

    def _buffer(
        self,
        vertex: Vertex,
        missing: list[bytes],
        now_ms: int,
        checked_key: PublicKey | None = None,
    ) -> IngestResult:
        """Keep a vertex with missing parents as an orphan (checking what can be checked)."""
        pending = IngestResult(
            IngestStatus.PENDING,
            vertex.id,
            missing=tuple(missing),
            author=vertex.author,
            seq=vertex.seq,
        )
        db = self._conn
        if db.execute("SELECT 1 FROM orphans WHERE id = ?", (vertex.id,)).fetchone():
            return pending
        check_timestamp(vertex, now_ms, self.max_skew_ms)
        # Verify now if the key is known, so forged vertices never take buffer space.
        if vertex.kind == KIND_IDENTITY:
            key: PublicKey | None = load_public_key(vertex.payload["public_key"])
        else:
            key = self._author_key(vertex.author)
        if key is not None and (checked_key is None or not same_key(checked_key, key)):
            check_signature(vertex, key)
        if self.max_orphans == 0 or len(vertex.raw) > self.max_orphan_bytes:
            return pending  # buffering disabled / cannot fit: the caller may fetch and retry
        if self._orphans_of.get(vertex.author, 0) >= self.max_orphans_per_author:
            # The author (or whoever forges its id while its key is unknown) holds its share
            # of the buffer: the newest is refused, not the buffered ones evicted.
            return IngestResult(IngestStatus.REJECTED, vertex.id, "orphan-author-cap")
        k = db.execute(
            "INSERT INTO orphans (id, raw, received_ms, verified) VALUES (?, ?, ?, ?)",
            (vertex.id, vertex.raw, now_ms, int(key is not None)),
        ).lastrowid
        db.executemany(
            "INSERT INTO orphan_missing (missing, orphan) VALUES (?, ?)",
            [(m, k) for m in missing],
        )
        self._awaited.update(missing)
        self._orphans += 1
        self._orphan_bytes += len(vertex.raw)
        self._count_orphan(int(k or 0), vertex.author)  # an INSERT always sets lastrowid
        while self._orphans > self.max_orphans or self._orphan_bytes > self.max_orphan_bytes:
            row = db.execute("SELECT k, length(raw) FROM orphans ORDER BY k LIMIT 1").fetchone()
            self._delete_orphan(row[0], row[1])
        if len(self._awaited) > 2 * MAX_PARENTS * self._orphans + 64:
            # Evicted orphans' ids stay until the buffer empties, which a steady stream of
            # orphans (a peer's churn) may never let happen: rebuild the set from the table
            # (at most MAX_PARENTS ids per orphan), once per that many surplus ids at most.
            self._awaited = {
                row[0] for row in db.execute("SELECT DISTINCT missing FROM orphan_missing")
            }
        return pending

    def _release(
        self, arrived: bytes
    ) -> tuple[tuple[bytes, ...], tuple[tuple[bytes, str], ...], tuple[bytes, ...]]:
        """Accept every orphan whose last missing parent is now stored (transitively).
        Returns (released ids, dropped (id, reason), authors of released equivocations)."""
        db = self._conn
        released: list[bytes] = []
        dropped: list[tuple[bytes, str]] = []
        equivocators: list[bytes] = []
        queue = [arrived]
        while queue and self._orphans:
            parent = queue.pop()
            if parent not in self._awaited:
                continue
            self._awaited.discard(parent)
            waiting = [
                row[0]
                for row in db.execute(
                    "SELECT orphan FROM orphan_missing WHERE missing = ? ORDER BY orphan",
                    (parent,),
                )
            ]
            if not waiting:
                continue
            db.execute("DELETE FROM orphan_missing WHERE missing = ?", (parent,))
            for k in waiting:
                if db.execute(
                    "SELECT 1 FROM orphan_missing WHERE orphan = ? LIMIT 1", (k,)
                ).fetchone():
                    continue
                raw, verified = db.execute(
                    "SELECT raw, verified FROM orphans WHERE k = ?", (k,)
                ).fetchone()
                self._delete_orphan(k, len(raw))
                # It was fully decoded on arrival (payload decoders included): the bytes are ours.
                vertex = decode_vertex(raw)
                parents: dict[bytes, ParentInfo] = {}
                for pid in vertex.parents:
                    meta = self._lookup(pid)
                    if meta is None:  # cannot happen: every arrival clears its rows
                        raise AssertionError("released orphan with a missing parent")
                    parents[pid] = meta
                try:
                    # The clock rule was checked on arrival (at its own now_ms).
                    if self._accept(vertex, parents, None, verified=bool(verified)):
                        equivocators.append(vertex.author)
                except VertexError as exc:
                    dropped.append((vertex.id, exc.reason))
                    continue
                released.append(vertex.id)
                queue.append(vertex.id)
        return tuple(released), tuple(dropped), tuple(equivocators)

    def drop_orphans_waiting_on(self, missing: Iterable[bytes]) -> list[bytes]:
        """Forget the orphans that wait for any of `missing` (ids nobody would serve us).

        Why: an orphan whose parent was invented, or withheld by its only holder, would
        otherwise sit in the bounded buffer until newer orphans push it out, and its missing
        parent would be asked for again on every tick. Returns the dropped orphans' ids.
        """
        wanted = list(missing)
        if not wanted or not self._orphans:
            return []
        db = self._db
        dropped: list[bytes] = []
        self._begin()
        try:
            for parent in wanted:
                rows = db.execute(
                    "SELECT o.k, o.id, length(o.raw) FROM orphans o "
                    "JOIN orphan_missing m ON m.orphan = o.k WHERE m.missing = ?",
                    (parent,),
                ).fetchall()
                for k, vid, size in rows:
                    self._delete_orphan(k, size)
                    dropped.append(vid)
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return dropped

    # ------------------------------------------------------------------ verifications

    def record_verification(
        self, template_id: bytes, verifier: bytes, fitness: float, verdict: str, ts_ms: int
    ) -> None:
        """Record a re-measurement made locally (not from an attestation vertex)."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict is one of {VERDICTS}")
        if len(template_id) != ID_SIZE or len(verifier) != ID_SIZE:
            raise ValueError("template and verifier are 32-byte ids")
        if not math.isfinite(fitness):
            raise ValueError("fitness must be finite")
        self._begin()
        try:
            self._db.execute(
                "INSERT INTO verifications (template, verifier, fitness, verdict, ts_ms, vertex) "
                "VALUES (?, ?, ?, ?, ?, NULL)",
                (template_id, verifier, float(fitness), verdict, ts_ms),
            )
            self._commit()
        except BaseException:
            self._rollback()
            raise

    def verifications(self, template_id: bytes) -> list[Verification]:
        rows = self._db.execute(
            "SELECT ver.template, ver.verifier, ver.fitness, ver.verdict, ver.ts_ms, v.id "
            "FROM verifications ver LEFT JOIN vertices v ON v.n = ver.vertex "
            "WHERE ver.template = ? ORDER BY ver.ts_ms, ver.verifier, ver.rowid",
            (template_id,),
        )
        return [Verification(*row) for row in rows]

    def verdicts_by(self, verifier: bytes) -> list[tuple[bytes, str]]:
        """(template id, verdict) of every re-measurement by `verifier`, attested or recorded
        locally, in the order they were made."""
        rows = self._db.execute(
            "SELECT template, verdict FROM verifications WHERE verifier = ? ORDER BY ts_ms, rowid",
            (verifier,),
        )
        return [(bytes(t), str(v)) for t, v in rows]

    def templates(
        self,
        task: str,
        limit: int = 20,
        *,
        task_version: int | None = None,
        trusted: Iterable[bytes] | Literal["unflagged-authors"] | None = None,
        distrusted: Iterable[bytes] = (),
        include_unverified: bool = True,
    ) -> list[TemplateEntry]:
        """Templates of `task`, best first, as the evolution loop samples migrants.

        Rule (docs/vertex-format.md, "Template ordering"): only verifications by `trusted`
        verifiers count (None = every verifier, local records and attestations alike). A
        template is excluded if its author is flagged (equivocation) or if any counted
        verification says "invalid". Its verified fitness is the *minimum* re-measured fitness
        over counted "valid" verdicts (the most pessimistic honest measurement). Verified
        templates come first by verified fitness (descending), then, if `include_unverified`,
        unverified ones by claimed fitness (descending); ties by id ascending.

        `trusted="unflagged-authors"` trusts every stored author that is not flagged, and
        `distrusted` removes verifiers from whatever `trusted` allows: the same answer as
        listing those authors, without copying every author row (with their 1,952-byte keys)
        out of the store at each call.
        """
        params: list[Any] = [task]
        version_sql = ""
        if task_version is not None:
            version_sql = " AND t.task_version = ?"
            params.append(task_version)
        # The unary + keeps SQLite from driving the `verifications_template (template,
        # verifier)` index with the trusted list, one probe per template *and* trusted author
        # (quadratic: ~1 M probes per call on a 1,000-peer ledger); it finds a template's
        # few verdicts by template and tests each verifier against the list instead.
        trust_sql = ""
        trust_params: list[Any] = []
        if trusted == "unflagged-authors":
            trust_sql = " AND +ver.verifier IN (SELECT author FROM authors WHERE flagged = 0)"
        elif trusted is not None:
            trust_list = sorted(set(trusted))
            trust_sql = f" AND +ver.verifier IN ({','.join('?' * len(trust_list))})"
            trust_params = list(trust_list)
            if not trust_list:
                trust_sql = " AND 0"
        distrust_list = sorted(set(distrusted))
        if distrust_list:
            trust_sql += f" AND ver.verifier NOT IN ({','.join('?' * len(distrust_list))})"
            trust_params += distrust_list
        having = "" if include_unverified else " AND vf IS NOT NULL"
        source = "templates t JOIN vertices v ON v.n = t.n"
        source_params: list[Any] = []
        if not include_unverified:
            # Start from the (few) valid verdicts, not from every template of the task
            # (CROSS JOIN fixes that loop order in SQLite): the daemon asks this on every tick,
            # and scanning a 20,000-template ledger took a large share of a catching-up
            # node's CPU.
            trust_filter = trust_sql.replace("ver.verifier", "verifier")
            source = (
                "(SELECT DISTINCT template FROM verifications WHERE verdict = 'valid'"
                f"{trust_filter}) vv CROSS JOIN vertices v ON v.id = vv.template "
                "JOIN templates t ON t.n = v.n"
            )
            source_params = list(trust_params)
        sql = (
            "SELECT v.id, v.author, t.task, t.task_version, t.fitness, "
            "  min(CASE WHEN ver.verdict = 'valid' THEN ver.fitness END) AS vf, "
            "  count(CASE WHEN ver.verdict = 'valid' THEN 1 END), "
            "  count(CASE WHEN ver.verdict = 'invalid' THEN 1 END) AS bad "
            f"FROM {source} "
            "JOIN authors a ON a.author = v.author "
            f"LEFT JOIN verifications ver ON ver.template = v.id{trust_sql} "
            f"WHERE t.task = ?{version_sql} AND a.flagged = 0 "
            "GROUP BY t.n "
            f"HAVING bad = 0{having} "
            "ORDER BY vf IS NULL, vf DESC, t.fitness DESC, v.id "
            "LIMIT ?"
        )
        rows = self._db.execute(sql, [*source_params, *trust_params, *params, max(0, limit)])
        return [TemplateEntry(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

    # ------------------------------------------------------------------ queries

    def get(self, vid: bytes) -> bytes | None:
        """The wire bytes of a stored vertex, or None."""
        if self._blobs is not None and self._meta_complete and (self._deferred or not self._in_tx):
            # The in-memory metadata says whether we hold it: no statement (the core reads a
            # vertex back two or three times per ingest). Deferred ingests count as stored:
            # any query that could disagree commits them first.
            return None if vid not in self._meta else self._raw(vid, b"")
        row = self._db.execute("SELECT raw FROM vertices WHERE id = ?", (vid,)).fetchone()
        return None if row is None else self._raw(vid, row[0])

    def _raw(self, vid: bytes, column: bytes) -> bytes:
        """A stored vertex's bytes from its `raw` column, or from the blob store."""
        if self._blobs is None:
            return bytes(column)
        raw = self._blobs.get(vid)
        if raw is None:
            raise StoreError(f"vertex {vid.hex()} is stored but its bytes are not in the blobs")
        return raw

    def vertex(self, vid: bytes) -> Vertex | None:
        """A stored vertex, decoded (it was validated when it was stored, so registered payload
        decoders are not run again: `verify_all` is the full re-check)."""
        raw = self.get(vid)
        return None if raw is None else decode_vertex(raw)

    def has(self, vid: bytes) -> bool:
        return self._lookup(vid) is not None

    def missing(self, ids: Iterable[bytes]) -> list[bytes]:
        """Which of `ids` are not stored (input order, each once): what to fetch from a peer."""
        seen: set[bytes] = set()
        out: list[bytes] = []
        for vid in ids:
            if vid not in seen:
                seen.add(vid)
                if self._lookup(vid) is None:
                    out.append(vid)
        return out

    def count(self) -> int:
        return int(self._count)

    def author_count(self) -> int:
        """Authors whose identity vertex we hold."""
        return int(self._db.execute("SELECT COUNT(*) FROM authors").fetchone()[0])

    def orphan_count(self) -> int:
        return int(self._orphans)

    def orphan_ids(self) -> list[bytes]:
        return [r[0] for r in self._db.execute("SELECT id FROM orphans ORDER BY k")]

    def wanted(self, limit: int = 256) -> list[bytes]:
        """Ids that buffered orphans wait for and nobody has given us yet (fetch these)."""
        if not self._orphans:
            return []  # orphan_missing rows cascade with their orphans: none without one
        rows = self._db.execute(
            "SELECT DISTINCT missing FROM orphan_missing "
            "WHERE missing NOT IN (SELECT id FROM orphans) ORDER BY missing LIMIT ?",
            (limit,),
        )
        return [r[0] for r in rows]

    def tips(self) -> list[bytes]:
        """Stored vertices without stored children, sorted by id."""
        rows = self._db.execute(
            "SELECT v.id FROM tips t JOIN vertices v ON v.n = t.n ORDER BY v.id"
        )
        return [r[0] for r in rows]

    def heads(self) -> list[Head]:
        """Each author's latest vertex (highest seq), sorted by author."""
        rows = self._db.execute(
            "SELECT v.author, v.seq, v.id FROM vertices v JOIN "
            "(SELECT author, max(seq) AS s FROM vertices GROUP BY author) m "
            "ON v.author = m.author AND v.seq = m.s ORDER BY v.author, v.id"
        )
        heads: list[Head] = []
        for author, seq, vid in rows:
            if heads and heads[-1].author == author:
                last = heads[-1]
                heads[-1] = Head(author, seq, (*last.ids, vid))
            else:
                heads.append(Head(author, seq, (vid,)))
        return heads

    def last_seq(self, author: bytes) -> int:
        """The highest seq of `author`'s stored vertices (-1: none); from memory, no query."""
        return int(self._max_seq.get(author, -1))

    def next_seq(self, author: bytes) -> int:
        """The seq an author's next vertex should have (0: publish the identity vertex)."""
        row = self._db.execute(
            "SELECT max(seq) FROM vertices WHERE author = ?", (author,)
        ).fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def parents_for(self, author: bytes, limit: int = MAX_PARENTS) -> list[bytes]:
        """Parents for `author`'s next vertex: its own latest vertex (required by the seq
        chain) plus the deepest tips, at most `limit`, sorted (ready for `make_vertex`)."""
        chosen: list[bytes] = []
        own = self._db.execute(
            "SELECT id FROM vertices WHERE author = ? ORDER BY seq DESC, id LIMIT 1", (author,)
        ).fetchone()
        if own is not None:
            chosen.append(own[0])
        for (vid,) in self._db.execute(
            "SELECT v.id FROM tips t JOIN vertices v ON v.n = t.n ORDER BY v.depth DESC, v.id"
        ):
            if len(chosen) >= limit:
                break
            if vid not in chosen:
                chosen.append(vid)
        return sorted(chosen)

    def _n_of(self, vid: bytes) -> int:
        meta = self._lookup(vid)
        if meta is None:
            raise KeyError(vid.hex())
        return meta.n

    def ancestors(self, vid: bytes) -> list[bytes]:
        """Every vertex reachable through parents (excluding `vid`), in topological order."""
        rows = self._db.execute(
            "WITH RECURSIVE a(n) AS (SELECT parent FROM edges WHERE child = ? "
            "UNION SELECT e.parent FROM edges e JOIN a ON e.child = a.n) "
            "SELECT v.id FROM a JOIN vertices v ON v.n = a.n ORDER BY v.depth, v.id",
            (self._n_of(vid),),
        )
        return [r[0] for r in rows]

    def descendants(self, vid: bytes) -> list[bytes]:
        """Every stored vertex that has `vid` as an ancestor, in topological order."""
        rows = self._db.execute(
            "WITH RECURSIVE d(n) AS (SELECT child FROM edges WHERE parent = ? "
            "UNION SELECT e.child FROM edges e JOIN d ON e.parent = d.n) "
            "SELECT v.id FROM d JOIN vertices v ON v.n = d.n ORDER BY v.depth, v.id",
            (self._n_of(vid),),
        )
        return [r[0] for r in rows]

    def topological_order(self) -> list[bytes]:
        """All stored ids ordered by (depth, id): deterministic, parents before children."""
        return [r[0] for r in self._db.execute("SELECT id FROM vertices ORDER BY depth, id")]

    def iter_raw(self) -> Iterator[bytes]:
        """Wire bytes of every stored vertex in topological order (for export and sync)."""
        for vid, raw in self._db.execute("SELECT id, raw FROM vertices ORDER BY depth, id"):
            yield self._raw(vid, raw)

    def since(self, have: Mapping[bytes, int], limit: int) -> tuple[list[bytes], bool]:
        """The first `since_page` of what an asker holding `have` lacks, as wire bytes."""
        page, more = self.since_page(have, limit)
        return [raw for _, raw in page], more

    def since_page(
        self, have: Mapping[bytes, int], limit: int, after: Cursor | None = None
    ) -> tuple[list[tuple[Cursor, bytes]], bool]:
        """Bulk sync: up to `limit` vertices the asker lacks, parents first, and whether more.

        `have` maps author -> highest seq the asker holds. Because a vertex of seq s lists its
        author's seq s-1 vertex as a parent, an asker holding seq s of an author holds all of
        that author's earlier vertices, so "seq > have[author]" is exactly what it lacks
        (equivocating siblings of a held seq aside: heads and parent fetches cover those).

        Keyset pagination: vertices come in (depth, id) order, each with its cursor; the next
        page starts strictly after the `after` cursor (the last one the asker got, with the
        same `have`), found through the (depth, id) index. A whole paging session therefore
        reads each row once (an earlier version rescanned from the start for every page). The
        scan reads only (author, seq) for rows it skips; vertices stored meanwhile below the
        cursor are not sent (gossip and parent fetches cover them).
        """
        db = self._db
        if after is None:
            # The usual answer to a periodic pull is "nothing": tell that from each author's
            # newest seq (the (author, seq) index, in C) before walking every row in Python.
            newest = db.execute("SELECT author, max(seq) FROM vertices GROUP BY author")
            if all(seq <= have.get(author, -1) for author, seq in newest):
                return [], False
            rows = db.execute("SELECT n, depth, id, author, seq FROM vertices ORDER BY depth, id")
        else:
            rows = db.execute(
                "SELECT n, depth, id, author, seq FROM vertices WHERE (depth, id) > (?, ?) "
                "ORDER BY depth, id",
                after,
            )
        out: list[tuple[Cursor, bytes]] = []
        for n, depth, vid, author, seq in rows:
            if seq <= have.get(author, -1):
                continue
            if len(out) >= limit:
                return out, True
            raw = db.execute("SELECT raw FROM vertices WHERE n = ?", (n,)).fetchone()
            out.append(((depth, vid), self._raw(vid, raw[0])))
        return out, False

    def recent(self, limit: int) -> list[tuple[bytes, int]]:
        """(wire bytes, depth) of the `limit` vertices stored last here, newest first (this
        store's arrival order, which differs between peers; for views, never for protocol)."""
        rows = self._db.execute(
            "SELECT id, raw, depth FROM vertices ORDER BY n DESC LIMIT ?", (max(0, limit),)
        )
        return [(self._raw(vid, raw), int(depth)) for vid, raw, depth in rows]

    def kind_counts(self) -> dict[str, int]:
        """How many stored vertices there are of each kind."""
        rows = self._db.execute("SELECT kind, count(*) FROM vertices GROUP BY kind ORDER BY kind")
        return {str(kind): int(n) for kind, n in rows}

    def template_tasks(self) -> list[str]:
        """Every task some stored template is of, sorted."""
        return [r[0] for r in self._db.execute("SELECT DISTINCT task FROM templates ORDER BY task")]

    def template_claims(self, task: str, limit: int) -> list[tuple[int, float, bytes, bytes]]:
        """(ts_ms, claimed fitness, author, id) of the `limit` newest templates of `task` by
        their signed timestamp, oldest first: claims, not verdicts."""
        rows = self._db.execute(
            "SELECT ts_ms, fitness, author, id FROM (SELECT v.ts_ms, t.fitness, v.author, v.id "
            "FROM templates t JOIN vertices v ON v.n = t.n WHERE t.task = ? "
            "ORDER BY v.ts_ms DESC, v.id LIMIT ?) ORDER BY ts_ms, id",
            (task, max(0, limit)),
        )
        return [(int(r[0]), float(r[1]), bytes(r[2]), bytes(r[3])) for r in rows]

    def vertex_ids_by(self, author: bytes, kind: str) -> list[bytes]:
        """Ids of `author`'s vertices of `kind`, in seq order."""
        rows = self._db.execute(
            "SELECT id FROM vertices WHERE author = ? AND kind = ? ORDER BY seq, id", (author, kind)
        )
        return [r[0] for r in rows]

    def authors(self) -> list[AuthorInfo]:
        rows = self._db.execute(
            "SELECT a.author, a.public_key, a.flagged, count(v.n), max(v.seq) "
            "FROM authors a JOIN vertices v ON v.author = a.author "
            "GROUP BY a.author ORDER BY a.author"
        )
        return [AuthorInfo(r[0], r[1], bool(r[2]), r[3], r[4]) for r in rows]

    def flagged_authors(self) -> list[bytes]:
        rows = self._db.execute("SELECT author FROM authors WHERE flagged = 1 ORDER BY author")
        return [r[0] for r in rows]

    def public_key(self, author: bytes) -> bytes | None:
        row = self._db.execute(
            "SELECT public_key FROM authors WHERE author = ?", (author,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def equivocations(self) -> list[tuple[bytes, int, tuple[bytes, ...]]]:
        """Evidence: (author, seq, ids) for every (author, seq) held by 2+ vertices."""
        rows = self._db.execute(
            "SELECT v.author, v.seq, v.id FROM vertices v JOIN "
            "(SELECT author, seq FROM vertices GROUP BY author, seq HAVING count(*) > 1) d "
            "ON v.author = d.author AND v.seq = d.seq ORDER BY v.author, v.seq, v.id"
        )
        out: list[tuple[bytes, int, tuple[bytes, ...]]] = []
        for author, seq, vid in rows:
            if out and out[-1][0] == author and out[-1][1] == seq:
                out[-1] = (author, seq, (*out[-1][2], vid))
            else:
                out.append((author, seq, (vid,)))
        return out

    # ------------------------------------------------------------------ integrity

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and truncate it (e.g. after a bulk import)."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    def integrity_check(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def check_invariants(self) -> list[str]:
        """Our own DAG invariants; returns the problems found (empty when all hold).

        Every stored vertex's parents are stored and linked by edges, depths are consistent,
        and the tips table is exactly the set of stored vertices without children.
        """
        db = self._db
        problems: list[str] = []
        dangling = db.execute(
            "SELECT count(*) FROM edges e LEFT JOIN vertices p ON p.n = e.parent WHERE p.n IS NULL"
        ).fetchone()[0]
        if dangling:
            problems.append(f"{dangling} edges point at absent parents")
        for n, vid, depth, raw in db.execute("SELECT n, id, depth, raw FROM vertices ORDER BY n"):
            try:
                vertex = decode_vertex(self._raw(vid, raw))
            except VertexError as exc:
                problems.append(f"{vid.hex()}: stored bytes do not decode ({exc.reason})")
                continue
            if vertex.id != vid:
                problems.append(f"{vid.hex()}: stored id does not match its bytes")
                continue
            linked = db.execute(
                "SELECT p.id, p.depth FROM edges e JOIN vertices p ON p.n = e.parent "
                "WHERE e.child = ?",
                (n,),
            ).fetchall()
            if sorted(r[0] for r in linked) != list(vertex.parents):
                problems.append(f"{vid.hex()}: parents not all stored and linked")
            elif depth != 1 + max((r[1] for r in linked), default=-1):
                problems.append(f"{vid.hex()}: depth {depth} inconsistent")
            if len(problems) >= 20:
                return problems
        expected = {
            r[0]
            for r in db.execute(
                "SELECT v.n FROM vertices v WHERE NOT EXISTS "
                "(SELECT 1 FROM edges e WHERE e.parent = v.n)"
            )
        }
        actual = {r[0] for r in db.execute("SELECT n FROM tips")}
        if expected != actual:
            problems.append(
                f"tips table differs from childless vertices ({len(actual)} vs {len(expected)})"
            )
        return problems

    def verify_all(self) -> VerifyReport:
        """Re-verify every stored vertex from its bytes (id, signature, parents, seq chain).

        A vertex that fails is counted once; its descendants are judged on their own (they
        refer to it by its stored id), so one corrupt row does not cascade.
        """
        problems: list[str] = []
        invalid = 0
        known: dict[bytes, ParentInfo] = {}
        keys: dict[bytes, PublicKey] = {}
        total = 0
        for stored_id, raw in self._db.execute("SELECT id, raw FROM vertices ORDER BY depth, id"):
            total += 1
            try:
                vertex = decode_vertex(self._raw(stored_id, raw), decoders=self.decoders)
            except VertexError as exc:
                invalid += 1
                if len(problems) < 20:
                    problems.append(f"vertex {stored_id.hex()}: {exc}")
                continue
            infos: dict[bytes, ParentInfo] = {}
            try:
                for pid in vertex.parents:
                    info = known.get(pid)
                    if info is None:
                        raise VertexError("missing-parent", pid.hex())
                    infos[pid] = info
                if vertex.id != stored_id:
                    raise VertexError("id-mismatch", "stored id is not the hash of the bytes")
                check_parents(vertex, infos)
                if vertex.kind == KIND_IDENTITY:
                    key = load_public_key(vertex.payload["public_key"])
                    keys.setdefault(vertex.author, key)
                elif vertex.author in keys:
                    key = keys[vertex.author]
                else:
                    raise VertexError("unknown-author")
                check_signature(vertex, key)
            except VertexError as exc:
                invalid += 1
                if len(problems) < 20:
                    problems.append(f"vertex {stored_id.hex()}: {exc}")
            known[stored_id] = ParentInfo(vertex.author, vertex.seq, vertex.kind, depth_of(infos))
        problems.extend(self.check_invariants()[: max(0, 20 - len(problems))])
        tips = self._db.execute("SELECT count(*) FROM tips").fetchone()[0]
        return VerifyReport(total, invalid, self._orphans, tips, tuple(problems))


def ledger_path(data_dir: str | os.PathLike[str]) -> Path:
    """Where a node keeps its ledger inside its data directory."""
    return Path(data_dir) / "ledger.sqlite3"
