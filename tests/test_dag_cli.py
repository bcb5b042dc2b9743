"""`qudag-node dag verify|export|import` as a user runs them, bad inputs included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dag_helpers import NOW_MS, random_dag, template_payload

from qudag.crypto.canonical import pack
from qudag.dag.segment import segment_path
from qudag.dag.store import Store, ledger_path
from qudag.dag.vertex import SIGNING_CONTEXT, decode_vertex, encode_body

pytestmark = pytest.mark.multiprocess  # every test runs the `qudag-node` console script


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qudag.node", "dag", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def clean_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("node")
    with Store.open(ledger_path(data)) as store:
        store.ingest_many(random_dag().raws, NOW_MS)
    return data


def test_verify_export_import_round_trip(node_dir: Path, tmp_path: Path) -> None:
    verified = run("verify", "--data-dir", str(node_dir))
    assert verified.returncode == 0, verified.stderr
    summary = json.loads(verified.stdout)
    n = len(random_dag().raws)
    with Store.open(ledger_path(node_dir)) as store:
        tips = store.tips()
        order = store.topological_order()
    assert summary == {"vertices": n, "invalid": 0, "orphans": 0, "tips": len(tips)}

    out = tmp_path / "ledger.bin"
    exported = run("export", "--data-dir", str(node_dir), "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["vertices"] == n
    assert out.stat().st_size == sum(len(r) for r in random_dag().raws)
    clean_error(run("export", "--data-dir", str(node_dir), "--out", str(out)), "exists")

    other = tmp_path / "other"
    imported = run("import", "--data-dir", str(other), "--in", str(out))
    assert imported.returncode == 0, imported.stderr
    result = json.loads(imported.stdout)
    assert (result["read"], result["accepted"], result["vertices"]) == (n, n, n)
    again = json.loads(run("import", "--data-dir", str(other), "--in", str(out)).stdout)
    assert (again["duplicate"], again["accepted"], again["vertices"]) == (n, 0, n)
    with Store.open(ledger_path(other)) as store:
        assert store.tips() == tips and store.topological_order() == order
    assert json.loads(run("verify", "--data-dir", str(other)).stdout)["invalid"] == 0


def test_bad_inputs_are_clean_errors_and_change_nothing(node_dir: Path, tmp_path: Path) -> None:
    clean_error(run("verify", "--data-dir", str(tmp_path / "absent")), "no ledger")
    junk_dir = tmp_path / "junk"
    junk_dir.mkdir()
    ledger_path(junk_dir).write_bytes(b"not sqlite at all" * 64)
    clean_error(run("verify", "--data-dir", str(junk_dir)), "ledger")
    clean_error(run("import", "--data-dir", str(tmp_path / "x"), "--in", "/nonexistent"), "no such")

    target = tmp_path / "target"
    raws = random_dag().raws
    target.mkdir()
    with Store.open(ledger_path(target)) as store:
        store.ingest_many(raws[:5], NOW_MS)

    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x92\xc4\x05hello" + b"\x00" * 10)
    clean_error(run("import", "--data-dir", str(target), "--in", str(garbage)), "nothing imported")

    tampered = bytearray(raws[20])
    tampered[-10] ^= 0x01  # a signature byte: framing intact, vertex invalid
    bad_stream = tmp_path / "bad.bin"
    bad_stream.write_bytes(b"".join(raws[5:20]) + bytes(tampered) + b"".join(raws[21:]))
    result = run("import", "--data-dir", str(target), "--in", str(bad_stream))
    clean_error(result, "bad-signature")
    assert "vertex #16" in result.stderr

    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(b"".join(raws[5:])[:-7])
    clean_error(run("import", "--data-dir", str(target), "--in", str(truncated)), "truncated")

    # A template dag's structural check accepts but evolution's strict decoder refuses
    # (its params claim does not match its genome): the CLI judges templates as a node does.
    identity = random_dag().identities[0]
    author_tip = max(
        (decode_vertex(r) for r in raws[:5] if decode_vertex(r).author == identity.key_id),
        key=lambda v: v.seq,
    )
    payload = template_payload()
    payload["objectives"]["params"] += 1
    body = encode_body(
        identity.key_id, author_tip.seq + 1, NOW_MS, [author_tip.id], "template", payload
    )
    lying = tmp_path / "lying.bin"
    lying.write_bytes(pack([body, identity.sign(body, SIGNING_CONTEXT)]))
    result = run("import", "--data-dir", str(target), "--in", str(lying))
    clean_error(result, "nothing imported")
    assert "rejected (" in result.stderr and "bad-signature" not in result.stderr

    with Store.open(ledger_path(target)) as store:
        assert store.count() == 5 and store.orphan_count() == 0  # nothing changed


def test_verify_reports_a_corrupt_vertex(node_dir: Path, tmp_path: Path) -> None:
    import sqlite3

    copy = tmp_path / "copy"
    copy.mkdir()
    with Store.open(ledger_path(node_dir)) as store:
        raw = store.get(store.topological_order()[7])
    assert raw is not None
    # Copy via SQLite's backup API (the WAL may hold committed pages) with the vertex bytes
    # file, then corrupt one vertex's bytes there.
    src = sqlite3.connect(ledger_path(node_dir))
    dst = sqlite3.connect(ledger_path(copy))
    src.backup(dst)
    src.close()
    offset, length = dst.execute(
        "SELECT seg_off, seg_len FROM vertices WHERE id = ?", (decode_vertex(raw).id,)
    ).fetchone()
    dst.close()
    segment = bytearray(segment_path(ledger_path(node_dir)).read_bytes())
    assert bytes(segment[offset : offset + length]) == raw
    segment[offset + length - 1] ^= 0x80
    segment_path(ledger_path(copy)).write_bytes(bytes(segment))
    result = run("verify", "--data-dir", str(copy))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert json.loads(result.stdout)["invalid"] == 1
