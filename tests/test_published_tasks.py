"""Bring your own task (issue 15): task vertices, data by content address, fetch in chunks.

What a user relies on: a published task names one data set and one way of scoring, whoever
loads it; its data comes from any peer, every piece checked, a bad piece pinned on its sender;
a fetch cut by a restart resumes with what is really on disk; nothing oversize or malformed
is accepted from the network.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import blake3
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag.crypto.canonical import DecodeError, pack, unpack
from qudag.crypto.signing import Identity
from qudag.dag.payloads import KIND_TASK
from qudag.dag.store import Store
from qudag.dag.vertex import decode_vertex, make_vertex
from qudag.evolution.blobcache import BlobCache, BlobError
from qudag.evolution.published import (
    TASK_ROOT_ENV,
    blob_cache,
    make_spec,
    published_task,
    save_spec,
    spec_path,
)
from qudag.evolution.tasks import TaskError, get_task
from qudag.evolution.taskspec import (
    CHUNK_SIZE,
    MAX_DATA_BYTES,
    TaskSpec,
    chunk_hashes,
    task_name,
)
from qudag.node.cli import main
from qudag.node.protocol import messages
from qudag.node.protocol.core import NODE_DECODERS, CoreConfig, PeerCore, SendRequest
from qudag.node.protocol.datafetch import OK, DataFetchPolicy, TaskData

NOW = 1_700_000_000_000


def csv_bytes(rows: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    lines = ["a,b,c,label,value"]
    for _ in range(rows):
        a, b, c = rng.normal(size=3)
        lines.append(f"{a:.6f},{b:.6f},{c:.6f},{int(a + b > 0)},{2 * a + c:.6f}")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def small() -> bytes:
    return csv_bytes(300)


@pytest.fixture(scope="module")
def big() -> bytes:
    data = csv_bytes(16_000, seed=1)  # about 3 chunks
    assert len(data) > 2 * CHUNK_SIZE
    return data


def publish_cli(
    data: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[Path, str]:
    """`task publish` of `data` as tmp_path/data.csv into tmp_path/node: (data dir, task id)."""
    csv = tmp_path / "data.csv"
    csv.write_bytes(data)
    d = tmp_path / "node"
    args = ["task", "publish", str(csv), "--target", "label", *extra, "--data-dir", str(d)]
    assert main([*args, "--json"]) == 0
    return d, json.loads(capsys.readouterr().out)["task"]


def core(identity: Identity, root: Path | None = None) -> PeerCore:
    store = Store.open(":memory:", decoders=NODE_DECODERS)
    data = TaskData(blob_cache(root)) if root is not None else None
    return PeerCore(identity, store, CoreConfig(tasks=()), random.Random(0), data=data)


# --- the task vertex -------------------------------------------------------------------------
def test_two_targets_of_one_file_are_two_tasks(small: bytes) -> None:
    a, b = Identity.generate(), core(Identity.generate())
    spec_y = make_spec(small, target="label", name="demo")
    spec_z = make_spec(small, target="value", name="demo")
    assert (spec_y.kind, spec_z.kind) == ("classification", "regression")
    assert spec_y.data == spec_z.data  # one file, one content address
    c = core(a)
    id_y, _ = c.publish_task(spec_y, NOW)
    id_z, _ = c.publish_task(spec_z, NOW + 1)
    assert id_y != id_z
    # The vertices are valid anywhere: a second peer ingests them with the node's decoders.
    for vid in c.store.topological_order():
        raw = c.store.get(vid)
        assert raw is not None
        assert b.store.ingest(raw, NOW).accepted
    assert b.store.kind_counts()[KIND_TASK] == 2


def test_spec_round_trips_and_is_canonical(small: bytes) -> None:
    spec = make_spec(small, target="label", name="demo", description="d", licence="CC0-1.0")
    raw = spec.to_bytes()
    assert TaskSpec.from_bytes(raw) == spec
    assert pack(unpack(raw, 1 << 20)) == raw


MUTATIONS = [
    ("extra key", lambda d: d.update(extra=1), "unknown-field"),
    ("no licence", lambda d: d.pop("licence"), "missing-field"),
    ("oversize", lambda d: d["data"].update(size=MAX_DATA_BYTES + 1), "oversize"),
    ("chunk count", lambda d: d["data"]["chunks"].append(bytes(32)), "range"),
    ("short hash", lambda d: d["data"].update(blake3=bytes(31)), "type"),
    ("chunk size", lambda d: d["data"].update(chunk_size=1024), "range"),
    ("split sum", lambda d: d["split"].update(train=61), "range"),
    ("metric", lambda d: d["fitness"].update(metric="r2"), "bad-payload"),
    ("limits", lambda d: d["limits"].update(max_params=10**6), "range"),
    ("bool size", lambda d: d["data"].update(size=True), "type"),
    ("target is a feature", lambda d: d.update(target="a"), "bad-payload"),
    ("duplicate feature", lambda d: d["features"].append(["a", "float"]), "bad-payload"),
    ("feature type", lambda d: d["features"][0].__setitem__(1, "text"), "bad-payload"),
]


@pytest.mark.parametrize(("what", "mutate", "reason"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_decoder_refuses(small: bytes, what: str, mutate: object, reason: str) -> None:
    d = unpack(make_spec(small, target="label", name="demo").to_bytes(), 1 << 20)
    mutate(d)  # type: ignore[operator]
    with pytest.raises(DecodeError) as err:
        TaskSpec.from_dict(d)
    assert err.value.reason == reason, what


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.text(min_size=1, max_size=64).filter(lambda s: all(ord(c) >= 32 for c in s)),
    description=st.text(max_size=200).filter(lambda s: all(ord(c) >= 32 for c in s)),
    seed=st.integers(0, 2**32 - 1),
    split=st.sampled_from([(60, 20, 20), (70, 15, 15), (1, 1, 98), (98, 1, 1)]),
    size=st.integers(1, MAX_DATA_BYTES),
)
def test_any_valid_spec_round_trips(
    small: bytes, name: str, description: str, seed: int, split: tuple[int, int, int], size: int
) -> None:
    base = unpack(make_spec(small, target="label", name="demo").to_bytes(), 1 << 20)
    base.update(name=name, description=description)
    base["split"] = {"seed": seed, "train": split[0], "val": split[1], "test": split[2]}
    base["data"]["size"] = size
    base["data"]["chunks"] = [bytes([i % 256]) * 32 for i in range(-(-size // CHUNK_SIZE))]
    spec = TaskSpec.from_dict(base)
    assert TaskSpec.from_bytes(spec.to_bytes()) == spec
    assert spec.to_dict() == base


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk=st.binary(max_size=400))
def test_garbage_is_refused_cleanly(junk: bytes) -> None:
    try:
        TaskSpec.from_bytes(junk)
    except DecodeError:
        pass


def test_oversize_task_vertex_is_rejected_by_the_ledger(small: bytes) -> None:
    identity = Identity.generate()
    c = core(identity)
    c.publish_task(make_spec(small, target="label", name="demo"), NOW)  # identity + a task
    d = unpack(make_spec(small, target="label", name="demo").to_bytes(), 1 << 20)
    d["data"]["size"] = MAX_DATA_BYTES + 1
    d["data"]["chunks"] = [bytes(32)] * (-(-d["data"]["size"] // CHUNK_SIZE))
    with pytest.raises(Exception, match="oversize"):
        make_vertex(
            identity, c.store.next_seq(identity.key_id), NOW, c.store.parents_for(identity.key_id),
            KIND_TASK, d, decoders=NODE_DECODERS,
        )  # fmt: skip
    raw = make_vertex(
        identity,
        c.store.next_seq(identity.key_id),
        NOW,
        c.store.parents_for(identity.key_id),
        KIND_TASK,
        d,
    )  # fmt: skip  (signed without the check: what a hostile peer could send)
    result = c.store.ingest(raw, NOW)
    assert not result.accepted and result.reason == "oversize"


# --- the published task and its data ----------------------------------------------------------
def test_published_task_is_the_csv_task_on_the_same_data(
    small: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TASK_ROOT_ENV, str(tmp_path))
    spec = make_spec(small, target="label", name="demo")
    tid = bytes(range(32))
    save_spec(tmp_path, tid, spec)
    with pytest.raises(TaskError, match="not here yet"):
        published_task(task_name(tid))
    blob_cache(tmp_path).put(small)
    task = get_task(task_name(tid))
    (tmp_path / "d.csv").write_bytes(small)
    reference = get_task(f"csv:{tmp_path / 'd.csv'}:target=label")
    assert task.name == task_name(tid) and task.kind == "classification"
    for split in ("train", "val", "test"):
        assert np.array_equal(task.split(split)[0], reference.split(split)[0])
        assert np.array_equal(task.split(split)[1], reference.split(split)[1])


def test_unknown_task_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TASK_ROOT_ENV, str(tmp_path))
    with pytest.raises(TaskError, match="unknown task"):
        get_task(task_name(b"\x42" * 32))
    with pytest.raises(TaskError, match="64 lowercase hex"):
        get_task("task:abc")


def test_cache_refuses_a_file_with_the_wrong_hash(small: bytes, tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    digest = cache.put(small)
    assert cache.read(digest) == small
    cache.path(digest).write_bytes(small[:-2] + b"9\n")  # bit rot or an edit
    with pytest.raises(BlobError, match="does not hash"):
        cache.read(digest)


def test_a_finished_fetch_is_renamed_into_the_cache_not_copied(big: bytes, tmp_path: Path) -> None:
    """The partial file is the whole file once its chunks are in: it becomes the cached file
    itself (same inode), so a 64 MiB fetch is not written a second time."""
    ref = make_spec(big, target="label", name="big").data
    cache = BlobCache(tmp_path)
    partial = cache.partial(ref)
    for i in range(len(ref.chunks)):
        start, end = ref.chunk_range(i)
        partial.write_chunk(i, big[start:end])
    with pytest.raises(ValueError, match="not a chunk"):
        partial.write_chunk(0, big[:10])  # a torn answer never lands in a chunk slot
    inode = partial.path.stat().st_ino
    assert partial.finish() == cache.path(ref.blake3)
    assert cache.path(ref.blake3).stat().st_ino == inode and not partial.path.exists()
    assert cache.read(ref.blake3) == big


def test_chunks_that_do_not_make_the_announced_file(small: bytes, tmp_path: Path) -> None:
    """Every chunk matches its listed hash but the whole-file hash is another: refused."""
    spec = make_spec(small, target="label", name="demo")
    lying = TaskSpec.from_dict(
        {**spec.to_dict(), "data": {**spec.to_dict()["data"], "blake3": b"\x01" * 32}}
    )
    data = TaskData(BlobCache(tmp_path))
    data.want(lying.data)
    (fetch, _partial) = data.fetches[lying.data.blake3]
    fetch.in_flight[0] = ("p", NOW)
    assert data.on_chunk("p", messages.Chunk(lying.data.blake3, 0, True, small), NOW) == OK
    assert not data.has(lying.data.blake3)
    assert "do not make up" in data.failed[lying.data.blake3]


# --- fetching over the sync protocol --------------------------------------------------------------
def deliver(server: PeerCore, client: PeerCore, actions: list, server_name: str) -> list:
    out = []
    for a in actions:
        if isinstance(a, SendRequest) and a.peer == server_name:
            answer = server.on_sync_request("client", a.data, NOW)
            out += client.on_sync_response(server_name, answer, NOW)
    return out


def publish_on(root: Path, data: bytes) -> tuple[PeerCore, bytes, TaskSpec]:
    a = core(Identity.generate(), root)
    spec = make_spec(data, target="label", name="big")
    tid, _ = a.publish_task(spec, NOW)
    blob_cache(root).put(data)
    return a, tid, spec


def join(a: PeerCore, root: Path, **policy: int) -> PeerCore:
    b = core(Identity.generate(), root)
    if policy:
        assert b.data is not None
        b.data.policy = DataFetchPolicy(**policy)
    for vid in a.store.topological_order():
        raw = a.store.get(vid)
        assert raw is not None
        assert b.store.ingest(raw, NOW).accepted
    b.on_peer_connected("A")
    return b


def test_fetch_from_a_peer_that_never_shared_a_path(big: bytes, tmp_path: Path) -> None:
    a, tid, spec = publish_on(tmp_path / "A", big)
    a.on_peer_connected("client")
    b = join(a, tmp_path / "B")
    assert b.fetch_task_data(tid)
    assert not b.fetch_task_data(b"\x00" * 32)  # unknown task id: nothing to fetch
    for _ in range(10):
        deliver(a, b, b.on_tick(NOW), "A")
    assert b.data is not None and b.data.has(spec.data.blake3)
    assert BlobCache(tmp_path / "B" / "blobs").read(spec.data.blake3) == big
    # Held data is shared onward: B now answers a third peer.
    c = join(b, tmp_path / "C")
    c.peers = {"B"}
    c.fetch_task_data(tid)
    for _ in range(10):
        deliver(b, c, c.on_tick(NOW), "B")
    assert c.data is not None and c.data.has(spec.data.blake3)


def test_a_corrupt_chunk_is_a_strike_and_is_not_kept(big: bytes, tmp_path: Path) -> None:
    a, tid, spec = publish_on(tmp_path / "A", big)
    b = join(a, tmp_path / "B")
    b.fetch_task_data(tid)
    requests = [x for x in b.on_tick(NOW) if isinstance(x, SendRequest)]
    chunk_requests = [r for r in requests if unpack(r.data, 1 << 20)["op"] == "chunk/get"]
    assert chunk_requests
    ask = messages.decode(chunk_requests[0].data)
    assert isinstance(ask, messages.GetChunk)
    good = messages.decode(a.on_sync_request("B", chunk_requests[0].data, NOW))
    assert isinstance(good, messages.Chunk) and good.have
    flipped = bytes([good.bytes[0] ^ 1]) + good.bytes[1:]
    bad = messages.encode(messages.Chunk(ask.data, ask.index, True, flipped))
    b.on_sync_response("A", bad, NOW)
    assert b.trust.strikes.get("A") == 1 and b.stats.rejected.get("bad-chunk") == 1
    assert b.data is not None and b.data.progress(spec.data.blake3) == (0, len(spec.data.chunks))
    assert BlobCache(tmp_path / "B" / "blobs").partial(spec.data).held == set()  # not on disk
    # An unasked chunk (late or unrequested) is ignored, not written.
    b.on_sync_response("A", messages.encode(good), NOW)
    assert b.data.progress(spec.data.blake3) == (0, len(spec.data.chunks))


def test_restart_in_the_middle_of_a_fetch(big: bytes, tmp_path: Path) -> None:
    a, tid, spec = publish_on(tmp_path / "A", big)
    b = join(a, tmp_path / "B", window=1)
    b.fetch_task_data(tid)
    deliver(a, b, b.on_tick(NOW), "A")  # one chunk, then the process dies
    assert b.data is not None and b.data.progress(spec.data.blake3) == (1, 3)
    partial = tmp_path / "B" / "blobs" / "partial" / f"{spec.data.hex}.part"
    assert partial.is_file()
    # A fresh process over the same data dir: the chunk on disk is re-verified and kept.
    again = join(a, tmp_path / "B", window=1)
    again.fetch_task_data(tid)
    assert again.data is not None and again.data.progress(spec.data.blake3) == (1, 3)
    # A chunk damaged on disk while the node was down counts as missing, not as held.
    with open(partial, "r+b") as fh:
        fh.seek(0)
        fh.write(b"\xff")
    third = join(a, tmp_path / "B")
    third.fetch_task_data(tid)
    assert third.data is not None and third.data.progress(spec.data.blake3) == (0, 3)
    asked: list[int] = []
    for _ in range(10):
        acts = third.on_tick(NOW)
        asked += [
            m.index
            for m in (messages.decode(x.data) for x in acts if isinstance(x, SendRequest))
            if isinstance(m, messages.GetChunk)
        ]
        deliver(a, third, acts, "A")
    assert third.data.has(spec.data.blake3) and sorted(set(asked)) == [0, 1, 2]
    assert not partial.exists()
    assert blake3.blake3((tmp_path / "B" / "blobs" / spec.data.hex).read_bytes()).digest() == (
        spec.data.blake3
    )


def test_a_peer_without_the_data_says_so(big: bytes, tmp_path: Path) -> None:
    a, tid, spec = publish_on(tmp_path / "A", big)
    empty = core(Identity.generate(), tmp_path / "E")
    answer = messages.decode(
        empty.on_sync_request("x", messages.encode(messages.GetChunk(spec.data.blake3, 0)), NOW)
    )
    assert isinstance(answer, messages.Chunk) and not answer.have and answer.bytes == b""


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(min_size=32, max_size=32),
    index=st.integers(0, MAX_DATA_BYTES // CHUNK_SIZE - 1),
    have=st.booleans(),
    body=st.binary(max_size=64),
)
def test_chunk_messages_round_trip(data: bytes, index: int, have: bool, body: bytes) -> None:
    ask = messages.GetChunk(data, index)
    assert messages.decode(messages.encode(ask)) == ask
    answer = messages.Chunk(data, index, have, body if have else b"")
    assert messages.decode(messages.encode(answer)) == answer


def test_oversize_chunk_answers_are_refused() -> None:
    big = pack({"op": "chunk", "data": bytes(32), "index": 0, "have": True,
                "bytes": bytes(CHUNK_SIZE + 1)})  # fmt: skip
    with pytest.raises(DecodeError, match="at most"):
        messages.decode(big)
    with pytest.raises(DecodeError):
        messages.decode(pack({"op": "chunk/get", "data": bytes(32), "index": 10**6}))


def test_chunk_hashes_cover_the_file(big: bytes) -> None:
    hashes = chunk_hashes(big)
    assert len(hashes) == -(-len(big) // CHUNK_SIZE)
    assert hashes[-1] == blake3.blake3(big[(len(hashes) - 1) * CHUNK_SIZE :]).digest()


# --- the command line -------------------------------------------------------------------------
def test_cli_publish_list_show(
    small: bytes,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    csv = tmp_path / "data.csv"
    csv.write_bytes(small)
    d = str(tmp_path / "node")
    assert main(["task", "publish", str(csv), "--target", "label", "--data-dir", d, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["task", "publish", str(csv), "--target", "value", "--data-dir", d, "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["task"] != second["task"]
    assert main(["task", "list", "--data-dir", d, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {t["id"] for t in listed} == {first["task"], second["task"]}
    assert all(t["data"]["held"] for t in listed)
    assert main(["task", "show", first["task"][:10], "--data-dir", d]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["target"] == "label" and shown["features"] == ["a", "b", "c", "value"]
    # Clear errors, no traceback.
    assert main(["task", "show", "deadbeefdead", "--data-dir", d]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert main(["task", "publish", str(csv), "--target", "nope", "--data-dir", d]) == 2
    assert "no column named 'nope'" in capsys.readouterr().err
    assert main(["task", "publish", str(tmp_path / "missing.csv"), "--data-dir", d]) == 2
    assert "no such file" in capsys.readouterr().err
    # One source at a time, as for `templates`: --data-dir is not silently ignored.
    for args in (["list"], ["show", first["task"]]):
        assert main(["task", *args, "--http", "127.0.0.1:9", "--data-dir", d]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--http (a running node) or --data-dir" in err
    # Without either, the default data dir.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "node").rename(tmp_path / "qudag-data")
    assert main(["task", "show", first["task"][:10]]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == first["task"]


def test_decoded_task_vertex_names_its_data(small: bytes) -> None:
    identity = Identity.generate()
    c = core(identity)
    tid, _ = c.publish_task(make_spec(small, target="label", name="demo"), NOW)
    raw = c.store.get(tid)
    assert raw is not None
    vertex = decode_vertex(raw, decoders=NODE_DECODERS)
    assert vertex.kind == KIND_TASK and vertex.id == tid
    assert vertex.payload["data"]["blake3"] == blake3.blake3(small).digest()


# --- templates of a published task, the front, offline pull ----------------------------------
def test_templates_of_a_published_task_front_and_offline_pull(
    small: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dataclasses import replace

    from qudag.crypto.keystore import load_identity
    from qudag.evolution.genome import Genome
    from qudag.evolution.template import from_genome, load_template
    from qudag.evolution.verify import remeasure_with_holdout, verify_claim
    from qudag.node.protocol.core import task_tolerances, task_versions

    d, tid = publish_cli(small, tmp_path, capsys)
    monkeypatch.setenv(TASK_ROOT_ENV, str(d))
    task = get_task("task:" + tid)
    name = "task:" + tid
    now = time.time_ns() // 1_000_000  # the CLI signed the task vertex with the clock
    me = load_identity(d / "node.key")
    settings_ = {
        "tasks": (name,),
        "tolerances": task_tolerances((name,)),
        "versions": task_versions((name,)),
        "attest_quorum": 0,
        "publish_quorum": 0,
    }
    store = Store.open(d / "ledger.sqlite3", decoders=NODE_DECODERS)
    ours = PeerCore(me, store, CoreConfig(**settings_), random.Random(0))  # type: ignore[arg-type]
    theirs = PeerCore(
        Identity.generate(),
        Store.open(":memory:", decoders=NODE_DECODERS),
        CoreConfig(**settings_),  # type: ignore[arg-type]
        random.Random(1),
    )
    made = []
    for seed, hidden in ((1, [2]), (2, [16, 16]), (3, [4])):
        genome = Genome.random(np.random.default_rng(seed), task.n_inputs, hidden, task.n_outputs)
        draft = from_genome(genome, task, 0.0, generation=seed, latency_repeats=3)
        made.append(replace(draft, fitness=verify_claim(draft)))
    assert made[0].task == name and made[0].task_version == 1

    def sync(src: PeerCore, dst: PeerCore, now: int) -> None:
        raws = tuple(src.store.get(v) or b"" for v in src.store.topological_order())
        dst.on_sync_response("peer", messages.encode(messages.Vertices(raws, False)), now)

    def reevaluate(c: PeerCore, now: int) -> int:
        """Claims checked (each valid); the held-out draws of our own templates are measured
        too (display only: no verdict)."""
        n = 0
        while (job := c.next_reevaluation()) is not None:
            _, measured, holdout = remeasure_with_holdout(job.template, job.holdout_seed)
            verdict, _ = c.on_reevaluated(job, measured, now, holdout)
            assert verdict == (None if job.own else "valid")
            n += 0 if job.own else 1
        return n

    own_id, _ = ours.publish_template(made[0], now + 1)
    sync(ours, theirs, now + 2)
    for i, t in enumerate(made[1:]):
        theirs.publish_template(t, now + 3 + i)
    sync(theirs, ours, now + 10)
    # Each re-measures the other's claims on the published task and attests them.
    assert reevaluate(ours, now + 20) == 2
    assert reevaluate(theirs, now + 21) == 1
    sync(theirs, ours, now + 30)
    assert store.kind_counts()["attestation"] == 3
    store.close()
    assert main(["templates", "list", "--data-dir", str(d), "--front", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["task"] == "task:" + tid
    ids = {r["id"] for r in shown["front"]}
    assert main(["templates", "list", "--data-dir", str(d), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["templates"]
    assert len(listed) == 3 and all(e["verified"] for e in listed)
    assert own_id.hex() in {e["id"] for e in listed}
    smallest = min(made, key=lambda t: t.n_bytes)  # the smallest is never dominated
    assert any(r["bytes"] == smallest.n_bytes for r in shown["front"])
    assert ids <= {e["id"] for e in listed}
    for r in shown["front"]:
        assert r["verified"] and r["bytes"] > 0
        # The held-out score we measured beside each claim of theirs, read from the ledger
        # by the offline client; for our own template, our draw of it, which is not in the
        # ledger: the offline client measures it (display only).
        assert r["held_out"] is not None and r["held_out"]["by"] == "us"
    # The card of our template: the other node's attestation and the formats it exports to.
    assert main(["templates", "show", "--data-dir", str(d), own_id.hex()[:12]]) == 0
    shown_card = json.loads(capsys.readouterr().out)
    assert shown_card["task"] == name and shown_card["signature"] == "verified"
    assert {v["verifier"] for v in shown_card["verdicts"]} == {theirs.me.hex()}
    assert all(v["attestation"] for v in shown_card["verdicts"])
    assert shown_card["lineage"] == [] and "onnx" in shown_card["export_formats"]
    out = tmp_path / "best.template"
    assert main(["templates", "pull", "--data-dir", str(d), "-o", str(out), "--json"]) == 0
    pulled = json.loads(capsys.readouterr().out)
    assert pulled["node_verified"] is True and load_template(out).task == "task:" + tid
    assert main(["templates", "pull", "--data-dir", str(d), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_the_task_payload_is_specified_in_docs() -> None:
    import re

    from qudag.evolution import taskspec

    doc = (Path(__file__).resolve().parent.parent / "docs" / "vertex-format.md").read_text()
    start = doc.index("### task")
    text = doc[start : doc.index("\n## ", start)]
    keys = re.findall(r"^\| `(\w+)` ", text, flags=re.MULTILINE)
    assert keys == [*taskspec._SCHEMA, taskspec.PRIVATE_KEY]  # the optional key last
    for schema in (taskspec._DATA_SCHEMA, taskspec._SPLIT_SCHEMA, taskspec._LIMITS_SCHEMA):
        for key in schema:
            assert f'"{key}"' in text, key
    assert f"{taskspec.CHUNK_SIZE:,}" in text and f"{taskspec.MAX_DATA_BYTES:,}" in text


def test_evolve_a_published_task_on_one_machine(
    small: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qudag.evolution.template import load_template

    node, tid = publish_cli(small, tmp_path, capsys)
    d = str(node)
    out = tmp_path / "evo"
    args = ["evolve", "--task", tid[:10], "--tasks-from", d, "--generations", "2"]
    assert main([*args, "--population", "8", "--out", str(out)]) == 0
    assert load_template(out / "best.template").task == "task:" + tid
    capsys.readouterr()
    assert main(["evolve", "--task", "0123456789ab", "--tasks-from", d, "--out", str(out)]) == 2
    assert "no task with that id prefix" in capsys.readouterr().err


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(1, 3 * CHUNK_SIZE + 5),
    written=st.sets(st.integers(0, 3)),
    damaged=st.integers(0, 3),
)
def test_a_reopened_partial_file_holds_exactly_its_intact_chunks(
    tmp_path_factory: pytest.TempPathFactory, size: int, written: set[int], damaged: int
) -> None:
    data = bytes(random.Random(size).getrandbits(8) for _ in range(min(size, 64))) * (
        size // 64 + 1
    )
    data = data[:size]
    ref = TaskSpec.from_dict(
        {
            **make_spec(csv_bytes(30), target="label", name="x").to_dict(),
            "data": {
                "format": "csv", "sep": ",", "header": True, "size": size,
                "blake3": blake3.blake3(data).digest(), "chunk_size": CHUNK_SIZE,
                "chunks": list(chunk_hashes(data)),
            },
        }
    ).data  # fmt: skip
    cache = BlobCache(tmp_path_factory.mktemp("cache"))
    first = cache.partial(ref)
    written = {i for i in written if i < len(ref.chunks)}
    for i in written:
        start, end = ref.chunk_range(i)
        first.write_chunk(i, data[start:end])
    assert cache.partial(ref).held == written
    if damaged in written:
        start, _ = ref.chunk_range(damaged)
        with open(first.path, "r+b") as fh:
            fh.seek(start)
            byte = fh.read(1)
            fh.seek(start)
            fh.write(bytes([byte[0] ^ 0xFF]))
        assert cache.partial(ref).held == written - {damaged}


def test_a_tasks_genome_limits_bind_its_evolution(
    small: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A net over the task's limits would be a false claim to every peer that re-measures
    it: evolution on a task published with a tight limit stays within it."""
    from qudag.evolution.template import load_template
    from qudag.evolution.verify import remeasure

    node, tid = publish_cli(small, tmp_path, capsys, "--max-params", "40")
    d, csv = str(node), tmp_path / "data.csv"
    out = tmp_path / "evo"
    args = ["evolve", "--task", tid, "--tasks-from", d, "--generations", "3", "--population", "8"]
    assert main([*args, "--out", str(out)]) == 0
    best = load_template(out / "best.template")
    assert best.n_params <= 40
    assert remeasure(best)[1] == pytest.approx(best.fitness)
    assert main(["task", "publish", str(csv), "--max-params", "0", "--data-dir", d]) == 2
    assert "limits.max_params" in capsys.readouterr().err


def test_run_task_refs_resolve_through_the_ledger(
    small: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qudag.node.errors import UserError
    from qudag.node.ops.task_join import published_ref, resolve_refs

    assert published_ref("xor") is None and published_ref("digits") is None
    assert published_ref("csv:data.csv") is None and published_ref("deadbeef") == "deadbeef"
    d, tid_hex = publish_cli(small, tmp_path, capsys)
    tid = bytes.fromhex(tid_hex)
    with Store.open(d / "ledger.sqlite3", decoders=NODE_DECODERS) as store:
        assert store.task_vertex_ids() == [tid]
    names, missing = resolve_refs(d, ["xor", tid.hex()[:9]])
    assert names == ["xor", task_name(tid)] and missing == []
    other = bytes(32).hex()
    names, missing = resolve_refs(tmp_path / "empty", [other])  # a node that never saw it
    assert names == ["task:" + other] and missing == [bytes(32)]
    with pytest.raises(UserError, match="full 64-digit id"):
        resolve_refs(tmp_path / "empty", ["deadbeef00"])


def test_the_fetch_phase_fetches_every_wanted_task_and_reads_each_vertex_once(
    big: bytes, small: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run --task A --task B` on a node that lacks both: both fetches start at the first look
    (not B after A), and once a task's vertex is here the phase's looks, every 0.2 s, read
    only the cache and the fetch's progress, not the ledger."""
    from qudag.node.errors import UserError
    from qudag.node.ops.task_join import Joining

    a, tid_big, spec_big = publish_on(tmp_path / "A", big)
    spec_small = make_spec(small, target="label", name="small")
    tid_small, _ = a.publish_task(spec_small, NOW + 1)
    blob_cache(tmp_path / "A").put(small)
    a.on_peer_connected("client")
    b = join(a, tmp_path / "B")
    assert b.data is not None
    joining = Joining(tmp_path / "B")
    reads: list[bytes] = []
    vertex = b.store.vertex
    monkeypatch.setattr(b.store, "vertex", lambda vid: reads.append(vid) or vertex(vid))
    assert not any([joining.done(b, tid) for tid in (tid_big, tid_small)])
    assert b.data.progress(spec_big.data.blake3) == (0, 3)
    assert b.data.progress(spec_small.data.blake3) == (0, 1)
    assert {tid_big, tid_small} <= set(reads)
    later_reads = 0
    for _ in range(10):
        deliver(a, b, b.on_tick(NOW), "A")
        before = len(reads)
        joining.done(b, tid_big), joining.done(b, tid_small)
        later_reads += len(reads) - before
    assert joining.done(b, tid_big) and joining.done(b, tid_small)
    assert later_reads == 0  # the ledger is read when a vertex is first seen, not at each look
    assert blob_cache(tmp_path / "B").read(spec_small.data.blake3) == small
    assert spec_path(tmp_path / "B", tid_big).is_file()  # loadable by the node's children
    # A vertex that is not a task is a clear error, not a wait.
    tasks = set(b.store.task_vertex_ids())
    not_a_task = next(v for v in b.store.topological_order() if v not in tasks)
    with pytest.raises(UserError, match="not a task"):
        Joining(tmp_path / "B").done(b, not_a_task)
    assert not Joining(tmp_path / "B").done(b, bytes(32))  # not here yet: wait


def test_a_split_the_rows_cannot_make_is_a_task_error_not_a_crash() -> None:
    """A task vertex may name any split of at least 1 % each; one that a file's rows cannot
    make (a 1 % test split of 2 classes in 100 rows) is refused with `TaskError`, which the
    node reports, instead of sklearn's ValueError escaping to a traceback."""
    from qudag.evolution.tasks import TaskError, _split_indices

    with pytest.raises(TaskError, match="98/1/1 split of 100 rows"):
        _split_indices(np.array([0, 1] * 50), 100, True, 1, (98, 1, 1))
