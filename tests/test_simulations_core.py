"""The simulator's parts: scheduler order, topologies, link model, determinism, CLI errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

from qudag.node.cli import main
from qudag.simulations import stats
from qudag.simulations.config import SimConfig
from qudag.simulations.network import (
    TOPOLOGIES,
    LinkModel,
    Network,
    TopologyError,
    build_topology,
    load_graph_file,
    split_groups,
)
from qudag.simulations.scheduler import Scheduler
from qudag.simulations.sim import run
from qudag.simulations.stats import mean_ci95

WALL_CLOCK_FIELDS = {"wall_s", "cpu_s", "wait_s", "peak_rss_mb", "rss_mb"}


def test_scheduler_runs_in_time_then_fifo_order() -> None:
    sched = Scheduler()
    seen: list[str] = []
    sched.at(5, seen.append, "c")
    sched.at(1, seen.append, "a")
    sched.at(5, seen.append, "d")  # same time: scheduling order
    sched.at(1, seen.append, "b")
    sched.at(50, seen.append, "late")
    sched.run_until(10)
    assert seen == ["a", "b", "c", "d"]
    assert sched.now == 10
    sched.at(3, seen.append, "past")  # never runs before the current time
    sched.run_until(100)
    assert seen[-2:] == ["past", "late"]


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_topologies_are_connected_with_the_right_size(name: str) -> None:
    g = build_topology(name, 30, seed=3, degree=4)
    assert g.number_of_nodes() == 30
    assert nx.is_connected(g)
    assert set(g.nodes()) == set(range(30))


def test_graph_file_is_read_and_bad_files_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "g.txt"
    good.write_text("# a ring of three plus a tail\na b\nb c\nc a\nc d\n")
    g = load_graph_file(good)
    assert g.number_of_nodes() == 4 and nx.is_connected(g)
    assert build_topology(f"file:{good}", 4, 0).number_of_edges() == 4
    split = tmp_path / "split.txt"
    split.write_text("a b\nc d\n")
    with pytest.raises(TopologyError, match="not connected"):
        load_graph_file(split)
    with pytest.raises(TopologyError, match="4 nodes"):
        load_graph_file(good, 5)
    with pytest.raises(TopologyError, match="cannot read"):
        load_graph_file(tmp_path / "missing.txt")
    with pytest.raises(TopologyError, match="unknown topology"):
        build_topology("torus", 10, 0)


def test_link_bandwidth_queues_and_loss_drops() -> None:
    g = build_topology("complete", 3, 0)
    net = Network(g, LinkModel(latency_ms=10, dist="constant", bandwidth_bps=8e6), random.Random(0))
    first = net.transmit(0, 1, 1_000_000, 0.0)  # 1 MB at 8 Mbit/s: 1 s on the wire
    second = net.transmit(0, 1, 1_000_000, 0.0)  # queued behind the first
    other = net.transmit(0, 2, 1_000_000, 0.0)  # another link is free
    assert first == pytest.approx(1010.0)
    assert second == pytest.approx(2010.0)
    assert other == pytest.approx(1010.0)
    lossy = Network(g, LinkModel(loss=0.5), random.Random(1))
    arrivals = [lossy.transmit(0, 1, 100, 0.0) for _ in range(400)]
    assert 120 < sum(a is None for a in arrivals) < 280
    with pytest.raises(ValueError):
        LinkModel(loss=1.0)


def test_partition_groups_cover_every_peer_once() -> None:
    g = build_topology("random-regular", 20, 1, 4)
    groups = split_groups(20, 3, g, random.Random(0))
    assert len(groups) == 3
    assert sorted(i for grp in groups for i in grp) == list(range(20))


def test_mean_ci95() -> None:
    mean, half = mean_ci95([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.303 * 1.0 / 3**0.5, rel=1e-3)
    assert mean_ci95([5.0])[0] == 5.0


def _series(seed: int) -> dict[str, Any]:
    """Everything a run produced that is not a wall-clock reading: the time series, the
    summary, and every peer's vertex ids (bytes, so ids are equal only if bytes are)."""
    sim = run(
        SimConfig(
            peers=5,
            generations=4,
            seed=seed,
            population=4,
            lamarck_steps=2,
            publish_every=2,
            drain_ms=3_000,
            degree=2,
        )
    )
    try:
        summary = {k: v for k, v in sim.summary().items() if k not in WALL_CLOCK_FIELDS}
        assert stats.honest_sets_identical(sim)
        ledgers = [[v.hex() for v in p.store.topological_order()] for p in sim.peers]
        out = {"rows": sim.rows, "summary": summary, "ledgers": ledgers}
        return json.loads(json.dumps(out, sort_keys=True))
    finally:
        sim.close()


_OTHER_PROCESS = """
import json, sys
sys.path.insert(0, {tests!r})
from test_simulations_core import _series
print(json.dumps(_series(7), sort_keys=True))
"""


@pytest.mark.multiprocess
def test_a_seed_fixes_the_run_bit_for_bit() -> None:
    """Same seed, same run: same series and summary, and the same vertex ids in every peer's
    ledger, also in another process with another hash seed (set/dict order of bytes)."""
    a = _series(7)
    assert len(a["ledgers"][0]) > 5
    assert a == _series(7)
    code = _OTHER_PROCESS.format(tests=str(Path(__file__).parent))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        check=True,
    )
    assert json.loads(proc.stdout) == a
    c = _series(8)
    assert c["rows"] != a["rows"]
    assert not set(c["ledgers"][0]) & set(a["ledgers"][0])


@pytest.mark.parametrize("seen_ttl_ms", [120_000, 40])
def test_counting_duplicates_at_send_time_changes_nothing_but_the_event_count(
    seen_ttl_ms: int,
) -> None:
    """`early_duplicates` skips the delivery events of messages the receiver already holds or
    has in flight; every series, counter and ledger must be what full delivery gives (also
    with a seen-cache that expires while copies are on the wire: 40 ms, links ~20 ms)."""
    results = []
    for early in (True, False):
        config = SimConfig(
            peers=12, generations=4, seed=3, population=4, lamarck_steps=1, publish_every=2,
            drain_ms=3_000, degree=4, early_duplicates=early, seen_ttl_ms=seen_ttl_ms,
        )  # fmt: skip
        sim = run(config)
        try:
            summary = {k: v for k, v in sim.summary().items() if k not in WALL_CLOCK_FIELDS}
            counters = [vars(p.counters) for p in sim.peers]
            ledgers = [[v.hex() for v in p.store.topological_order()] for p in sim.peers]
            # Through JSON, as in _series: json's one NaN object makes NaN fields compare equal.
            results.append(json.loads(json.dumps([sim.rows, summary, counters, ledgers])))
        finally:
            sim.close()
    (rows_a, sum_a, counters_a, ledgers_a), (rows_b, sum_b, counters_b, ledgers_b) = results
    assert sum_a["duplicates_per_peer"] > 0
    assert sum_a.pop("events_executed") < sum_b.pop("events_executed")
    assert (rows_a, sum_a, counters_a, ledgers_a) == (rows_b, sum_b, counters_b, ledgers_b)


def test_cli_refuses_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["simulate", "scale", "--peers", "1", "--out", str(tmp_path)]) == 2
    assert "--peers" in capsys.readouterr().err
    assert main(["simulate", "byzantine", "--task", "no-such-task", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no-such-task" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["simulate", "nonsense"])
    for args, words in (
        (["--strategy", "nope"], "--strategy is one of"),
        (["--fraction", "1.5"], "--fraction: distinct numbers in [0, 1)"),
        (["--fraction", "x"], "--fraction: not a number"),
        (["--strategy", "collude,collude"], "--strategy is one of"),
        (["--strategy", "collude,nope"], "--strategy is one of"),
    ):
        assert main(["simulate", "byzantine", *args, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
    assert main(["simulate", "scale", "--fraction", "0.2", "--out", str(tmp_path)]) == 2
    assert "for the byzantine study" in capsys.readouterr().err
    assert main(["simulate", "scale", "--no-holdout", "--out", str(tmp_path)]) == 2
    assert "for the byzantine study" in capsys.readouterr().err
    assert main(["simulate", "partition", "--no-rediscover", "--out", str(tmp_path)]) == 2
    assert "for the byzantine study" in capsys.readouterr().err
    assert main(["simulate", "scale", "--target", "0.9", "--out", str(tmp_path)]) == 2
    assert "--target is for" in capsys.readouterr().err


def test_simulate_replaces_an_earlier_report_only_with_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A study's files in --out are replaced only with --force, and only they: a user's file
    of the same name is not overwritten without it, other files never."""
    (tmp_path / "byzantine.md").write_text("my notes\n")
    (tmp_path / "keep.txt").write_text("mine\n")
    args = ["simulate", "byzantine", "--quick", "--strategy", "inflate", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "byzantine.md" in err and "--force" in err and "Traceback" not in err
    assert (tmp_path / "byzantine.md").read_text() == "my notes\n"
    assert not (tmp_path / "byzantine.csv").exists()  # refused before anything was written
    assert main([*args, "--force"]) == 0
    assert (tmp_path / "byzantine.md").read_text().startswith("# Study")
    assert (tmp_path / "keep.txt").read_text() == "mine\n"


def test_byzantine_cli_ends_with_issue_17s_summary_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`simulate byzantine --strategy S --fraction F --json`: the last stdout line is the
    one-line verdict: colluded lies never sampled, every liar banned."""
    args = ["simulate", "byzantine", "--quick", "--strategy", "collude", "--fraction", "0.25"]
    assert main([*args, "--json", "--out", str(tmp_path)]) == 0
    verdict = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(verdict) >= {
        "strategy",
        "fraction",
        "honest_reached_target",
        "bad_templates_sampled",
        "liars_banned_share",
        "time_to_ban_s",
        "honest_time_to_target_s",
        "honest_cut_off",
        "runs_honest_split",
    }
    assert (verdict["strategy"], verdict["fraction"], verdict["runs"]) == ("collude", 0.25, 1)
    assert verdict["bad_templates_sampled"] == 0
    assert verdict["liars_banned_share"] > 0


def test_disk_stores_live_in_a_temporary_directory_removed_at_close() -> None:
    sim = run(
        SimConfig(
            peers=4,
            generations=3,
            store="disk",
            population=4,
            lamarck_steps=1,
            drain_ms=2_000,
            degree=2,
        )
    )
    tmp = sim._tmp
    assert tmp is not None and any(tmp.glob("*.sqlite3"))
    assert stats.honest_sets_identical(sim)
    sim.close()
    assert not tmp.exists()


def test_migrants_from_liars_counts_templates_that_liars_signed() -> None:
    """The Byzantine study asserts that honest peers sample no liar's template
    (`migrants_from_liars == 0`); that check only means something if the counter sees a
    liar's template when one is sampled. Liars that claim their true fitness (inflate by 0)
    are sampled like anyone else, so the counter must be above zero."""
    config = SimConfig(
        peers=10, generations=8, seed=5, population=4, lamarck_steps=1, publish_every=2,
        drain_ms=2_000, degree=4, byzantine="inflate", byzantine_fraction=0.3, inflate_by=0.0,
        min_attestations=1,
    )  # fmt: skip
    sim = run(config)
    try:
        summary = sim.summary()
        tests = sim.liar_migrant_tests
    finally:
        sim.close()
    assert 0 < summary["migrants_from_liars"] < summary["migrants"]
    # Each sampled liar migrant is scored on the test split, against the honest best there.
    assert len(tests) == summary["migrants_from_liars"]
    bar = summary["honest_best_test"]
    assert bar is not None and 0.0 < bar <= 1.0
    assert summary["liar_migrants_worse"] == sum(t < bar for t in tests)
    assert summary["liar_migrant_test_min"] == min(tests)
    assert summary["liar_migrant_test_max"] == max(tests)


def test_colluded_lies_are_never_sampled_and_their_sybil_attesters_are_banned() -> None:
    """Issue 17, "collusion": a liar's inflated claims, each attested "valid" by two sybil
    identities it controls. Attesters without a record we checked weigh nothing, so no honest
    peer samples a colluded template before its own check (which then finds it false), and
    every honest peer that re-measured one bans the sybils that vouched for it."""
    config = SimConfig(
        peers=10, generations=8, seed=5, population=4, lamarck_steps=1, publish_every=2,
        drain_ms=2_000, degree=4, byzantine="collude", byzantine_fraction=0.3,
    )  # fmt: skip
    sim = run(config)
    try:
        summary = sim.summary()
    finally:
        sim.close()
    assert summary["liars"] == 3 and summary["migrants"] > 0
    assert summary["migrants_from_liars"] == 0
    assert summary["attesters_banned_frac"] == 1.0
    assert summary["liars_banned_frac"] > 0
    assert summary["identical_honest_sets"] == 1


@pytest.mark.parametrize("inflate_by", [0.0, 0.5])
def test_sybil_stream_lies_are_never_sampled_and_each_fresh_key_is_banned(
    inflate_by: float,
) -> None:
    """Issue 17, "sybil": every claim under a fresh key, vouched for by the two keys made
    before it. A ban costs the attacker one key, so the defence is that nothing is sampled
    before its own check: inflated claims never are, and each fresh key whose lie an honest
    peer re-measured is banned by that peer. With honest claims (`inflate_by` 0) the same
    keys' templates are sampled and counted as the liars' (the counter can see them)."""
    config = SimConfig(
        peers=10, generations=8, seed=5, population=4, lamarck_steps=1, publish_every=2,
        drain_ms=2_000, degree=4, byzantine="sybil", byzantine_fraction=0.3,
        inflate_by=inflate_by,
    )  # fmt: skip
    sim = run(config)
    try:
        summary = sim.summary()
    finally:
        sim.close()
    assert summary["liars"] == 3 and summary["migrants"] > 0
    if inflate_by:
        assert summary["migrants_from_liars"] == 0
        assert summary["liars_banned_frac"] == 1.0
    else:
        assert summary["migrants_from_liars"] > 0
    assert summary["identical_honest_sets"] == 1


@pytest.mark.slow  # ~25 s: digits nets evolved and verified by 10 peers
@pytest.mark.parametrize("holdout", [True, False])
def test_overfit_templates_are_flagged_and_never_sampled(holdout: bool) -> None:
    """Issue 17, "overfit": liars that publish their best refitted on the validation split
    (a true claim there) are flagged by every honest verifier's held-out score, and no
    honest peer samples one of their templates; with the claim check alone
    (`holdout=False`, `simulate byzantine --no-holdout`) honest peers sample them."""
    config = SimConfig(
        peers=10, task="digits", generations=8, seed=5, population=4, lamarck_steps=5,
        publish_every=2, migrants=2, drain_ms=2_000, degree=4, byzantine="overfit",
        byzantine_fraction=0.2, holdout=holdout,
    )  # fmt: skip
    sim = run(config)
    try:
        summary = sim.summary()
        liars = [p for p in sim.local_peers if not p.honest]
        published = sum(len(p.byz_state.get("overfit", [])) for p in liars)
        flags = sum(p.core.stats.reevaluations.get("overfit", 0) for p in stats.honest_online(sim))
    finally:
        sim.close()
    assert summary["liars"] == 2 and published > 0 and summary["migrants"] > 0
    if holdout:
        assert flags > 0 and summary["migrants_from_liars"] == 0
    else:
        assert flags == 0 and summary["migrants_from_liars"] > 0


def _reached_ms(mode: str, msg_cpu_ms: float) -> float:
    config = SimConfig(
        peers=4, task="iris", generations=40, seed=3, mode=mode, search="es", eval_ms=1.0,
        msg_cpu_ms=msg_cpu_ms, target=0.9, stop_at_target=True, degree=3, topology="complete",
        migrants=0, drain_ms=0,
    )  # fmt: skip
    sim = run(config)
    try:
        reached = sim.summary()["reached_t_ms"]
    finally:
        sim.close()
    assert reached is not None
    return float(reached)


def test_message_cpu_is_charged_to_sharing_peers_and_not_to_isolated_ones() -> None:
    """`msg_cpu_ms` models a daemon whose gossip shares a core with its evolution: sharing
    peers pay for every message they handle; isolated peers handle none and pay nothing."""
    assert _reached_ms("isolation", 5.0) == _reached_ms("isolation", 0.0)
    assert _reached_ms("sharing", 5.0) > 1.5 * _reached_ms("sharing", 0.0)


def test_a_sybil_is_judged_only_by_peers_that_hold_its_attestation(tmp_path: Path) -> None:
    """`attesters_banned_frac` counts an honest peer as a judge of a sybil only if it holds
    the sybil's "valid" attestation of a lie it found false: in the byzantine study's seed 4
    (collude, 25 %) the liar's second lie reached a peer without its attestations, which no
    honest peer held, so that peer had nothing to ban the sybils for."""
    from qudag.crypto.signing import Identity
    from qudag.dag.store import Store

    me, sybil = Identity.generate(), Identity.generate()
    lie, other = bytes([1]) * 32, bytes([2]) * 32
    with Store.open(tmp_path / "ledger.sqlite3") as store:
        store.record_verification(lie, me.key_id, 0.9, "invalid", 1)
        store.record_verification(other, sybil.key_id, 1.2, "valid", 2)
        found_false = {t for t, v in store.verdicts_by(me.key_id) if v == "invalid"}
        assert not stats.vouched_for_false(store, found_false, sybil)
        store.record_verification(lie, sybil.key_id, 1.15, "valid", 3)
        assert stats.vouched_for_false(store, found_false, sybil)
