"""testnet's comparison figures are computed from the status polls it recorded."""

from __future__ import annotations

from typing import Any

from qudag.node.commands.testnet import _evolving_daemon_share, _first_at_target


def _poll(t: float, node: str, generation: int, own_best: float, cpu: float) -> dict[str, Any]:
    return {"t": t, "node": node, "generation": generation, "best": own_best,
            "own_best": own_best, "cpu": cpu}  # fmt: skip


def test_first_at_target_counts_from_the_first_generation_and_sums_every_nodes_cpu() -> None:
    history = [
        _poll(1.0, "a", 0, 0.1, 2.0),  # starting up: not yet evolving
        _poll(1.0, "b", 0, 0.1, 2.5),
        _poll(3.0, "a", 5, 0.3, 3.0),  # the network's first generation was seen at 3.0 s
        _poll(3.0, "b", 0, 0.1, 3.5),
        _poll(7.5, "a", 40, 0.45, 6.0),
        _poll(7.5, "b", 30, 0.50, 6.5),  # b reaches 0.5 first
        _poll(8.0, "a", 44, 0.55, 7.0),  # later polls do not count
    ]
    first = _first_at_target(history, 0.5)
    assert first == {
        "node": "b",
        "seconds": 7.5,
        "evolving_s": 4.5,
        "generation": 30,
        "node_cpu_s": 12.5,
        "evolving_cpu_s": 6.0,  # 12.5 at the target - (3.0 + 3.5) when the network began
    }
    assert _first_at_target(history, 0.9) is None


def test_the_evolving_daemon_share_leaves_start_up_out() -> None:
    def poll(t: float, node: str, generation: int, cpu: float, cpu_self: float) -> dict[str, Any]:
        return {**_poll(t, node, generation, 0.0, cpu), "cpu_self": cpu_self}

    history = [
        poll(1.0, "a", 0, 4.0, 3.0),  # start-up: mostly the daemon (imports, keys)
        poll(1.0, "b", 0, 4.0, 3.0),
        poll(2.0, "a", 3, 5.0, 3.2),  # evolving from here
        poll(2.0, "b", 0, 5.0, 3.2),
        poll(6.0, "a", 60, 9.0, 4.2),  # +4 CPU s, 1 of them the daemon's
        poll(6.0, "b", 50, 9.0, 4.2),
    ]
    assert _evolving_daemon_share(history) == 0.25
    assert _evolving_daemon_share(history[:2]) is None  # never evolved
