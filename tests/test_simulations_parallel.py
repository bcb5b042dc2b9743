"""A simulation split over processes (simulations/parallel.py) is the same simulation."""

from __future__ import annotations

import json
import os
import random
import socket
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag.crypto.canonical import pack
from qudag.node.cli import main
from qudag.simulations.config import ChurnSpec, SimConfig
from qudag.simulations.gossip import ParallelError
from qudag.simulations.network import LinkModel
from qudag.simulations.parallel import Channels
from qudag.simulations.sim import Simulation, run
from qudag.simulations.studies import scale_config

# Figures that measure the machine or the process split, not the simulated network.
PER_PROCESS = {
    "wall_s",
    "cpu_s",
    "wait_s",
    "peak_rss_mb",
    "rss_mb",
    "events_executed",
    "signature_cache_hits",
    "signature_checks",
    "decode_cache_hits",
    "decodes",
}


def _outcome(config: SimConfig) -> dict[str, Any]:
    sim = run(config)
    try:
        summary = {k: v for k, v in sim.summary().items() if k not in PER_PROCESS}
        out = {"rows": sim.rows, "summary": summary, "events": sim.events}
        return json.loads(json.dumps(out, sort_keys=True))  # NaN == NaN through json
    finally:
        sim.close()


@pytest.mark.multiprocess
def test_with_constant_latency_two_processes_run_the_single_process_simulation() -> None:
    """Without random latencies each process's own generator draws nothing, so splitting
    the peers over processes must change nothing: every row of the time series, every
    figure of the summary and every event (the windows and the swaps at their ends lose,
    delay or reorder no message)."""
    config = replace(scale_config(24, 8, seed=2), link=LinkModel(dist="constant"))
    one = _outcome(config)
    two = _outcome(replace(config, workers=2))
    assert one["summary"]["identical_honest_sets"] == 1
    assert one["summary"]["messages_per_peer"] > 0
    assert two == one


@pytest.mark.multiprocess
def test_a_parallel_run_is_deterministic_and_converges() -> None:
    """With random latencies the run depends on the seed and the number of workers only;
    three workers (every pair of processes connected) end with identical ledgers holding
    every peer's publications."""
    config = replace(scale_config(30, 8, seed=5), workers=3)
    a = _outcome(config)
    assert a == _outcome(config)
    summary = a["summary"]
    assert summary["identical_honest_sets"] == 1
    assert summary["identical_t_ms"] is not None
    single = _outcome(replace(config, workers=1))["summary"]
    assert summary["vertices_mean"] >= 30  # at least every peer's identity
    assert summary["generations"] == single["generations"] == 8


def test_runs_that_open_and_close_links_are_refused() -> None:
    with pytest.raises(ValueError, match="churn"):
        SimConfig(peers=10, workers=2, churn=ChurnSpec())
    with pytest.raises(ValueError, match="Byzantine"):
        SimConfig(peers=10, workers=2, byzantine="inflate", byzantine_fraction=0.2)
    with pytest.raises(ValueError, match="minimum"):
        SimConfig(peers=10, workers=2, link=LinkModel(dist="uniform", jitter=1.0))
    with pytest.raises(ValueError, match="workers"):
        SimConfig(peers=3, workers=4)


def _children() -> list[int]:
    me = str(os.getpid())
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.multiprocess
def test_a_failing_worker_ends_the_run_with_its_reason(tmp_path: Path) -> None:
    """A worker that cannot build its share (here: the graph file vanished between worker
    0 reading it and worker 1 starting) stops the whole run with its reason, instead of a
    hang or half a result, and no worker process is left behind."""
    graph = tmp_path / "ring.txt"
    graph.write_text("".join(f"{i} {(i + 1) % 12}\n" for i in range(12)))
    sim = Simulation(
        SimConfig(peers=12, generations=3, topology=f"file:{graph}", workers=2, degree=2)
    )
    graph.unlink()
    try:
        with pytest.raises(ParallelError, match="worker 1 failed: TopologyError"):
            sim.run()
    finally:
        sim.close()
    assert _children() == []


def test_cli_refuses_workers_for_studies_that_cannot_split(
    capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    assert main(["simulate", "byzantine", "--workers", "2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--workers" in err and "Traceback" not in err


@settings(max_examples=50, deadline=None)
@given(
    dist=st.sampled_from(["constant", "uniform", "lognormal"]),
    latency=st.floats(1.0, 500.0),
    jitter=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**32),
)
def test_no_latency_draw_is_below_the_lookahead(
    dist: str, latency: float, jitter: float, seed: int
) -> None:
    """The window a worker may run ahead is `min_latency_ms`: no draw may undercut it."""
    link = LinkModel(latency_ms=latency, dist=dist, jitter=jitter)
    rng = random.Random(seed)
    floor = link.min_latency_ms
    assert floor > 0
    assert min(link.draw_latency(rng) for _ in range(2_000)) >= floor


@pytest.mark.multiprocess
def test_channels_swap_large_frames_both_ways_and_keep_frames_sent_early() -> None:
    """Both sides send a frame larger than the socket buffers before reading (a naive
    send-then-receive deadlocks), and one side sends its next frame before the other read
    the first: each swap returns exactly the frame of its window."""
    a, b = socket.socketpair()
    big = [b"x" * 3_000_000, list(range(1000))]
    results: dict[str, list[Any]] = {"a": [], "b": []}

    def side(name: str, sock: socket.socket, other: int) -> None:
        channels = Channels({other: sock})
        for window in range(3):
            got = channels.swap({other: pack([name, window, big])})
            results[name].append(got[other][:2])
        channels.close()

    threads = [
        threading.Thread(target=side, args=("a", a, 1)),
        threading.Thread(target=side, args=("b", b, 0)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert results["a"] == [["b", w] for w in range(3)]
    assert results["b"] == [["a", w] for w in range(3)]
