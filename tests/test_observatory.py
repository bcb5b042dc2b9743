"""The observatory's JSON routes (node/ops/observatory.py) against a real ledger.

Three peers' cores on SQLite stores: author B publishes a template and a child of it, we (A)
receive both by gossip, publish a grandchild, re-measure B's child and attest it. The views
must show what the store and `PeerCore.ranked_templates` hold, within their bounds.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qudag.crypto.signing import Identity
from qudag.dag.store import Store
from qudag.dag.vertex import decode_vertex
from qudag.evolution.genome import Genome
from qudag.evolution.tasks import get_task
from qudag.evolution.template import Template, from_genome
from qudag.evolution.verify import verify_claim
from qudag.node.ops import observatory as obs
from qudag.node.ops.http import Routes, route
from qudag.node.protocol.core import (
    NODE_DECODERS,
    CoreConfig,
    PeerCore,
    Publish,
    task_tolerances,
)

TASK = "xor"
NOW = 1_700_000_000_000


def template(seed: int, generation: int, parents: tuple[bytes, ...] = ()) -> Template:
    task = get_task(TASK)
    genome = Genome.random(np.random.default_rng(seed), task.n_inputs, [4], task.n_outputs)
    draft = from_genome(genome, task, 0.0, generation=generation, latency_repeats=3)
    return replace(draft, fitness=verify_claim(draft), parents=parents)


def make_core(identity: Identity, path: Path) -> PeerCore:
    store = Store.open(path, decoders=NODE_DECODERS)
    config = CoreConfig(
        tasks=(TASK,),
        tolerances=task_tolerances((TASK,)),
        versions={TASK: get_task(TASK).version},
    )
    return PeerCore(identity, store, config, random.Random(0))


class World:
    def __init__(self, tmp: Path) -> None:
        self.a = make_core(Identity.generate(), tmp / "a.sqlite3")
        self.b = make_core(Identity.generate(), tmp / "b.sqlite3")
        out = [a for a in self.b.start(NOW) if isinstance(a, Publish)]
        self.t1, actions = self.b.publish_template(template(1, 0), NOW + 1)
        out += [a for a in actions if isinstance(a, Publish)]
        self.t2, actions = self.b.publish_template(template(2, 2, (self.t1,)), NOW + 2)
        out += [a for a in actions if isinstance(a, Publish)]
        for action in out:
            relay, _ = self.a.on_gossip("peer-b", action.topic, action.data, NOW + 3)
            assert relay
        # A's own template descends from B's t2, and from an ancestor nobody has sent us.
        self.unknown = bytes(range(32))
        self.t3, _ = self.a.publish_template(
            template(3, 4, tuple(sorted((self.t2, self.unknown)))), NOW + 4
        )
        verdicts = {}  # we re-measure both of B's claims and attest them
        while (job := self.a.next_reevaluation()) is not None:
            verdicts[job.template_id], _ = self.a.on_reevaluated(job, job.template.fitness, NOW + 5)
        # and the held-out draw of our own t3 is asked for (display only: no verdict)
        assert verdicts == {self.t1: "valid", self.t2: "valid", self.t3: None}
        self.history = obs.History.new()
        self.observatory = obs.Observatory(
            self.a,
            peers=lambda: [{"peer": "peer-b", "author": self.b.me.hex()}],
            default_task=lambda: TASK,
            history=self.history,
        )
        self.routes = Routes(
            status=lambda: {},
            metrics=lambda: "",
            vertex=self.a.store.get,
            extra=self.observatory.handlers(),
        )

    def get(self, target: str) -> tuple[int, Any]:
        response = route(self.routes, b"GET", target.encode())
        if response.content_type.startswith("application/json"):
            return response.status, json.loads(response.body)
        return response.status, response.body


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("observatory"))


def test_dag_view_shows_the_newest_vertices_with_their_parents(world: World) -> None:
    store = world.a.store
    status, view = world.get("/api/dag?limit=3")
    assert status == 200
    assert view["total"] == store.count()
    assert view["by_kind"] == {"attestation": 2, "identity": 2, "template": 3}  # t1, t2
    assert len(view["vertices"]) == 3
    newest = view["vertices"][0]
    assert newest["kind"] == "attestation" and newest["author"] == world.a.me.hex()
    assert newest["template"] in (world.t1.hex(), world.t2.hex())
    assert newest["verdict"] == "valid"
    shown = {v["id"] for v in view["vertices"]}
    for vertex in view["vertices"]:
        raw = store.get(bytes.fromhex(vertex["id"]))
        assert raw is not None
        parents = {p.hex() for p in decode_vertex(raw).parents}
        assert set(vertex["parents"]) == parents & shown
        assert vertex["parents_outside"] == len(parents - shown)
    _, everything = world.get("/api/dag?limit=100000")  # capped, not refused
    assert len(everything["vertices"]) == min(store.count(), obs.MAX_DAG_VERTICES)
    depths = {v["id"]: v["depth"] for v in everything["vertices"]}
    assert {d for v, d in depths.items() if v in shown} and min(depths.values()) == 0
    assert world.get("/api/dag?limit=abc")[0] == 400


def test_leaderboard_is_the_nodes_own_ranking_with_objectives(world: World) -> None:
    status, board = world.get("/api/leaderboard?task=xor&limit=10")
    assert status == 200
    ranked = world.a.ranked_templates(TASK, 10)
    assert [row["id"] for row in board["templates"]] == [s.id.hex() for s in ranked]
    assert board["tasks"] == [TASK]
    by_id = {row["id"]: row for row in board["templates"]}
    t2 = by_id[world.t2.hex()]
    assert t2["verified"] and t2["measured_by"] == "us" and t2["genetic_parents"] == 1
    vertex = world.a.store.vertex(world.t2)
    assert vertex is not None
    objectives = vertex.payload["objectives"]
    assert (t2["bytes"], t2["latency_ns"], t2["params"]) == (
        objectives["bytes"],
        objectives["latency_ns"],
        objectives["params"],
    )
    # Pareto front of the verified rows: none of them is dominated by another verified row.
    verified = [r for r in board["templates"] if r["verified"]]
    front = [r for r in verified if r["pareto"]]
    assert front and not any(r["pareto"] for r in board["templates"] if not r["verified"])

    def shown(r: dict[str, Any]) -> float:
        return r["claimed_fitness"] if r["verified_fitness"] is None else r["verified_fitness"]

    tolerance = task_tolerances((TASK,))[TASK]  # fitness this close counts as equal
    for row in front:
        for other in verified:
            no_worse = (
                shown(other) >= shown(row) - tolerance
                and other["bytes"] <= row["bytes"]
                and other["latency_ns"] <= row["latency_ns"]
            )
            better = (
                shown(other) > shown(row) + tolerance
                or other["bytes"] < row["bytes"]
                or other["latency_ns"] < row["latency_ns"]
            )
            assert not (no_worse and better)
    _, capped = world.get("/api/leaderboard?limit=100000")
    assert len(capped["templates"]) <= obs.MAX_LEADERBOARD
    # /templates and the leaderboard describe a template alike (one serializer).
    assert obs.standing_json(ranked[0], world.a.me).items() <= board["templates"][0].items()


def test_lineage_walks_genetic_parents_through_the_ledger(world: World) -> None:
    status, view = world.get(f"/api/lineage/{world.t3.hex()}")
    assert status == 200
    nodes = {n["id"]: n for n in view["nodes"]}
    assert view["nodes"][0]["id"] == world.t3.hex() and view["nodes"][0]["mine"]
    assert nodes[world.t2.hex()]["depth"] == 1 and nodes[world.t1.hex()]["depth"] == 2
    assert nodes[world.t1.hex()]["author"] == world.b.me.hex()
    assert nodes[world.unknown.hex()] == {"id": world.unknown.hex(), "missing": True, "depth": 1}
    verdicts = nodes[world.t2.hex()]["verdicts"]
    assert [(v["verifier"], v["verdict"]) for v in verdicts] == [(world.a.me.hex(), "valid")]
    attestation = world.a.store.vertex(bytes.fromhex(verdicts[0]["attestation"]))
    assert attestation is not None and attestation.payload["template"] == world.t2
    assert not view["truncated"]
    _, first = world.get(f"/api/lineage/{world.t3.hex()}?limit=1")
    assert len(first["nodes"]) == 1 and first["truncated"]
    identity = world.a.store.vertex_ids_by(world.a.me, "identity")[0]
    assert world.get(f"/api/lineage/{identity.hex()}")[0] == 404  # not a template
    assert world.get(f"/api/lineage/{'ab' * 32}")[0] == 404
    assert world.get("/api/lineage/xyz")[0] == 400


def test_history_samples_and_ledger_claims(world: World) -> None:
    history = obs.History.new(maxlen=5000)
    sample = {"vertices": 1, "peers": 0, "tasks": {TASK: {"best_fitness": 0.5}}}
    taken = [history.maybe_sample(NOW + i * 500, lambda: sample) for i in range(9)]
    assert taken == [True, False, False, False, True, False, False, False, True]
    for i in range(2000):
        history.maybe_sample(NOW + 10_000 + i * obs.HISTORY_EVERY_MS, lambda: sample)
    points = history.points()
    assert len(points) == obs.MAX_HISTORY_POINTS
    assert points[-1] == history.samples[-1] and points[0] == history.samples[0]
    world.history.maybe_sample(NOW, lambda: sample)
    status, view = world.get("/api/history?task=xor")
    assert status == 200
    assert view["node"] == [{"t_ms": NOW, "vertices": 1, "peers": 0, "best_fitness": 0.5}]
    assert [c["id"] for c in view["claims"]] == [world.t1.hex(), world.t2.hex(), world.t3.hex()]
    assert [c["ts_ms"] for c in view["claims"]] == sorted(c["ts_ms"] for c in view["claims"])


def test_peers_route(world: World) -> None:
    status, view = world.get("/api/peers")
    assert status == 200 and view["me"] == world.a.me.hex()
    assert view["peers"] == [{"peer": "peer-b", "author": world.b.me.hex()}]


def test_the_page_is_served_by_the_node_and_loads_nothing_from_elsewhere(world: World) -> None:
    status, page = world.get("/")
    assert status == 200
    assert b"/observatory.js" in page and b"/observatory.css" in page
    response = route(world.routes, b"GET", b"/")
    assert response.content_type.startswith("text/html")
    for path, (_, content_type) in obs.STATIC_FILES.items():
        response = route(world.routes, b"GET", path.encode())
        assert response.status == 200 and response.content_type == content_type
        text = response.body.decode()
        # No URL of another origin: the only absolute one is SVG's namespace name.
        assert set(re.findall(r"https?://[^\s\"'`]+", text)) <= {"http://www.w3.org/2000/svg"}
        for ref in re.findall(r"(?:src|href)=\"([^\"]*)\"", text):
            assert ref.startswith("/") or ref.startswith("data:"), ref
    assert world.get("/nothing-here")[0] == 404
    assert world.get("/status")[0] == 200  # the built-in routes are untouched


def test_pareto_front_counts_fitness_within_tolerance_as_equal() -> None:
    def row(fitness: float, size: int, latency: int, verified: bool = True) -> dict[str, Any]:
        return {
            "verified": verified,
            "verified_fitness": fitness if verified else None,
            "claimed_fitness": fitness,
            "bytes": size,
            "latency_ns": latency,
        }

    rows = [
        row(1.0, 100, 10),  # dominated: the next is as fit (within tolerance) and smaller
        row(0.9999999, 50, 10),
        row(0.5, 10, 1),  # less fit, but smaller and faster than all
        row(2.0, 1, 1, verified=False),  # a claim nobody verified: neither on it nor against
        row(0.9, 50, 10),  # dominated
    ]
    obs.mark_pareto(rows, tolerance=1e-6)
    assert [r["pareto"] for r in rows] == [False, True, True, False, False]
