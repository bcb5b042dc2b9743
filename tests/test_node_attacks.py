"""Issue 17's trust attacks against real `qudag-node run` daemons on 127.0.0.1.

Two honest daemons evolve digits (islands search, so they sample each other's verified
templates as migrants); `fuzz/hostile.py` attacks both of them over the real wire format
(libp2p, gossipsub, signed vertices) with keys it owns:

1. sybil flood: an author of the attacker's earns a record with an honest claim, then 120
   throwaway identities each claim more than any honest net, then that proven author sends
   three more honest claims, then a colluded lie, then (while the flood is being checked)
   one more honest claim;
2. collusion: a fresh liar's inflated claim, attested "valid" by two fresh sybils;
3. version skew: a lie declaring a task version the nodes cannot evaluate, attested by two
   sybils that first earned a record by attesting honest claims correctly;
4. overfit: random features whose output layer is fitted on the validation split, claiming
   its true validation fitness (1.0).

Every property is read where a user reads it: `/templates` (which `templates list` shows),
`templates pull`, `/migrants` (what the breeder sampled), `/status` (bans), and each node's own
ledger file (the order of its verdicts). A `Watch` polls the routes while an attack runs,
because the attacks live in the window between a lie's arrival and the node's own check.
Every wait is bounded; the module takes about two minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import get_json, wait_until

from qudag.dag.store import Store
from qudag.node.cli import main
from qudag.node.ops.cluster import NodeProcess, start_node, stop_all

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parent.parent
TASK = "digits"
SYBILS = 120


def node_args(seed: int) -> list[str]:
    args = {
        "--task": TASK,
        "--population": "16",
        "--generations": "1000000",  # stopped by the fixture
        "--publish-every": "2",
        "--migrants": "4",
        "--seed": str(seed),
        "--heads-interval": "1",
        "--log-level": "INFO",
    }
    return [item for pair in args.items() for item in pair]


@dataclass
class Pair:
    root: Path
    nodes: list[NodeProcess]
    keys: list[str]  # each node's author key id


def measured_others(node: NodeProcess, keys: list[str]) -> bool:
    """Whether `node` lists a claim of another honest node that it measured valid itself."""
    mine = (node.status() or {}).get("key_id")
    listed = get_json(node, f"/templates?task={TASK}&limit=100")["templates"]
    return any(
        t["author"] in keys and t["author"] != mine and t["measured_by"] == "us" for t in listed
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("attacks")
    nodes: list[NodeProcess] = []
    try:
        nodes.append(start_node("node0", root / "node0", node_args(1)))
        nodes.append(start_node("node1", root / "node1", node_args(2), bootstrap=[nodes[0].addr]))
        keys = [str(n.ready["key_id"]) for n in nodes]
        # Each node has checked a claim of the other: both are proven authors to each other,
        # and each has claims it measured itself (the version-skew attesters' record needs one).
        wait_until(
            lambda: all(measured_others(n, keys) for n in nodes),
            90,
            "each honest node to measure a claim of the other",
            nodes=nodes,
        )
        yield Pair(root, nodes, keys)
    finally:
        stop_all(nodes)


@dataclass
class Watch:
    """What the honest nodes showed while an attack ran: every listing entry that is not an
    honest author's, every migrant sampled, every template `templates pull` handed out, and
    when each key was first seen banned (node name -> key -> wall-clock ms, the clock the
    attacker signs its vertices' `ts_ms` with)."""

    pair: Pair
    tmp: Path
    capsys: pytest.CaptureFixture[str]
    listed: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    sampled: dict[str, set[str]] = field(default_factory=dict)
    pulled: list[tuple[str, str]] = field(default_factory=list)
    banned_at: dict[str, dict[str, int]] = field(default_factory=dict)
    flagged_at: dict[tuple[str, str], int] = field(default_factory=dict)  # overfit, first seen
    polls: int = 0

    def poll(self) -> None:
        self.polls += 1
        now = int(time.time() * 1000)
        for node in self.pair.nodes:
            assert node.alive(), f"{node.name} died"
            for entry in get_json(node, f"/templates?task={TASK}&limit=100")["templates"]:
                if entry["author"] not in self.pair.keys:
                    self.listed.append((node.name, entry))
                    if entry["overfit"]:
                        self.flagged_at.setdefault((node.name, entry["id"]), now)
            injected = get_json(node, f"/migrants?task={TASK}")["injected"]
            self.sampled.setdefault(node.name, set()).update(injected)
            status = node.status()
            assert status is not None, f"{node.name} does not answer /status"
            seen = self.banned_at.setdefault(node.name, {})
            for key in status["banned_authors"]:
                seen.setdefault(key, now)
        if self.polls % 3 == 0:  # what `templates pull` hands out as the best verified
            node = self.pair.nodes[self.polls // 3 % len(self.pair.nodes)]
            out = self.tmp / "pulled.template"
            code = main(
                ["templates", "pull", "--http", node.http, "--task", TASK, "-o", str(out)]
                + ["--force", "--json"]
            )
            assert code == 0, "the honest nodes always have a verified template to pull"
            line = self.capsys.readouterr().out.strip().splitlines()[-1]
            self.pulled.append((node.name, json.loads(line)["id"]))

    def verified_listed(self, ids: set[str]) -> list[tuple[str, dict[str, Any]]]:
        return [(n, e) for n, e in self.listed if e["id"] in ids and e["verified"]]

    def seen_listed(self, ids: set[str]) -> set[tuple[str, str]]:
        return {(n, e["id"]) for n, e in self.listed if e["id"] in ids}


def attack(
    pair: Pair,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mode: str,
    *extra: str,
    timeout: float = 120,
    until: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[dict[str, Any], Watch]:
    """Run `fuzz/hostile.py --mode MODE` against both nodes while a `Watch` polls them, and
    after it exits until `until(report)` holds (bounded by the same `timeout`); returns the
    attacker's report and the watch."""
    report_path = tmp_path / f"{mode}.json"
    argv = [
        sys.executable,
        str(ROOT / "fuzz" / "hostile.py"),
        "--targets",
        ",".join(n.http for n in pair.nodes),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--task",
        TASK,
        "--mode",
        mode,
        "--report",
        str(report_path),
        *extra,
    ]
    watch = Watch(pair, tmp_path, capsys)
    with open(tmp_path / f"{mode}.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                assert time.monotonic() < deadline, f"the hostile peer ran over {timeout} s"
                watch.poll()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert proc.returncode == 0, (tmp_path / f"{mode}.log").read_text()[-3000:]
    report: dict[str, Any] = json.loads(report_path.read_text())
    assert not report["errors"], report["errors"]
    while until is not None and not until(report):
        assert time.monotonic() < deadline, f"{mode}: not settled within {timeout} s"
        watch.poll()
    return report, watch


def report_figures(test: str, figures: dict[str, Any]) -> None:
    print(json.dumps({"test": test, **figures}))


def banned_everywhere(pair: Pair, keys: set[str]) -> bool:
    return all(keys <= set((n.status() or {}).get("banned_authors", [])) for n in pair.nodes)


def verdicts(node: NodeProcess, key: str) -> dict[str, tuple[int, int]]:
    """Template id -> (rank, ts_ms) of each verdict `node` made, in the order it made them
    (its ledger file, read while it runs: SQLite readers do not block the writer)."""
    me = bytes.fromhex(key)
    with Store.open(node.data_dir / "ledger.sqlite3") as store:
        out = {}
        for rank, (tid, _) in enumerate(store.verdicts_by(me)):
            ts = next(v.ts_ms for v in store.verifications(tid) if v.verifier == me)
            out[tid.hex()] = (rank, ts)
        return out


def test_a_sybil_flood_does_not_starve_checks_of_proven_authors_and_nothing_false_is_sampled(
    pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def flood_checked(report: dict[str, Any]) -> bool:
        flood = set(report["flood"])
        return all(
            flood <= verdicts(n, k).keys() for n, k in zip(pair.nodes, pair.keys, strict=True)
        )

    report, watch = attack(
        pair, tmp_path, capsys, "flood", "--sybils", str(SYBILS), "--linger", "2",
        until=flood_checked,
    )  # fmt: skip
    assert report["proven_everywhere"], "the attacker's honest author was not measured valid"
    flood = set(report["flood"])
    lie = report["lie"]["lie"]
    false_claims = flood | {lie}
    assert len(flood) == SYBILS
    # Nothing false was sampled, listed as verified or pulled; both nodes stayed up (`poll`).
    for name, sampled in watch.sampled.items():
        assert not sampled & false_claims, f"{name} sampled a false claim"
    assert watch.verified_listed(false_claims) == []
    pulled = {vid for _, vid in watch.pulled}
    assert pulled and not pulled & false_claims
    figures: dict[str, Any] = {"sybils": SYBILS, "polls": watch.polls, "pulls": len(pulled)}
    for node, key in zip(pair.nodes, pair.keys, strict=True):
        judged = verdicts(node, key)
        flood_judged = sorted(judged[v] for v in flood if v in judged)
        assert len(flood_judged) == SYBILS, f"{node.name} checked {len(flood_judged)} of the flood"
        last_ts = flood_judged[-1][1]
        # The proven author's three claims, sent right behind the flood, were each checked
        # before two thirds of it: proven authors first (what a node checked before they
        # arrived, 15-29 claims in our runs, is the rest). Strangers' claims are checked in a
        # random order, so without that rule each would wait behind half the flood on average.
        assert len(report["proven_behind_flood"]) == 3, report["proven_behind_flood"]
        proven = [judged.get(vid) for vid in report["proven_behind_flood"]]
        assert all(b is not None for b in proven), f"{node.name} skipped the proven claims"
        jumped = [sum(1 for rank, _ in flood_judged if rank > b[0]) for b in proven if b]
        assert min(jumped) >= SYBILS * 2 // 3, (node.name, jumped)
        # The proven author's claim sent while the flood was being checked (the first node to
        # judge a quarter of it had) went before what of the flood still waited: no flood claim
        # judged more than a second after it was sent (time for gossip and the check in hand)
        # was judged before it, and flood claims were still waiting then (the case is
        # exercised). In a random order it would wait behind half of what was left.
        sent_ms = report["during_sent_ms"]
        (mid,) = report["proven_during_flood"]
        assert mid in judged, f"{node.name} skipped the mid-flood claim"
        mid_rank, mid_ts = judged[mid]
        late = [rank for rank, ts in flood_judged if ts > sent_ms + 1000]
        assert late, (node.name, "the flood was checked before the claim arrived")
        overtaken = sum(1 for rank in late if rank < mid_rank)
        assert overtaken == 0, (node.name, "flood claims checked first", overtaken)
        figures[node.name] = {
            "flood_check_s": round((last_ts - flood_judged[0][1]) / 1000, 2),
            "proven_claims_checked_after_s": [
                round((b[1] - report["flood_sent_ms"]) / 1000, 2) for b in proven if b
            ],
            "flood_checked_after_each_proven_claim": jumped,
            "flood_waiting_when_mid_flood_claim_came": len(late),
            "mid_flood_claim_checked_after_s": round((mid_ts - sent_ms) / 1000, 2),
            "lie_author_banned": report["lie"]["liar"]
            in (node.status() or {}).get("banned_authors", []),
        }
    report_figures("sybil-flood", figures)


def test_colluded_lies_are_never_verified_sampled_or_pulled_and_all_three_keys_are_banned(
    pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {n.name: n.status() or {} for n in pair.nodes}
    report, watch = attack(pair, tmp_path, capsys, "collude", "--rounds", "4", "--linger", "4")
    pulled = {vid for _, vid in watch.pulled}
    rounds = report["rounds"]
    lies = {r["lie"] for r in rounds}
    keys = {k for r in rounds for k in (r["liar"], *r["attesters"])}
    assert len(rounds) == 4 and len(keys) == 12
    # The proof: each node checked every lie itself and judged both attestations of each.
    wait_until(lambda: banned_everywhere(pair, keys), 30, "every colluder banned", nodes=pair.nodes)
    watch.poll()
    for node in pair.nodes:
        st = node.status() or {}
        was = before[node.name]
        invalid = st["reevaluations"].get("invalid", 0) - was["reevaluations"].get("invalid", 0)
        judged = st["attestations_checked"].get("false", 0) - was.get(
            "attestations_checked", {}
        ).get("false", 0)
        assert invalid >= len(rounds) and judged >= 2 * len(rounds), (node.name, st)
    # Never listed as verified (nor at the attesters' number), never sampled, never pulled.
    assert watch.verified_listed(lies) == []
    assert all(e["verified_fitness"] is None for _, e in watch.listed if e["id"] in lies)
    for name, sampled in watch.sampled.items():
        assert not sampled & lies, f"{name} sampled a colluded lie"
    assert pulled and not pulled & lies
    ban_s = [
        (watch.banned_at[n.name][k] - r["signed_ms"]) / 1000
        for n in pair.nodes
        for r in rounds
        for k in (r["liar"], *r["attesters"])
        if k in watch.banned_at[n.name]
    ]
    report_figures(
        "collusion",
        {
            "rounds": len(rounds),
            "polls": watch.polls,
            "pulls": len(pulled),
            "lie_listed_unverified": len(watch.seen_listed(lies)),
            "time_to_ban_s": [round(min(ban_s), 2), round(max(ban_s), 2)],
        },
    )


def test_a_lie_on_a_task_version_nobody_can_evaluate_is_never_verified_whoever_attests_it(
    pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {n.name: (n.status() or {}).get("attestations_checked", {}) for n in pair.nodes}
    report, watch = attack(
        pair, tmp_path, capsys, "version-skew", "--rounds", "2", "--pause", "0.5", "--linger", "8"
    )
    assert len(report["earned"]) == len(pair.nodes), report["earned"]
    rounds = report["rounds"]
    lies = {r["lie"] for r in rounds}
    # Every node received the lies (listed, unverified: it cannot re-measure them)...
    assert watch.seen_listed(lies) == {(n.name, lie) for n in pair.nodes for lie in lies}
    # ...and never listed one as verified, sampled one, or handed one out on `templates pull`.
    assert watch.verified_listed(lies) == []
    for name, sampled in watch.sampled.items():
        assert not sampled & lies, f"{name} sampled a lie it cannot evaluate"
    pulled = {vid for _, vid in watch.pulled}
    assert pulled and not pulled & lies
    right = {
        n.name: (n.status() or {})["attestations_checked"].get("right", 0)
        - before[n.name].get("right", 0)
        for n in pair.nodes
    }
    report_figures(
        "version-skew",
        {
            "rounds": len(rounds),
            "polls": watch.polls,
            "pulls": len(pulled),
            "attestations_judged_right_during_attack": right,
            "liars_banned": [
                r["liar"] in (n.status() or {})["banned_authors"]
                for n in pair.nodes
                for r in rounds
            ],
        },
    )


def test_real_daemons_flag_validation_fitted_nets_overfit_and_never_list_sample_or_pull_them(
    pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {n.name: (n.status() or {})["reevaluations"].get("overfit", 0) for n in pair.nodes}

    def measured_everywhere(report: dict[str, Any]) -> bool:
        """Each node shows a held-out score of its own for each cheat (its check is done)."""
        cheats = {r["cheat"] for r in report["rounds"]}
        for node in pair.nodes:
            listed = get_json(node, f"/templates?task={TASK}&limit=100")["templates"]
            if not cheats <= {t["id"] for t in listed if (t["held_out"] or {}).get("by") == "us"}:
                return False
        return True

    report, watch = attack(
        pair, tmp_path, capsys, "overfit", "--rounds", "2", "--pause", "1", "--linger", "3",
        until=measured_everywhere,
    )  # fmt: skip
    watch.poll()
    rounds = report["rounds"]
    cheats = {r["cheat"] for r in rounds}
    # What the issue describes: ~1.0 claimed on the validation split (true), less on test.
    for r in rounds:
        assert r["claimed"] > 0.99 and r["test_score"] < r["claimed"] - 0.03, r
    # No node listed a cheat as verified, sampled one or handed one out...
    assert watch.verified_listed(cheats) == []
    for name, sampled in watch.sampled.items():
        assert not sampled & cheats, f"{name} sampled an overfit net"
    pulled = {vid for _, vid in watch.pulled}
    assert pulled and not pulled & cheats
    # ...because each flagged each one overfit on its held-out draw (the claim itself is true
    # on the validation split, so nobody is banned for it).
    assert set(watch.flagged_at) == {(n.name, c) for n in pair.nodes for c in cheats}
    for node in pair.nodes:
        overfit = (node.status() or {})["reevaluations"].get("overfit", 0) - before[node.name]
        assert overfit >= len(rounds), (node.name, overfit)
    flag_s = [
        (watch.flagged_at[(n.name, r["cheat"])] - r["signed_ms"]) / 1000
        for n in pair.nodes
        for r in rounds
        if (n.name, r["cheat"]) in watch.flagged_at
    ]
    report_figures(
        "overfit",
        {
            "rounds": len(rounds),
            "polls": watch.polls,
            "claimed": [round(r["claimed"], 4) for r in rounds],
            "test_score": [round(r["test_score"], 4) for r in rounds],
            "time_to_flag_s": [round(min(flag_s), 2), round(max(flag_s), 2)] if flag_s else None,
        },
    )
