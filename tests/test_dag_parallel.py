"""Bulk sync: cursor paging (`Store.since_page`) and parallel ingest (`dag.validate.precheck`).

Paging through a ledger by cursor, with any page size and any `have`, must yield each lacking
vertex exactly once and parents before children; ingesting with signatures checked on worker
threads must give exactly what the one-thread ingest gives, hostile input included.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest
from dag_helpers import NOW_MS, random_dag
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag.dag import ingest as ingest_module
from qudag.dag.records import IngestResult
from qudag.dag.store import Store
from qudag.dag.validate import precheck, recheck
from qudag.dag.vertex import decode_vertex


def snapshot(store: Store) -> tuple[object, ...]:
    return (
        store.topological_order(),
        store.tips(),
        store.heads(),
        store.flagged_authors(),
        store.equivocations(),
        store.orphan_ids(),
        store.check_invariants(),
    )


@pytest.fixture(scope="module")
def served() -> Store:
    store = Store.open(":memory:")
    assert all(r.accepted for r in store.ingest_many(random_dag(5, n=80).raws, NOW_MS))
    return store


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limit=st.integers(min_value=1, max_value=40),
    held=st.lists(st.integers(min_value=-1, max_value=30), min_size=3, max_size=3),
)
def test_cursor_paging_yields_each_lacking_vertex_once_parents_first(
    served: Store, limit: int, held: list[int]
) -> None:
    authors = [i.key_id for i in random_dag(5, n=80).identities]
    have = {a: s for a, s in zip(authors, held, strict=True) if s >= 0}
    expected, _ = served.since(have, 10_000)  # one page: the reference answer
    got: list[bytes] = []
    after = None
    for _ in range(1000):
        rows, more = served.since_page(have, limit, after)
        assert len(rows) <= limit
        got += [raw for _, raw in rows]
        if not more:
            break
        assert rows
        after = rows[-1][0]
    else:
        pytest.fail("paging did not end")
    assert got == expected
    ids = [decode_vertex(raw).id for raw in got]
    assert len(set(ids)) == len(ids)
    assert all(decode_vertex(raw).seq > have.get(decode_vertex(raw).author, -1) for raw in got)
    # Parents before children: fed in this order, a fresh store holding what `have` covers
    # accepts every page vertex at once (nothing pending).
    with Store.open(":memory:") as fresh:
        covered = [
            raw
            for raw in served.iter_raw()
            if decode_vertex(raw).seq <= have.get(decode_vertex(raw).author, -1)
        ]
        fresh.ingest_many(covered, NOW_MS)
        results = fresh.ingest_many(got, NOW_MS)
        pending = [r for r in results if not r.accepted]
        # Only an equivocating twin of a held seq can wait (the `since` contract says so).
        assert all(r.status == "pending" for r in pending)


def test_cursor_is_keyset_not_offset(served: Store) -> None:
    """A vertex stored between two pages does not shift or repeat what the next page holds."""
    first, more = served.since_page({}, 10)
    assert more
    rest, _ = served.since_page({}, 10_000, first[-1][0])
    everything, _ = served.since({}, 10_000)
    assert [raw for _, raw in first + rest] == everything
    assert served.since_page({}, 10, rest[-1][0]) == ([], False)


def hostile_input(seed: int) -> list[bytes]:
    """A shuffled DAG (orphans, releases, an equivocation), plus mutated and replayed bytes."""
    dag = random_dag(seed)
    rng = random.Random(seed)
    raws = list(dag.raws)
    rng.shuffle(raws)
    extra = []
    for raw in rng.sample(list(dag.raws), 8):
        i = rng.randrange(len(raw))
        extra.append(raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :])  # bad sig, bad bytes, ...
    extra.append(b"\x92\xc4\x00")
    mixed = raws + extra
    rng.shuffle(mixed)
    return mixed + rng.sample(list(dag.raws), 5)  # replays of stored vertices


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("workers", [2, 3])
def test_parallel_ingest_equals_sequential_ingest(seed: int, workers: int) -> None:
    raws = hostile_input(seed)
    outcomes: list[tuple[list[IngestResult], tuple[object, ...]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in (1, workers):
            with Store.open(Path(tmp) / f"w{w}.sqlite3") as store:
                results = store.ingest_many(raws, NOW_MS, batch_size=17, workers=w)
                outcomes.append((results, snapshot(store)))
    (seq_results, seq_state), (par_results, par_state) = outcomes
    assert par_results == seq_results
    assert par_state == seq_state
    statuses = {r.status for r in seq_results}
    assert {"accepted", "pending", "rejected", "duplicate"} <= statuses  # the input is hostile


def test_a_precheck_with_a_wrong_key_changes_nothing() -> None:
    """The store honours a precheck only if it used the author's own key."""
    dag = random_dag(0)
    raws = list(dag.raws)
    good = precheck(raws, {})
    assert all(item.key is not None for item in good)
    # Claim every vertex was verified with author 1's key: wrong for the others' vertices.
    wrong_key = next(
        item.key for item in good if item.vertex and item.vertex.author == dag.identities[1].key_id
    )
    forged = [item._replace(key=wrong_key) for item in good]
    # Corrupt a signature but keep the claim: the store must re-check and reject it.
    victim = max(
        i
        for i, item in enumerate(good)
        if item.vertex and item.vertex.author != dag.identities[1].key_id and item.vertex.seq > 0
    )
    vertex = good[victim].vertex
    assert vertex is not None
    bad_sig = bytes([vertex.signature[0] ^ 1]) + vertex.signature[1:]
    forged[victim] = forged[victim]._replace(vertex=vertex._replace(signature=bad_sig))
    with Store.open(":memory:") as store:
        results = store.ingest_prechecked(forged, NOW_MS)
        assert results[victim].reason == "bad-signature"
        assert store.count() > len(raws) // 2 and store.verify_all().invalid == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_verified_only_templates_are_the_verified_prefix(seed: int) -> None:
    dag = random_dag(seed)
    with Store.open(":memory:") as store:
        store.ingest_many(dag.raws, NOW_MS)
        for trusted in ("every-verifier", [i.key_id for i in dag.identities[:1]], []):
            full = store.templates("xor", 1000, trusted=trusted)
            only = store.templates("xor", 1000, trusted=trusted, include_unverified=False)
            assert only == [e for e in full if e.verified_fitness is not None]
            assert store.templates("xor", 1, trusted=trusted, include_unverified=False) == only[:1]
        everyone = store.templates("xor", 1000, trusted="every-verifier")
        assert any(e.verified_fitness is not None for e in everyone)


def test_precheck_from_a_pool_thread_runs_inline() -> None:
    """A precheck started from the verify pool's own thread must not wait on that pool."""
    from qudag.dag import validate

    raws = list(random_dag(0).raws)
    future = validate._executor().submit(precheck, raws, {}, 4)
    assert [item.key is not None for item in future.result(timeout=60)] == [True] * len(raws)


def test_recheck_verifies_what_a_precheck_lacked_the_key_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pages prechecked before the page with their authors' identities is stored: `recheck`
    verifies them with the keys stored since, so the store checks none itself, and a forged
    vertex among them still fails."""
    dag = random_dag(0)
    raws = list(dag.raws)
    first = [r for r in raws if decode_vertex(r).seq == 0]  # the identities
    rest = [r for r in raws if decode_vertex(r).seq > 0]
    victim = len(rest) // 2
    vertex = decode_vertex(rest[victim])
    bad_sig = bytes([vertex.signature[0] ^ 1]) + vertex.signature[1:]
    with Store.open(":memory:") as store:
        early = precheck(rest, store.known_keys())  # no author key known yet
        assert all(item.key is None for item in early)
        forged = early[victim]
        assert forged.vertex is not None
        early[victim] = forged._replace(vertex=forged.vertex._replace(signature=bad_sig))
        assert all(r.accepted for r in store.ingest_many(first, NOW_MS))
        checked = recheck(early, {}, store.known_keys())
        assert [item.key is not None for item in checked] == [i != victim for i in range(len(rest))]
        assert recheck(early, store.known_keys(), store.known_keys()) == early  # had the keys
        calls = []
        real = ingest_module.check_signature
        monkeypatch.setattr(
            ingest_module, "check_signature", lambda v, k: (calls.append(v.id), real(v, k))
        )
        results = store.ingest_prechecked(checked, NOW_MS)
        assert calls == [vertex.id]  # the store verified only the one the recheck refused
        assert results[victim].reason == "bad-signature"
        assert [i for i, r in enumerate(results) if r.status == "rejected"] == [victim]


@pytest.mark.parametrize("orphan", [False, True])
def test_a_forged_signature_is_verified_once_on_the_bulk_path(
    monkeypatch: pytest.MonkeyPatch, orphan: bool
) -> None:
    """`ingest_many` prechecks a chunk's signatures, then applies the rules: a signature the
    precheck refused with the author's key is refused again without a second verify (ML-DSA
    is what bounds bulk ingest), for the same reason, whether its parents are stored or it
    waits as an orphan."""
    from qudag.dag import validate

    raws = list(random_dag(0).raws)
    victim = max(i for i, r in enumerate(raws) if decode_vertex(r).seq > 0)
    vertex = decode_vertex(raws[victim])
    bad_sig = bytes([vertex.signature[0] ^ 1]) + vertex.signature[1:]
    forged = vertex.raw[: -len(vertex.signature)] + bad_sig
    assert decode_vertex(forged).signature == bad_sig
    head, offered = raws[:victim], [forged]
    if orphan:  # its own parents are not offered: it would wait for them
        head = [r for r in head if decode_vertex(r).seq == 0]
    calls: list[bytes] = []
    real = validate.signature_ok
    monkeypatch.setattr(
        validate, "signature_ok", lambda k, b, s: (calls.append(s), real(k, b, s))[1]
    )
    with Store.open(":memory:") as store:
        store.ingest_many(head, NOW_MS)
        assert orphan == (not all(store.has(p) for p in vertex.parents))
        (result,) = store.ingest_many(offered, NOW_MS)
    assert result.reason == "bad-signature" and result.status == "rejected"
    assert calls.count(bad_sig) == 1
