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

- Vertex bytes in a segment file beside the ledger file, not in SQLite rows: written once
  instead of twice (WAL, then checkpoint); dag/segment.py says how it stays crash safe.

The parts: dag/schema.py (tables), dag/records.py (the values handed out), dag/store_base.py
(shared state and transactions), dag/segment.py (the vertex bytes file), dag/ingest.py
(ingest and the orphan buffer: ingest never raises for hostile bytes), dag/trust.py (verdicts
and migrant ordering), dag/integrity.py (re-checks from the bytes).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType

from qudag.dag.ingest import Ingest
from qudag.dag.integrity import Integrity
from qudag.dag.payloads import MAX_PARENTS, NO_DECODERS, PayloadDecoders
from qudag.dag.records import AuthorInfo, BlobStore, Cursor, Head, StoreError
from qudag.dag.schema import ensure_schema
from qudag.dag.segment import Segment, segment_path
from qudag.dag.store_base import (
    DEFAULT_MAX_ORPHAN_BYTES,
    DEFAULT_MAX_ORPHANS,
    DEFAULT_MAX_ORPHANS_PER_AUTHOR,
    DEFAULT_META_CACHE,
)
from qudag.dag.trust import TrustQueries
from qudag.dag.validate import DEFAULT_MAX_SKEW_MS
from qudag.dag.vertex import Vertex, decode_vertex


class Store(Ingest, TrustQueries, Integrity):
    """A ledger file. Not thread-safe: one Store per thread (open the file again elsewhere)."""

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

        Vertex bytes go to the segment file beside the ledger file (`dag.segment`); a
        version 1 file (bytes in its rows) is upgraded and read as it is. `blobs`: keep
        vertex bytes there instead (see `BlobStore`; a file must always be opened with the
        same choice). An in-memory ledger (`":memory:"`) keeps them in its rows.

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
            ensure_schema(db)
            segment = None if blobs is not None else _open_segment(db, path)
            return cls(
                db,
                max_orphans=max_orphans,
                max_orphan_bytes=max_orphan_bytes,
                max_orphans_per_author=max_orphans_per_author,
                max_skew_ms=max_skew_ms,
                meta_cache=meta_cache,
                synchronous=synchronous,
                blobs=blobs,
                segment=segment,
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
        if self._segment is not None:
            self._segment.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ queries

    def get(self, vid: bytes) -> bytes | None:
        """The wire bytes of a stored vertex, or None."""
        if self._blobs is not None and self._meta_complete and (self._deferred or not self._in_tx):
            # The in-memory metadata says whether we hold it: no statement (the core reads a
            # vertex back two or three times per ingest). Deferred ingests count as stored:
            # any query that could disagree commits them first.
            return None if vid not in self._meta else self._raw(vid, b"", None, None)
        row = self._db.execute(
            "SELECT raw, seg_off, seg_len FROM vertices WHERE id = ?", (vid,)
        ).fetchone()
        return None if row is None else self._raw(vid, *row)

    def vertex(self, vid: bytes) -> Vertex | None:
        """A stored vertex, decoded (it was validated when it was stored, so registered payload
        decoders are not run again: `verify_all` is the full re-check)."""
        raw = self.get(vid)
        return None if raw is None else decode_vertex(raw)

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

    def children(self, vid: bytes, limit: int = 64) -> list[tuple[bytes, bytes]]:
        """(id, author) of up to `limit` stored vertices that list `vid` as a parent (signed
        after it), sorted by id."""
        meta = self._lookup(vid)
        if meta is None:
            return []
        rows = self._db.execute(
            "SELECT v.id, v.author FROM edges e JOIN vertices v ON v.n = e.child "
            "WHERE e.parent = ? ORDER BY v.id LIMIT ?",
            (meta.n, max(0, limit)),
        )
        return [(bytes(r[0]), bytes(r[1])) for r in rows]

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
        for vid, *where in self._db.execute(
            "SELECT id, raw, seg_off, seg_len FROM vertices ORDER BY depth, id"
        ):
            yield self._raw(vid, *where)

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
            where = db.execute(
                "SELECT raw, seg_off, seg_len FROM vertices WHERE n = ?", (n,)
            ).fetchone()
            out.append(((depth, vid), self._raw(vid, *where)))
        return out, False

    def recent(self, limit: int) -> list[tuple[bytes, int]]:
        """(wire bytes, depth) of the `limit` vertices stored last here, newest first (this
        store's arrival order, which differs between peers; for views, never for protocol)."""
        rows = self._db.execute(
            "SELECT id, raw, seg_off, seg_len, depth FROM vertices ORDER BY n DESC LIMIT ?",
            (max(0, limit),),
        )
        return [
            (self._raw(vid, raw, off, length), int(depth)) for vid, raw, off, length, depth in rows
        ]

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

    def task_vertex_ids(self) -> list[bytes]:
        """Ids of the stored `task` vertices, in this store's arrival order (the partial
        index `vertices_kind_task`, dag/schema.py)."""
        # 'task' (= payloads.KIND_TASK) as a literal: SQLite uses a partial index only for a
        # query whose condition matches the index's as written.
        rows = self._db.execute("SELECT id FROM vertices WHERE kind = 'task' ORDER BY n")
        return [r[0] for r in rows]

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


def _open_segment(db: sqlite3.Connection, path: str | os.PathLike[str]) -> Segment | None:
    """The segment file of the ledger at `path` (None in memory); `StoreError` if rows
    point into one that is gone (a ledger file copied without it)."""
    if os.fspath(path) in (":memory:", ""):
        return None
    where = segment_path(path)
    size = int(db.execute("SELECT size FROM segment").fetchone()[0])
    if size and not where.exists():
        raise StoreError(
            f"ledger {os.fspath(path)!r} keeps {size} bytes of vertices in {where.name}, "
            "which is missing (copy a ledger with its -vertices file, or use dag export)"
        )
    return Segment(where)


def ledger_path(data_dir: str | os.PathLike[str]) -> Path:
    """Where a node keeps its ledger inside its data directory."""
    return Path(data_dir) / "ledger.sqlite3"
