"""`kill` on a running testnet stops the nodes it started (they run in sessions of their own,
so no signal reaches them unless the testnet stops them). On the way: the testnet prints the
address of every node's observatory page, and each answers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _node_pids(out: Path) -> list[int]:
    """Processes whose command line names a data directory under `out`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if (
            b"qudag.node" in cmdline
            and b" run" in cmdline.replace(b"\0", b" ")
            and str(out).encode() in cmdline
        ):
            pids.append(int(entry.name))
    return pids


def _ready(out: Path) -> list[Path]:
    """Node logs that say the node is up (it has printed its ready line to the testnet)."""
    return [log for log in out.glob("node*/node.log") if b"node ready" in log.read_bytes()]


@pytest.mark.multiprocess
def test_sigterm_to_a_testnet_stops_its_nodes(tmp_path: Path) -> None:
    out = tmp_path / "net"
    testnet = subprocess.Popen(
        [sys.executable, "-m", "qudag.node", "testnet", "--nodes", "2", "--task", "xor",
         "--generations", "100000", "--out", str(out)],
        stdout=(tmp_path / "stdout").open("wb"),
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(_ready(out)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_ready(out)) == 2, "the nodes did not start"
        assert len(_node_pids(out)) == 2
        pages: list[str] = []
        while len(pages) < 2 and time.monotonic() < deadline + 10:
            time.sleep(0.2)
            text = (tmp_path / "stdout").read_text(errors="replace")
            pages = re.findall(r"node\d (http://127\.0\.0\.1:\d+/)", text)
        assert len(pages) == 2, text
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for page in pages:
            with opener.open(page, timeout=5) as reply:
                assert b"<title>QuDAG-Evo observatory</title>" in reply.read()
        testnet.send_signal(signal.SIGTERM)
        testnet.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _node_pids(out) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _node_pids(out) == []
    finally:
        if testnet.poll() is None:
            testnet.kill()
        for pid in _node_pids(out):
            os.kill(pid, signal.SIGKILL)
