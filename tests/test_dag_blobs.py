"""A store whose vertex bytes live in a shared `BlobStore` behaves exactly like the default one
(and the query shortcuts made for the simulator answer what the general queries answer).

The simulator runs a thousand stores in one process with their bytes in one `SharedBlobs`;
its results mean something only if such a store gives the same answer as a normal ledger file
to every ingest and every query, whatever the delivery order, duplicates, orphans, invalid
vertices, equivocations and rollbacks.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from dag_helpers import NOW_MS, random_dag
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag.dag.records import BatchRejected, SharedBlobs, StoreError
from qudag.dag.store import Store

SEEDS = (0, 1, 2)


def answers(store: Store, ids: list[bytes]) -> tuple[object, ...]:
    """Everything a caller can ask a store (the core, sync, the CLI, verification)."""
    authors = [a.author for a in store.authors()]
    flagged = set(store.flagged_authors())
    for distrusted in [set(), *({a} for a in authors), set(authors)]:  # the core's banned set
        by_list = [a for a in authors if a not in flagged and a not in distrusted]
        by_rule = store.templates(
            "xor", 100, trusted="unflagged-authors", distrusted=distrusted, include_unverified=False
        )
        assert by_rule == store.templates("xor", 100, trusted=by_list, include_unverified=False)
    # the verified-only query's own plan
    for trust in ("every-verifier", "unflagged-authors", authors[1:]):
        full = [
            e for e in store.templates("xor", 1000, trusted=trust) if e.verified_fitness is not None
        ]
        for limit in (1000, 2):
            only = store.templates("xor", limit, trusted=trust, include_unverified=False)
            assert only == full[:limit]
    return (
        store.count(),
        store.topological_order(),
        store.tips(),
        store.heads(),
        store.authors(),
        store.flagged_authors(),
        store.equivocations(),
        store.orphan_count(),
        store.orphan_ids(),
        store.wanted(),
        [store.get(i) for i in ids],
        [store.vertex(i) for i in ids],
        [store.verifications(i) for i in ids],
        list(store.iter_raw()),
        store.since({}, 10_000),
        store.since({a: 1 for a in authors}, 7),
        store.templates("xor", 100, trusted="every-verifier"),
        store.templates("xor", 100, trusted=authors[1:]),
        by_rule,
        store.parents_for(authors[0]) if authors else [],
        store.verify_all(),
        store.check_invariants(),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.sampled_from(SEEDS), batch=st.integers(1, 25))
def test_blob_backed_store_gives_the_same_answers(
    data: st.DataObject, seed: int, batch: int
) -> None:
    dag = random_dag(seed)
    order = data.draw(st.permutations(range(len(dag.raws))), label="order")
    cut = data.draw(st.integers(0, len(order)), label="cut")  # a partial ledger: orphans, wants
    delivery = [dag.raws[i] for i in order[:cut]]
    for i in data.draw(st.lists(st.integers(0, len(dag.raws) - 1), max_size=6), label="dups"):
        delivery.insert(i % (len(delivery) + 1), dag.raws[i])
    for i in data.draw(st.lists(st.integers(0, len(dag.raws) - 1), max_size=3), label="bad"):
        raw = bytearray(dag.raws[i])
        raw[-1] ^= 0x01  # a forged signature: rejected by both
        delivery.insert(i % (len(delivery) + 1), bytes(raw))
    blobs = SharedBlobs()
    with tempfile.TemporaryDirectory() as tmp:
        with (
            Store.open(Path(tmp) / "plain.sqlite3", max_orphans=8) as plain,
            Store.open(Path(tmp) / "blobs.sqlite3", max_orphans=8, blobs=blobs) as backed,
            Store.open(":memory:", max_orphans=8, blobs=blobs) as other,  # shares the blobs
        ):
            for store in (plain, backed, other):
                with pytest.raises(BatchRejected):  # a rolled-back batch leaves no trace
                    store.ingest_many([*dag.raws[:5], b"\x92garbage"], NOW_MS, atomic=True)
            expected = plain.ingest_many(delivery, NOW_MS, batch_size=batch)
            assert backed.ingest_many(delivery, NOW_MS, batch_size=batch) == expected
            assert [other.ingest(raw, NOW_MS) for raw in delivery] == expected
            reference = answers(plain, list(dag.ids))
            assert answers(backed, list(dag.ids)) == reference
            assert answers(other, list(dag.ids)) == reference
        with Store.open(Path(tmp) / "blobs.sqlite3", blobs=blobs) as reopened:
            assert answers(reopened, list(dag.ids))[:-2] == reference[:-2]


def test_the_file_holds_no_vertex_bytes_and_missing_blobs_are_an_error(tmp_path: Path) -> None:
    dag = random_dag(0)
    blobs = SharedBlobs()
    with Store.open(tmp_path / "b.sqlite3", blobs=blobs) as store:
        assert all(r.accepted for r in store.ingest_many(dag.raws, NOW_MS))
        assert len(blobs) == len(dag.raws)
        assert blobs.nbytes() == sum(len(r) for r in dag.raws)
    with Store.open(tmp_path / "b.sqlite3") as plain:  # opened without its blobs: no bytes
        assert plain.get(dag.ids[0]) == b""
    with Store.open(tmp_path / "b.sqlite3", blobs=SharedBlobs()) as wrong:
        assert wrong.has(dag.ids[0])
        with pytest.raises(StoreError, match="blobs"):
            wrong.get(dag.ids[0])


def some_answers(store: Store, ids: list[bytes]) -> tuple[object, ...]:
    """The queries the core and the simulator make between two gossip messages."""
    authors = [a.author for a in store.authors()]
    return (
        store.count(),
        store.tips(),
        store.heads(),
        store.wanted(),
        store.orphan_count(),
        store.missing(ids),
        [store.has(i) for i in ids],
        [store.get(i) for i in ids[::7]],
        [store.next_seq(a) for a in authors],
        [store.vertex_ids_by(a, "template") for a in authors],
        store.parents_for(authors[0]) if authors else [],
        store.templates("xor", 100, trusted="every-verifier"),
        store.templates("xor", 5, trusted="unflagged-authors", include_unverified=False),
        store.since({}, 7),
        store.flagged_authors(),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.sampled_from(SEEDS))
def test_deferred_commit_store_gives_the_same_answers(data: st.DataObject, seed: int) -> None:
    """`defer_commit` (the simulator's stores) changes when ingests are committed, never what
    any ingest or query answers: queries, other writes and batches between the ingests."""
    dag = random_dag(seed)
    order = data.draw(st.permutations(range(len(dag.raws))), label="order")
    delivery = [dag.raws[i] for i in order]
    for i in data.draw(st.lists(st.integers(0, len(dag.raws) - 1), max_size=4), label="dups"):
        delivery.insert(i % (len(delivery) + 1), dag.raws[i])
    for i in data.draw(st.lists(st.integers(0, len(dag.raws) - 1), max_size=2), label="bad"):
        raw = bytearray(dag.raws[i])
        raw[-1] ^= 0x01
        delivery.insert(i % (len(delivery) + 1), bytes(raw))
    steps = data.draw(
        st.lists(
            st.sampled_from(["query", "durable", "verify", "drop", "batch", "atomic"]),
            min_size=len(delivery),
            max_size=len(delivery),
        ),
        label="between",
    )
    ids = list(dag.ids)
    blobs = SharedBlobs()
    with tempfile.TemporaryDirectory() as tmp:
        with (
            Store.open(Path(tmp) / "plain.sqlite3", max_orphans=8) as plain,
            Store.open(Path(tmp) / "deferred.sqlite3", max_orphans=8, defer_commit=True) as dfile,
            Store.open(":memory:", max_orphans=8, blobs=blobs, defer_commit=True) as dmem,
        ):
            stores = (plain, dfile, dmem)
            for k, (raw, step) in enumerate(zip(delivery, steps, strict=True)):
                durable = step == "durable"
                results = [s.ingest(raw, NOW_MS + k, durable=durable) for s in stores]
                assert results[1] == results[0] and results[2] == results[0]
                if k % 3:
                    continue  # runs of ingests with nothing between them
                if step == "query":
                    got = [some_answers(s, ids) for s in stores]
                    assert got[1] == got[0] and got[2] == got[0]
                elif step == "verify":
                    for s in stores:
                        s.record_verification(ids[k % len(ids)], ids[0], 0.5, "valid", NOW_MS)
                elif step == "drop":
                    got = [s.drop_orphans_waiting_on(ids[k % len(ids) :][:3]) for s in stores]
                    assert got[1] == got[0] and got[2] == got[0]
                elif step == "batch":
                    got = [s.ingest_many(delivery[:k], NOW_MS) for s in stores]
                    assert got[1] == got[0] and got[2] == got[0]
                elif step == "atomic":  # its rollback must not take earlier ingests along
                    for s in stores:
                        with pytest.raises(BatchRejected):
                            s.ingest_many([dag.raws[0], b"\x92garbage"], NOW_MS, atomic=True)
            reference = answers(plain, ids)
            assert answers(dfile, ids) == reference
            assert answers(dmem, ids) == reference


def test_deferred_ingests_are_committed_at_the_next_query(tmp_path: Path) -> None:
    """What `defer_commit` defers, seen from a second connection to the same file."""
    dag = random_dag(0)
    path = tmp_path / "d.sqlite3"

    def committed() -> int:
        with sqlite3.connect(path) as other:
            return int(other.execute("SELECT count(*) FROM vertices").fetchone()[0])

    with Store.open(path, defer_commit=True) as store:
        for raw in dag.raws[:3]:
            assert store.ingest(raw, NOW_MS).accepted
        assert store.count() == 3 and store.has(dag.ids[2])  # answered, not committed yet
        assert committed() == 0
        assert len(store.tips()) == 1  # any SQL query commits first
        assert committed() == 3
        store.ingest(dag.raws[3], NOW_MS)
        store.ingest(dag.raws[4], NOW_MS, durable=True)  # an own vertex: committed at once
        assert committed() == 5
        store.ingest(dag.raws[5], NOW_MS)
        assert committed() == 5
    assert committed() == 6  # close commits
    with Store.open(path) as plain:
        assert plain.count() == 6 and plain.check_invariants() == []
