"""Issue 15, "Done when", on real `qudag-node run` processes on 127.0.0.1.

Node A publishes a csv that node B never saw (B's data dir holds nothing; the file is not on
any path B is told of). B joins by task id: it syncs the ledger from A, fetches the data in
chunks (the file is larger than one chunk) and checks it, and evolves. A and B re-measure
and attest each other's templates; the leaderboard (`templates list --front`) lists verified
templates, over HTTP from a running node and offline from a stopped node's data dir.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import blake3
import numpy as np
import pytest

from qudag.dag.store import Store
from qudag.evolution.taskspec import CHUNK_SIZE
from qudag.node.cli import main
from qudag.node.ops.cluster import NodeProcess, start_node, stop_all
from qudag.node.protocol.core import NODE_DECODERS

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.timeout(150)]


def node_args(task: str, seed: int) -> list[str]:
    return [
        "--task", task, "--population", "16", "--generations", "14", "--publish-every", "2",
        "--seed", str(seed), "--heads-interval", "1", "--reeval-budget-ms", "300",
        "--log-level", "INFO", "--when-done", "serve",
    ]  # fmt: skip


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def templates(node: NodeProcess, task: str) -> list[dict[str, object]]:
    import urllib.request

    query = urllib.parse.urlencode({"task": task, "limit": 100})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{node.http}/templates?{query}", timeout=3) as reply:
        return list(json.loads(reply.read())["templates"])


def remeasured_from(node: NodeProcess, task: str, author: str) -> bool:
    """`node` lists a template of `author` as verified by its own measurement."""
    try:
        rows = templates(node, task)
    except OSError:
        return False
    return any(r["author"] == author and r["measured_by"] == "us" for r in rows)


def test_a_csv_b_never_saw_is_published_fetched_evolved_and_attested(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(7)
    lines = ["f1,f2,f3,label"]
    for _ in range(9_000):
        a, b, c = rng.normal(size=3)
        lines.append(f"{a:.7f},{b:.7f},{c:.7f},{int(a * b + 0.3 * c > 0)}")
    csv = tmp_path / "private" / "mine.csv"
    csv.parent.mkdir()
    csv.write_text("\n".join(lines) + "\n")
    assert csv.stat().st_size > CHUNK_SIZE  # fetched in more than one chunk
    # A's private held-out rows (the same generator): A is the task's designated verifier.
    secret = tmp_path / "private" / "secret.csv"
    secret.write_text("\n".join(lines[:1] + lines[-300:]) + "\n")
    csv.write_text("\n".join(lines[:-300]) + "\n")
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    publish = ["task", "publish", str(csv), "--target", "label", "--name", "mine"]
    publish += ["--private-holdout", str(secret)]
    assert main([*publish, "--data-dir", str(a_dir), "--json"]) == 0
    task_id = json.loads(capsys.readouterr().out)["task"]
    name = "task:" + task_id
    nodes: list[NodeProcess] = []
    try:
        a = start_node("a", a_dir, node_args(task_id[:12], 1))  # a prefix: A's ledger has it
        nodes.append(a)
        b = start_node("b", b_dir, node_args(task_id, 2), bootstrap=[a.addr])  # the full id
        nodes.append(b)
        digest = blake3.blake3(csv.read_bytes()).digest()
        assert (b_dir / "blobs" / digest.hex()).read_bytes() == csv.read_bytes()
        assert not (b_dir / "blobs" / "partial" / f"{digest.hex()}.part").exists()
        assert main(["task", "list", "--http", b.http, "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [(t["id"], t["data"]["held"]) for t in listed] == [(task_id, True)]
        a_key, b_key = a.ready["key_id"], b.ready["key_id"]
        wait_until(lambda: remeasured_from(a, name, b_key), 90, "A to re-measure B's template")
        wait_until(lambda: remeasured_from(b, name, a_key), 60, "B to re-measure A's template")
        http = ["templates", "list", "--task", name, "--front", "--json", "--http", a.http]
        assert main(http) == 0
        front = json.loads(capsys.readouterr().out)["front"]
        # Measured, and scored on a held-out draw, by the node for the other's templates.
        assert front and all(r["verified"] and r["verified_fitness"] is not None for r in front)
        assert all(r["held_out"]["by"] == "us" for r in front if r["author"] == b_key)
        # A, the task's designated verifier, scored B's templates on its private rows (its
        # verifier child holds them), and B shows A's score, labelled as the task author's.
        mine = [r for r in templates(a, name) if r["author"] == b_key and r["designated"]]
        assert mine and all(r["designated"]["n"] == 300 for r in mine)  # type: ignore[index]
        assert all(r["designated"]["by"] == "us" for r in mine)  # type: ignore[index]
        wait_until(
            lambda: any(r["designated"] for r in templates(b, name)), 30, "B to show A's score"
        )
        shown = [r["designated"] for r in templates(b, name) if r["designated"]]
        assert all(d["by"] == a_key and d["reproducible"] is False for d in shown)  # type: ignore[index]
    finally:
        stop_all(nodes)
    # Each attested the other's templates in its ledger (the attestation sortition draws
    # about 6 verifiers per claim, so with two nodes every verdict is published).
    with Store.open(a_dir / "ledger.sqlite3", decoders=NODE_DECODERS) as store:
        attesters_of = {}
        for kind_author in (a_key, b_key):
            for vid in store.vertex_ids_by(bytes.fromhex(kind_author), "attestation"):
                vertex = store.vertex(vid)
                assert vertex is not None
                target = store.vertex(vertex.payload["template"])
                assert target is not None and target.payload["task"] == name
                attesters_of.setdefault(kind_author, set()).add(target.author.hex())
    assert b_key in attesters_of.get(a_key, set()) and a_key in attesters_of.get(b_key, set())
    offline = ["templates", "list", "--data-dir", str(a_dir), "--task", name, "--front", "--json"]
    assert main(offline) == 0
    front = json.loads(capsys.readouterr().out)["front"]
    # Read from A's ledger: the held-out scores of A's attestations of B's templates.
    assert front and all(r["held_out"] is not None for r in front if r["author"] == b_key)
    # B never held A's private rows.
    assert not (b_dir / "private").exists()
