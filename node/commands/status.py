"""`qudag-node status`: ask a running node for its /status and show it as tables.

Why over HTTP and not by opening the node's data directory: the daemon holds the live state
(peers, orphans, generation) that is not on disk, and a status command must never contend
for the ledger's SQLite file with the process writing it.

The rendering tolerates fields it does not know and fields that are missing, because the
status document may grow faster than this command (unknown top-level scalars are listed in
the summary; `--json` shows everything verbatim).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from qudag.node.errors import UserError
from qudag.node.ops.config import DEFAULT_HTTP_PORT, parse_host_port

DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_HTTP_PORT}"
MAX_STATUS_BYTES = 16 * 1024 * 1024
_SUMMARY_KEYS = ("peer_id", "key_id", "vertices", "tips", "orphans", "peers")
_OWN_TABLES = ("tasks", "rejected")
_TASK_HEADERS = {  # short headers, so that the table fits 80 columns
    "generation": "gen",
    "best_fitness": "best",
    "best_template": "template",
    "best_verified_fitness": "verified",
    "evaluations": "evals",
    "migrants_injected": "migrants",
}  # "peers" is counted in the summary and listed below


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show a running node's state (its HTTP /status) as tables",
        description=(
            "Fetch GET /status from a running `qudag-node run` and pretty-print it: the node's "
            "identity, ledger size, tasks, peers and rejected vertices."
        ),
    )
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        default=None,
        help=f"the node's HTTP address (default: $QUDAG_HTTP, else {DEFAULT_ADDRESS})",
    )
    parser.add_argument("--json", action="store_true", help="print the status JSON as is")
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="give up if the node does not answer within this time (default 5)",
    )
    parser.set_defaults(handler=run)


def status_url(address: str, source: str = "--http") -> str:
    """`http://host:port/status` for a user-given address; a bind-all host means this machine."""
    text = address.strip()
    if text.startswith("http://"):
        text = text[len("http://") :]
    text = text.rstrip("/")
    try:
        host, port = parse_host_port(text)
    except ValueError as exc:
        raise UserError(f"{source}: {exc}") from None
    if port == 0:
        raise UserError(f"{source}: port 0 is not an address a node can be reached at")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/status"


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""No proxies: the node is usually on loopback, and an http_proxy variable must not send the
request elsewhere."""


def http_get(url: str, timeout: float, limit: int) -> tuple[int, bytes]:
    """(HTTP status, at most `limit` + 1 body bytes) of GET `url`. 4xx answers are returned
    (the caller knows what a 404 means); every other failure is one UserError saying what to
    check. The one HTTP client of the CLI: `status`, `templates` and the launchers use it."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    hint = "is `qudag-node run` running, with this --http address?"
    try:
        with _OPENER.open(request, timeout=timeout) as reply:
            return int(reply.status), reply.read(limit + 1)
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            return exc.code, exc.read(64 * 1024)
        raise UserError(f"{url}: the node answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise UserError(f"{url}: no answer within {timeout:g} s ({hint})") from None
        if isinstance(reason, ConnectionRefusedError):
            raise UserError(f"{url}: connection refused ({hint})") from None
        detail = getattr(reason, "strerror", None) or reason
        raise UserError(f"{url}: cannot connect: {detail} ({hint})") from None
    except TimeoutError:
        raise UserError(f"{url}: no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise UserError(f"{url}: the connection failed: {exc!r}") from None


def fetch_status(address: str, timeout: float, source: str = "--http") -> dict[str, Any]:
    """GET /status and decode it; every failure becomes a UserError that says what to check."""
    if not timeout > 0:
        raise UserError(f"--timeout must be > 0, got {timeout}")
    url = status_url(address, source)
    code, body = http_get(url, timeout, MAX_STATUS_BYTES)
    if code != 200:
        raise UserError(f"{url}: the node answered HTTP {code}")
    if len(body) > MAX_STATUS_BYTES:
        raise UserError(f"{url}: status larger than {MAX_STATUS_BYTES} bytes; not a qudag node?")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{url}: the answer is not JSON; is this a qudag node?") from None
    if not isinstance(data, dict):
        raise UserError(f"{url}: the answer is not a JSON object; is this a qudag node?")
    return data


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list | tuple):
        return str(len(value))
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _short(value: Any, keep: int = 16) -> str:
    text = _cell(value)
    return text if len(text) <= keep + 1 else text[:keep] + "…"


def _task_rows(tasks: Any) -> list[tuple[str, Mapping[str, Any]]]:
    if isinstance(tasks, Mapping):
        return [
            (str(name), info if isinstance(info, Mapping) else {}) for name, info in tasks.items()
        ]
    if isinstance(tasks, list):
        return [
            (str(info.get("task", info.get("name", "?"))), info)
            for info in tasks
            if isinstance(info, Mapping)
        ]
    return []


def _summary_cell(value: Any, limit: int = 8) -> str:
    """Lists and maps in the summary become one item per line (the first `limit`)."""
    if isinstance(value, Mapping):
        items = [f"{k}: {_cell(v)}" for k, v in value.items()]
    elif isinstance(value, list | tuple):
        items = [_cell(v) for v in value]
    else:
        return _cell(value)
    if not items:
        return "-"
    more = [f"… {len(items) - limit} more"] if len(items) > limit else []
    return "\n".join(items[:limit] + more)


def render_status(data: Mapping[str, Any], console: Console) -> None:
    """Summary, tasks, peers and rejections, each as a table (empty ones are skipped)."""
    summary = Table(title="node", show_header=False, title_justify="left")
    summary.add_column("field", style="bold")
    summary.add_column("value", overflow="fold")
    for key in _SUMMARY_KEYS:
        if key in data:
            summary.add_row(key, _cell(data[key]))
    for key, value in data.items():
        if key not in _SUMMARY_KEYS and key not in _OWN_TABLES:
            summary.add_row(key, _summary_cell(value))
    console.print(summary)

    rows = _task_rows(data.get("tasks"))
    if rows:
        columns = ["generation", "best_fitness", "best_template"]
        for _, info in rows:  # fields the status grew since this command was written
            columns.extend(k for k in info if k not in columns and k not in ("task", "name"))
        tasks = Table(title="tasks", title_justify="left")
        tasks.add_column("task")
        for column in columns:
            numeric = column != "best_template" and all(
                isinstance(info.get(column), int | float | None) for _, info in rows
            )
            header = _TASK_HEADERS.get(column, column.replace("_", " "))
            tasks.add_column(header, justify="right" if numeric else "left")
        for name, info in rows:
            cells = [
                _short(info.get(c)) if c == "best_template" else _cell(info.get(c)) for c in columns
            ]
            tasks.add_row(name, *cells)
        console.print(tasks)

    peers = data.get("peers")
    if isinstance(peers, list) and peers:
        table = Table(title=f"peers ({len(peers)})", title_justify="left")
        if all(isinstance(p, Mapping) for p in peers):
            keys: list[str] = []
            for peer in peers:
                keys.extend(k for k in peer if k not in keys)
            for key in keys:
                table.add_column(key, overflow="fold")
            for peer in peers:
                table.add_row(*(_cell(peer.get(key)) for key in keys))
        else:
            table.add_column("peer", overflow="fold")
            for peer in peers:
                table.add_row(_cell(peer))
        console.print(table)

    rejected = data.get("rejected")
    if isinstance(rejected, Mapping) and rejected:
        table = Table(title="rejected vertices", title_justify="left")
        table.add_column("reason")
        table.add_column("count", justify="right")
        ordered = sorted(rejected.items(), key=lambda kv: (-_as_int(kv[1]), str(kv[0])))
        for reason, count in ordered:
            table.add_row(str(reason), _cell(count))
        console.print(table)


def _as_int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def node_address(given: str | None, source: str = "--http") -> tuple[str, str]:
    """(address, where it came from) of the node to ask: `given`, else $QUDAG_HTTP, else the
    default address. The source names the setting in error messages, so a user knows which
    one to fix (`status`, `templates` and `mcp` resolve it the same way)."""
    if given:
        return given, source
    address = os.environ.get("QUDAG_HTTP", "").strip()
    if address:
        return address, "env QUDAG_HTTP"
    return DEFAULT_ADDRESS, "default address"


def run(args: argparse.Namespace) -> int:
    address, source = node_address(args.http)
    data = fetch_status(address, args.timeout, source)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        render_status(data, Console(file=sys.stdout))
    return 0
