"""The simulated network: a networkx topology, per-link latency/bandwidth/loss, partitions.

Why a model this simple: the questions the studies ask (how fast does a template reach
everyone, what does a partition cost) depend on hop counts, latency and serialisation delay,
not on TCP details. Each directed link is a FIFO with a bandwidth: a message occupies it for
`size / bandwidth` seconds and then arrives `latency` later (latency is drawn per message from
the link's distribution). Loss drops a message with a fixed probability. A partition marks
links between groups as down (the driver disconnects the peers, as a dead TCP connection
would be noticed), and healing brings them back.

All randomness comes from the `random.Random` passed in, so a seed fixes every draw.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

LOGNORMAL_FLOOR_SIGMAS = 4.0  # see LinkModel
TOPOLOGIES = ("random-regular", "small-world", "scale-free", "ring", "complete")


class TopologyError(ValueError):
    """A topology name, parameter or graph file that cannot be used."""


def build_topology(name: str, n: int, seed: int, degree: int = 6) -> nx.Graph:
    """A connected undirected graph on nodes 0..n-1 (n = 1: one node, no edges).

    `degree` is the target mean degree: random-regular uses it exactly (n*degree must be
    even), small-world (Watts-Strogatz, rewiring p=0.1) uses it as k, scale-free
    (Barabasi-Albert) attaches each new node with m = degree // 2 edges.
    """
    if n < 1:
        raise TopologyError("a network needs at least 1 peer")
    if n == 1:  # one peer alone (the baseline of the collective study): no links
        return nx.empty_graph(1)
    d = max(2, min(degree, n - 1))
    if name == "random-regular":
        if (n * d) % 2:
            d -= 1
        for attempt in range(20):
            g = nx.random_regular_graph(d, n, seed=seed + attempt)
            if nx.is_connected(g):
                return g
        raise TopologyError(f"no connected {d}-regular graph on {n} nodes found")
    if name == "small-world":
        return nx.connected_watts_strogatz_graph(n, max(2, d), 0.1, tries=100, seed=seed)
    if name == "scale-free":
        return nx.barabasi_albert_graph(n, max(1, min(d // 2, n - 1)), seed=seed)
    if name == "ring":
        return nx.cycle_graph(n)
    if name == "complete":
        return nx.complete_graph(n)
    if name.startswith("file:"):
        return load_graph_file(Path(name[5:]), n)
    raise TopologyError(f"unknown topology {name!r} (one of {', '.join(TOPOLOGIES)}, file:PATH)")


def load_graph_file(path: Path, n: int | None = None) -> nx.Graph:
    """A user's graph: an edge list (`a b` per line, `#` comments), relabelled to 0..n-1.

    Why an edge list: every graph tool writes one, and it needs no trust (never pickle).
    `n`, if given, must match the number of nodes in the file.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError(f"cannot read graph file {path}: {exc.strerror}") from None
    g = nx.Graph()
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2:
            raise TopologyError(f"{path}:{lineno}: an edge is two node names")
        if parts[0] != parts[1]:
            g.add_edge(parts[0], parts[1])
    if g.number_of_nodes() < 2:
        raise TopologyError(f"{path}: fewer than 2 nodes")
    if not nx.is_connected(g):
        raise TopologyError(f"{path}: the graph is not connected")
    if n is not None and g.number_of_nodes() != n:
        raise TopologyError(f"{path}: {g.number_of_nodes()} nodes, but --peers is {n}")
    mapping = {node: i for i, node in enumerate(sorted(g.nodes(), key=_natural))}
    return nx.relabel_nodes(g, mapping)


def _natural(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


@dataclass(frozen=True)
class LinkModel:
    """Per-link delay and loss. Latency in ms: `dist` is constant, uniform or lognormal.

    - constant: every message takes `latency_ms`;
    - uniform: uniform in [latency_ms * (1 - jitter), latency_ms * (1 + jitter)];
    - lognormal: median `latency_ms`, sigma `jitter` (a heavy right tail, as WAN links have),
      cut off `LOGNORMAL_FLOOR_SIGMAS` sigmas below the median (a 1-in-30,000 draw).

    Why a floor: a parallel run (simulations/parallel.py) lets each process run ahead of the
    others by the smallest latency any message can have; without a floor that is zero.
    """

    latency_ms: float = 20.0
    dist: str = "lognormal"
    jitter: float = 0.3
    bandwidth_bps: float = 100e6  # bits per second per direction
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.dist not in ("constant", "uniform", "lognormal"):
            raise ValueError("latency distribution is constant, uniform or lognormal")
        if self.latency_ms < 0 or self.jitter < 0 or self.bandwidth_bps <= 0:
            raise ValueError("latency and jitter are >= 0, bandwidth > 0")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError("loss is a probability in [0, 1)")

    @property
    def min_latency_ms(self) -> float:
        """No message arrives sooner after it is sent (serialisation only adds to it)."""
        if self.dist == "constant" or self.jitter == 0:
            return self.latency_ms
        if self.dist == "uniform":
            return self.latency_ms * max(0.0, 1.0 - self.jitter)
        return self.latency_ms * math.exp(-LOGNORMAL_FLOOR_SIGMAS * self.jitter)

    def draw_latency(self, rng: random.Random) -> float:
        if self.dist == "constant" or self.jitter == 0:
            return self.latency_ms
        if self.dist == "uniform":
            return self.latency_ms * (1.0 + self.jitter * (2.0 * rng.random() - 1.0))
        z = max(-LOGNORMAL_FLOOR_SIGMAS, rng.gauss(0.0, 1.0))
        return self.latency_ms * math.exp(self.jitter * z)


class Network:
    """Links between peers (indices), their queues, and which of them a partition cut."""

    def __init__(self, graph: nx.Graph, link: LinkModel, rng: random.Random) -> None:
        self.graph = graph
        self.link = link
        self.rng = rng
        self.n = graph.number_of_nodes()
        self.neighbours: list[tuple[int, ...]] = [
            tuple(sorted(graph.neighbors(i))) for i in range(self.n)
        ]
        self._busy_until: dict[tuple[int, int], float] = {}
        self.group: list[int] = [0] * self.n  # partition group of each peer
        self.messages = 0
        self.bytes = 0
        self.lost = 0

    def degree_stats(self) -> tuple[float, int, int]:
        degrees = [len(nb) for nb in self.neighbours]
        return sum(degrees) / len(degrees), min(degrees), max(degrees)

    def reachable(self, a: int, b: int) -> bool:
        """No partition separates a and b."""
        return self.group[a] == self.group[b]

    def split(self, groups: Sequence[Iterable[int]]) -> None:
        for g, members in enumerate(groups):
            for i in members:
                self.group[i] = g

    def heal(self) -> None:
        self.group = [0] * self.n

    def transmit(self, a: int, b: int, size: int, now_ms: float) -> float | None:
        """Send `size` bytes a -> b at `now_ms`: the arrival time, or None if lost."""
        self.messages += 1
        self.bytes += size
        if self.link.loss and self.rng.random() < self.link.loss:
            self.lost += 1
            return None
        key = (a, b)
        start = max(now_ms, self._busy_until.get(key, 0.0))
        done = start + size * 8000.0 / self.link.bandwidth_bps  # ms on the wire
        self._busy_until[key] = done
        return done + self.link.draw_latency(self.rng)


def split_groups(n: int, parts: int, graph: nx.Graph, rng: random.Random) -> list[list[int]]:
    """`parts` groups of nearly equal size, contiguous in BFS order from a random peer.

    Why BFS order: a real partition cuts the network along a few links (a region, a cloud
    provider), so each side stays internally connected.
    """
    if not 2 <= parts <= n:
        raise ValueError("a partition has 2..n groups")
    start = rng.randrange(n)
    order = [start, *(v for _, v in nx.bfs_edges(graph, start))]
    size = math.ceil(n / parts)
    return [sorted(order[i : i + size]) for i in range(0, n, size)]
