"""A bootstrap node restarted on `tcp/0` comes back on a new port, and its network finds it again.

Issue 13, item 8: node A bootstraps from node B; B stops (SIGTERM, or SIGKILL: nothing flushed)
and is restarted on the same data directory, on a new port. Before, A redialled B's old address
forever and B knew nobody, so they never met again. Now B dials the peers it remembers
(`peers.json`, node/net/peerbook.py) and A, failing at the old address, asks the network for the
new one (`Daemon._redial_known_loop`). Checked: within RECONNECT_S of B's restart A and B are
connected again, and a template B published after its restart reached A.

Real `qudag-node run` processes on 127.0.0.1 (node.ops.cluster, as a user starts them); every
wait is bounded and the nodes are stopped whatever happens.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from qudag.node.net.peerbook import PEERS_FILE
from qudag.node.ops.cluster import NodeProcess, start_node, stop_all
from qudag.node.ops.netns import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.timeout(150)]

TASK = "two-spirals"  # keeps improving by small steps: B publishes nearly every generation
RECONNECT_S = 30.0
CONNECT_S = 30.0


def node_args(seed: int, generations: int) -> list[str]:
    return [
        "--task", TASK, "--population", "12", "--migrants", "2", "--publish-every", "1",
        "--generations", str(generations), "--seed", str(seed), "--heads-interval", "1",
        "--reeval-budget-ms", "100", "--log-level", "INFO", "--when-done", "serve",
    ]  # fmt: skip


# A evolves one generation only, so B's later templates beat everything it knows and B keeps
# publishing (a node publishes only what beats the best known).
B_ARGS = node_args(seed=1, generations=10_000)
A_ARGS = node_args(seed=2, generations=1)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxies


def has_vertex(node: NodeProcess, vertex_id: str) -> bool:
    try:
        with _OPENER.open(f"http://{node.http}/vertices/{vertex_id}", timeout=3.0) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def peers_of(node: NodeProcess) -> list[str]:
    return list((node.status() or {}).get("peers", []))


def remembers(data_dir: Path, peer_id: str) -> bool:
    try:
        return peer_id in json.loads((data_dir / PEERS_FILE).read_text())["peers"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def describe(nodes: list[NodeProcess]) -> str:
    out = []
    for node in nodes:
        st = node.status() or {}
        tail = node.log_path.read_text(errors="replace").strip().splitlines()[-4:]
        out.append(
            f"{node.name}: alive={node.alive()} addrs={st.get('addrs')} peers={st.get('peers')} "
            f"tasks={st.get('tasks', {}).get(TASK, {}).get('generation')} log: {' | '.join(tail)}"
        )
    return "\n".join(out)


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    """Every node a test starts goes in here and is stopped at its end, whatever happens."""
    started: list[NodeProcess] = []
    try:
        yield started
    finally:
        stop_all(started)


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_restarted_bootstrap_node_on_a_new_port_is_found_again(
    tmp_path: Path, nodes: list[NodeProcess], stop: str
) -> None:
    t0 = time.monotonic()
    b = start_node("b", tmp_path / "b", B_ARGS)
    nodes.append(b)
    a = start_node("a", tmp_path / "a", A_ARGS, bootstrap=[b.addr])
    nodes.append(a)
    b_id, a_id = b.ready["peer_id"], a.ready["peer_id"]
    assert wait_until(lambda: b_id in peers_of(a) and a_id in peers_of(b), CONNECT_S), (
        "A and B did not connect\n" + describe(nodes)
    )
    # Give B the few seconds it takes to note A (its redial round); not asserted, so that a
    # node without the peer book fails below, where the defect is, not here.
    wait_until(lambda: remembers(b.data_dir, a_id), 10.0)
    old_addrs = b.ready["addrs"]

    if stop == "sigterm":
        b.stop()
    else:
        b.kill()
    restarted = start_node("b", b.data_dir, B_ARGS)
    nodes.append(restarted)
    assert restarted.ready["peer_id"] == b_id, "the restarted node has a new identity"
    assert not set(restarted.ready["addrs"]) & set(old_addrs), "B came back on its old port"
    t_restart = time.monotonic()

    took = wait_until(lambda: b_id in peers_of(a) and a_id in peers_of(restarted), RECONNECT_S)
    assert took is not None, (
        f"A and the restarted B did not reconnect within {RECONNECT_S:g} s\n" + describe(nodes)
    )

    def new_template_reached_a() -> bool:
        st = restarted.status() or {}
        best = st.get("tasks", {}).get(TASK, {}).get("best_template")  # published since restart
        return best is not None and has_vertex(a, best)

    left = RECONNECT_S - (time.monotonic() - t_restart)
    assert wait_until(new_template_reached_a, max(left, 1.0)), (
        "no template B published after its restart reached A\n" + describe(nodes)
    )
    print(
        f"{stop}: reconnected {took:.1f} s after B's restart, template at A after "
        f"{time.monotonic() - t_restart:.1f} s; test {time.monotonic() - t0:.1f} s"
    )
