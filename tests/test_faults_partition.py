"""Partition: real daemons in network namespaces split in two halves that evolve, then heal.

Measured: the time from heal until every node holds every vertex that existed anywhere at the
moment of the heal (the union of both halves); the goal is <= 10 s. Also checked: during the
split each half made vertices the other half did not have (so the heal had real work to do),
every node kept evolving (generations advanced), and no node died. The figures are printed and
appended to $QUDAG_FAULTS_REPORT (JSON lines) for docs/reliability.md.

CI: 4 nodes split 2/2 for 10 s, and the halves must merge within 60 s (the 10 s goal is not
met yet on a loaded 2-core machine: docs/reliability.md). QUDAG_LONG_TESTS=1: 6 nodes split 3/3
for 60 s, then a second 30 s split. QUDAG_HEAL_GOAL=1 asserts the 10 s goal itself.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from qudag.node.ops.netns import NetnsTestnet, unavailable_reason, wait_until

REASON = unavailable_reason()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.multiprocess,
    pytest.mark.skipif(REASON is not None, reason=f"network namespaces unavailable: {REASON}"),
]
LONG = os.environ.get("QUDAG_LONG_TESTS") == "1"
# two-spirals keeps improving by small steps, so nodes publish templates nearly every generation.
NODE_ARGS = ["--task", "two-spirals", "--population", "12", "--migrants", "2",
             "--publish-every", "1", "--reeval-budget-ms", "100"]  # fmt: skip
HEAL_GOAL_S = 10.0
HEAL_LIMIT_S = HEAL_GOAL_S if os.environ.get("QUDAG_HEAL_GOAL") == "1" else 60.0
NODES = 6 if LONG else 4


def report(test: str, figures: dict[str, Any]) -> None:
    line = json.dumps({"test": test, "long": LONG, **figures})
    print(line)
    path = os.environ.get("QUDAG_FAULTS_REPORT")
    if path:
        with open(path, "a") as handle:
            handle.write(line + "\n")


def _generations(net: NetnsTestnet, nodes: range) -> list[int]:
    out = []
    for i in nodes:
        st = net.status(i) or {}
        out.append(max((t["generation"] for t in st.get("tasks", {}).values()), default=-1))
    return out


def _split_and_heal(net: NetnsTestnet, partition_s: float) -> dict[str, Any]:
    n = len(net.nodes)
    half = n // 2
    net.partition([list(range(half)), list(range(half, n))])
    gen_before = _generations(net, range(n))
    time.sleep(partition_s)
    gen_after = _generations(net, range(n))
    sets = [net.vertex_ids(i) for i in range(n)]
    union = set().union(*sets)
    half_a, half_b = set().union(*sets[:half]), set().union(*sets[half:])
    only_a, only_b = len(half_a - half_b), len(half_b - half_a)
    net.heal()
    heal_s = wait_until(lambda: all(union <= net.vertex_ids(i) for i in range(n)), 60.0, 0.1)
    alive = [node.alive() for node in net.nodes]
    return {
        "nodes": n,
        "partition_s": partition_s,
        "vertices_at_heal": len(union),
        "only_in_half_a": only_a,
        "only_in_half_b": only_b,
        "generations_during_split": [y - x for x, y in zip(gen_before, gen_after, strict=True)],
        "heal_to_all_hold_union_s": None if heal_s is None else round(heal_s, 2),
        "alive": alive,
    }


def test_partition_both_halves_evolve_then_merge(tmp_path: Path) -> None:
    with NetnsTestnet(NODES, tmp_path, extra_args=NODE_ARGS) as net:
        net.start_all()
        meshed = wait_until(
            lambda: all(len((net.status(i) or {}).get("peers", [])) >= 2 for i in range(NODES)),
            30.0,
        )
        assert meshed is not None, "nodes never connected to each other"
        cycles = [_split_and_heal(net, 60.0 if LONG else 10.0)]
        if LONG:
            cycles.append(_split_and_heal(net, 30.0))
        for n, cycle in enumerate(cycles):
            report(f"partition-cycle-{n}", cycle)
        for cycle in cycles:
            assert all(cycle["alive"]), cycle
            assert cycle["only_in_half_a"] > 0 and cycle["only_in_half_b"] > 0, cycle
            assert all(g > 0 for g in cycle["generations_during_split"]), cycle
            assert cycle["heal_to_all_hold_union_s"] is not None, "the halves never merged"
            assert cycle["heal_to_all_hold_union_s"] <= HEAL_LIMIT_S, cycle
