"""The state every part of the ledger store shares: connection, memory caches, transactions.

`Store` is composed of focused parts (dag/ingest.py, dag/trust.py, dag/integrity.py) that all
derive from `StoreBase`, so each part reads and writes the same caches and the same buffered
transaction without reaching into another part.
"""

import sqlite3
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from qudag.dag.payloads import NO_DECODERS, PayloadDecoders, payload_decoders
from qudag.dag.records import BlobStore, StoreError
from qudag.dag.segment import Segment
from qudag.dag.validate import KeyCache, ParentInfo
from qudag.dag.vertex import decode_vertex

DEFAULT_MAX_ORPHANS = 10_000
DEFAULT_MAX_ORPHAN_BYTES = 64 * 1024 * 1024
# Orphans one author may hold in the buffer (issue 17): signed vertices with invented parents
# are cheap to make, and without this one author (or forger) filled every honest buffer.
DEFAULT_MAX_ORPHANS_PER_AUTHOR = 64
DEFAULT_META_CACHE = 200_000  # vertices whose (n, author, seq, kind, depth) stay in memory
DEFAULT_BATCH = 1000


class StoreBase:
    """Writes of accepted vertices are buffered in memory within a transaction and flushed with
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
        segment: Segment | None = None,
        defer_commit: bool = False,
        decoders: PayloadDecoders = NO_DECODERS,
    ) -> None:
        self._conn = db  # the ingest path's own handle; every other query goes through `_db`
        self.decoders = payload_decoders(decoders)  # run on every arriving vertex's payload
        self._blobs = blobs
        # Where the bytes of vertices stored in bulk go (dag/segment.py); None: the `raw`
        # column or `blobs`. Why bulk only: the segment is synced before each commit, and an
        # `fdatasync` (a journal commit on ext4) costs several times a whole `ingest` in wall
        # time (`benchmarks/bench_ingest.py --single` measures both); a batch pays it once per
        # 1,000 vertices. A single `ingest` keeps its bytes in the row, as SQLite's own WAL
        # commit makes them safe without a sync of ours.
        self._segment = segment
        self._bulk = False  # inside `ingest_many` / `ingest_prechecked`
        # Whether this transaction has cut the segment to its committed size (the step before
        # its first offset is handed out), and whether the next transaction must cut it
        # anyway: at the first one after open (a killed writer's tail goes at once) and
        # after a rollback of bytes this store wrote.
        self._seg_ready = False
        self._seg_cut_due = segment is not None
        self._seg_size = 0  # the segment's size as this transaction has written it
        self._seg_pending: list[bytes] = []  # accepted bytes not written yet, in order
        self._seg_pending_len = 0
        self._seg_unsynced = False  # written since the last fdatasync
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
        self._seg_pending = []
        self._seg_pending_len = 0
        self._w_vertices: list[tuple[Any, ...]] = []
        self._w_edges: list[tuple[int, int]] = []
        self._w_tips_add: set[int] = set()
        self._w_tips_del: set[int] = set()
        self._w_authors: list[tuple[bytes, bytes, int]] = []
        self._w_templates: list[tuple[int, str, int, float]] = []
        self._w_verifications: list[tuple[Any, ...]] = []
        self._w_flagged: set[bytes] = set()

    def _flush(self) -> None:
        """Write the buffered rows of accepted vertices (FK order: vertices first), their
        bytes to the segment file first."""
        if not self._w_vertices and not self._w_flagged:
            return
        if self._seg_pending and self._segment is not None:
            self._segment.write(self._seg_size, self._seg_pending)
            self._seg_size += self._seg_pending_len
            self._seg_unsynced = True
            self._conn.execute("UPDATE segment SET size = ? WHERE k = 0", (self._seg_size,))
        # One executemany per non-empty list: most ingests fill two or three of the eight,
        # and an empty executemany still costs a statement (docs/benchmarks.md, "Simulation":
        # the profile of `benchmarks/bench_simulation.py` where that showed).
        writes: tuple[tuple[str, Iterable[Any]], ...] = (
            (
                "INSERT INTO vertices (n, id, author, seq, ts_ms, kind, depth, raw, seg_off, "
                "seg_len) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        self._seg_ready = False
        if self._seg_cut_due:
            try:
                self._seg_start()
            except BaseException:
                self._rollback()
                raise

    def _seg_start(self) -> None:
        """Cut the segment file to its committed size and write from there: called under the
        write lock, before this transaction hands out its first offset (`Ingest._accept`).

        Bytes past the committed size belong to a transaction that never committed (here or
        in another process); no row points at them, and no other store can be writing there
        while we hold the lock. A transaction that writes no segment bytes (a single
        `ingest`, trust writes) skips this: it neither reads nor moves the committed size.
        """
        assert self._segment is not None and self._in_tx
        size = int(self._conn.execute("SELECT size FROM segment").fetchone()[0])
        self._segment.cut(size)
        self._seg_size = size
        self._seg_ready = True
        self._seg_cut_due = False

    def _commit(self) -> None:
        self._flush()
        if self._seg_unsynced and self._segment is not None:
            # A committed row must never point at bytes a crash or power loss can lose.
            self._segment.sync()
            self._seg_unsynced = False
        self._conn.execute("COMMIT")
        self._in_tx = False
        self._deferred = False
        self._seg_ready = False

    def _rollback(self) -> None:
        self._seg_unsynced = False  # the written bytes are past the committed size now
        if self._seg_ready:  # they may be on disk: the next transaction cuts them
            self._seg_cut_due = True
            self._seg_ready = False
        self._reset_writes()
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        self._in_tx = False
        self._deferred = False
        self._load_counters()  # memory caches may hold rolled-back vertices

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

    def has(self, vid: bytes) -> bool:
        """Whether the vertex is stored (from memory while the metadata cache holds all)."""
        return self._lookup(vid) is not None

    def _count_orphan(self, k: int, author: bytes) -> None:
        self._orphan_author[k] = author
        self._orphans_of[author] = self._orphans_of.get(author, 0) + 1

    def _raw(self, vid: bytes, column: bytes, offset: int | None, length: int | None) -> bytes:
        """A stored vertex's bytes (its row's `raw, seg_off, seg_len`): from the segment
        file, its `raw` column, or the blob store."""
        if offset is not None and length is not None:
            if self._segment is None:
                raise StoreError(f"vertex {vid.hex()} is in a segment file this store lacks")
            return self._segment.read(offset, length)
        if self._blobs is None:
            return bytes(column)
        raw = self._blobs.get(vid)
        if raw is None:
            raise StoreError(f"vertex {vid.hex()} is stored but its bytes are not in the blobs")
        return raw
