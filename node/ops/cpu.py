"""CPU seconds of a process, its main thread and its children, read from Linux /proc.

Why /proc and not `resource`: a node's CPU splits into the daemon itself (network, ledger,
core) and its worker children (evolution, re-evaluation, signature checks), which are alive
and not yet waited for, so `RUSAGE_CHILDREN` does not see them. The daemon's /status, the
testnet summary and the node benchmarks all read them here. Every function returns 0 where
/proc is not readable (another OS, a process that ended).
"""

from __future__ import annotations

import os
from pathlib import Path


def stat_cpu(stat: str) -> float:
    """User + system CPU seconds from a Linux /proc .../stat file, 0 if unavailable."""
    try:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def process_cpu(pid: int) -> float:
    """CPU time of a whole process so far."""
    return stat_cpu(f"/proc/{pid}/stat")


def main_thread_cpu(pid: int) -> float:
    """CPU time of a process's main thread (the daemon's trio thread)."""
    return stat_cpu(f"/proc/{pid}/task/{pid}/stat")


def cpu_tree(pid: int) -> dict[str, float]:
    """CPU of a daemon process itself and of its children (evolution, verifier), separately."""
    children = 0.0
    try:
        for tid in Path(f"/proc/{pid}/task").iterdir():
            for child in (tid / "children").read_text().split():
                children += process_cpu(int(child))
    except OSError:
        pass
    return {"self": process_cpu(pid), "children": children}


def children_cpu(pid: int, marker: str) -> float:
    """CPU time of the children of `pid` whose command line contains `marker` (the daemon's
    signature worker: its CPU is the client's too)."""
    total = 0.0
    try:
        for tid in Path(f"/proc/{pid}/task").iterdir():
            for child in (tid / "children").read_text().split():
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                if marker.encode() in cmdline:
                    total += process_cpu(int(child))
    except OSError:
        pass
    return total
