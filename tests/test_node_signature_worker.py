"""The signature worker process (node/workers/signature_worker.py) and the daemon's sync-page path.

The child must answer exactly what the in-process check answers (forgeries, unknown authors
and undecodable bytes included), also with requests in flight at once; a malformed request
breaks it loudly, never silently; and the daemon verifies sync pages there, falling back to
threads when it is gone, without the store ever trusting a signature nobody checked.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest
import trio
from dag_helpers import NOW_MS, random_dag

from qudag.crypto.canonical import DecodeError
from qudag.dag import ingest as ingest_module
from qudag.dag.store import Store
from qudag.dag.validate import batch_keys, decode_batch, verify_batch
from qudag.dag.vertex import Vertex
from qudag.node import sync_pages as sync_pages_module
from qudag.node.daemon import Daemon
from qudag.node.ops.config import NodeConfig
from qudag.node.workers.evolution_worker import WorkerError
from qudag.node.workers.signature_worker import PIPE_BYTES, SignatureProcess, check_request


def _forge(vertex: Vertex) -> Vertex:
    return vertex._replace(signature=bytes([vertex.signature[0] ^ 1]) + vertex.signature[1:])


def _batch() -> tuple[list[Vertex | None], dict[bytes, object], list[bool]]:
    """Vertices of a random DAG with a forged signature, a tampered body, an author whose key
    is left out, and an undecodable item; the keys; and what must verify."""
    decoded = decode_batch(random_dag(3).raws)
    keys = batch_keys(decoded, {})
    vertices: list[Vertex | None] = [v for v, _ in decoded]
    vertices[5] = _forge(vertices[5])  # type: ignore[arg-type]
    v7 = vertices[7]
    assert v7 is not None
    vertices[7] = v7._replace(body=v7.body[:-1] + bytes([v7.body[-1] ^ 1]))
    stranger = vertices[9]
    assert stranger is not None and stranger.seq > 0
    vertices.append(None)
    partial = {a: k for a, k in keys.items() if a != stranger.author}
    expected = [
        v is not None and i not in (5, 7) and v.author != stranger.author
        for i, v in enumerate(vertices)
    ]
    return vertices, partial, expected


@pytest.mark.multiprocess
def test_the_worker_answers_what_the_in_process_check_answers() -> None:
    vertices, keys, expected = _batch()
    assert verify_batch(vertices, keys) == expected  # type: ignore[arg-type]
    assert sum(expected) > 10 and not all(expected)

    async def main() -> None:
        with trio.fail_after(60):
            worker = SignatureProcess()
            await worker.start()
            try:
                assert worker.usable
                assert await worker.check(vertices, keys) == expected  # type: ignore[arg-type]
                assert await worker.check([None], keys) == [False]  # nothing sent
                # Pipelined: several requests in flight, each gets its own answer.
                spans = [(0, 20), (20, 41), (10, len(vertices))]
                results: dict[int, list[bool]] = {}

                async def one(j: int, a: int, b: int) -> None:
                    results[j] = await worker.check(vertices[a:b], keys)  # type: ignore[arg-type]

                async with trio.open_nursery() as nursery:
                    for j, (a, b) in enumerate(spans):
                        nursery.start_soon(one, j, a, b)
                assert [results[j] for j in range(3)] == [expected[a:b] for a, b in spans]
            finally:
                await worker.aclose()

    trio.run(main)


def test_check_request_is_strict() -> None:
    vertex = decode_batch(random_dag(3).raws)[0][0]
    assert vertex is not None and vertex.kind == "identity"
    key = vertex.payload["public_key"]
    good = [0, vertex.body, vertex.signature]
    assert check_request({"op": "check", "keys": [key], "items": [good]}) == b"\x01"
    # Bytes that are no ML-DSA-65 key verify nothing (and do not raise).
    assert check_request({"op": "check", "keys": [b"\x00" * 7], "items": [good]}) == b"\x00"
    for bad in (
        {"op": "check", "keys": [key], "items": [[1, vertex.body, vertex.signature]]},
        {"op": "check", "keys": [key], "items": [[0, vertex.body]]},
        {"op": "check", "keys": [key], "items": [[True, vertex.body, vertex.signature]]},
        {"op": "check", "keys": ["text"], "items": []},
        {"op": "other", "keys": [], "items": []},
        {"op": "check", "items": [], "keys": []},
    ):
        with pytest.raises(DecodeError):
            check_request(bad)


@pytest.mark.multiprocess
def test_a_malformed_request_breaks_the_worker_loudly() -> None:
    vertices, keys, _ = _batch()

    async def main() -> None:
        with trio.fail_after(60):
            worker = SignatureProcess()
            await worker.start()
            try:
                with pytest.raises(WorkerError, match="range"):
                    await worker._child.call({"op": "check", "keys": [], "items": [[0, b"", b""]]})
                assert not worker.usable
                with pytest.raises(WorkerError):
                    await worker.check(vertices, keys)  # type: ignore[arg-type]
            finally:
                await worker.aclose()

    trio.run(main)


@pytest.mark.multiprocess
def test_the_daemon_checks_sync_pages_in_the_worker_and_falls_back_to_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raws = list(random_dag(4).raws)
    decoded = decode_batch(raws)
    victim = next(i for i, (v, _) in enumerate(decoded) if v is not None and v.seq > 2)
    vertex = decoded[victim][0]
    assert vertex is not None
    forged = _forge(vertex)
    raws[victim] = forged.raw.replace(vertex.signature, forged.signature)
    forged_id = decode_batch([raws[victim]])[0][0].id  # type: ignore[union-attr]
    expected = [i != victim for i in range(len(raws))]
    daemon = Daemon(NodeConfig(data_dir=tmp_path, tasks=("xor",)))
    thread_checks: list[int] = []

    def counting_verify(vertices: list[Vertex | None], keys: dict[bytes, object]) -> list[bool]:
        thread_checks.append(len(vertices))
        return verify_batch(vertices, keys)  # type: ignore[arg-type]

    monkeypatch.setattr(sync_pages_module, "verify_batch", counting_verify)
    monkeypatch.setattr(sync_pages_module, "precheck", lambda *a, **k: pytest.fail("thread path"))

    async def main() -> list[list[bool]]:
        with trio.fail_after(60):
            out = []
            try:
                await daemon._start_signatures()
                checked = await daemon.sync_pages.precheck(tuple(raws), {})
                out.append([c.key is not None for c in checked])
                assert thread_checks == []  # every signature went to the worker
                # Late keys: a page checked before its authors' identities were known.
                early = await daemon.sync_pages.precheck(tuple(raws[4:]), {})
                assert not any(c.key is not None and c.vertex.seq > 0 for c in early)  # type: ignore[union-attr]
                late = await daemon.sync_pages.recheck(early, {}, batch_keys(decoded, {}))
                out.append([c.key is not None for c in late])
                assert thread_checks == []
                # The worker dies: the same answers, from threads.
                assert daemon.signatures._child.process is not None
                daemon.signatures._child.process.kill()
                checked = await daemon.sync_pages.precheck(tuple(raws), {})
                out.append([c.key is not None for c in checked])
                assert thread_checks == [len(raws)] and not daemon.signatures.usable
                with Store.open(":memory:") as store:
                    calls: list[bytes] = []
                    real = ingest_module.check_signature
                    monkeypatch.setattr(
                        ingest_module,
                        "check_signature",
                        lambda v, k: (calls.append(v.id), real(v, k)),
                    )
                    results = store.ingest_prechecked(checked, NOW_MS)
                    assert calls == [forged_id]  # the store verified only the forgery
                    assert results[victim].reason == "bad-signature"
            finally:
                await daemon.signatures.aclose()
                daemon.close()
            return out

    first, late, fallback = trio.run(main)
    assert first == expected and fallback == expected
    assert late == expected[4:]


@pytest.mark.multiprocess
def test_the_pipe_to_the_worker_holds_a_whole_page() -> None:
    """A ~1 MB sync page must cross in one or two writes, not 16+ (Linux pipes hold 64 KB by
    default; each extra write waited for the daemon's busy trio loop)."""
    get_size = getattr(fcntl, "F_GETPIPE_SZ", None)
    if get_size is None:
        pytest.skip("F_GETPIPE_SZ is Linux-only")
    limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())

    async def main() -> int:
        worker = SignatureProcess()
        await worker.start()
        try:
            stdin = worker._child._stdin
            assert stdin is not None
            return int(fcntl.fcntl(stdin.fileno(), get_size))
        finally:
            await worker.aclose()

    assert trio.run(main) >= min(PIPE_BYTES, limit) >= 1 << 20
