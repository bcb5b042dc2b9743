"""Merge: the same vertices delivered in any order, batching and duplication give the same DAG.

This is the grow-only-set property the network relies on: two honest peers that have seen the
same vertices hold the same vertex set, tips, topological order, heads and flagged authors.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from dag_helpers import NOW_MS, random_dag
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag.dag.store import Store

SEEDS = (0, 1, 2)


def snapshot(store: Store) -> tuple[object, ...]:
    return (
        sorted(store.topological_order()),
        store.tips(),
        store.topological_order(),
        store.heads(),
        store.flagged_authors(),
        store.equivocations(),
        [t.id for t in store.templates("xor", 100, trusted="every-verifier")],
        store.orphan_count(),
    )


@functools.cache
def reference(seed: int) -> tuple[object, ...]:
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "ref.sqlite3") as store:
        results = store.ingest_many(random_dag(seed).raws, NOW_MS)
        assert all(r.accepted for r in results)  # topological delivery: nothing pending
        return snapshot(store)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.sampled_from(SEEDS), batch=st.integers(1, 25))
def test_any_delivery_order_gives_the_same_dag(data: st.DataObject, seed: int, batch: int) -> None:
    dag = random_dag(seed)
    order = data.draw(st.permutations(range(len(dag.raws))), label="order")
    repeats = data.draw(st.lists(st.integers(0, len(dag.raws) - 1), max_size=10), label="dups")
    delivery = [dag.raws[i] for i in order]
    for position, i in enumerate(repeats):  # some vertices arrive twice (gossip duplicates)
        delivery.insert((position * 7) % (len(delivery) + 1), dag.raws[i])
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "l.sqlite3") as store:
        results = store.ingest_many(delivery, NOW_MS, batch_size=batch)
        assert not [r for r in results if r.status == "rejected"]
        assert snapshot(store) == reference(seed)
        assert store.check_invariants() == []


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.sampled_from(SEEDS))
def test_two_partial_stores_converge_by_exchanging(data: st.DataObject, seed: int) -> None:
    """Each store sees part of the vertices (orphans included); they then sync both ways."""
    dag = random_dag(seed)
    n = len(dag.raws)
    order = data.draw(st.permutations(range(n)), label="order")
    cut = data.draw(st.integers(0, n), label="cut")
    with tempfile.TemporaryDirectory() as tmp:
        with Store.open(Path(tmp) / "a.sqlite3") as a, Store.open(Path(tmp) / "b.sqlite3") as b:
            a.ingest_many([dag.raws[i] for i in order[:cut]], NOW_MS)
            b.ingest_many([dag.raws[i] for i in order[cut:]], NOW_MS, batch_size=3)
            # Sync as the node does it: send stored vertices, then what is still wanted.
            by_id = dag.by_id()
            for _ in range(n):
                before = (a.count(), b.count(), a.orphan_count(), b.orphan_count())
                a.ingest_many(list(b.iter_raw()), NOW_MS)
                b.ingest_many(list(a.iter_raw()), NOW_MS)
                wanted = a.wanted() + b.wanted()
                for store in (a, b):  # a peer that had the missing parents answers
                    store.ingest_many([by_id[w] for w in wanted if w in by_id], NOW_MS)
                if before == (a.count(), b.count(), a.orphan_count(), b.orphan_count()):
                    break
            assert snapshot(a) == snapshot(b) == reference(seed)
