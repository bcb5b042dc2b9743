"""Vertex bytes in the segment file beside the ledger (dag/segment.py): what a user keeps.

A ledger written before the segment file existed still opens and reads, and takes new
vertices; bytes a transaction wrote but never committed are cut before the next write; two
stores writing one ledger never write over each other's bytes; a ledger whose segment file
is missing or damaged says so instead of handing out wrong bytes. The SIGKILL test of
tests/test_dag_crash.py covers the segment as well.
"""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

import pytest
from dag_helpers import NOW_MS, random_dag

from qudag.dag import segment
from qudag.dag.records import BatchRejected, StoreError
from qudag.dag.schema import SCHEMA_VERSION
from qudag.dag.segment import segment_path
from qudag.dag.store import Store
from qudag.dag.vertex import decode_vertex


def _committed_size(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT size FROM segment").fetchone()[0])


def _version_1_ledger(path: Path, raws: tuple[bytes, ...]) -> None:
    """A ledger in the version 1 layout (vertex bytes in the `raw` column, no segment),
    filled by the store itself in memory, then written out with those columns removed."""
    with Store.open(":memory:") as memory:
        memory.ingest_many(raws, NOW_MS)
        memory._db.execute("VACUUM INTO ?", (str(path),))
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE vertices DROP COLUMN seg_off")
        db.execute("ALTER TABLE vertices DROP COLUMN seg_len")
        db.execute("DROP TABLE segment")
        db.execute("PRAGMA user_version=1")


def test_a_version_1_ledger_is_upgraded_and_reads_both_kinds_of_rows(tmp_path: Path) -> None:
    dag = random_dag()
    path = tmp_path / "old.sqlite3"
    half = len(dag.raws) // 2
    _version_1_ledger(path, dag.raws[:half])
    with Store.open(path) as store:
        assert store.count() == half
        assert [store.get(i) for i in dag.ids[:half]] == list(dag.raws[:half])
        results = store.ingest_many(dag.raws[half:], NOW_MS)
        assert all(r.accepted for r in results)
    assert segment_path(path).stat().st_size == sum(len(r) for r in dag.raws[half:])
    with Store.open(path) as store, sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        in_rows = db.execute("SELECT count(*) FROM vertices WHERE seg_off IS NULL").fetchone()
        assert in_rows[0] == half
        assert [store.get(i) for i in dag.ids] == list(dag.raws)
        assert sorted(store.iter_raw()) == sorted(dag.raws)
        report = store.verify_all()
        assert report.vertices == len(dag.raws) and report.invalid == 0 and not report.problems


def test_uncommitted_bytes_are_cut_before_the_next_write(tmp_path: Path) -> None:
    dag = random_dag()
    path = tmp_path / "l.sqlite3"
    with Store.open(path) as store:
        store.ingest_many(dag.raws[:10], NOW_MS)
    size = _committed_size(path)
    assert segment_path(path).stat().st_size == size
    # What a writer killed between its segment write and its commit leaves behind.
    with segment_path(path).open("ab") as handle:
        handle.write(b"\xff" * 777)
    with Store.open(path) as store:
        assert store.verify_all().invalid == 0  # readers never look past the rows
        store.ingest_many(dag.raws[10:20], NOW_MS)
        assert [store.get(i) for i in dag.ids[:20]] == list(dag.raws[:20])
    assert segment_path(path).stat().st_size == _committed_size(path)
    assert _committed_size(path) == size + sum(len(r) for r in dag.raws[10:20])
    # A rolled-back batch (an atomic import with a bad vertex) leaves nothing referenced.
    # A one-entry metadata cache makes each parent lookup a query, so rows and bytes are
    # written before the bad vertex rolls the transaction back.
    bad = dag.raws[25][:-1] + bytes([dag.raws[25][-1] ^ 1])
    with Store.open(path, meta_cache=1) as store:
        with pytest.raises(BatchRejected):
            store.ingest_many([*dag.raws[20:25], bad], NOW_MS, atomic=True)
        assert store.missing(dag.ids[20:25]) == list(dag.ids[20:25])
        assert segment_path(path).stat().st_size > _committed_size(path)
        store.ingest_many(dag.raws[20:], NOW_MS)
        assert store.check_invariants() == []
        assert [store.get(i) for i in dag.ids] == list(dag.raws)
    assert segment_path(path).stat().st_size == sum(len(r) for r in dag.raws)


def test_a_tail_is_never_built_on_and_goes_at_the_next_open_or_batch(tmp_path: Path) -> None:
    """Bytes past the committed size (a batch that never committed) are left alone by
    transactions that write no segment bytes, and cut by the next batch before it places its
    own at the committed size: every vertex reads back, and the file ends where the rows say.
    A store opened on a ledger with such a tail (its writer was killed) cuts it in its first
    write transaction, whatever that writes."""
    dag = random_dag()
    path = tmp_path / "l.sqlite3"
    tail = b"\xff" * 500_000  # longer than the next batch: it must be cut, not overwritten
    with Store.open(path) as store:
        store.ingest_many(dag.raws[:10], NOW_MS)
        size = _committed_size(path)
        with segment_path(path).open("ab") as handle:
            handle.write(tail)
        for raw in dag.raws[10:15]:
            assert store.ingest(raw, NOW_MS).accepted
        store.record_verification(dag.ids[3], bytes(32), 0.5, "valid", NOW_MS)
        assert _committed_size(path) == size
        assert segment_path(path).stat().st_size == size + len(tail)
        assert store.verify_all().invalid == 0
        store.ingest_many(dag.raws[15:25], NOW_MS)
        assert _committed_size(path) == size + sum(len(r) for r in dag.raws[15:25])
        assert segment_path(path).stat().st_size == _committed_size(path)
        assert [store.get(i) for i in dag.ids[:25]] == list(dag.raws[:25])
    with segment_path(path).open("ab") as handle:
        handle.write(tail)
    with Store.open(path) as store:
        assert store.ingest(dag.raws[25], NOW_MS).accepted
        assert segment_path(path).stat().st_size == _committed_size(path)
        report = store.verify_all()
        assert report.vertices == 26 and report.invalid == 0 and not report.problems


def test_a_second_store_on_the_ledger_reads_and_writes_beside_the_writer(
    tmp_path: Path,
) -> None:
    """A second store on one ledger (in a node: the CLI beside the daemon) reads what the
    writer committed, and its own write transactions (a local verdict) cut nothing the
    writer committed: each takes the committed size under SQLite's write lock."""
    dag = random_dag()
    path = tmp_path / "l.sqlite3"
    with Store.open(path) as writer, Store.open(path) as other:
        for start in range(0, len(dag.raws), 7):
            writer.ingest_many(dag.raws[start : start + 7], NOW_MS)
            committed = dag.ids[: start + 7]
            assert [other.get(i) for i in committed] == list(dag.raws[: start + 7])
            other.record_verification(committed[-1], bytes(32), 0.5, "valid", NOW_MS)
        assert other.verify_all().invalid == 0
    assert segment_path(path).stat().st_size == sum(len(r) for r in dag.raws)


def test_a_missing_or_damaged_segment_is_reported(tmp_path: Path) -> None:
    dag = random_dag()
    path = tmp_path / "l.sqlite3"
    with Store.open(path) as store:
        store.ingest_many(dag.raws, NOW_MS)
    whole = segment_path(path).read_bytes()
    segment_path(path).write_bytes(whole[: len(whole) // 2])
    with Store.open(path) as store:
        with pytest.raises(StoreError, match="damaged"):
            store.get(dag.ids[-1])
        report = store.verify_all()
        assert report.invalid > 0 and any("damaged" in p for p in report.problems)
    segment_path(path).unlink()
    with pytest.raises(StoreError, match="missing"):
        Store.open(path)


def test_a_memory_ledger_keeps_its_bytes_in_rows() -> None:
    dag = random_dag()
    with Store.open(":memory:") as store:
        store.ingest_many(dag.raws, NOW_MS)
        assert [store.get(i) for i in dag.ids] == list(dag.raws)
        assert (
            store._db.execute("SELECT count(*) FROM vertices WHERE seg_off IS NOT NULL").fetchone()[
                0
            ]
            == 0
        )
        assert decode_vertex(store.get(dag.ids[0]) or b"").id == dag.ids[0]


@pytest.mark.parametrize("short", [False, True])
def test_segment_writes_every_part_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short: bool
) -> None:
    """More parts than one pwritev takes, and (`short`) a kernel that writes only part of
    what it was given: the file still holds every byte, in order, where it was asked."""
    if short:
        real = os.pwritev

        def half(fd: int, parts: list[bytes], offset: int) -> int:
            return real(fd, [b"".join(parts)[: max(1, sum(map(len, parts)) // 2)]], offset)

        monkeypatch.setattr(segment.os, "pwritev", half)
    rng = random.Random(5)
    parts = [rng.randbytes(rng.randint(0, 40)) for _ in range(2500)]
    store = segment.Segment(tmp_path / "s")
    try:
        store.write(7, parts[:1200])
        store.write(7 + sum(map(len, parts[:1200])), parts[1200:])
        whole = b"".join(parts)
        assert store.size() == 7 + len(whole)
        assert store.read(7, len(whole)) == whole
    finally:
        store.close()


def test_single_ingests_keep_their_bytes_in_rows_and_batches_in_the_segment(
    tmp_path: Path,
) -> None:
    """A gossiped vertex (`ingest`) is committed without a sync of the segment file: its
    bytes stay in its row; a batch's go to the segment. Both read back the same."""
    dag = random_dag()
    path = tmp_path / "l.sqlite3"
    with Store.open(path) as store:
        for raw in dag.raws[:10]:
            assert store.ingest(raw, NOW_MS).accepted
        store.ingest_many(dag.raws[10:], NOW_MS)
        assert [store.get(i) for i in dag.ids] == list(dag.raws)
        assert store.verify_all().invalid == 0
    with sqlite3.connect(path) as db:
        in_rows = {r[0] for r in db.execute("SELECT id FROM vertices WHERE seg_off IS NULL")}
    assert in_rows == set(dag.ids[:10])
    assert segment_path(path).stat().st_size == sum(len(r) for r in dag.raws[10:])


def test_a_rolled_back_batchs_bytes_go_at_the_next_write_of_any_kind(tmp_path: Path) -> None:
    """The cut after a rollback does not wait for the next batch: a single gossip ingest
    right after it leaves the file at its committed size (what `dag verify` and a copy of the
    ledger see)."""
    dag = random_dag()
    path = tmp_path / "l.sqlite3"
    bad = dag.raws[5][:-1] + bytes([dag.raws[5][-1] ^ 1])
    with Store.open(path, meta_cache=1) as store:
        store.ingest_many(dag.raws[:2], NOW_MS)
        with pytest.raises(BatchRejected):
            store.ingest_many([*dag.raws[2:5], bad], NOW_MS, atomic=True)
        assert segment_path(path).stat().st_size > _committed_size(path)
        store.ingest(dag.raws[2], NOW_MS)
        assert segment_path(path).stat().st_size == _committed_size(path)
        assert store.check_invariants() == []
