"""A tiny, dependency-free metrics registry rendered in the Prometheus text format 0.0.4.

Why not `prometheus_client`: the node needs three metric types, labels and one text rendering;
a 200-line module that we test against the format is cheaper than a dependency with a global
default registry, background collectors and its own HTTP server (the node has one:
node/ops/http.py).

Thread-safety: each metric has one lock shared by its labelled children, taken for every update
and while rendering, because the evolution worker thread increments counters while the trio
thread renders `/metrics`. Updates are a few dict and float operations, so contention is
negligible at the node's rates (at most thousands of updates per second).

Format reference (text exposition 0.0.4): per family `# HELP name text` (backslash and newline
escaped) and `# TYPE name counter|gauge|histogram`, then one sample per line,
`name{label="value",...} number`; label values escape backslash, double quote and newline;
numbers are Go-style floats (`+Inf`, `-Inf`, `NaN`). A histogram renders cumulative
`name_bucket{le="..."}` lines ending with `le="+Inf"`, then `name_sum` and `name_count`.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
GOSSIP_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Fine around the propagation goal (p99 <= 50 ms), coarse beyond a second."""

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def format_value(value: float) -> str:
    """A sample value as Prometheus (Go's ParseFloat) reads it; integers without '.0'."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs)
    return "{" + inner + "}" if inner else ""


class _Metric:
    """A metric family: a name, help text, label names and one child per label-value tuple."""

    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} in {name}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names in {name}: {list(labelnames)}")
        self.name = name
        self.help = help
        self.labelnames: tuple[str, ...] = tuple(labelnames)
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], object] = {}
        if not self.labelnames:
            self._children[()] = self._new_child()

    def _new_child(self) -> object:
        raise NotImplementedError

    def _child(self, values: tuple[str, ...]) -> object:
        with self._lock:
            child = self._children.get(values)
            if child is None:
                child = self._children[values] = self._new_child()
            return child

    def _label_values(self, args: tuple[object, ...], kwargs: dict[str, object]) -> tuple[str, ...]:
        if not self.labelnames:
            raise ValueError(f"{self.name} has no labels")
        if args and kwargs:
            raise ValueError("pass label values either by position or by name, not both")
        if kwargs:
            if set(kwargs) != set(self.labelnames):
                raise ValueError(
                    f"{self.name} takes labels {self.labelnames}, got {sorted(kwargs)}"
                )
            return tuple(str(kwargs[name]) for name in self.labelnames)
        if len(args) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {len(args)} values")
        return tuple(str(value) for value in args)

    def _unlabelled(self) -> object:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...)")
        return self._children[()]

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        with self._lock:
            children = sorted(self._children.items())
            lines.extend(self._render_children(children))
        return lines

    def _render_children(self, children: list[tuple[tuple[str, ...], object]]) -> list[str]:
        out = []
        for values, child in children:
            assert isinstance(child, _Value)
            labels = _labels_text(zip(self.labelnames, values, strict=True))
            out.append(f"{self.name}{labels} {format_value(child.value)}")
        return out


class _Value:
    """One float guarded by its family's lock."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.value = 0.0


class CounterChild(_Value):
    def inc(self, amount: float = 1.0) -> None:
        """Counters only go up (a restart resets them; Prometheus' rate() handles that)."""
        if not amount >= 0 or math.isinf(amount):
            raise ValueError(f"a counter increases by a finite amount >= 0, not {amount!r}")
        with self._lock:
            self.value += amount


class GaugeChild(_Value):
    def set(self, value: float) -> None:
        with self._lock:
            self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        with self._lock:
            self.value -= amount


class HistogramChild:
    def __init__(self, lock: threading.Lock, bounds: tuple[float, ...]) -> None:
        self._lock = lock
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # last slot: above every finite bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        if math.isnan(value):
            raise ValueError("cannot observe NaN")
        index = bisect.bisect_left(self._bounds, value)  # first bound >= value: `le` semantics
        with self._lock:
            self._counts[index] += 1
            self.sum += value
            self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) including (+inf, count). Caller holds no lock."""
        with self._lock:
            return self._cumulative_locked()

    def _cumulative_locked(self) -> list[tuple[float, int]]:
        out = []
        running = 0
        for bound, n in zip((*self._bounds, math.inf), self._counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class Counter(_Metric):
    kind = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild(self._lock)

    def labels(self, *values: object, **named: object) -> CounterChild:
        child = self._child(self._label_values(values, named))
        assert isinstance(child, CounterChild)
        return child

    def inc(self, amount: float = 1.0) -> None:
        child = self._unlabelled()
        assert isinstance(child, CounterChild)
        child.inc(amount)

    @property
    def value(self) -> float:
        child = self._unlabelled()
        assert isinstance(child, CounterChild)
        return child.value


class Gauge(_Metric):
    kind = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild(self._lock)

    def labels(self, *values: object, **named: object) -> GaugeChild:
        child = self._child(self._label_values(values, named))
        assert isinstance(child, GaugeChild)
        return child

    def _one(self) -> GaugeChild:
        child = self._unlabelled()
        assert isinstance(child, GaugeChild)
        return child

    def set(self, value: float) -> None:
        self._one().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._one().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._one().dec(amount)

    @property
    def value(self) -> float:
        return self._one().value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        bounds = tuple(float(b) for b in buckets if b != math.inf)
        if not bounds or any(not math.isfinite(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be finite numbers (+Inf is implied)")
        if any(a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
            raise ValueError(f"{name}: buckets must be strictly increasing, got {bounds}")
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        self.bounds = bounds
        super().__init__(name, help, labelnames)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self._lock, self.bounds)

    def labels(self, *values: object, **named: object) -> HistogramChild:
        child = self._child(self._label_values(values, named))
        assert isinstance(child, HistogramChild)
        return child

    def _one(self) -> HistogramChild:
        child = self._unlabelled()
        assert isinstance(child, HistogramChild)
        return child

    def observe(self, value: float) -> None:
        self._one().observe(value)

    @property
    def count(self) -> int:
        return self._one().count

    @property
    def sum(self) -> float:
        return self._one().sum

    def _render_children(self, children: list[tuple[tuple[str, ...], object]]) -> list[str]:
        out = []
        for values, child in children:
            assert isinstance(child, HistogramChild)
            pairs = list(zip(self.labelnames, values, strict=True))
            for bound, running in child._cumulative_locked():
                labels = _labels_text([*pairs, ("le", format_value(bound))])
                out.append(f"{self.name}_bucket{labels} {running}")
            labels = _labels_text(pairs)
            out.append(f"{self.name}_sum{labels} {format_value(child.sum)}")
            out.append(f"{self.name}_count{labels} {child.count}")
        return out


class Registry:
    """A set of metric families with unique names, rendered together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: _Metric) -> None:
        # A histogram owns name_bucket/_sum/_count too; reject any family that would collide.
        owned = {metric.name}
        if isinstance(metric, Histogram):
            owned |= {metric.name + s for s in ("_bucket", "_sum", "_count")}
        with self._lock:
            for other in self._metrics.values():
                theirs = {other.name}
                if isinstance(other, Histogram):
                    theirs |= {other.name + s for s in ("_bucket", "_sum", "_count")}
                if owned & theirs:
                    raise ValueError(f"metric {metric.name} collides with {other.name}")
            self._metrics[metric.name] = metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help, labelnames)
        self._add(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help, labelnames)
        self._add(metric)
        return metric

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        metric = Histogram(name, help, labelnames, buckets)
        self._add(metric)
        return metric

    def render_prometheus(self) -> str:
        """All families, in registration order, as one text exposition (ends with a newline)."""
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for metric in metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


class NodeMetrics:
    """The metrics `qudag-node run` exports on /metrics (names listed in the node issue).

    Label values the daemon should use: `kind` = vertex kind; `reason` = the rejection reason
    (the same keys as /status `rejected`); `direction` = "sent" (we asked a peer) or "served"
    (a peer asked us); `task` = task id; `verdict` = "valid" or "invalid".
    """

    def __init__(self, registry: Registry | None = None) -> None:
        r = self.registry = registry if registry is not None else Registry()
        self.vertices_ingested = r.counter(
            "qudag_vertices_ingested_total",
            "Vertices verified and added to the local ledger.",
            ("kind",),
        )
        self.vertices_rejected = r.counter(
            "qudag_vertices_rejected_total",
            "Vertices refused, by reason (bad signature, malformed, banned author, ...).",
            ("reason",),
        )
        self.sync_requests = r.counter(
            "qudag_sync_requests_total",
            "Sync protocol requests, sent to peers or served to them.",
            ("direction",),
        )
        self.gossip_latency = r.histogram(
            "qudag_gossip_latency_seconds",
            "Delay from a vertex's timestamp to its arrival here by gossip.",
            buckets=GOSSIP_LATENCY_BUCKETS,
        )
        self.evaluations = r.counter(
            "qudag_evaluations_total",
            "Genomes evaluated by the local evolution loop.",
            ("task",),
        )
        self.reevaluations = r.counter(
            "qudag_reevaluations_total",
            "Fitness claims of other peers re-evaluated here, by verdict.",
            ("task", "verdict"),
        )
        self.generation = r.gauge(
            "qudag_generation", "Current generation of the local evolution loop.", ("task",)
        )
        self.best_fitness = r.gauge(
            "qudag_best_fitness", "Best verified fitness known for the task.", ("task",)
        )
        self.peers = r.gauge("qudag_peers", "Connected peers.")
        self.vertices = r.gauge("qudag_vertices", "Vertices held in the local ledger.")
        self.orphans = r.gauge("qudag_orphans", "Vertices waiting for missing parents.")
        self.equivocations = r.counter(
            "qudag_equivocations_total",
            "Vertices sharing author and seq with another (kept as evidence, author flagged).",
        )
        self.duplicates = r.counter(
            "qudag_vertices_duplicate_total",
            "Vertices received again (replays, overlapping fetches): not stored twice.",
        )
        self.dropped = r.counter(
            "qudag_peers_dropped_total",
            "Peers this node disconnected: repeated garbage, banned or lying authors.",
        )
        # The totals `catch_up` last copied: the core and the network count, we add the
        # increase since then.
        self._copied: dict[tuple[str, str], int] = {}

    def catch_up(
        self, rejected: Mapping[str, int], *, equivocations: int, duplicates: int, dropped: int
    ) -> None:
        """Bring the counters the core and the network keep (running totals) into the
        registry: `rejected` by reason, and the three totals of the same names."""
        totals = {("rejected", r): n for r, n in rejected.items()}
        totals[("equivocations", "")] = equivocations
        totals[("duplicates", "")] = duplicates
        totals[("dropped", "")] = dropped
        counters = {
            "equivocations": self.equivocations,
            "duplicates": self.duplicates,
            "dropped": self.dropped,
        }
        for key, total in totals.items():
            delta = total - self._copied.get(key, 0)
            if delta <= 0:
                continue
            self._copied[key] = total
            kind, reason = key
            if kind == "rejected":
                self.vertices_rejected.labels(reason=reason).inc(delta)
            else:
                counters[kind].inc(delta)

    def render_prometheus(self) -> str:
        return self.registry.render_prometheus()


__all__ = [
    "CONTENT_TYPE",
    "Counter",
    "DEFAULT_BUCKETS",
    "GOSSIP_LATENCY_BUCKETS",
    "Gauge",
    "Histogram",
    "NodeMetrics",
    "Registry",
    "format_value",
]
