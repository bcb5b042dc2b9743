"""Ingest and the orphan buffer: how offered vertex bytes become stored vertices.

Ingest never raises for hostile bytes: it returns an `IngestResult`. A vertex whose parents are
not all stored is *pending*: it waits in the bounded orphan buffer (oldest evicted first) and
is validated and accepted automatically when its last missing parent arrives. One author holds
at most `max_orphans_per_author` of that buffer; a further orphan of it is REJECTED
("orphan-author-cap") and may come again once its parents are known.
"""

from collections.abc import Iterable, Iterator

from qudag.dag.errors import VertexError
from qudag.dag.payloads import (
    KIND_ATTESTATION,
    KIND_IDENTITY,
    KIND_TEMPLATE,
    MAX_PARENTS,
    template_index,
)
from qudag.dag.records import BatchRejected, IngestResult, IngestStatus
from qudag.dag.store_base import DEFAULT_BATCH, StoreBase
from qudag.dag.validate import (
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


class Ingest(StoreBase):
    """Offering vertices to the store, and the orphans waiting for their parents."""

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
        nothing). Each chunk of `batch_size` vertices is decoded and its signatures checked
        first (`dag.validate.precheck`, on `workers` threads), then the same rules are
        applied in the same order as one `ingest` per vertex would.
        """
        return self._ingest_items(
            self._prechecked(raws, batch_size, workers), now_ms, batch_size, atomic
        )

    def _prechecked(
        self, raws: Iterable[bytes], chunk_size: int, workers: int
    ) -> Iterator[Prechecked]:
        """Precheck lazily, one chunk at a time: bounded memory, and each chunk sees the keys
        of the identity vertices the previous chunks stored.

        A chunk is also what `workers` threads split between them. On one thread the loop is
        no faster than a check inside each vertex's work (`benchmarks/bench_ingest.py
        --precheck-ab` measures both): one path serves both. A vertex already stored is not
        checked (it is a DUPLICATE, as `ingest` would find before its signature).
        """
        chunk: list[bytes] = []
        for raw in raws:
            chunk.append(raw)
            if len(chunk) >= chunk_size:
                yield from precheck(chunk, self.known_keys(), workers, self.decoders, self.has)
                chunk = []
        if chunk:
            yield from precheck(chunk, self.known_keys(), workers, self.decoders, self.has)

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
        self._bulk = True
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
        finally:
            self._bulk = False
        return results

    def _ingest_one(self, item: bytes | Prechecked, now_ms: int) -> IngestResult:
        checked_key: PublicKey | None = None
        refused: PublicKey | None = None
        if isinstance(item, bytes):
            try:
                vertex = decode_vertex(item, decoders=self.decoders)
            except VertexError as exc:
                return IngestResult(IngestStatus.REJECTED, None, exc.reason)
        elif item.vertex is None:
            return IngestResult(IngestStatus.REJECTED, None, item.error)
        else:
            vertex, checked_key, refused = item.vertex, item.key, item.refused
        if self._lookup(vertex.id) is not None:
            return IngestResult(IngestStatus.DUPLICATE, vertex.id)
        parents: dict[bytes, ParentInfo] = {}
        missing: list[bytes] = []
        cached = self._meta.get  # `_lookup`'s memory answer first: 4-8 parents a vertex
        for parent in vertex.parents:
            meta = cached(parent) or self._lookup(parent)
            if meta is None:
                missing.append(parent)
            else:
                parents[parent] = meta
        try:
            if missing:
                return self._buffer(vertex, missing, now_ms, checked_key, refused)
            equivocation = self._accept(
                vertex, parents, now_ms, verified=False, checked_key=checked_key, refused=refused
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
        refused: PublicKey | None = None,
    ) -> bool:
        """Validate a vertex whose parents are all stored, and store it. Return equivocation.

        The rules are those of `dag.validate.validate`, inlined so that the parent metadata
        and the author key come from this store's caches. `checked_key` / `refused`: the
        signature was already verified / refused with this key (a precheck); that verdict
        stands if it is the author's key (`_check_signature_once`).
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
        if not verified:
            _check_signature_once(vertex, key, checked_key, refused)
        depth = depth_of(parents)
        n = self._next_n
        self._next_n += 1
        raw = vertex.raw
        offset: int | None = None
        length: int | None = None
        if self._segment is not None and self._bulk:
            if not self._seg_ready:
                self._seg_start()
            offset, length = self._seg_size + self._seg_pending_len, len(raw)
            self._seg_pending.append(raw)
            self._seg_pending_len += length
            raw = b""
        elif self._blobs is not None:
            self._blobs.put(vertex.id, raw)
            raw = b""
        self._w_vertices.append(
            (
                n,
                vertex.id,
                author,
                vertex.seq,
                vertex.ts_ms,
                vertex.kind,
                depth,
                raw,
                offset,
                length,
            )
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
        refused: PublicKey | None = None,
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
        if key is not None:
            _check_signature_once(vertex, key, checked_key, refused)
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


def _check_signature_once(
    vertex: Vertex, key: PublicKey, passed: PublicKey | None, refused: PublicKey | None
) -> None:
    """`check_signature` with the author's `key`, unless a precheck already settled it with
    that same key: `passed` it verified with, `refused` it failed with (a forged vertex
    costs one verify, not two, and is refused for the same reason)."""
    if passed is not None and same_key(passed, key):
        return
    if refused is not None and same_key(refused, key):
        raise VertexError("bad-signature")
    check_signature(vertex, key)
