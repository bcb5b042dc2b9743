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
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
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
        query: dict[str, str] = {"limit": str(limit)}
        if task:
            query["task"] = task
        data = self.get_json("/templates?" + urllib.parse.urlencode(query))
        entries = data.get("templates")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise UserError(f"{self.base}/templates: unexpected answer (no template list)")
        return data

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


def _client(args: argparse.Namespace) -> NodeClient:
    if getattr(args, "task", None) is not None:
        args.task = task_name(args.task)
    address, source = node_address(args.http)
    return NodeClient(address, args.timeout, source)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _list(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= LIST_LIMIT_MAX:
        raise UserError(f"--limit must be between 1 and {LIST_LIMIT_MAX}")
    data = _client(args).templates(args.task, args.limit)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    entries = data["templates"]
    console = Console(file=sys.stdout)
    if not entries:
        console.print(f"no templates of task {data.get('task')} on this node yet")
        return 0
    table = Table(title=f"templates of {data.get('task')} (best verified first)")
    columns = ("#", "id", "author", "verified", "measured by", "claimed", "held-out", "attested")
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
            str(e.get("verifications", 0)),
        )
    console.print(table)
    return 0


def _held_out(entry: dict[str, Any]) -> str:
    """The held-out score beside the claim, whose it is, and the overfit flag ("-": none)."""
    score = entry.get("held_out_fitness")
    if not isinstance(score, int | float):
        return "-"
    by = entry.get("held_out_by")
    whose = "" if by in (None, "us") else f" by {str(by)[:8]}"
    return f"{score:.4f}{whose}" + (" OVERFIT" if entry.get("overfit") is True else "")


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


# What a node's /templates route says of a template's held-out score (node/ops/observatory.py).
_HELD_OUT_KEYS = ("held_out_fitness", "held_out_n", "held_out_by", "overfit")


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


def _show(args: argparse.Namespace) -> int:
    client = _client(args)
    fetched = client.fetch_template(pick(client, args.id, args.task))
    summary = describe(fetched)
    summary.update(standing(client, fetched.vertex.id, fetched.template.task))
    print(json.dumps(summary, indent=2))
    return 0


def _pull(args: argparse.Namespace) -> int:
    client = _client(args)
    fetched = client.fetch_template(pick(client, args.id, args.task))
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
    summary.update(standing(client, fetched.vertex.id, fetched.template.task))
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
        if summary["overfit"] is True:
            verdict += f"; OVERFIT: held-out score {summary['held_out_fitness']:.4f}"
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
        p.add_argument("--task", default=None, help="task (default: the node's first task)")
        p.add_argument(
            "--timeout", type=float, default=5.0, metavar="SECONDS", help="per request (5)"
        )

    ls = actions.add_parser("list", help="templates of a task, best verified first")
    common(ls)
    ls.add_argument("--limit", type=int, default=20, help=f"at most this many (1-{LIST_LIMIT_MAX})")
    ls.add_argument("--json", action="store_true", help="print the node's JSON answer")
    ls.set_defaults(handler=_list)

    show = actions.add_parser("show", help="a template's summary (signature checked)")
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
