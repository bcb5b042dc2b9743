"""Integrity: re-checking a stored ledger from its bytes (`qudag-node dag verify`).

Kept apart from ingest on purpose: it trusts nothing the ingest path cached, re-deriving ids,
signatures, depths and tips from the rows themselves.
"""

from qudag.dag.errors import VertexError
from qudag.dag.payloads import KIND_IDENTITY
from qudag.dag.records import StoreError, VerifyReport
from qudag.dag.store_base import StoreBase
from qudag.dag.validate import (
    ParentInfo,
    PublicKey,
    check_parents,
    check_signature,
    depth_of,
    load_public_key,
)
from qudag.dag.vertex import decode_vertex


class Integrity(StoreBase):
    """Checks of a stored ledger against its own bytes and the DAG invariants."""

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
        for n, vid, depth, *where in db.execute(
            "SELECT n, id, depth, raw, seg_off, seg_len FROM vertices ORDER BY n"
        ):
            try:
                vertex = decode_vertex(self._raw(vid, *where))
            except VertexError as exc:
                problems.append(f"{vid.hex()}: stored bytes do not decode ({exc.reason})")
                continue
            except StoreError as exc:
                problems.append(f"{vid.hex()}: {exc}")
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
        for stored_id, *where in self._db.execute(
            "SELECT id, raw, seg_off, seg_len FROM vertices ORDER BY depth, id"
        ):
            total += 1
            try:
                vertex = decode_vertex(self._raw(stored_id, *where), decoders=self.decoders)
            except (VertexError, StoreError) as exc:
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
