"""Test-side access to running `qudag-node run` daemons: their HTTP routes and bounded waits.

Shared by the multi-process test modules (tests/test_node_multiprocess.py,
tests/test_node_attacks.py), which look at real daemons only through what a user can see.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from qudag.node.ops.cluster import NodeProcess

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxies


def get_bytes(node: NodeProcess, path: str, timeout: float = 3.0) -> bytes:
    with _OPENER.open(f"http://{node.http}{path}", timeout=timeout) as reply:
        return bytes(reply.read())


def get_json(node: NodeProcess, path: str, timeout: float = 3.0) -> Any:
    return json.loads(get_bytes(node, path, timeout))


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    poll: float = 0.25,
    nodes: list[NodeProcess] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; {describe(nodes)}")


def describe(nodes: list[NodeProcess] | None) -> str:
    """One line per node of what a failed wait needs to be understood."""
    out = []
    for node in nodes or []:
        st = node.status() or {}
        out.append(
            f"{node.name}: alive={node.alive()} vertices={st.get('vertices')} "
            f"orphans={st.get('orphans')} tips={st.get('tips')} peers={len(st.get('peers', []))} "
            f"digest={str(st.get('vertex_set_digest'))[:8]} rejected={st.get('rejected')}"
        )
    return " | ".join(out)
