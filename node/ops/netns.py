"""A testnet of real daemons, each in its own Linux network namespace, with links we can cut.

The docker-compose testnet (docker-compose.yml) needs a Docker engine; this runs the same nodes
with the same addresses and the same command lines on a bare Linux host (root, `ip`, `tc`):

- a hub namespace holds a bridge `br0`; node i gets namespace `<tag>-n<i>` and a veth pair
  (`eth0` inside the node, `v<i>` on the hub's bridge) with address 10.77.0.(10+i)/24, the
  compose network's addresses. Nothing is created or addressed in the caller's namespace;
- node 0 runs `qudag-node run --listen /ip4/10.77.0.10/tcp/4001 --seed 10`, node i > 0 runs
  `qudag-node join 10.77.0.10:8700 --wait 120 -- run --listen /ip4/10.77.0.1i/tcp/4001 --seed
  1i` (`compose_command`), with `QUDAG_CONFIG=deploy/node.toml` and its own data directory
  (`QUDAG_DATA_DIR`), exactly as docker-compose.yml does (tests/test_compose.py compares them);
- faults: `partition([[0, 1, 2], [3, 4, 5]])` moves each group's links to a bridge of its own
  (packets between groups are dropped, as when a cable is pulled), `heal()` moves them back;
  `netem(i, "delay 50ms loss 2%")` shapes node i's link with `tc netem`; `kill(i)` is SIGKILL,
  `stop(i)` SIGTERM, `restart(i)` starts the same command on the same data directory, and
  `add_node()` joins a fresh node with an empty disk;
- the harness reads each node's /status and /metrics from inside its namespace (a thread that
  `setns`-es into it) and its committed vertex ids from its SQLite ledger on disk.

Teardown (`close`, the context manager, atexit, and SIGTERM/SIGINT in the CLI) kills every
process inside our namespaces and deletes the namespaces (which deletes the links), also after
a failure; `cleanup_stale()` removes what a killed harness left behind. Namespace names carry
the harness's pid, so two testnets (two test sessions) never touch each other's nodes: their
10.77.0.x addresses live in separate hub namespaces.
"""

from __future__ import annotations

import atexit
import ctypes
import ipaddress
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from qudag.node.commands.status import fetch_status
from qudag.node.errors import UserError
from qudag.node.ops.cluster import NodeProcess, node_command, read_ready, spawn

SUBNET = ipaddress.IPv4Network("10.77.0.0/24")
FIRST_HOST = 10  # node i is 10.77.0.(10 + i), as in docker-compose.yml
P2P_PORT = 4001
HTTP_PORT = 8700
SEED_BASE = 10
# deploy/ is at the top of the source tree, two levels above this package (node/ops/).
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
DEFAULT_CONFIG = DEPLOY_DIR / "node.toml"
NETNS_DIR = Path("/var/run/netns")
_CLONE_NEWNET = 0x40000000
_TAG_RE = re.compile(r"^qd(\d+)x(\d+)-")

T = TypeVar("T")


def node_ip(i: int) -> str:
    return str(SUBNET.network_address + FIRST_HOST + i)


def compose_command(i: int) -> list[str]:
    """The `qudag-node` arguments of node i, identical to docker-compose.yml's `command:`.

    Node 0 is the bootstrap node; every other node `join`s it by its status address.
    """
    run = ["run", "--listen", f"/ip4/{node_ip(i)}/tcp/{P2P_PORT}", "--seed", str(SEED_BASE + i)]
    if i == 0:
        return run
    return ["join", f"{node_ip(0)}:{HTTP_PORT}", "--wait", "120", "--", *run]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise UserError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc


def unavailable_reason() -> str | None:
    """None if this process can create network namespaces and veth links, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root or with CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    for tool in ("ip", "tc"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"`{tool}` (iproute2) is not installed"
    probe = f"qd{os.getpid()}x0-probe"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"cannot create a network namespace: {made.stderr.strip()}"
        veth = _ip(
            "-n", probe, "link", "add", "a0", "type", "veth", "peer", "name", "b0", check=False
        )
        if veth.returncode != 0:
            return f"cannot create a veth pair: {veth.stderr.strip()}"
        bridge = _ip("-n", probe, "link", "add", "br0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"cannot create a bridge: {bridge.stderr.strip()}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run ip: {exc}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_processes(ns: str) -> None:
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def cleanup_stale() -> list[str]:
    """Delete namespaces left by testnets whose harness process is gone; return their names."""
    removed: list[str] = []
    if not NETNS_DIR.is_dir():
        return removed
    for entry in sorted(NETNS_DIR.iterdir()):
        match = _TAG_RE.match(entry.name)
        if match and not _pid_alive(int(match.group(1))):
            _kill_namespace_processes(entry.name)
            _ip("netns", "del", entry.name, check=False)
            removed.append(entry.name)
    return removed


_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn` in a thread that has entered network namespace `ns`; return its result.

    `setns` changes only the calling thread's namespace, and sockets keep the namespace they
    were created in, so this is how the harness talks to 127.0.0.1:8700 *inside* a node.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            fd = os.open(NETNS_DIR / ns, os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            try:
                box["value"] = fn(*args, **kwargs)
            finally:
                _libc.setns(own, _CLONE_NEWNET)
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            os.close(own)

    thread = threading.Thread(target=target, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def _http_get(url: str, timeout: float) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as reply:
        return str(reply.read(8 * 1024 * 1024).decode("utf-8", "replace"))


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (enough for tests and reports)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


@dataclass
class NetnsNode:
    index: int
    ns: str
    ip: str
    data_dir: Path
    command: list[str]
    env: dict[str, str]
    process: NodeProcess | None = None
    starts: int = 0
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"node{self.index}"

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()


_counter = 0
_open_testnets: list[NetnsTestnet] = []


def _close_all_at_exit() -> None:
    for testnet in list(_open_testnets):
        testnet.close()


atexit.register(_close_all_at_exit)


class NetnsTestnet:
    """N daemons in N network namespaces on one bridge. Use as a context manager."""

    def __init__(
        self,
        n: int,
        workdir: Path,
        *,
        extra_args: Sequence[str] = (),
        config: Path = DEFAULT_CONFIG,
        netem: str | None = None,
        ready_timeout_s: float = 90.0,
    ) -> None:
        if not 1 <= n <= 200:
            raise UserError("a namespace testnet has 1 to 200 nodes")
        global _counter
        _counter += 1
        self.tag = f"qd{os.getpid()}x{_counter}"
        self.hub = f"{self.tag}-hub"
        self.workdir = Path(workdir).resolve()
        self.extra_args = list(extra_args)
        self.config = Path(config).resolve()
        self.netem_spec = netem
        self.ready_timeout_s = ready_timeout_s
        self.nodes: list[NetnsNode] = []
        self._bridges = 0
        self._closed = False
        self._initial = n
        self._lock = threading.Lock()

    # --- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> NetnsTestnet:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> None:
        """Create the hub and the N node namespaces (no process is started)."""
        reason = unavailable_reason()
        if reason is not None:
            raise UserError(reason)
        cleanup_stale()
        _open_testnets.append(self)
        self.workdir.mkdir(parents=True, exist_ok=True)
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "set", "lo", "up")
        self._ensure_bridges(1)
        for _ in range(self._initial):
            self._add_namespace()

    def _ensure_bridges(self, count: int) -> None:
        while self._bridges < count:
            br = f"br{self._bridges}"
            _ip("-n", self.hub, "link", "add", br, "type", "bridge")
            _ip("-n", self.hub, "link", "set", br, "up")
            self._bridges += 1

    def _add_namespace(self) -> NetnsNode:
        i = len(self.nodes)
        if FIRST_HOST + i >= SUBNET.num_addresses - 1:
            raise UserError("no address left in 10.77.0.0/24")
        ns = f"{self.tag}-n{i}"
        ip = node_ip(i)
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0",
            "netns", ns)  # fmt: skip
        _ip("-n", self.hub, "link", "set", f"v{i}", "master", "br0")
        _ip("-n", self.hub, "link", "set", f"v{i}", "up")
        _ip("-n", ns, "addr", "add", f"{ip}/{SUBNET.prefixlen}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        data_dir = self.workdir / f"node{i}"
        env = {
            "QUDAG_CONFIG": str(self.config),
            "QUDAG_DATA_DIR": str(data_dir),
            "QUDAG_LOG_LEVEL": "INFO",
        }
        node = NetnsNode(i, ns, ip, data_dir, compose_command(i), env)
        self.nodes.append(node)
        if self.netem_spec:
            self.netem(i, self.netem_spec)
        return node

    def close(self) -> None:
        """Stop every node and delete every namespace we made (idempotent, never raises)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for node in self.nodes:
            if node.process is not None and node.alive():
                try:
                    node.process.process.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10.0
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    node.process.process.kill()
                    node.process.process.wait(timeout=5)
        for ns in [node.ns for node in self.nodes] + [self.hub]:
            try:
                _kill_namespace_processes(ns)
                _ip("netns", "del", ns, check=False)
            except Exception:  # noqa: S112 - best effort; cleanup_stale() retries later
                continue
        if self in _open_testnets:
            _open_testnets.remove(self)

    # --- processes --------------------------------------------------------------------
    def argv(self, i: int) -> list[str]:
        node = self.nodes[i]
        return ["ip", "netns", "exec", node.ns, *node_command(), *node.command, *self.extra_args]

    def launch(self, i: int) -> NetnsNode:
        """Start node i's command in its namespace (do not wait for it)."""
        node = self.nodes[i]
        if node.alive():
            raise UserError(f"{node.name} is already running")
        node.process = spawn(node.name, node.data_dir, self.argv(i), node.env)
        node.starts += 1
        return node

    def wait_ready(self, i: int) -> dict[str, Any]:
        node = self.nodes[i]
        assert node.process is not None
        node.ready = read_ready(node.process, self.ready_timeout_s)
        node.process.ready = node.ready
        return node.ready

    def start(self, i: int) -> NetnsNode:
        self.launch(i)
        self.wait_ready(i)
        return self.nodes[i]

    def start_all(self) -> None:
        """Bootstrap node first, then the others together (their imports overlap)."""
        self.start(0)
        others = [self.launch(i) for i in range(1, len(self.nodes)) if not self.nodes[i].alive()]
        for node in others:
            self.wait_ready(node.index)

    def kill(self, i: int) -> None:
        """SIGKILL: nothing flushed, nothing cleaned up."""
        node = self.nodes[i]
        if node.process is not None:
            node.process.kill()

    def stop(self, i: int, grace_s: float = 10.0) -> int | None:
        node = self.nodes[i]
        return node.process.stop(grace_s) if node.process is not None else None

    def restart(self, i: int) -> NetnsNode:
        if self.nodes[i].alive():
            self.stop(i)
        return self.start(i)

    def add_node(self, *, start: bool = True) -> NetnsNode:
        """A new namespace and node with an empty data directory (joins the bootstrap node)."""
        node = self._add_namespace()
        if start:
            self.start(node.index)
        return node

    def add_host(self) -> NetnsNode:
        """A new namespace on the bridge with no node in it (e.g. for a hostile peer)."""
        return self._add_namespace()

    def popen(self, i: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Run any command inside host i's namespace (killed at teardown like the nodes)."""
        return subprocess.Popen(["ip", "netns", "exec", self.nodes[i].ns, *argv], **kwargs)

    # --- observation ------------------------------------------------------------------
    def status(self, i: int, timeout: float = 3.0) -> dict[str, Any] | None:
        try:
            return in_netns(self.nodes[i].ns, fetch_status, f"127.0.0.1:{HTTP_PORT}", timeout)
        except (UserError, OSError):
            return None

    def metrics(self, i: int, timeout: float = 3.0) -> dict[str, float]:
        text = in_netns(
            self.nodes[i].ns, _http_get, f"http://127.0.0.1:{HTTP_PORT}/metrics", timeout
        )
        return parse_metrics(text)

    def vertex_ids(self, i: int) -> set[bytes]:
        """The vertex ids committed to node i's ledger (read from disk; works while it runs
        and after it died)."""
        path = self.nodes[i].data_dir / "ledger.sqlite3"
        if not path.exists():
            return set()
        db = sqlite3.connect(path, timeout=10.0)
        try:
            return {bytes(row[0]) for row in db.execute("SELECT id FROM vertices")}
        except sqlite3.OperationalError:
            return set()  # not created yet
        finally:
            db.close()

    def flagged_authors(self, i: int) -> set[bytes]:
        """Authors node i has flagged for equivocation (two vertices with one seq)."""
        path = self.nodes[i].data_dir / "ledger.sqlite3"
        db = sqlite3.connect(path, timeout=10.0)
        try:
            return {bytes(r[0]) for r in db.execute("SELECT author FROM authors WHERE flagged")}
        finally:
            db.close()

    def rss_kib(self, i: int) -> int | None:
        node = self.nodes[i]
        if node.process is None or not node.alive():
            return None
        try:
            text = Path(f"/proc/{node.process.process.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
        return int(match.group(1)) if match else None

    # --- faults -----------------------------------------------------------------------
    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Put each group of nodes on a bridge of its own: no packet crosses between groups.

        Nodes not named in any group stay on the first group's bridge."""
        self._ensure_bridges(len(groups))
        for k, group in enumerate(groups):
            for i in group:
                _ip("-n", self.hub, "link", "set", f"v{i}", "master", f"br{k}")

    def heal(self) -> None:
        for node in self.nodes:
            _ip("-n", self.hub, "link", "set", f"v{node.index}", "master", "br0")

    def netem(self, i: int, spec: str) -> None:
        """Shape node i's link (egress of its eth0), e.g. "delay 40ms 10ms loss 1%"."""
        args = ["tc", "-n", self.nodes[i].ns, "qdisc", "replace", "dev", "eth0", "root", "netem"]
        proc = subprocess.run([*args, *spec.split()], capture_output=True, text=True, timeout=20)
        if proc.returncode != 0:
            raise UserError(f"tc netem {spec!r} failed: {proc.stderr.strip()}")

    def clear_netem(self, i: int) -> None:
        subprocess.run(
            ["tc", "-n", self.nodes[i].ns, "qdisc", "del", "dev", "eth0", "root"],
            capture_output=True,
            timeout=20,
        )


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2
) -> float | None:
    """Poll until `predicate()`; return the seconds it took, or None on timeout."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start >= timeout_s:
            return None
        time.sleep(interval_s)


__all__ = [
    "DEFAULT_CONFIG",
    "NetnsNode",
    "NetnsTestnet",
    "cleanup_stale",
    "compose_command",
    "in_netns",
    "node_ip",
    "parse_metrics",
    "unavailable_reason",
    "wait_until",
]
