"""`qudag-node templates list|show|pull`: find and fetch a running node's templates over HTTP.

Why these go through a node and not through a ledger file: the node knows which claims it has
re-measured and which authors it has banned, so its ranking (best *verified* first, liars left
out) is the one worth trusting; and a command must never contend for the SQLite file that a
live daemon writes.

Why `show` and `pull` check the signature themselves: the bytes come over plain HTTP from a
process the user may not control. The client fetches the template vertex by id and checks that
BLAKE3 of what it received is the id it asked for, then fetches the author's identity vertex
(whose key id must be BLAKE3 of the public key it carries, self-signed) and verifies the
template vertex's ML-DSA-65 signature with that key. Only then is the payload decoded with the
same strict decoder the ledger uses, and written as a template file (the format of
`evolution.template.save_template`) that `qudag-node template export` and `synthesize` read.

Routes used: `GET /templates?task=T&limit=N` (JSON list), `GET /vertices/{id}` and
`GET /identities/{author}` (raw vertex bytes).

`--data-dir DIR` asks a *stopped* node's data dir instead (`LedgerClient`): the same ranking
(`PeerCore.ranked_templates` over its ledger, its own verdicts and its key), the same checks
on what is pulled, so the best template of a task can be taken from a node that is not
running. `list --front` shows the task's leaderboard, the Pareto front of its verified
templates as the node marks it (`GET /api/leaderboard`, node/ops/observatory.py). The
held-out draws of the node's own templates are not in its ledger, so the data dir's reader
measures those it lists itself (display only, as the node would).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import urllib.error
import urllib.parse
import urllib.request
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from qudag.crypto.canonical import DecodeError
from qudag.dag.errors import VertexError
from qudag.dag.payloads import KIND_IDENTITY, KIND_TEMPLATE
from qudag.dag.validate import check_signature, load_public_key
from qudag.dag.vertex import MAX_VERTEX_SIZE, Vertex, decode_vertex
from qudag.evolution.template import Template, TemplateError, save_template
from qudag.node.commands.status import DEFAULT_ADDRESS, http_get, node_address, status_url
from qudag.node.errors import UserError

MAX_JSON_BYTES = 4 * 1024 * 1024
MIN_PREFIX = 8  # hex characters of an abbreviated template id
LIST_LIMIT_MAX = 100  # what the node's /templates route answers at most
LEADERBOARD_MAX = 50  # = observatory.MAX_LEADERBOARD, what /api/leaderboard answers at most


@dataclass(frozen=True)
class FetchedTemplate:
    """A template vertex whose id and signature this client has checked itself."""

    vertex: Vertex
    template: Template


class NodeClient:
    """GET requests to one node's HTTP address; every failure is one `UserError` line."""

    def __init__(self, address: str, timeout: float, source: str = "--http") -> None:
        if not timeout > 0:
            raise UserError(f"--timeout must be > 0, got {timeout}")
        self.base = status_url(address, source)[: -len("/status")]
        self.timeout = timeout

    def close(self) -> None:
        """Nothing held between requests."""

    def get(self, path: str, limit: int) -> tuple[int, bytes]:
        """(HTTP status, body) of GET `path`; 4xx answers are returned, not raised."""
        return http_get(self.base + path, self.timeout, limit)

    def get_json(self, path: str) -> dict[str, Any]:
        status, body = self.get(path, MAX_JSON_BYTES)
        if len(body) > MAX_JSON_BYTES:
            raise UserError(f"{self.base}{path}: answer larger than {MAX_JSON_BYTES} bytes")
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{self.base}{path}: the answer is not JSON; a qudag node?") from None
        if not isinstance(data, dict):
            raise UserError(f"{self.base}{path}: the answer is not a JSON object")
        if status != 200:
            raise UserError(f"{self.base}{path}: HTTP {status}: {data.get('error', '?')}")
        return data

    def get_vertex(self, path: str, expected_id: bytes | None, what: str) -> Vertex:
        """Fetch raw vertex bytes and decode them strictly; check the id when one is expected."""
        status, body = self.get(path, MAX_VERTEX_SIZE)
        if status == 404:
            raise UserError(f"the node has no {what}")
        if status != 200:
            raise UserError(f"{self.base}{path}: HTTP {status}")
        if len(body) > MAX_VERTEX_SIZE:
            raise UserError(f"{what}: larger than any valid vertex")
        try:
            vertex = decode_vertex(body)
        except VertexError as exc:
            raise UserError(f"{what}: the node sent an invalid vertex ({exc})") from None
        if expected_id is not None and vertex.id != expected_id:
            raise UserError(f"{what}: the node sent a vertex whose id is not the one asked for")
        return vertex

    # --- queries ------------------------------------------------------------------------
    def templates(self, task: str | None, limit: int) -> dict[str, Any]:
        return self._listing("/templates", task, limit)

    def leaderboard(self, task: str | None, limit: int) -> dict[str, Any]:
        """The node's leaderboard of a task (`GET /api/leaderboard`, node/ops/observatory.py):
        its ranking with objectives, held-out scores and the Pareto front marked."""
        return self._listing("/api/leaderboard", task, limit)

    def _listing(self, route: str, task: str | None, limit: int) -> dict[str, Any]:
        """A route's JSON answer listing templates of `task` under "templates"."""
        query: dict[str, str] = {"limit": str(limit)}
        if task:
            query["task"] = task
        data = self.get_json(route + "?" + urllib.parse.urlencode(query))
        entries = data.get("templates")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise UserError(f"{self.base}{route}: unexpected answer (no template list)")
        return data

    def lineage(self, template_id: bytes) -> dict[str, Any] | None:
        """The node's view of a template's ancestry and verdicts (`GET /api/lineage/ID`);
        None from a node without that route or that template."""
        status, body = self.get(f"/api/lineage/{template_id.hex()}", MAX_JSON_BYTES)
        if status != 200:
            return None
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def resolve(self, ref: str, task: str | None) -> bytes:
        """A template id from a full 64-hex id or a unique prefix of >= 8 hex characters."""
        text = ref.strip().lower()
        if not text or any(c not in "0123456789abcdef" for c in text):
            raise UserError(f"template id {ref!r}: expected hex characters")
        if len(text) == 64:
            return bytes.fromhex(text)
        if len(text) < MIN_PREFIX or len(text) > 64:
            raise UserError(
                f"template id {ref!r}: give the 64 hex characters, or a prefix of at least "
                f"{MIN_PREFIX}"
            )
        data = self.templates(task, LIST_LIMIT_MAX)
        listed = data["templates"]
        matches = sorted({str(e.get("id")) for e in listed if str(e.get("id")).startswith(text)})
        if not matches:
            raise UserError(
                f"no template id starting with {text} among the node's best "
                f"{LIST_LIMIT_MAX} of task {data.get('task')}; pass the full id or --task"
            )
        if len(matches) > 1:
            raise UserError(f"template id prefix {text} is ambiguous ({len(matches)} match)")
        return bytes.fromhex(matches[0])

    def fetch_template(self, template_id: bytes) -> FetchedTemplate:
        """Fetch a template vertex and its author's identity; verify both; decode strictly."""
        vertex = self.get_vertex(
            f"/vertices/{template_id.hex()}", template_id, f"vertex {template_id.hex()[:16]}"
        )
        if vertex.kind != KIND_TEMPLATE:
            raise UserError(f"vertex {template_id.hex()[:16]} is a {vertex.kind}, not a template")
        identity = self.get_vertex(
            f"/identities/{vertex.author.hex()}",
            None,
            f"identity vertex of author {vertex.author.hex()[:16]}",
        )
        # decode_vertex checked that the identity's author is BLAKE3(its public key).
        if identity.kind != KIND_IDENTITY or identity.author != vertex.author:
            raise UserError("the node sent an identity vertex of another author")
        try:
            key = load_public_key(identity.payload["public_key"])
            check_signature(identity, key)
            check_signature(vertex, key)
        except VertexError as exc:
            raise UserError(
                f"template {template_id.hex()[:16]}: signature check failed ({exc}); do not use it"
            ) from None
        try:
            template = Template.from_dict(vertex.payload)
        except DecodeError as exc:
            raise UserError(
                f"template {template_id.hex()[:16]}: not a valid template ({exc})"
            ) from None
        return FetchedTemplate(vertex, template)


class LedgerClient(NodeClient):
    """A stopped node's data dir answering the queries `NodeClient` sends to a live node.

    The ledger's vertices were validated (signatures included) when they were stored, so a
    template read from it is as checked as one `NodeClient` verifies over HTTP; its payload is
    still decoded strictly here. The data dir is locked while the command runs: a node must
    not start and write the ledger under it.
    """

    def __init__(self, data_dir: str, task: str | None, passphrase_env: str | None) -> None:
        from qudag.crypto.keystore import KeystoreError, load_identity
        from qudag.dag.records import StoreError
        from qudag.dag.store import Store, ledger_path
        from qudag.evolution.published import set_task_root
        from qudag.evolution.tasks import TaskError, get_task
        from qudag.evolution.verify import claim_tolerance
        from qudag.node.ops.config import NodeConfig
        from qudag.node.ops.preflight import DataDirLock
        from qudag.node.protocol.core import NODE_DECODERS, CoreConfig, PeerCore

        path = Path(data_dir)
        self.base = str(path)
        if not ledger_path(path).is_file():
            raise UserError(f"no ledger in {path} (is --data-dir right?)")
        self.lock = DataDirLock(path)
        self.lock.acquire("templates")
        try:
            config = NodeConfig(data_dir=path, passphrase_env=passphrase_env)
            passphrase = os.environ.get(passphrase_env) if passphrase_env else None
            identity = load_identity(config.key_path, passphrase)
            self.store = Store.open(ledger_path(path), decoders=NODE_DECODERS)
        except (KeystoreError, StoreError) as exc:
            self.lock.release()
            raise UserError(str(exc)) from None
        set_task_root(path)  # published tasks of this ledger load for held-out scores
        known = self.store.template_tasks()
        if task is None and len(known) == 1:
            task = known[0]
        self.task = task
        versions: dict[str, int] = {}
        tolerances: dict[str, float] = {}
        if task is not None:
            try:
                loaded = get_task(task)
                versions[task] = loaded.version
                tolerances[task] = claim_tolerance(loaded)  # to judge held-out records
            except TaskError:
                pass  # not loadable here: verified only by this node's own measurements
        settings = CoreConfig(tasks=(), versions=versions, tolerances=tolerances)
        self.core = PeerCore(identity, self.store, settings, random.Random(0))

    def close(self) -> None:
        self.store.close()
        self.lock.release()

    def _task(self, task: str | None) -> str:
        task = task or self.task
        if task is None:
            tasks = ", ".join(self.store.template_tasks()) or "none"
            raise UserError(f"which task? pass --task (templates in this ledger: {tasks})")
        return task

    def templates(self, task: str | None, limit: int) -> dict[str, Any]:
        from qudag.node.ops.observatory import standing_json

        task = self._task(task)
        ranked = self.core.ranked_templates(task, limit)
        if self._measure_own_draws():
            ranked = self.core.ranked_templates(task, limit)
        return {"task": task, "templates": [standing_json(s, self.core.me) for s in ranked]}

    def leaderboard(self, task: str | None, limit: int) -> dict[str, Any]:
        from qudag.node.ops.observatory import leaderboard

        task = self._task(task)
        board = leaderboard(self.core, task, limit)
        return leaderboard(self.core, task, limit) if self._measure_own_draws() else board

    def _measure_own_draws(self) -> bool:
        """Measure here the held-out draws the ranking asked for of the node's own templates
        (display only, `PeerCore.next_own_draw`): they are not in the ledger, and the node
        that would measure them is stopped. One draw per own template listed; no claim is
        checked and nothing is written. True if any was measured."""
        from qudag.evolution.verify import remeasure_with_holdout
        from qudag.node.sync_pages import now_ms

        measured_any = False
        while (job := self.core.next_own_draw()) is not None:
            claim: Any = job.template  # verify.Claim declares settable attributes
            _, measured, held = remeasure_with_holdout(claim, job.holdout_seed)
            self.core.on_reevaluated(job, measured, now_ms(), held)
            measured_any = True
        return measured_any

    def lineage(self, template_id: bytes) -> dict[str, Any] | None:
        from qudag.node.ops.observatory import MAX_LINEAGE, lineage

        return lineage(self.store, template_id, MAX_LINEAGE, self.core.me)

    def fetch_template(self, template_id: bytes) -> FetchedTemplate:
        vertex = self.store.vertex(template_id)
        if vertex is None:
            raise UserError(f"no vertex {template_id.hex()[:16]} in {self.base}")
        if vertex.kind != KIND_TEMPLATE:
            raise UserError(f"vertex {template_id.hex()[:16]} is a {vertex.kind}, not a template")
        try:
            return FetchedTemplate(vertex, Template.from_dict(vertex.payload))
        except DecodeError as exc:
            raise UserError(f"template {template_id.hex()[:16]}: not valid ({exc})") from None


def task_name(spec: str | None) -> str | None:
    """The canonical name of a csv spec (`csv:d.csv` -> `csv:d.csv:target=...:blake3=...`),
    which is what the node files its templates under; other specs are sent as typed."""
    if spec is None or not spec.startswith("csv:"):
        return spec
    from qudag.evolution.tasks import TaskError, get_task

    try:
        return get_task(spec).name
    except TaskError:
        return spec  # not readable here: the node may still know the name


def one_source(args: argparse.Namespace) -> None:
    """Refuse `--http` with `--data-dir`: a command reads a running node or a stopped one's
    data dir, never both (`templates` and `task list|show` alike)."""
    if args.http is not None and args.data_dir is not None:
        raise UserError("give --http (a running node) or --data-dir (a stopped one), not both")


def _client(args: argparse.Namespace) -> NodeClient:
    if getattr(args, "task", None) is not None:
        args.task = task_name(args.task)
    one_source(args)
    if args.data_dir is not None:
        return LedgerClient(args.data_dir, args.task, args.passphrase_env)
    address, source = node_address(args.http)
    return NodeClient(address, args.timeout, source)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _list(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= LIST_LIMIT_MAX:
        raise UserError(f"--limit must be between 1 and {LIST_LIMIT_MAX}")
    with closing(_client(args)) as client:
        if args.front:
            return _print_front(client, args.task, args.json)
        data = client.templates(args.task, args.limit)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    entries = data["templates"]
    console = Console(file=sys.stdout)
    if not entries:
        console.print(f"no templates of task {data.get('task')} on this node yet")
        return 0
    table = Table(title=f"templates of {data.get('task')} (best verified first)")
    columns = (
        "#", "id", "author", "verified", "measured by", "claimed", "held-out",
        "task author's private", "attested",
    )  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in ("id", "author") else "right")
    for i, e in enumerate(entries, 1):
        verified = _fmt(e.get("verified_fitness"))
        if e.get("verified_fitness") is None and _verified(e):
            verified = "attested"  # sampleable on attestations; nothing measured by the node
        table.add_row(
            str(i),
            str(e.get("id", ""))[:16],
            str(e.get("author", ""))[:16],
            verified,
            str(e.get("measured_by") or "-")[:16],
            _fmt(e.get("claimed_fitness")),
            _held_out(e),
            _designated(e),
            str(e.get("verifications", 0)),
        )
    console.print(table)
    if any(isinstance(e.get("designated"), dict) for e in entries):
        console.print(PRIVATE_NOTE)
    return 0


PRIVATE_NOTE = (
    "task author's private: the task author's score on its private held-out rows "
    "(not reproducible: nobody else holds them; it decides nothing)"
)


def _score(value: Any) -> tuple[float, str] | None:
    """(fitness, whose) of a route's `held_out` or `designated` object, or None."""
    if not isinstance(value, dict):
        return None
    score, by = value.get("fitness"), value.get("by")
    if not isinstance(score, int | float) or isinstance(score, bool):
        return None
    return float(score), "" if by in (None, "us") else f" by {str(by)[:8]}"


def _held_out(entry: dict[str, Any]) -> str:
    """The held-out score beside the claim, whose it is, and the overfit flag ("-": none)."""
    held = _score(entry.get("held_out"))
    if held is None:
        return "-"
    return f"{held[0]:.4f}{held[1]}" + (" OVERFIT" if entry.get("overfit") is True else "")


def _designated(entry: dict[str, Any]) -> str:
    """The task author's private score, labelled as not reproducible ("-": none)."""
    private = _score(entry.get("designated"))
    return "-" if private is None else f"{private[0]:.4f}{private[1]} (private)"


def _print_front(client: NodeClient, task: str | None, as_json: bool) -> int:
    data = client.leaderboard(task, LEADERBOARD_MAX)
    rows = [r for r in data["templates"] if r.get("pareto") is True]
    if as_json:
        print(json.dumps({"task": data.get("task"), "front": rows}, indent=2))
        return 0
    console = Console(file=sys.stdout)
    if not rows:
        console.print(f"no verified templates of task {data.get('task')} yet")
        return 0
    table = Table(title=f"leaderboard of {data.get('task')}: Pareto front of verified templates")
    for col in (
        "id", "author", "fitness", "held-out", "task author's private", "bytes", "latency us",
        "attested",
    ):  # fmt: skip
        table.add_column(col, justify="left" if col in ("id", "author") else "right")
    for r in rows:
        measured = r.get("verified_fitness")
        fitness = _fmt(measured) if measured is not None else _fmt(r.get("claimed_fitness"))
        table.add_row(
            str(r.get("id", ""))[:16],
            str(r.get("author", ""))[:16],
            fitness + ("" if measured is not None else " (claimed)"),
            _held_out(r),
            _designated(r),
            str(r.get("bytes")),
            f"{int(r.get('latency_ns', 0)) / 1000:.1f}",
            str(r.get("verifications", 0)),
        )
    console.print(table)
    if any(isinstance(r.get("designated"), dict) for r in rows):
        console.print(PRIVATE_NOTE)
    return 0


def _verified(entry: dict[str, Any]) -> bool:
    """Whether the node lists `entry` as verified (its `verified` field; a node older than the
    field: a verified fitness)."""
    if "verified" in entry:
        return entry["verified"] is True
    return entry.get("verified_fitness") is not None


def pick(client: NodeClient, ref: str | None, task: str | None) -> bytes:
    """The template named by `ref` (an id or unique prefix), or else the node's best *verified*
    one of `task`: a template the node cannot vouch for is pulled only by naming it."""
    if ref is not None:
        return client.resolve(ref, task)
    listing = client.templates(task, LIST_LIMIT_MAX)
    verified = [e for e in listing["templates"] if _verified(e)]
    if not verified:
        raise UserError(
            f"the node has no verified template of task {listing.get('task')} yet "
            f"({len(listing['templates'])} unverified); pass an id to take one anyway"
        )
    try:
        return bytes.fromhex(str(verified[0]["id"]))
    except (KeyError, ValueError):
        raise UserError("the node's /templates answer has no valid id") from None


def standing(client: NodeClient, template_id: bytes, task: str | None) -> dict[str, Any]:
    """What the node says of `template_id`: verified or not, and whose measurement its verified
    fitness is (not listed among the node's best: unverified as far as we know)."""
    listing = client.templates(task, LIST_LIMIT_MAX)
    for e in listing["templates"]:
        if e.get("id") == template_id.hex():
            return {
                "node_verified": _verified(e),
                "verified_fitness": e.get("verified_fitness"),
                "measured_by": e.get("measured_by"),
                **{key: e.get(key) for key in _HELD_OUT_KEYS},
            }
    return {
        "node_verified": False,
        "verified_fitness": None,
        "measured_by": None,
        **dict.fromkeys(_HELD_OUT_KEYS),
    }


# What a node's /templates route says of a template's held-out and designated scores
# (node/ops/observatory.py `standing_json`).
_HELD_OUT_KEYS = ("held_out", "overfit", "designated")


def describe(fetched: FetchedTemplate) -> dict[str, Any]:
    v = fetched.vertex
    return {
        "id": v.id.hex(),
        "author": v.author.hex(),
        "seq": v.seq,
        "ts_ms": v.ts_ms,
        "signature": "verified",
        **fetched.template.summary(),
    }


def card(client: NodeClient, fetched: FetchedTemplate) -> dict[str, Any]:
    """A template card: what it is, what was claimed and re-measured, who attested it, where
    it came from (its genetic ancestors through the ledger, with their authors), and what it
    exports to."""
    from qudag.node.commands.template import EXPORT_SUFFIXES

    summary = describe(fetched)
    summary.update(standing(client, fetched.vertex.id, fetched.template.task))
    view = client.lineage(fetched.vertex.id)
    nodes = view.get("nodes", []) if view else []
    root = nodes[0] if nodes else {}
    summary["verdicts"] = root.get("verdicts", [])
    summary["lineage"] = [
        {k: n.get(k) for k in ("id", "author", "depth", "generation", "operator", "fitness")}
        | ({"missing": True} if n.get("missing") else {})
        for n in nodes[1:]
    ]
    summary["lineage_truncated"] = bool(view.get("truncated")) if view else False
    summary["export_formats"] = sorted(EXPORT_SUFFIXES.values())
    return summary


def _show(args: argparse.Namespace) -> int:
    with closing(_client(args)) as client:
        fetched = client.fetch_template(pick(client, args.id, args.task))
        summary = card(client, fetched)
    print(json.dumps(summary, indent=2))
    return 0


def _pull(args: argparse.Namespace) -> int:
    with closing(_client(args)) as client:
        fetched = client.fetch_template(pick(client, args.id, args.task))
        node_standing = standing(client, fetched.vertex.id, fetched.template.task)
    out = Path(args.out) if args.out else Path(f"{fetched.vertex.id.hex()[:16]}.template")
    if out.is_dir():
        out = out / f"{fetched.vertex.id.hex()[:16]}.template"
    if out.exists() and not args.force:
        raise UserError(f"{out}: exists (use --force to overwrite)")
    try:
        save_template(fetched.template, out)
    except TemplateError as exc:
        raise UserError(str(exc)) from None
    summary = describe(fetched)
    summary.update(node_standing)
    summary["file"] = str(out)
    if args.json:
        print(json.dumps(summary))
    else:
        measured = summary["verified_fitness"]
        verdict = (
            f"verified fitness {measured:.4f}, measured by {summary['measured_by']}"
            if isinstance(measured, int | float) and summary["node_verified"]
            else f"NOT verified by the node (measured {measured:.4f})"
            if isinstance(measured, int | float)
            else "verified on attestations, not measured by the node"
            if summary["node_verified"]
            else "NOT verified by the node"
        )
        held = _score(summary["held_out"])
        if summary["overfit"] is True and held is not None:
            verdict += f"; OVERFIT: held-out score {held[0]:.4f}{held[1]}"
        private = _score(summary["designated"])
        if private is not None:
            verdict += f"; task author's private score {private[0]:.4f} (not reproducible)"
        print(
            f"wrote {out}: template {summary['id'][:16]} of {summary['task']} by "
            f"{summary['author'][:16]}, claimed fitness {summary['fitness']:.4f} ({verdict}), "
            f"{summary['params']} params (signature verified)"
        )
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "templates",
        help="list, show or pull the templates a running node holds",
        description=(
            "Query a running node (its HTTP address) for templates of a task, best verified "
            "first; show one, or pull one into a template file for `qudag-node template "
            "export` and `qudag-node synthesize`. Vertex ids and signatures are checked here."
        ),
    )
    actions = parser.add_subparsers(dest="templates_command", metavar="ACTION")
    actions.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--http",
            metavar="HOST:PORT",
            default=None,
            help=f"the node's HTTP address (default: $QUDAG_HTTP, else {DEFAULT_ADDRESS})",
        )
        p.add_argument(
            "--data-dir", default=None, metavar="DIR",
            help="read a stopped node's data dir instead of asking a running node",
        )  # fmt: skip
        p.add_argument(
            "--passphrase-env", default=None, metavar="VAR",
            help="with --data-dir: env var holding the node key's passphrase",
        )  # fmt: skip
        p.add_argument("--task", default=None, help="task (default: the node's first task)")
        p.add_argument(
            "--timeout", type=float, default=5.0, metavar="SECONDS", help="per request (5)"
        )

    ls = actions.add_parser("list", help="templates of a task, best verified first")
    common(ls)
    ls.add_argument("--limit", type=int, default=20, help=f"at most this many (1-{LIST_LIMIT_MAX})")
    ls.add_argument("--json", action="store_true", help="print the node's JSON answer")
    ls.add_argument(
        "--front", action="store_true",
        help="the task's leaderboard: Pareto front of verified templates (fitness, held-out "
        "score, bytes, latency)",
    )  # fmt: skip
    ls.set_defaults(handler=_list)

    show = actions.add_parser(
        "show",
        help="a template's card: objectives claimed and re-measured, attestations, lineage, "
        "export formats (signature checked)",
    )
    common(show)
    show.add_argument("id", nargs="?", help="template id or unique prefix (default: the best)")
    show.set_defaults(handler=_show)

    pull = actions.add_parser(
        "pull", help="save a template to a file (signature checked) for export/synthesize"
    )
    common(pull)
    pull.add_argument("id", nargs="?", help="template id or unique prefix (default: the best)")
    pull.add_argument(
        "-o", "--out", default=None, help="output file or directory (default ./<id>.template)"
    )
    pull.add_argument("--force", action="store_true", help="overwrite an existing file")
    pull.add_argument("--json", action="store_true", help="print one JSON line")
    pull.set_defaults(handler=_pull)
