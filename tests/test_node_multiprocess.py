"""Real `qudag-node run` processes on 127.0.0.1: convergence, catch-up, crash, garbage, lies.

One network is shared by the tests of this module, because starting processes is what costs
time on a 2-core machine (imports, ~1-2 s each). It holds four honest daemons started exactly as
a user would (`node.cluster`), a lying daemon (tests/node_liar.py: the real Daemon whose
evolution loop inflates every claim) and a hostile peer (tests/node_hostile.py: the real
P2PNode sending garbage). The tests run in file order:

1. node3 is killed with SIGKILL mid-evolution and restarted on the same data directory;
2. the four honest nodes finish and converge to identical vertex sets, liar and hostile peer
   notwithstanding;
3. the hostile peer's garbage was rejected, counted and cost it its connections;
4. the liar is banned by every honest node, and none of its templates is listed or sampled;
5. a fifth node started after everything is over catches up on all of the history.

Every wait is bounded; the whole module stays within ~150 s of wall time.
"""

from __future__ import annotations

import http.server
import json
import queue
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon_helpers import get_bytes, get_json, wait_until

from qudag.crypto.signing import Identity
from qudag.dag.store import Store
from qudag.dag.vertex import decode_vertex, make_identity_vertex, make_vertex
from qudag.evolution.genome import Genome
from qudag.evolution.tasks import get_task
from qudag.evolution.template import Template, from_genome, load_template
from qudag.node.cli import main
from qudag.node.ops.cluster import NodeProcess, _read_ready, start_node, start_nodes, stop_all
from qudag.node.protocol import messages
from qudag.node.protocol.core import (
    NODE_DECODERS,
    CoreConfig,
    PeerCore,
    SendRequest,
    task_tolerances,
)

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.timeout(170)]

HERE = Path(__file__).resolve().parent
TASK = "xor"
TOPIC = "qudag/1/task/" + TASK
GENERATIONS = 16  # honest nodes
KILL_GENERATIONS = 120  # node3, so that it is still evolving when it is killed
KILL_AT = 10  # kill node3 once it reports at least this generation
MAX_PEER_STRIKES = CoreConfig(tasks=()).max_peer_strikes  # garbage vertices before a disconnect
GARBAGE_MESSAGES = MAX_PEER_STRIKES + 5


def node_args(seed: int, generations: int = GENERATIONS, **extra: str) -> list[str]:
    args = {
        "--task": TASK,
        "--population": "16",
        "--generations": str(generations),
        "--publish-every": "2",
        "--migrants": "4",
        "--seed": str(seed),
        "--heads-interval": "1",
        "--reeval-budget-ms": "300",
        "--log-level": "INFO",
        "--when-done": "serve",  # these tests look at the nodes after their last generation
    }
    args.update(extra)
    return [item for pair in args.items() for item in pair]


def identical(nodes: list[NodeProcess]) -> bool:
    """Same vertex-set digest on every node, stable across two polls.

    Orphans are not part of the set (they are not in the ledger yet): a banned liar's last
    vertices can stay orphaned for good, since no honest node relays their parents."""
    digests = []
    for _ in range(2):
        statuses = [n.status() for n in nodes]
        if any(st is None for st in statuses):
            return False
        digests += [st["vertex_set_digest"] for st in statuses if st is not None]
        time.sleep(0.5)
    return len(set(digests)) == 1


def own_templates(data_dir: Path, key_id: str) -> dict[bytes, int]:
    """Template vertex id -> generation, for the node's own templates in its ledger file."""
    with Store.open(data_dir / "ledger.sqlite3") as store:
        out = {}
        for vid in store.vertex_ids_by(bytes.fromhex(key_id), "template"):
            vertex = store.vertex(vid)
            assert vertex is not None
            out[vid] = int(vertex.payload["generation"])
        return out


@dataclass
class Net:
    root: Path
    honest: list[NodeProcess]
    liar: NodeProcess
    hostile: subprocess.Popen[str]
    hostile_out: LineReader
    extra: list[NodeProcess]


def start_script(name: str, script: str, data_dir: Path, args: list[str]) -> NodeProcess:
    """A daemon-like helper script with `qudag-node run`'s flags and ready line."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        str(HERE / script),
        "--data-dir",
        str(data_dir),
        "--http",
        "127.0.0.1:0",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        *args,
    ]
    with open(data_dir / "node.log", "ab") as log:
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL
        )
    node = NodeProcess(name, data_dir, argv, process, data_dir / "node.log")
    node.ready = _read_ready(node, 60.0)
    return node


class LineReader:
    """Reads a child's stdout lines in a thread, so that waits on them can be bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self.lines.put(line)

        threading.Thread(target=pump, daemon=True).start()

    def until_done(self, timeout: float) -> list[dict[str, Any]]:
        """JSON records up to the one with event "done"."""
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            records.append(json.loads(line))
            if records[-1].get("event") == "done":
                return records
        raise AssertionError(f"hostile peer did not finish its attacks: {records}")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("multiprocess")
    nodes: list[NodeProcess] = []
    hostile: subprocess.Popen[str] | None = None
    extra: list[NodeProcess] = []
    try:
        nodes.append(start_node("node0", root / "node0", node_args(1)))
        boot = [nodes[0].addr]
        nodes += start_nodes(
            [
                ("node1", root / "node1", node_args(2), boot),
                ("node2", root / "node2", node_args(3), boot),
            ]
        )
        liar = start_script(
            "liar",
            "node_liar.py",
            root / "liar",
            [*node_args(9, GENERATIONS, **{"--migrants": "0"}), "--bootstrap", boot[0]],
        )
        extra.append(liar)
        hostile = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "node_hostile.py"),
                "--topic",
                TOPIC,
                "--count",
                str(GARBAGE_MESSAGES),
                "--sync-request",
                nodes[1].addr,
                "--gossip",
                nodes[1].addr,
                "--pubsub-raw",
                nodes[2].addr,
                "--sync-raw",
                nodes[0].addr,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(root / "hostile.log", "w"),  # noqa: SIM115 - the child owns it
            text=True,
        )
        # node3 last, so that the first test finds it early in its run (it is killed there)
        nodes.append(
            start_node("node3", root / "node3", node_args(4, KILL_GENERATIONS), bootstrap=boot)
        )
        net = Net(root, nodes, liar, hostile, LineReader(hostile), extra)
        yield net
    finally:
        if hostile is not None:
            hostile.kill()
            hostile.wait(timeout=10)
        stop_all([*nodes, *extra])


def test_killed_node_resumes_from_its_checkpoint_without_republishing(net: Net) -> None:
    node3 = net.honest[3]
    seen: dict[str, Any] = {}

    def far_enough() -> bool:
        st = node3.status(timeout=2.0)
        if st is None:
            return False
        seen.update(st)
        if st["tasks"][TASK]["generation"] < KILL_AT:
            return False
        # and a template of its own is committed (under load, the first publication may come
        # later than generation KILL_AT: a crash before it would prove nothing)
        return bool(own_templates(node3.data_dir, st["key_id"]))

    wait_until(far_enough, 60, f"node3 to reach generation {KILL_AT} and publish", poll=0.1)
    killed_at = int(seen["tasks"][TASK]["generation"])
    assert killed_at < KILL_GENERATIONS, "node3 finished before it could be killed"
    node3.kill()  # SIGKILL: nothing flushed, nothing cleaned up
    before = own_templates(node3.data_dir, seen["key_id"])
    assert before, "node3 had published nothing before the kill"

    restarted = start_node(
        "node3",
        node3.data_dir,
        node_args(4, KILL_GENERATIONS),
        bootstrap=[net.honest[0].addr],
    )
    net.honest[3] = restarted
    st = restarted.status(timeout=5.0)
    assert st is not None and st["key_id"] == seen["key_id"]
    # The generation counter continues from the checkpoint (a status read while a generation
    # was being checkpointed may be one ahead of the file).
    assert st["tasks"][TASK]["generation"] >= killed_at - 1
    assert st["vertices"] >= len(before) + 1
    wait_until(
        lambda: bool((restarted.status() or {}).get("done")), 90, "node3 to finish after restart"
    )
    # Its own templates: every one committed before the crash is still there, the generations
    # are unique (none republished), and the chain checks out byte by byte. Read from the live
    # node's ledger file (SQLite readers do not block the writer).
    after = own_templates(restarted.data_dir, seen["key_id"])
    assert set(before) <= set(after)
    generations = list(after.values())
    assert len(generations) == len(set(generations)), f"republished: {sorted(generations)}"
    final = restarted.status()
    assert final is not None and final["tasks"][TASK]["generation"] == KILL_GENERATIONS
    with Store.open(restarted.data_dir / "ledger.sqlite3") as store:
        assert store.check_invariants() == []
        assert store.verify_all().invalid == 0


def test_four_nodes_converge_to_identical_vertex_sets(net: Net) -> None:
    nodes = net.honest
    wait_until(
        lambda: all((n.status() or {}).get("done") for n in nodes), 90, "all nodes to finish"
    )
    wait_until(
        lambda: identical(nodes), 45, "identical vertex sets on the four honest nodes", nodes=nodes
    )
    statuses = [n.status() for n in nodes]
    assert all(st is not None for st in statuses)
    counts = {st["vertices"] for st in statuses if st}
    assert len(counts) == 1 and counts.pop() > 4 * 5  # identities + templates + attestations
    # claims were re-measured (counters since each process started: node3 restarted) and
    # verified templates of others were sampled as migrants
    assert sum(st["reevaluations"].get("valid", 0) for st in statuses if st) >= 1
    assert sum(st["tasks"][TASK]["migrants_injected"] for st in statuses if st) >= 1


def test_garbage_peer_is_penalised_and_dropped_while_others_work(net: Net) -> None:
    report = net.hostile_out.until_done(45)
    hostile_id = report[-1]["peer_id"]
    node0, node1, node2 = net.honest[:3]
    rejected = {n.name: (n.status() or {}).get("rejected", {}) for n in (node0, node1, node2)}
    # node1: a garbage request inside a real PQ session, then garbage gossip (each one struck)
    assert rejected["node1"].get("bad-sync-request", 0) >= 1, rejected
    faults = ("bad-sync-request", "malformed", "trailing-bytes", "type", "non-canonical")
    assert sum(rejected["node1"].get(r, 0) for r in faults) >= MAX_PEER_STRIKES, rejected
    # node2: a frame that is not a protobuf RPC on the gossipsub stream
    assert rejected["node2"].get("net-pubsub-malformed", 0) >= 1, rejected
    # node0: junk instead of a handshake on /qudag/sync/1.0.0
    assert any(k.startswith("net-sync-") for k in rejected["node0"]), rejected
    # Each victim closed its connection to the hostile (seen from the hostile's side: a victim
    # may accept it again once the 30 s penalty cooldown is over, and later tests run longer
    # than that, so the connection state at this point is not the property).
    dropped_by = report[-1]["dropped_by"]
    for node in (node0, node1, node2):
        st = node.status()
        assert st is not None and node.alive()
        assert dropped_by.get(st["peer_id"], 0) >= 1, (node.name, hostile_id, dropped_by)
    # the garbage never became ledger content anywhere: honest nodes still agree (waited for,
    # so that this test holds when run alone, before the convergence test has waited)
    wait_until(lambda: identical(net.honest), 90, "identical honest vertex sets", nodes=net.honest)


def test_lying_peer_is_banned_and_never_sampled(net: Net) -> None:
    liar_key = net.liar.ready["key_id"]

    def banned_everywhere() -> bool:
        return all(liar_key in (n.status() or {}).get("banned_authors", []) for n in net.honest)

    # Judging takes a re-evaluation of one of its claims: waited for, so that this test holds
    # when run alone (in module order the earlier tests have already waited long enough).
    wait_until(banned_everywhere, 90, "every honest node to ban the liar", nodes=net.honest)
    for node in net.honest:
        # the liar's identity reached every honest node (so its claims were seen)...
        assert len(get_bytes(node, f"/identities/{liar_key}")) > 0
        st = node.status()
        assert st is not None
        # ...and was judged: banned after a failed re-evaluation (or by others' verdicts)
        assert liar_key in st["banned_authors"], (node.name, st["banned_authors"])
        listed = get_json(node, f"/templates?task={TASK}&limit=100")["templates"]
        assert listed and all(t["author"] != liar_key for t in listed)
        injected = get_json(node, f"/migrants?task={TASK}")["injected"]
        for vid in injected:
            vertex = decode_vertex(get_bytes(node, f"/vertices/{vid}"))
            assert vertex.author.hex() != liar_key, f"{node.name} sampled a lie"
    invalid = sum((n.status() or {}).get("reevaluations", {}).get("invalid", 0) for n in net.honest)
    assert invalid >= 1


def test_late_node_catches_up_on_all_history(net: Net) -> None:
    reference = net.honest[0].status()
    assert reference is not None
    late = start_node(
        "late",
        net.root / "late",
        node_args(5, 1, **{"--reeval-budget-ms": "0", "--migrants": "0"}),
        bootstrap=[net.honest[0].addr],
    )
    net.extra.append(late)
    wait_until(
        lambda: (late.status() or {}).get("vertices", 0) >= reference["vertices"],
        45,
        "the late node to fetch the history",
    )
    # its own identity vertex flows the other way: all five end with one vertex set
    wait_until(
        lambda: identical([*net.honest, late]),
        45,
        "identical sets with the late node",
        nodes=[*net.honest, late],
    )


def test_templates_cli_lists_shows_and_pulls_a_usable_file(
    net: Net, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = net.honest[0]
    status = node.status()
    assert status is not None
    mine = status["key_id"]

    def own_scored() -> bool:
        """Every template of the node's own it lists shows its own held-out draw (its
        verifier child measures one per publication, display only)."""
        rows = get_json(node, f"/templates?task={TASK}&limit=100")["templates"]
        own = [r for r in rows if r["author"] == mine]
        return bool(own) and all((r["held_out"] or {}).get("by") == "us" for r in own)

    wait_until(own_scored, 30, "the node's own templates' held-out scores", nodes=[node])
    assert main(["templates", "list", "--http", node.http, "--task", TASK, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["templates"]
    assert listed and listed[0]["verified_fitness"] is not None  # best verified first
    best = listed[0]["id"]
    assert main(["templates", "show", "--http", node.http, best[:12]]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == best and shown["signature"] == "verified" and shown["task"] == TASK
    out = tmp_path / "best.template"
    assert main(["templates", "pull", "--http", node.http, "-o", str(out), "--json"]) == 0
    pulled = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert pulled["id"] == best and out.exists()
    payload = decode_vertex(get_bytes(node, f"/vertices/{best}")).payload
    assert load_template(out) == Template.from_dict(payload)  # the signed bytes, nothing else
    onnx = tmp_path / "b.onnx"
    assert main(["template", "export", str(out), "--format", "onnx", "-o", str(onnx)]) == 0
    assert main(["synthesize", str(out), "--input", "[[0, 1], [1, 1]]"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-2:]]
    assert [r["class"] for r in rows] == [1, 0]  # it solves xor
    # bad input: one clear line, exit 2
    assert main(["templates", "pull", "--http", node.http, "-o", str(out)]) == 2  # exists
    assert main(["templates", "show", "--http", node.http, "00" * 32]) == 2  # unknown id
    assert main(["templates", "show", "--http", node.http, "abc"]) == 2  # too short
    assert "error" in capsys.readouterr().err


class _LyingServer(http.server.BaseHTTPRequestHandler):
    """Answers every /vertices/{id} with one fixed (valid, signed) vertex: the wrong one."""

    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def test_templates_cli_refuses_bytes_that_are_not_the_vertex_asked_for(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _LyingServer.body = make_identity_vertex(Identity.generate(), 1_700_000_000_000)
    server = http.server.HTTPServer(("127.0.0.1", 0), _LyingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        assert main(["templates", "show", "--http", address, "ab" * 32]) == 2
        assert "not the one asked for" in capsys.readouterr().err
        # nothing listens here any more after shutdown: unreachable is one line too
    finally:
        server.shutdown()
        server.server_close()
    assert main(["templates", "list", "--http", address, "--timeout", "2"]) == 2
    assert "connection refused" in capsys.readouterr().err


def test_sync_pages_of_large_templates_fit_the_message_limit() -> None:
    """No processes: a core serving ~55 KB templates pages them under the 4 MiB message limit
    (256 of them are 14 MB, which both sides refused), and a new core catches up through it."""
    task = get_task("digits")
    genome = Genome.random(np.random.default_rng(0), task.n_inputs, [128, 32], task.n_outputs)
    payload = from_genome(genome, task, 0.5, latency_repeats=3).to_dict()
    author, now = Identity.generate(), 1_700_000_000_000
    raws = [make_identity_vertex(author, now)]
    for i in range(120):
        parent = decode_vertex(raws[-1]).id
        raws.append(
            make_vertex(author, i + 1, now, [parent], "template", {**payload, "generation": i})
        )
    server = PeerCore(
        Identity.generate(),
        Store.open(":memory:", decoders=NODE_DECODERS),
        CoreConfig(tasks=("digits",), tolerances=task_tolerances(("digits",))),
        random.Random(0),
    )
    server.store.ingest_many(raws, now)
    client = PeerCore(
        Identity.generate(),
        Store.open(":memory:", decoders=NODE_DECODERS),
        CoreConfig(tasks=("digits",), tolerances=task_tolerances(("digits",))),
        random.Random(0),
    )
    request = messages.encode(messages.Since((), 256))
    pages = 0
    while request:
        response = server.on_sync_request("client", request, now)
        assert len(response) < messages.MAX_MESSAGE_SIZE
        pages += 1
        actions = client.on_sync_response("server", response, now)
        requests = [a.data for a in actions if isinstance(a, SendRequest)]
        request = requests[0] if requests else b""
    assert pages >= 2 and client.store.count() == len(raws)
    assert client.stats.rejected == {}
    found = server.on_sync_request(
        "c",
        messages.encode(messages.GetVertices(tuple(decode_vertex(r).id for r in raws[:200]))),
        now,
    )
    assert len(found) < messages.MAX_MESSAGE_SIZE and messages.decode(found).vertices
