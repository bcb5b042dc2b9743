"""Metrics: the exposition parses back strictly (format 0.0.4) and counts survive threads."""

from __future__ import annotations

import math
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from qudag.node.ops.metrics import (
    CONTENT_TYPE,
    Histogram,
    NodeMetrics,
    Registry,
    format_value,
)

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(rf"({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)?\}})? (\S+)")
_FLOAT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]Inf|NaN")


@dataclass
class Family:
    name: str
    help: str = ""
    type: str = ""
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _unescape(text: str, allowed: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            nxt = text[i + 1]
            assert nxt in allowed, f"bad escape \\{nxt}"
            out.append("\n" if nxt == "n" else nxt)
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _parse_float(text: str) -> float:
    assert _FLOAT.fullmatch(text), f"not a Prometheus float: {text!r}"
    return float(text.replace("Inf", "inf"))


def parse_exposition(text: str) -> dict[str, Family]:
    """A strict reader of text format 0.0.4, as far as this registry uses it."""
    assert text.endswith("\n") and not text.endswith("\n\n")
    families: dict[str, Family] = {}
    current: Family | None = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP ") :].partition(" ")
            assert re.fullmatch(_NAME, name) and name not in families, line
            current = families[name] = Family(name, _unescape(help_text, "\\n"))
        elif line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE ") :].partition(" ")
            assert current is not None and current.name == name and not current.type, line
            assert kind in ("counter", "gauge", "histogram"), line
            current.type = kind
        else:
            match = _SAMPLE.fullmatch(line)
            assert match is not None, f"malformed sample line {line!r}"
            assert current is not None and current.type, line
            name = match.group(1)
            allowed = {current.name}
            if current.type == "histogram":
                allowed = {current.name + s for s in ("_bucket", "_sum", "_count")}
            assert name in allowed, f"{name} outside family {current.name}"
            labels: dict[str, str] = {}
            for label, value in re.findall(_LABEL, match.group(2) or ""):
                assert label not in labels
                labels[label] = _unescape(value, '\\"n')
            current.samples.append((name, labels, _parse_float(match.group(match.lastindex))))
    return families


def test_exposition_round_trips_through_a_strict_parser() -> None:
    registry = Registry()
    requests = registry.counter("app_requests_total", "Requests\nby path \\ method.", ("path",))
    temp = registry.gauge("app_temperature", "Current temperature.")
    latency = registry.histogram(
        "app_latency_seconds", "Latency.", ("route",), buckets=(0.1, 0.5, 1.0)
    )
    nasty = 'a"b\\c\nd'
    requests.labels(path="/x").inc()
    requests.labels(path="/x").inc(2.5)
    requests.labels(nasty).inc()
    temp.set(-3.25)
    for value in (0.05, 0.1, 0.3, 0.7, 3.0):
        latency.labels(route="r").observe(value)

    text = registry.render_prometheus()
    families = parse_exposition(text)
    assert list(families) == ["app_requests_total", "app_temperature", "app_latency_seconds"]
    req = families["app_requests_total"]
    assert req.type == "counter" and req.help == "Requests\nby path \\ method."
    assert {s[1]["path"]: s[2] for s in req.samples} == {"/x": 3.5, nasty: 1.0}
    assert families["app_temperature"].samples == [("app_temperature", {}, -3.25)]

    hist = families["app_latency_seconds"]
    assert hist.type == "histogram"
    buckets = [(s[1]["le"], s[2]) for s in hist.samples if s[0].endswith("_bucket")]
    # le=0.1 includes the observation equal to the bound; counts are cumulative; +Inf last.
    assert buckets == [("0.1", 2), ("0.5", 3), ("1", 4), ("+Inf", 5)]
    assert all(s[1]["route"] == "r" for s in hist.samples)
    sums = {s[0]: s[2] for s in hist.samples if not s[0].endswith("_bucket")}
    assert sums["app_latency_seconds_count"] == 5
    assert sums["app_latency_seconds_sum"] == pytest.approx(4.15)
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_values_are_go_style_floats() -> None:
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(math.inf) == "+Inf" and format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"
    assert format_value(1e-7) == "1e-07" and _parse_float(format_value(1e-7)) == 1e-7
    assert format_value(2.0**60) == repr(2.0**60)


def test_unlabelled_metrics_start_at_zero_and_labelled_ones_appear_on_use() -> None:
    metrics = NodeMetrics()
    families = parse_exposition(metrics.render_prometheus())
    assert families["qudag_peers"].samples == [("qudag_peers", {}, 0.0)]
    assert families["qudag_vertices_rejected_total"].samples == []
    hist = families["qudag_gossip_latency_seconds"].samples
    assert [s[2] for s in hist] == [0.0] * len(hist) and hist[-3][1]["le"] == "+Inf"


def test_node_metrics_declares_the_issue_s_names() -> None:
    metrics = NodeMetrics()
    metrics.vertices_ingested.labels(kind="template").inc()
    metrics.vertices_rejected.labels(reason="bad_signature").inc(3)
    metrics.sync_requests.labels(direction="sent").inc()
    metrics.gossip_latency.observe(0.012)
    metrics.evaluations.labels(task="xor").inc(64)
    metrics.reevaluations.labels(task="xor", verdict="invalid").inc()
    metrics.generation.labels(task="xor").set(7)
    metrics.best_fitness.labels(task="xor").set(0.97)
    metrics.peers.set(3)
    families = parse_exposition(metrics.render_prometheus())
    types = {name: family.type for name, family in families.items()}
    assert types == {
        "qudag_vertices_ingested_total": "counter",
        "qudag_vertices_rejected_total": "counter",
        "qudag_sync_requests_total": "counter",
        "qudag_gossip_latency_seconds": "histogram",
        "qudag_evaluations_total": "counter",
        "qudag_reevaluations_total": "counter",
        "qudag_generation": "gauge",
        "qudag_best_fitness": "gauge",
        "qudag_peers": "gauge",
        "qudag_vertices": "gauge",
        "qudag_orphans": "gauge",
        "qudag_equivocations_total": "counter",
        "qudag_vertices_duplicate_total": "counter",
        "qudag_peers_dropped_total": "counter",
    }
    rejected = families["qudag_vertices_rejected_total"].samples
    assert rejected == [("qudag_vertices_rejected_total", {"reason": "bad_signature"}, 3.0)]
    reeval = families["qudag_reevaluations_total"].samples
    assert reeval == [("qudag_reevaluations_total", {"task": "xor", "verdict": "invalid"}, 1.0)]
    assert metrics.gossip_latency.count == 1


def test_catch_up_makes_the_counters_equal_the_running_totals() -> None:
    """/metrics and /status `rejected` must agree: each catch-up adds what the core's and the
    network's running totals grew by since the last one, and nothing for a total that did not."""
    metrics = NodeMetrics()
    metrics.catch_up({"bad_signature": 2}, equivocations=1, duplicates=0, dropped=0)
    metrics.catch_up(
        {"bad_signature": 5, "net-sync-busy": 1}, equivocations=1, duplicates=4, dropped=2
    )
    metrics.catch_up({"bad_signature": 5}, equivocations=1, duplicates=4, dropped=2)
    families = parse_exposition(metrics.render_prometheus())
    rejected = {s[1]["reason"]: s[2] for s in families["qudag_vertices_rejected_total"].samples}
    assert rejected == {"bad_signature": 5.0, "net-sync-busy": 1.0}
    assert metrics.equivocations.value == 1.0
    assert metrics.duplicates.value == 4.0
    assert metrics.dropped.value == 2.0


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    """Switch threads as often as possible so that an unlocked `+=` would lose updates."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def test_counts_are_exact_under_threads(fast_thread_switching: None) -> None:
    """Exact totals, and every snapshot rendered meanwhile is self-consistent.

    Under CPython's GIL a lone `+=` rarely races; what the locks visibly protect is the
    histogram's several fields being read while an observation lands (+Inf bucket == count),
    which fails within a few runs when rendering does not take the lock.
    """
    registry = Registry()
    counter = registry.counter("c_total", "c", ("worker",))
    shared = registry.counter("shared_total", "s")
    gauge = registry.gauge("g", "g")
    # Many buckets: a long render loop, so an unlocked render would overlap observations.
    hist = registry.histogram("h_seconds", "h", buckets=[i / 64 for i in range(1, 64)])
    threads, per_thread = 8, 5_000
    renders: list[str] = []

    def work(i: int) -> None:
        for n in range(per_thread):
            shared.inc()
            counter.labels(worker=str(n % 4)).inc()
            gauge.inc()
            gauge.dec(0.5)
            hist.observe(0.25 if n % 2 else 1.0)

    done = threading.Event()

    def render() -> None:
        while not done.is_set():
            renders.append(registry.render_prometheus())

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    renderer = threading.Thread(target=render)
    for t in [*workers, renderer]:
        t.start()
    for t in workers:
        t.join(timeout=60)
    done.set()
    renderer.join(timeout=60)
    assert len(renders) > 10
    total = threads * per_thread
    assert shared.value == total
    assert sum(counter.labels(worker=str(w)).value for w in range(4)) == total
    assert gauge.value == total * 0.5
    assert hist.count == total and hist.sum == pytest.approx(total * 0.625)
    for text in renders:  # every concurrent snapshot is a well-formed exposition
        family = parse_exposition(text)["h_seconds"]
        values = {s[0] + s[1].get("le", ""): s[2] for s in family.samples}
        assert values["h_seconds_bucket+Inf"] == values["h_seconds_count"]
        assert values["h_seconds_bucket0.5"] <= values["h_seconds_bucket+Inf"]


def test_misuse_is_refused() -> None:
    registry = Registry()
    counter = registry.counter("x_total", "x", ("a",))
    with pytest.raises(ValueError, match="use .labels"):
        counter.inc()
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels(b="1")
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("1", "2")
    with pytest.raises(ValueError, match=">= 0"):
        counter.labels("1").inc(-1)
    with pytest.raises(ValueError, match=">= 0"):
        counter.labels("1").inc(math.nan)
    with pytest.raises(ValueError, match="collides"):
        registry.gauge("x_total", "again")
    registry.histogram("h", "h")
    with pytest.raises(ValueError, match="collides"):
        registry.counter("h_count", "clash with the histogram's own series")
    with pytest.raises(ValueError, match="invalid metric name"):
        registry.counter("9bad", "x")
    with pytest.raises(ValueError, match="invalid label name"):
        registry.counter("ok_total", "x", ("__reserved",))
    with pytest.raises(ValueError, match="reserved"):
        Histogram("h2", "h", ("le",))
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram("h3", "h", buckets=(1.0, 1.0))
    with pytest.raises(ValueError, match="NaN"):
        Histogram("h4", "h").observe(math.nan)
