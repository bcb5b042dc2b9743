"""A store whose vertex bytes live in a shared `BlobStore` behaves exactly like the default one
(and the query shortcuts made for the simulator answer what the general queries answer).

The simulator runs a thousand stores in one process with their bytes in one `SharedBlobs`;
its results mean something only if such a store gives the same answer as a normal ledger file
to every ingest and every query, whatever the delivery order, duplicates, orphans, invalid
vertices, equivocations and rollbacks.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from dag_helpers import NOW_MS, random_dag
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag.dag.store import BatchRejected, SharedBlobs, Store, StoreError

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
    for trust in (None, "unflagged-authors", authors[1:]):  # the verified-only query's own plan
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
        store.templates("xor", 100),
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
