"""The observatory: the page a node serves at `/`, and the bounded JSON queries behind it.

The page (`observatory_static/`: index.html, .js, .css; package data: plain HTML, JavaScript and
inline SVG, no build step, nothing fetched from anywhere but this node) polls `/status` and the
routes below every few seconds. Each route is a synchronous callback on the trio thread (see
node/ops/http.py), so each is bounded: a capped number of vertices, each read by an indexed
query, and nothing that walks the whole ledger in Python.

- `GET /api/peers`: this node's connections (libp2p peer id, and the ML-DSA key id the sync
  handshake proved, if it did yet) and its listen addresses.
- `GET /api/dag?limit=N`: the N (<= `MAX_DAG_VERTICES`) vertices stored last here, newest first,
  with kind, author, depth and causal parents; plus the ledger's totals by kind.
- `GET /api/leaderboard?task=T&limit=N`: the node's own ranking (`PeerCore.ranked_templates`,
  the rule `/templates`, migrants and `templates pull` use) with each template's claimed
  objectives (fitness on the validation split, parameters, bytes, latency), its held-out
  score and whose it is (`standing_json`), the task author's designated score if any, and
  whether it is on the Pareto front (fitness and held-out score up, bytes and latency down)
  of the verified ones listed: the task's leaderboard, `qudag-node templates list --front`.
- `GET /api/lineage/<template id>?limit=N`: the template's genetic ancestors through the ledger
  (the `parents` of template payloads, breadth first, at most N <= `MAX_LINEAGE`), each with
  its author and the verdicts recorded on it (attestations, and our own re-measurements).
- `GET /api/tasks`: the published tasks in this node's ledger (`task` vertices, oldest first,
  at most `MAX_TASKS`), each with its definition and whether this node holds its data.
- `GET /api/history?task=T`: this node's samples since it started (generation, best and
  best verified fitness, vertices, peers; `History`), and the ledger's newest template claims
  of the task with their signed timestamps.

Cost on the trio thread, measured on a 1,500-vertex ledger (one author's chain of templates,
2-core box, niced): /api/dag 4 ms at the page's 120 vertices (8.5 ms at the cap of 300), the
leaderboard 6 ms (mostly `ranked_templates`, which the node also runs every tick), a 64-template
lineage 2 ms, /api/history 4 ms. Only the history's claims query grows with the ledger (it
sorts the task's templates by time in SQLite); the others are bounded by their caps. The page
also polls /status, whose vertex-set digest reads every id.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from qudag.dag.payloads import KIND_ATTESTATION, KIND_TEMPLATE
from qudag.dag.store import Store
from qudag.dag.vertex import Vertex, decode_vertex
from qudag.node.ops.http import VERTEX_ID_BYTES, ExtraHandler, Response, json_response

if TYPE_CHECKING:
    from qudag.node.protocol.core import PeerCore
    from qudag.node.protocol.policy import TemplateStanding

STATIC_DIR = Path(__file__).with_name("observatory_static")
STATIC_FILES: Mapping[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/observatory.js": ("observatory.js", "text/javascript; charset=utf-8"),
    "/observatory.css": ("observatory.css", "text/css; charset=utf-8"),
}
MAX_DAG_VERTICES = 300
DEFAULT_DAG_VERTICES = 120
MAX_LEADERBOARD = 50
DEFAULT_LEADERBOARD = 20
MAX_LINEAGE = 64
MAX_TASKS = 200  # published tasks listed by /api/tasks
DEFAULT_LINEAGE = 32
MAX_CLAIMS = 500  # template claims per task in /api/history
MAX_HISTORY_POINTS = 600  # node samples per /api/history answer (evenly thinned)
HISTORY_SAMPLES = 1800  # kept in memory: an hour at one sample per HISTORY_EVERY_MS
HISTORY_EVERY_MS = 2000


class BadQuery(ValueError):
    """A query parameter the route cannot use: the client's fault, answered with 400."""


def query_limit(params: Mapping[str, list[str]], default: int, top: int) -> int:
    """`limit` from a parsed query string, clamped to 1..top; BadQuery if not an integer."""
    try:
        value = int(params.get("limit", [str(default)])[0])
    except ValueError:
        raise BadQuery("limit must be an integer") from None
    return max(1, min(top, value))


def _bad_query_is_400(handler: ExtraHandler) -> ExtraHandler:
    def answer(path: str, query: str) -> Response:
        try:
            return handler(path, query)
        except BadQuery as exc:
            return json_response(400, {"error": str(exc)})

    return answer


def standing_json(standing: TemplateStanding, me: bytes) -> dict[str, Any]:
    """A ranked template as the HTTP routes show it (`/templates` and the leaderboard)."""
    entry = standing.entry
    held, private = standing.held_out, standing.designated
    return {
        "id": entry.id.hex(),
        "author": entry.author.hex(),
        "task_version": entry.task_version,
        "claimed_fitness": entry.claimed_fitness,
        "verified_fitness": standing.measured_fitness,
        "verifications": entry.verifications,
        "verified": standing.verified,
        "measured_by": _whose(standing.measured_by, me),
        # The held-out score beside the claim (issue 17), and whose it is: on test rows or
        # episode seeds drawn after the template was published (`n` of them), by us or a
        # proven attester (`TrustPolicy.held_out_of`); None when nobody we trust measured one.
        # `overfit`: the claim stands above it by more than sampling explains, so the template
        # is not verified whatever vouches for it.
        "held_out": None
        if held is None
        else {
            "fitness": held.holdout.fitness,
            "n": held.holdout.n,
            "by": _whose(held.verifier, me),
        },
        "overfit": standing.overfit,
        # The task author's score on its private rows: nobody else can reproduce it, and it
        # decides nothing (`TrustPolicy.designated_of`).
        "designated": None
        if private is None
        else {
            "fitness": private.fitness,
            "n": private.n,
            "by": _whose(private.verifier, me),
            "reproducible": False,
        },
    }


def _whose(key: bytes | None, me: bytes) -> str | None:
    """Whose measurement a figure is: "us", another key id in hex, or None."""
    return None if key is None else "us" if key == me else key.hex()


def _vertex_json(vertex: Vertex) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": vertex.id.hex(),
        "author": vertex.author.hex(),
        "seq": vertex.seq,
        "kind": vertex.kind,
        "ts_ms": vertex.ts_ms,
    }
    if vertex.kind == KIND_TEMPLATE:
        out["task"] = vertex.payload["task"]
        out["fitness"] = vertex.payload["objectives"]["fitness"]
        out["genetic_parents"] = [p.hex() for p in vertex.payload["parents"]]
    elif vertex.kind == KIND_ATTESTATION:
        out["template"] = vertex.payload["template"].hex()
        out["verdict"] = vertex.payload["verdict"]
        out["fitness"] = vertex.payload["fitness"]
    return out


def dag_view(store: Store, limit: int) -> dict[str, Any]:
    """The newest `limit` vertices stored here and the ledger's totals (see module doc)."""
    vertices = [
        (decode_vertex(raw), depth) for raw, depth in store.recent(min(limit, MAX_DAG_VERTICES))
    ]
    shown = {v.id for v, _ in vertices}
    out = []
    for vertex, depth in vertices:
        item = _vertex_json(vertex)
        item["depth"] = depth
        item["parents"] = [p.hex() for p in vertex.parents if p in shown]
        item["parents_outside"] = sum(1 for p in vertex.parents if p not in shown)
        out.append(item)
    return {
        "total": store.count(),
        "by_kind": store.kind_counts(),
        "tips": len(store.tips()),
        "vertices": out,
    }


Key = tuple[float, int, int, float | None]


def mark_pareto(rows: list[dict[str, Any]], tolerance: float) -> None:
    """Mark (`pareto`) the verified rows no other verified row dominates: bytes and latency at
    most as large and fitness no lower, one of them better. Fitnesses within the task's
    re-measurement `tolerance` count as equal (the noise a verdict forgives is no advantage).
    A row's `held_out` score, when both rows have one, is a fourth objective compared the
    same way: a net that generalises better is not dominated by one that only fits the
    validation split better. (The designated score is not one: it is not reproducible.)"""

    def key(row: dict[str, Any]) -> Key:
        shown = row["verified_fitness"]
        fitness = row["claimed_fitness"] if shown is None else shown
        held = row.get("held_out")
        held_out = None if held is None else float(held["fitness"])
        return (float(fitness), int(row["bytes"]), int(row["latency_ns"]), held_out)

    def dominates(a: Key, b: Key) -> bool:
        if a[0] < b[0] - tolerance or a[1] > b[1] or a[2] > b[2]:
            return False
        both = a[3] is not None and b[3] is not None
        if both and a[3] < b[3] - tolerance:  # type: ignore[operator]
            return False
        better_held_out = both and a[3] > b[3] + tolerance  # type: ignore[operator]
        return a[0] > b[0] + tolerance or a[1] < b[1] or a[2] < b[2] or better_held_out

    verified = [key(row) for row in rows if row["verified"]]
    for row in rows:
        row["pareto"] = row["verified"] and not any(dominates(o, key(row)) for o in verified)


def leaderboard(core: PeerCore, task: str, limit: int) -> dict[str, Any]:
    """The node's ranking of `task` (`PeerCore.ranked_templates`) with the claimed
    objectives of each template; the fitness shown as verified is the node's measurement."""
    rows = []
    for standing in core.ranked_templates(task, min(limit, MAX_LEADERBOARD)):
        row = standing_json(standing, core.me)
        vertex = core.store.vertex(standing.id)
        if vertex is None:  # ranked from the store a moment ago; never expected
            continue
        objectives = vertex.payload["objectives"]
        row |= {
            "params": objectives["params"],
            "bytes": objectives["bytes"],
            "latency_ns": objectives["latency_ns"],
            "generation": vertex.payload["generation"],
            "operator": vertex.payload["operator"],
            "genetic_parents": len(vertex.payload["parents"]),
            "ts_ms": vertex.ts_ms,
        }
        rows.append(row)
    mark_pareto(rows, core.config.tolerances.get(task, 0.0))
    tasks = sorted(set(core.config.tasks) | set(core.store.template_tasks()))
    return {"task": task, "tasks": tasks, "templates": rows}


def lineage(store: Store, template_id: bytes, limit: int, me: bytes) -> dict[str, Any] | None:
    """The template and its genetic ancestors through the ledger, breadth first, at most
    `limit`; None if `template_id` is not a stored template. An ancestor the ledger does not
    hold (yet) is listed as missing. Verdicts: attestations and our local re-measurements."""
    root = store.vertex(template_id)
    if root is None or root.kind != KIND_TEMPLATE:
        return None
    limit = min(limit, MAX_LINEAGE)
    nodes: list[dict[str, Any]] = []
    seen = {template_id}
    queue: deque[tuple[bytes, int]] = deque([(template_id, 0)])
    truncated = False
    while queue:
        vid, generation_back = queue.popleft()
        if len(nodes) >= limit:
            truncated = True
            break
        vertex = root if vid == template_id else store.vertex(vid)
        if vertex is None or vertex.kind != KIND_TEMPLATE:
            nodes.append({"id": vid.hex(), "missing": True, "depth": generation_back})
            continue
        item = _vertex_json(vertex)
        item["depth"] = generation_back
        item["mine"] = vertex.author == me
        item["generation"] = vertex.payload["generation"]
        item["operator"] = vertex.payload["operator"]
        item["verdicts"] = [
            {
                "verifier": v.verifier.hex(),
                "verdict": v.verdict,
                "fitness": v.fitness,
                "ts_ms": v.ts_ms,
                "attestation": None if v.attestation is None else v.attestation.hex(),
            }
            for v in store.verifications(vid)[:16]
        ]
        nodes.append(item)
        for parent in vertex.payload["parents"]:
            if parent not in seen:
                seen.add(parent)
                queue.append((parent, generation_back + 1))
    return {"root": template_id.hex(), "nodes": nodes, "truncated": truncated}


@dataclass
class History:
    """What this node saw since it started, sampled every `HISTORY_EVERY_MS` (in memory only:
    a restarted node starts a new history; the ledger's claims are the durable record)."""

    samples: deque[dict[str, Any]]
    last_ms: int | None = None

    @classmethod
    def new(cls, maxlen: int = HISTORY_SAMPLES) -> History:
        return cls(deque(maxlen=maxlen))

    def maybe_sample(self, now_ms: int, sample: Callable[[], dict[str, Any]]) -> bool:
        """Record `sample()` if the last sample is `HISTORY_EVERY_MS` old; whether it did."""
        if self.last_ms is not None and now_ms - self.last_ms < HISTORY_EVERY_MS:
            return False
        self.last_ms = now_ms
        self.samples.append({"t_ms": now_ms, **sample()})
        return True

    def points(self, limit: int = MAX_HISTORY_POINTS) -> list[dict[str, Any]]:
        """At most `limit` samples, evenly spaced over the whole history, the newest last."""
        samples = list(self.samples)
        if len(samples) <= limit:
            return samples
        step = len(samples) / limit
        picked = [samples[int(i * step)] for i in range(limit - 1)]
        return [*picked, samples[-1]]


def history_view(store: Store, history: History, task: str) -> dict[str, Any]:
    claims = store.template_claims(task, MAX_CLAIMS) if task else []
    return {
        "task": task,
        "node": [
            {
                "t_ms": s["t_ms"],
                "vertices": s["vertices"],
                "peers": s["peers"],
                **s["tasks"].get(task, {}),
            }
            for s in history.points()
        ],
        "claims": [
            {"ts_ms": ts, "fitness": fitness, "author": author.hex(), "id": vid.hex()}
            for ts, fitness, author, vid in claims
        ],
    }


def static_response(path: str) -> Response | None:
    """The page's files, read from the package each time (small; no cache to go stale)."""
    known = STATIC_FILES.get(path)
    if known is None:
        return None
    name, content_type = known
    body = (STATIC_DIR / name).read_bytes()
    return Response(200, body, content_type, (("X-Content-Type-Options", "nosniff"),))


def query_task(params: Mapping[str, list[str]], default_task: Callable[[], str]) -> str:
    """The task an HTTP query names (`?task=`), else the node's default task (the observatory's
    routes and the ledger routes, node/ops/routes.py, alike)."""
    return params.get("task", [""])[0] or default_task()


class Observatory:
    """The page's routes for one node: `handlers()` goes into `Routes.extra`."""

    def __init__(
        self,
        core: PeerCore,
        peers: Callable[[], list[dict[str, Any]]],
        default_task: Callable[[], str],
        history: History | None = None,
    ) -> None:
        self.core = core
        self.peers = peers
        self.default_task = default_task
        self.history = history or History.new()

    def handlers(self) -> dict[str, ExtraHandler]:
        routes: dict[str, ExtraHandler] = {
            "/api/peers": self._peers,
            "/api/dag": self._dag,
            "/api/leaderboard": self._leaderboard,
            "/api/history": self._history,
            "/api/lineage/": self._lineage,
            "/api/tasks": self._tasks,
            "/observatory.js": self._static,
            "/observatory.css": self._static,
            # A key ending in "/" is a prefix (node/ops/http.py): this one is asked last, for
            # any path no other route took, and answers only "/" itself.
            "/": self._static,
        }
        return {path: _bad_query_is_400(handler) for path, handler in routes.items()}

    def _static(self, path: str, query: str) -> Response:
        response = static_response(path)
        return response if response is not None else json_response(404, {"error": "not found"})

    def _peers(self, path: str, query: str) -> Response:
        return json_response(200, {"me": self.core.me.hex(), "peers": self.peers()})

    def _dag(self, path: str, query: str) -> Response:
        limit = query_limit(parse_qs(query), DEFAULT_DAG_VERTICES, MAX_DAG_VERTICES)
        return json_response(200, {"me": self.core.me.hex(), **dag_view(self.core.store, limit)})

    def _leaderboard(self, path: str, query: str) -> Response:
        params = parse_qs(query)
        limit = query_limit(params, DEFAULT_LEADERBOARD, MAX_LEADERBOARD)
        return json_response(
            200, leaderboard(self.core, query_task(params, self.default_task), limit)
        )

    def _lineage(self, path: str, query: str) -> Response:
        text = path[len("/api/lineage/") :]
        try:
            vid = bytes.fromhex(text)
        except ValueError:
            vid = b""
        if len(vid) != VERTEX_ID_BYTES:
            raise BadQuery("a template id is 64 hex characters")
        limit = query_limit(parse_qs(query), DEFAULT_LINEAGE, MAX_LINEAGE)
        view = lineage(self.core.store, vid, limit, self.core.me)
        if view is None:
            return json_response(404, {"error": "no such template"})
        return json_response(200, view)

    def _tasks(self, path: str, query: str) -> Response:
        from qudag.node.ops.task_ledger import ledger_tasks, task_json

        data = self.core.data
        rows = [
            task_json(t, data is not None and data.has(t.spec.data.blake3))
            for t in ledger_tasks(self.core.store)[:MAX_TASKS]
        ]
        return json_response(200, {"tasks": rows})

    def _history(self, path: str, query: str) -> Response:
        task = query_task(parse_qs(query), self.default_task)
        return json_response(200, history_view(self.core.store, self.history, task))


__all__ = [
    "BadQuery",
    "History",
    "Observatory",
    "dag_view",
    "history_view",
    "leaderboard",
    "lineage",
    "mark_pareto",
    "query_limit",
    "query_task",
    "standing_json",
    "static_response",
]
