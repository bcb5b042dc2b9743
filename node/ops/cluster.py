"""Several `qudag-node run` processes on this machine: start, watch, stop.

Used by `qudag-node testnet`, the multi-process tests and the network benchmarks, so all of
them start nodes exactly as a user would (the real CLI in real processes on 127.0.0.1, each with
its own data directory and log file) and stop them the same way (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qudag.node.commands.status import fetch_status
from qudag.node.errors import UserError

READY_TIMEOUT_S = 60.0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    """`kill` (SIGTERM) tears a launcher down as Ctrl-C does: its `finally` stops the nodes
    it started. Without this, a killed launcher leaves them running (they are in sessions of
    their own, so no signal reaches them)."""
    signal.signal(signal.SIGTERM, _raise_interrupt)


@dataclass
class NodeProcess:
    """One daemon: its process, where it logs, and what it printed when ready."""

    name: str
    data_dir: Path
    args: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def http(self) -> str:
        return str(self.ready["http"])

    @property
    def addr(self) -> str:
        return str(self.ready["addrs"][0])

    def alive(self) -> bool:
        return self.process.poll() is None

    def status(self, timeout: float = 3.0) -> dict[str, Any] | None:
        """The node's /status, or None if it does not answer (dead, busy, restarting)."""
        try:
            return fetch_status(self.http, timeout)
        except UserError:
            return None

    def kill(self) -> None:
        """SIGKILL: the crash a fault test wants (nothing flushed, nothing cleaned)."""
        if self.alive():
            self.process.kill()
        self.process.wait(timeout=10)

    def stop(self, grace_s: float = 10.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop within `grace_s`."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return int(self.process.returncode)


def node_command() -> list[str]:
    return [sys.executable, "-m", "qudag.node"]


def start_nodes(
    launches: Sequence[tuple[str, Path, Sequence[str], Sequence[str]]],
) -> list[NodeProcess]:
    """Start several nodes at once: (name, data_dir, extra_args, bootstrap) each.

    All processes are launched before waiting for any ready line, so their start-up (mostly
    imports) overlaps. If one fails, the ones already started are stopped.
    """
    pending = [_launch(name, d, args, bootstrap, None) for name, d, args, bootstrap in launches]
    started: list[NodeProcess] = []
    try:
        for node in pending:
            node.ready = _read_ready(node, READY_TIMEOUT_S)
            started.append(node)
    except BaseException:
        stop_all(pending)
        raise
    return started


def start_node(
    name: str,
    data_dir: Path,
    extra_args: Sequence[str],
    *,
    bootstrap: Sequence[str] = (),
    env: dict[str, str] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> NodeProcess:
    """Start `qudag-node run` and wait for its ready line; raise UserError if it fails."""
    node = _launch(name, data_dir, extra_args, bootstrap, env)
    node.ready = _read_ready(node, ready_timeout_s)
    return node


def _launch(
    name: str,
    data_dir: Path,
    extra_args: Sequence[str],
    bootstrap: Sequence[str],
    env: dict[str, str] | None,
) -> NodeProcess:
    args = [
        *node_command(),
        "run",
        "--data-dir",
        str(data_dir),
        "--http",
        "127.0.0.1:0",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        *extra_args,
    ]
    for addr in bootstrap:
        args += ["--bootstrap", addr]
    return spawn(name, data_dir, args, env)


def spawn(
    name: str, data_dir: Path, args: Sequence[str], env: dict[str, str] | None = None
) -> NodeProcess:
    """Start an arbitrary node command line (logging to DATA_DIR/node.log); do not wait.

    For launchers that need their own command line around `qudag-node` (e.g. `ip netns exec`
    in qudag.node.ops.netns); pair with `read_ready`.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "node.log"
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child process from here on
    process = subprocess.Popen(
        list(args),
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop the nodes
    )
    log.close()
    return NodeProcess(name, data_dir, list(args), process, log_path)


def read_ready(node: NodeProcess, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
    """Wait for a spawned node's ready line; kill it and raise UserError if none comes."""
    return _read_ready(node, timeout_s)


def _read_ready(node: NodeProcess, timeout_s: float) -> dict[str, Any]:
    assert node.process.stdout is not None
    fd = node.process.stdout.fileno()
    os.set_blocking(fd, False)
    deadline = time.monotonic() + timeout_s
    buffer = b""
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            chunk = None
        if chunk:
            buffer += chunk
            if b"\n" in buffer:
                line = buffer.split(b"\n", 1)[0]
                try:
                    info = json.loads(line)
                except json.JSONDecodeError:
                    break
                if isinstance(info, dict) and "http" in info and info.get("addrs"):
                    return info
                break
        elif chunk == b"" or not node.alive():
            break
        else:
            time.sleep(0.05)
    node.kill()
    tail = node.log_path.read_text(errors="replace").strip().splitlines()[-5:]
    raise UserError(f"node {node.name} did not start; its log ends with: " + " | ".join(tail))


def stop_all(nodes: Sequence[NodeProcess], grace_s: float = 10.0) -> None:
    for node in nodes:
        if node.alive():
            node.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for node in nodes:
        try:
            node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.kill()
