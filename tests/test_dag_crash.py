"""Crash safety: SIGKILL a process that is writing vertices, many times, at random moments.

After every kill the store must open, pass `PRAGMA integrity_check` and our DAG invariants
(every stored vertex's parents stored, tips exact), and hold every vertex whose `ingest` had
returned (the writer prints an id only after the call that stored it returned).
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from dag_helpers import NOW_MS, random_dag

from qudag.dag.segment import segment_path
from qudag.dag.store import Store

CYCLES = 20  # each cycle: ~0.5 s of interpreter start-up, then writes until the kill

WRITER = textwrap.dedent(
    """
    import random, sys
    from qudag.dag.store import Store
    from qudag.dag.vertex import iter_vertex_stream

    stream, db, seed, now = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    AUTHORED, BULK = int(sys.argv[5]), sys.argv[6] == "bulk"
    with open(stream, "rb") as handle:
        raws = [raw for _, raw in iter_vertex_stream(handle)]
    rng = random.Random(seed)
    rng.shuffle(raws)  # random delivery: orphans, releases and duplicates all happen
    # Shuffled delivery of 3 authors' 400 vertices buffers more than the per-author orphan
    # cap (64) of one author; this test is about crash safety, not that cap.
    # Bulk: large batches, and a small metadata cache in some runs, so that a transaction
    # writes segment bytes and rows well before its commit (a kill there leaves a tail).
    meta_cache = rng.choice([1, 50, 200_000]) if BULK else 200_000
    store = Store.open(db, max_orphans_per_author=10_000, meta_cache=meta_cache)
    print("ready", flush=True)
    i = 0
    while i < len(raws):
        if BULK:
            k = rng.randint(40, 150)
            results = store.ingest_many(raws[i : i + k], now, batch_size=rng.randint(10, 60))
            i += k
        elif rng.random() < 0.5:
            results = [store.ingest(raws[i], now)]
            i += 1
        else:
            k = rng.randint(2, 20)
            results = store.ingest_many(raws[i : i + k], now, batch_size=rng.randint(1, 8))
            i += k
        for r in results:
            ids = ([r.id] if r.status == "accepted" else []) + list(r.released)
            for vid in ids:
                sys.stdout.write(vid.hex() + "\\n")
        sys.stdout.flush()
    # Then author new vertices (1 ms signatures: a steady stream of writes to interrupt).
    from qudag.crypto.signing import Identity
    from qudag.dag.vertex import decode_vertex, make_identity_vertex, make_vertex

    me = Identity.generate()
    payload = {"task": "xor", "task_version": 1, "objectives": {"fitness": 0.5}, "parents": []}
    made = 0
    while made < AUTHORED:
        chain = []  # sign a short chain, then store it with one call
        for _ in range(rng.randint(1, 6)):
            if chain:
                prev = decode_vertex(chain[-1])
                seq, parents = prev.seq + 1, [prev.id]
            else:
                seq, parents = store.next_seq(me.key_id), store.parents_for(me.key_id)
            if seq == 0:
                chain.append(make_identity_vertex(me, now, parents))
            else:
                chain.append(make_vertex(me, seq, now, parents, "template", payload))
        if len(chain) == 1:
            results = [store.ingest(chain[0], now)]
        else:
            results = store.ingest_many(chain, now)
        made += len(chain)
        for r in results:
            assert r.status == "accepted", r
            sys.stdout.write(r.id.hex() + "\\n")
        sys.stdout.flush()
    print("done", flush=True)
    """
)


def _run_until(
    cmd: list[str], kill_after_lines: int | None, delay: float, confirmed: set[bytes]
) -> bool:
    """Run the writer; SIGKILL it after `kill_after_lines` ids (+ delay). True if it finished."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 90  # generous: the shared machine can be very loaded
    seen = 0
    finished = False
    buffer = b""
    killed = False
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=1.0):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line == b"done":
                    finished = True
                elif line != b"ready":
                    confirmed.add(bytes.fromhex(line.decode()))
                    seen += 1
            if kill_after_lines is not None and seen >= kill_after_lines and not killed:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                killed = True
        else:
            pytest.fail("writer did not finish within 90 s")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        selector.close()
    # Lines already in the pipe when the kill landed were printed after their ingest returned.
    for line in (buffer + proc.stdout.read()).split(b"\n"):
        if line and line not in (b"done", b"ready"):
            confirmed.add(bytes.fromhex(line.decode()))
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.returncode in (0, -signal.SIGKILL), stderr
    return finished


def _segment_sizes(db: Path) -> tuple[int, int]:
    """(committed size, file size) of the ledger's segment file (dag/segment.py)."""
    with sqlite3.connect(db) as conn:
        committed = int(conn.execute("SELECT size FROM segment").fetchone()[0])
    where = segment_path(db)
    return committed, where.stat().st_size if where.exists() else 0


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", ["mixed", "bulk"])
def test_sigkill_while_writing(tmp_path: Path, mode: str) -> None:
    dag = random_dag(seed=7, n=400, n_authors=3)
    stream = tmp_path / "vertices.bin"
    stream.write_bytes(b"".join(dag.raws))
    writer = tmp_path / "writer.py"
    writer.write_text(WRITER)
    db = tmp_path / "ledger.sqlite3"
    rng = random.Random(1234)
    confirmed: set[bytes] = set()
    kills = 0
    for cycle in range(CYCLES):
        cmd = [sys.executable, str(writer), str(stream), str(db), str(cycle), str(NOW_MS)]
        cmd += ["400", mode]
        finished = _run_until(cmd, rng.randint(0, 80), rng.uniform(0, 0.02), confirmed)
        kills += not finished
        committed, on_disk = _segment_sizes(db)
        assert on_disk >= committed, f"cycle {cycle}: committed rows point past the segment"
        with Store.open(db) as store:
            assert store.integrity_check() == "ok"
            # Every stored vertex's bytes (segment file included) decode to its id.
            assert store.check_invariants() == []
            assert store.missing(confirmed) == [], f"cycle {cycle}: lost confirmed vertices"
    assert kills >= CYCLES // 2  # the kills really landed while it was writing
    # One last uninterrupted run completes the DAG exactly; its first transaction cut any
    # bytes a killed transaction left past the committed size.
    assert _run_until(
        [sys.executable, str(writer), str(stream), str(db), "999", str(NOW_MS), "5", mode],
        None,
        0.0,
        confirmed,
    )
    committed, on_disk = _segment_sizes(db)
    assert on_disk == committed
    with Store.open(db) as store:
        assert store.missing(dag.ids) == [] and store.orphan_count() == 0
        assert store.missing(confirmed) == []
        report = store.verify_all()
        assert report.invalid == 0 and not report.problems
        assert report.vertices == store.count() > len(dag.raws)
