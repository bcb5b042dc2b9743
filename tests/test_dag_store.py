"""The SQLite store: ingest outcomes, validation rules, orphans, queries, template ordering."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from dag_helpers import NOW_MS, TS0, identities, random_dag, template_payload

from qudag.crypto.canonical import pack
from qudag.crypto.signing import Identity
from qudag.dag.payloads import attestation_payload
from qudag.dag.records import BatchRejected, IngestStatus, StoreError
from qudag.dag.segment import segment_path
from qudag.dag.store import Store
from qudag.dag.vertex import (
    SIGNING_CONTEXT,
    decode_vertex,
    encode_body,
    make_identity_vertex,
    make_vertex,
)

A = IngestStatus.ACCEPTED


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "ledger.sqlite3") as s:
        yield s


def chain(identity: Identity, n: int, task: str = "xor", start: int = 0) -> list[bytes]:
    """identity vertex + n templates, each on the previous one."""
    raws = [make_identity_vertex(identity, TS0)]
    prev = decode_vertex(raws[0]).id
    for i in range(n):
        raw = make_vertex(
            identity, i + 1, TS0 + i + 1, [prev], "template", template_payload(task, 0.1 * i)
        )
        raws.append(raw)
        prev = decode_vertex(raw).id
    return raws


def vid(raw: bytes) -> bytes:
    return decode_vertex(raw).id


def test_statuses(store: Store) -> None:
    raws = chain(identities()[0], 3)
    assert store.ingest(raws[0], NOW_MS).status is A
    assert store.ingest(raws[0], NOW_MS).status is IngestStatus.DUPLICATE
    pending = store.ingest(raws[2], NOW_MS)
    assert pending.status is IngestStatus.PENDING and pending.missing == (vid(raws[1]),)
    assert store.ingest(raws[2], NOW_MS).status is IngestStatus.PENDING  # still buffered
    assert store.orphan_count() == 1 and store.wanted() == [vid(raws[1])]
    rejected = store.ingest(b"garbage", NOW_MS)
    assert rejected.status is IngestStatus.REJECTED and rejected.id is None
    assert rejected.reason == "trailing-bytes"  # b"g" is the msgpack int 103
    result = store.ingest(raws[1], NOW_MS)
    assert result.accepted and result.released == (vid(raws[2]),)
    assert store.orphan_count() == 0 and store.count() == 3
    assert store.ingest(raws[3], NOW_MS).accepted
    assert store.tips() == [vid(raws[3])]


def test_forgery_and_rules(store: Store) -> None:
    alice, mallory = identities()[0], identities()[1]
    a0 = make_identity_vertex(alice, TS0)
    assert store.ingest(a0, NOW_MS).accepted
    # Mallory signs a body that names Alice as author.
    body = encode_body(alice.key_id, 1, TS0, [vid(a0)], "template", template_payload())
    forged = pack([body, mallory.sign(body, SIGNING_CONTEXT)])
    assert store.ingest(forged, NOW_MS).reason == "bad-signature"
    # ... also while its parent is missing (the key is known, so it is checked on arrival).
    body = encode_body(alice.key_id, 2, TS0, [b"\x07" * 32], "template", template_payload())
    forged = pack([body, mallory.sign(body, SIGNING_CONTEXT)])
    assert store.ingest(forged, NOW_MS).reason == "bad-signature"
    assert store.orphan_count() == 0
    # Timestamp skew bounds only the future.
    late = make_vertex(
        alice, 1, NOW_MS + store.max_skew_ms + 1, [vid(a0)], "template", template_payload()
    )
    assert store.ingest(late, NOW_MS).reason == "future-timestamp"
    ok = make_vertex(
        alice, 1, NOW_MS + store.max_skew_ms, [vid(a0)], "template", template_payload()
    )
    assert store.ingest(ok, NOW_MS).accepted
    # seq chain: seq 3 without the seq-2 vertex as a parent.
    jump = make_vertex(alice, 3, TS0, [vid(ok)], "template", template_payload())
    assert store.ingest(jump, NOW_MS).reason == "bad-seq"
    # Another author's vertex cannot stand in for the self-parent.
    m0 = make_identity_vertex(mallory, TS0)
    assert store.ingest(m0, NOW_MS).accepted
    no_self = make_vertex(mallory, 1, TS0, [vid(ok)], "template", template_payload())
    assert store.ingest(no_self, NOW_MS).reason == "bad-seq"
    # An attestation must attest a template parent.
    wrong = make_vertex(
        mallory, 1, TS0, [vid(m0)], "attestation", attestation_payload(vid(m0), 1.0, "valid")
    )
    assert store.ingest(wrong, NOW_MS).reason == "bad-attestation"
    assert store.check_invariants() == [] and store.count() == 3


def test_orphan_dropped_when_invalid_on_release(store: Store) -> None:
    alice = identities()[0]
    a0 = make_identity_vertex(alice, TS0)
    other = make_identity_vertex(identities()[1], TS0)
    # seq 1 whose only parent is another author's identity: invalid once that is known.
    bad = make_vertex(alice, 1, TS0, [vid(other)], "template", template_payload())
    assert store.ingest(bad, NOW_MS).status is IngestStatus.PENDING
    assert store.ingest(a0, NOW_MS).accepted
    result = store.ingest(other, NOW_MS)
    assert result.accepted and result.dropped == ((vid(bad), "bad-seq"),)
    assert store.orphan_count() == 0 and not store.has(vid(bad))


def test_unknown_author_orphan_is_verified_on_release(store: Store) -> None:
    alice, mallory = identities()[0], identities()[1]
    a0 = make_identity_vertex(alice, TS0)
    body = encode_body(alice.key_id, 1, TS0, [vid(a0)], "template", template_payload())
    forged = pack([body, mallory.sign(body, SIGNING_CONTEXT)])
    assert store.ingest(forged, NOW_MS).status is IngestStatus.PENDING  # key unknown yet
    result = store.ingest(a0, NOW_MS)
    assert result.accepted and result.dropped == ((vid(forged), "bad-signature"),)
    assert store.count() == 1


def test_equivocation_is_kept_and_flagged(store: Store) -> None:
    alice, bob = identities()[0], identities()[1]
    a0, b0 = make_identity_vertex(alice, TS0), make_identity_vertex(bob, TS0)
    x = make_vertex(alice, 1, TS0, [vid(a0)], "template", template_payload(fitness=0.9))
    y = make_vertex(alice, 1, TS0 + 1, [vid(a0)], "template", template_payload(fitness=0.8))
    b1 = make_vertex(bob, 1, TS0, [vid(b0)], "template", template_payload(fitness=0.1))
    results = store.ingest_many([a0, b0, x, b1, y], NOW_MS)
    assert [r.status for r in results] == [A] * 5
    assert [r.equivocation for r in results] == [False, False, False, False, True]
    assert store.flagged_authors() == [alice.key_id]
    assert store.equivocations() == [(alice.key_id, 1, tuple(sorted([vid(x), vid(y)])))]
    heads = {h.author: h for h in store.heads()}
    assert heads[alice.key_id].ids == tuple(sorted([vid(x), vid(y)]))
    # A flagged author's templates are not offered for sampling.
    assert [t.id for t in store.templates("xor", trusted="every-verifier")] == [vid(b1)]
    # Identity equivocation (two seq-0 vertices) is caught too.
    b0_again = make_identity_vertex(bob, TS0 + 5, [vid(x)])
    assert store.ingest(b0_again, NOW_MS).equivocation
    assert store.flagged_authors() == sorted([alice.key_id, bob.key_id])


def test_orphan_bound_evicts_oldest(tmp_path: Path) -> None:
    raws = chain(identities()[0], 12)
    with Store.open(tmp_path / "l.sqlite3", max_orphans=5) as store:
        for raw in raws[2:]:  # all wait (transitively) for raws[0..1]
            assert store.ingest(raw, NOW_MS).status is IngestStatus.PENDING
        assert store.orphan_count() == 5
        assert store.orphan_ids() == [vid(r) for r in raws[-5:]]
    with Store.open(tmp_path / "l.sqlite3", max_orphans=5) as store:
        assert store.orphan_count() == 5  # persisted
        assert store.ingest(raws[0], NOW_MS).accepted
        assert store.ingest(raws[1], NOW_MS).released == ()  # raws[2] was evicted
        result = store.ingest(raws[2], NOW_MS)
        assert result.accepted and len(result.released) == 0  # raws[3..7] were evicted too
        size = len(raws[4])
    with Store.open(tmp_path / "b.sqlite3", max_orphan_bytes=2 * size + 10) as store:
        for raw in raws[2:]:
            store.ingest(raw, NOW_MS)
        assert store.orphan_count() == 2


def test_orphans_are_released_after_reopen_and_eviction_churn(tmp_path: Path) -> None:
    """The ids orphans wait for are kept in memory (so that accepting a vertex nobody waits
    for costs no query): they must come back from the file, survive evictions and stay
    bounded."""
    raws = chain(identities()[0], 99)  # 100 vertices
    with Store.open(tmp_path / "a.sqlite3") as store:
        assert store.ingest(raws[2], NOW_MS).status is IngestStatus.PENDING
        assert store.ingest(raws[4], NOW_MS).status is IngestStatus.PENDING
    with Store.open(tmp_path / "a.sqlite3") as store:  # the waits are read from the file
        assert store.ingest(raws[0], NOW_MS).released == ()
        assert store.ingest(raws[1], NOW_MS).released == (vid(raws[2]),)
        assert store.ingest(raws[3], NOW_MS).released == (vid(raws[4]),)
        assert store.orphan_count() == 0
    with Store.open(tmp_path / "b.sqlite3", max_orphans=2) as store:
        for raw in raws[2:]:  # each waits for the one before: 98 buffered, 96 evicted
            assert store.ingest(raw, NOW_MS).status is IngestStatus.PENDING
        assert store.orphan_ids() == [vid(raws[98]), vid(raws[99])]
        assert len(store._awaited) <= 2 * 8 * 2 + 64  # evicted orphans' ids were forgotten
        results = store.ingest_many(raws[:98], NOW_MS)
        assert all(r.accepted for r in results)
        assert results[-1].released == (vid(raws[98]), vid(raws[99]))
        assert store.orphan_count() == 0 and store.count() == 100


def test_no_orphan_query_for_a_vertex_nobody_waits_for(store: Store) -> None:
    raws = chain(identities()[0], 6)
    assert store.ingest(raws[5], NOW_MS).status is IngestStatus.PENDING  # waits for raws[4]
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        assert all(r.accepted for r in store.ingest_many(raws[:4], NOW_MS))
    finally:
        store._db.set_trace_callback(None)
    assert not [s for s in statements if "orphan_missing" in s]
    assert store.ingest(raws[4], NOW_MS).released == (vid(raws[5]),)


def test_queries(store: Store) -> None:
    dag = random_dag()
    store.ingest_many(dag.raws, NOW_MS)
    assert store.count() == len(dag.raws)
    ids = set(dag.ids)
    order = store.topological_order()
    assert set(order) == ids
    position = {v: i for i, v in enumerate(order)}
    children: dict[bytes, set[bytes]] = {v: set() for v in ids}
    for raw in dag.raws:
        vertex = decode_vertex(raw)
        for parent in vertex.parents:
            assert position[parent] < position[vertex.id]
            children[parent].add(vertex.id)
    assert store.tips() == sorted(v for v in ids if not children[v])
    first, last = dag.ids[0], order[-1]
    assert first in store.ancestors(last)
    assert last in store.descendants(first)
    anc = store.ancestors(last)
    assert anc == [v for v in order if v in set(anc)]
    assert store.missing([dag.ids[3], b"\x00" * 32, b"\x00" * 32]) == [b"\x00" * 32]
    assert store.get(dag.ids[3]) == dag.raws[3] and store.has(dag.ids[3])
    assert store.get(b"\x00" * 32) is None
    with pytest.raises(KeyError):
        store.ancestors(b"\x00" * 32)
    for identity in dag.identities:
        author = identity.key_id
        nxt = store.next_seq(author)
        parents = store.parents_for(author)
        assert 1 <= len(parents) <= 8
        raw = make_vertex(identity, nxt, NOW_MS, parents, "template", template_payload())
        assert store.ingest(raw, NOW_MS).accepted
    assert store.next_seq(b"\x00" * 32) == 0
    assert {a.author for a in store.authors()} == {i.key_id for i in dag.identities}
    assert store.public_key(dag.identities[0].key_id) == dag.identities[0].public_key
    assert store.check_invariants() == [] and store.integrity_check() == "ok"
    report = store.verify_all()
    assert (report.invalid, report.vertices) == (0, store.count())


def test_template_ordering(store: Store) -> None:
    alice, bob, carol = identities()[0], identities()[1], identities()[2]
    a0, b0 = make_identity_vertex(alice, TS0), make_identity_vertex(bob, TS0)
    c0 = make_identity_vertex(carol, TS0)
    claims = {"t1": 0.9, "t2": 0.8, "t3": 0.7, "t4": 0.95}
    raws = [a0, b0, c0]
    prev = vid(a0)
    tid: dict[str, bytes] = {}
    for seq, (name, claim) in enumerate(claims.items(), start=1):
        raw = make_vertex(alice, seq, TS0, [prev], "template", template_payload("xor", claim))
        raws.append(raw)
        prev = tid[name] = vid(raw)
    other_task = make_vertex(alice, 5, TS0, [prev], "template", template_payload("iris", 1.0))
    raws.append(other_task)
    # Bob attests t1 valid at 0.85, t4 invalid (lied about 0.95); Carol attests t3 at 0.99.
    b1 = make_vertex(
        bob,
        1,
        TS0,
        [vid(b0), tid["t1"]],
        "attestation",
        attestation_payload(tid["t1"], 0.85, "valid"),
    )
    b2 = make_vertex(
        bob,
        2,
        TS0,
        [vid(b1), tid["t4"]],
        "attestation",
        attestation_payload(tid["t4"], 0.2, "invalid"),
    )
    c1 = make_vertex(
        carol,
        1,
        TS0,
        [vid(c0), tid["t3"]],
        "attestation",
        attestation_payload(tid["t3"], 0.99, "valid"),
    )
    assert all(r.accepted for r in store.ingest_many([*raws, b1, b2, c1], NOW_MS))
    names = {v: k for k, v in tid.items()}

    def order(trusted: object = "every-verifier", **kwargs: object) -> list[str]:
        entries = store.templates("xor", 10, trusted=trusted, **kwargs)  # type: ignore[arg-type]
        return [names[t.id] for t in entries]

    # Everyone trusted: verified first by min verified fitness, then claims; t4 excluded.
    assert order() == ["t3", "t1", "t2"]
    entries = store.templates("xor", trusted="every-verifier")
    assert entries[0].verified_fitness == 0.99 and entries[2].verified_fitness is None
    # Trust only Bob: Carol's attestation does not count.
    assert order(trusted=[bob.key_id]) == ["t1", "t2", "t3"]
    # Trust nobody: claims only, and t4's lie is not caught.
    assert order(trusted=[]) == ["t4", "t1", "t2", "t3"]
    assert order(include_unverified=False) == ["t3", "t1"]
    # A local re-measurement (the node's own) is the most pessimistic valid one: it counts.
    me = b"\xee" * 32
    store.record_verification(tid["t3"], me, 0.5, "valid", NOW_MS)
    assert order() == ["t1", "t3", "t2"]
    store.record_verification(tid["t2"], me, 0.1, "invalid", NOW_MS)
    assert order() == ["t1", "t3"]
    assert order(trusted=[me]) == ["t3", "t4", "t1"]  # only Bob caught t4's lie
    assert [t.id for t in store.templates("iris", trusted="every-verifier")] == [vid(other_task)]
    assert len(store.verifications(tid["t3"])) == 2
    assert store.verifications(tid["t3"])[-1].attestation is None
    assert len(store.templates("xor", 1, trusted="every-verifier")) == 1
    # Verified-only (the daemon's per-tick query, planned from the verdicts): the verified
    # prefix of the full listing, for every trust set.
    for trusted in ("every-verifier", [me], [bob.key_id], [], [me, carol.key_id]):
        full = store.templates("xor", 100, trusted=trusted)
        verified = store.templates("xor", 100, trusted=trusted, include_unverified=False)
        assert verified == [e for e in full if e.verified_fitness is not None]


def test_atomic_batch_rolls_back(store: Store) -> None:
    raws = chain(identities()[0], 4)
    store.ingest(raws[0], NOW_MS)
    with pytest.raises(BatchRejected) as info:
        store.ingest_many([raws[1], raws[2], b"junk", raws[3]], NOW_MS, atomic=True)
    assert info.value.index == 2
    assert store.count() == 1 and not store.has(vid(raws[1]))
    # The in-memory caches were reset with the rollback: the same vertices go in cleanly.
    assert all(r.accepted for r in store.ingest_many(raws[1:], NOW_MS, atomic=True))
    assert store.check_invariants() == [] and store.tips() == [vid(raws[-1])]


def test_small_metadata_cache_gives_the_same_answers(tmp_path: Path) -> None:
    dag = random_dag()
    with Store.open(tmp_path / "a.sqlite3") as big:
        big.ingest_many(dag.raws, NOW_MS)
        expected = (big.topological_order(), big.tips(), big.flagged_authors())
    with Store.open(tmp_path / "b.sqlite3", meta_cache=3) as small:
        small.ingest_many(reversed(dag.raws), NOW_MS, batch_size=7)
        assert (small.topological_order(), small.tips(), small.flagged_authors()) == expected
    with Store.open(tmp_path / "b.sqlite3", meta_cache=3) as reopened:
        assert reopened.count() == len(dag.raws)
        assert reopened.ingest(dag.raws[5], NOW_MS).status is IngestStatus.DUPLICATE


def test_tampered_store_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    dag = random_dag()
    with Store.open(path) as store:
        store.ingest_many(dag.raws, NOW_MS)
    db = sqlite3.connect(path)
    offset, length = db.execute(
        "SELECT seg_off, seg_len FROM vertices WHERE id = ?", (dag.ids[10],)
    ).fetchone()
    db.close()
    segment = bytearray(segment_path(path).read_bytes())
    segment[offset + length - 1] ^= 1  # inside the signature, in the vertex bytes file
    segment_path(path).write_bytes(bytes(segment))
    with Store.open(path) as store:
        report = store.verify_all()
        assert report.invalid == 1 and report.problems
        assert any("stored id does not match" in p for p in store.check_invariants())


def test_unusable_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        Store.open(junk)
    newer = tmp_path / "newer.sqlite3"
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StoreError, match="schema version"):
        Store.open(newer)


def test_mutated_vertices_are_never_stored(store: Store) -> None:
    dag = random_dag()
    store.ingest_many(dag.raws[:3], NOW_MS)
    for raw in dag.raws[3:20]:
        for i in range(0, len(raw), 97):
            bad = raw[:i] + bytes([raw[i] ^ 0x10]) + raw[i + 1 :]
            result = store.ingest(bad, NOW_MS)
            assert result.status in (IngestStatus.REJECTED, IngestStatus.PENDING)
    assert store.count() == 3


def test_durable_ingest_and_since(store: Store) -> None:
    dag = random_dag()
    assert store.ingest(dag.raws[0], NOW_MS, durable=True).accepted  # fsynced commit
    store.ingest_many(dag.raws[1:], NOW_MS)
    # `since`: what an asker that holds `have` (author -> highest seq) lacks, parents first.
    everything, more = store.since({}, 1000)
    assert not more and everything == list(store.iter_raw())
    page, more = store.since({}, 10)
    assert more and page == everything[:10]
    have = {h.author: h.seq for h in store.heads()}
    assert store.since(have, 1000) == ([], False)
    first = dag.identities[0].key_id
    lacking, _ = store.since({**have, first: 1}, 1000)
    assert lacking and all(decode_vertex(raw).author == first for raw in lacking)
    assert all(decode_vertex(raw).seq > 1 for raw in lacking)


def test_payload_decoder_runs_on_arrival_not_on_reads(tmp_path: Path) -> None:
    raws = chain(identities()[0], 3)
    ids = [vid(raw) for raw in raws]
    calls: list[object] = []
    with Store.open(tmp_path / "d.sqlite3", decoders={"template": calls.append}) as store:
        store.ingest_many([raws[0], raws[2], raws[3], raws[1]], NOW_MS)  # with orphans
        assert len(calls) == 3 and store.count() == 4
        for vertex_id in ids:
            assert store.vertex(vertex_id) is not None
        assert len(calls) == 3  # stored bytes are not re-judged on reads and releases
        assert store.verify_all().invalid == 0 and len(calls) == 6  # the full re-check does
    with Store.open(tmp_path / "d.sqlite3") as plain:  # the decoders belong to one store only
        assert plain.verify_all().invalid == 0 and len(calls) == 6


def test_pending_vertices_are_capped_per_author(tmp_path: Path) -> None:
    """Issue 17: signed vertices with invented parents must not fill the orphan buffer of
    everyone; one author holds at most `max_orphans_per_author` of it."""
    alice, bob = identities()[:2]

    def invented(identity: Identity, seq: int) -> bytes:
        parent = bytes([seq % 256]) * 32  # nobody has it
        return make_vertex(identity, seq, TS0, [parent], "template", template_payload("xor", 0.5))

    assert Store.open(":memory:").max_orphans_per_author == 64
    path = tmp_path / "cap.sqlite3"
    with Store.open(path, max_orphans_per_author=3) as store:
        raws = [invented(alice, seq) for seq in range(1, 6)]
        results = [store.ingest(raw, NOW_MS) for raw in raws]
        assert [r.status for r in results] == [IngestStatus.PENDING] * 3 + [
            IngestStatus.REJECTED
        ] * 2
        assert {r.reason for r in results[3:]} == {"orphan-author-cap"}
        assert store.ingest(raws[1], NOW_MS).status is IngestStatus.PENDING  # still held
        assert store.ingest(invented(bob, 1), NOW_MS).status is IngestStatus.PENDING
        assert store.orphan_count() == 4
    with Store.open(path, max_orphans_per_author=3) as store:  # the count comes back
        assert store.ingest(invented(alice, 9), NOW_MS).reason == "orphan-author-cap"
        # Once its orphans are gone (given up, released or evicted), the author has room again.
        store.drop_orphans_waiting_on([bytes([1]) * 32])
        assert store.ingest(invented(alice, 9), NOW_MS).status is IngestStatus.PENDING
    with Store.open(tmp_path / "evict.sqlite3", max_orphans=2, max_orphans_per_author=2) as s:
        for seq in range(1, 4):
            s.ingest(invented(alice, seq), NOW_MS)
        s.ingest(invented(bob, 1), NOW_MS)  # evicts alice's oldest
        assert s.ingest(invented(alice, 7), NOW_MS).status is IngestStatus.PENDING
