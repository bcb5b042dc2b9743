"""`qudag-node join HOST:PORT [--wait S] -- run ...`: bootstrap from a node known by address only.

Why: a libp2p bootstrap address must end in `/p2p/<peer id>`, and a node's peer id derives from
its key, which is created on its first start. In a docker-compose or namespace testnet the
bootstrap node's host and status port are fixed but its peer id is not known in advance. `join`
asks that node's /status for its peer id and libp2p port (waiting while it starts), builds the
multiaddr from the address it reached it at, and then *execs* `qudag-node run ... --bootstrap
ADDR` in place of itself: the daemon keeps this process id, so `docker stop`, SIGTERM and
SIGKILL reach the daemon itself, exactly as with a plain `run`.

Several HOST:PORT may be given (comma-separated): the first that answers is used, so the
bootstrap node is not a single point of failure for restarts.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
from typing import Any

import multiaddr

from qudag.node.commands.status import fetch_status
from qudag.node.errors import UserError
from qudag.node.ops.config import parse_host_port

POLL_S = 0.5


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "join",
        help="wait for a node's HTTP status, then `run` with it as the bootstrap peer",
        description=(
            "Ask the node at HOST:PORT (its --http address) for its peer id, then exec "
            "`qudag-node run RUN_ARGS --bootstrap /ip4|dns4/HOST/tcp/P2P_PORT/p2p/PEER_ID`. "
            "Used by docker-compose.yml and `qudag-node netns-testnet`, whose bootstrap "
            "node's peer id is only known once it has started."
        ),
    )
    p.add_argument(
        "nodes",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="HTTP status address(es) of the node(s) to bootstrap from",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=120.0,
        metavar="S",
        help="keep asking for up to S seconds while the node starts (default 120)",
    )
    p.add_argument(
        "run_args",
        nargs=argparse.REMAINDER,
        metavar="-- run ...",
        help="the `run` command line to exec (must start with `run`)",
    )
    p.set_defaults(handler=_join)


def bootstrap_addr(host: str, status: dict[str, Any]) -> str:
    """The bootstrap multiaddr of a node reached at `host` whose /status is `status`.

    The libp2p port and peer id come from the status; the host is the one we reached the node
    at (its listen address may be 0.0.0.0 or another interface). Raises UserError if the status
    does not describe a started node.
    """
    peer_id = status.get("peer_id")
    addrs = status.get("addrs")
    if not isinstance(peer_id, str) or not isinstance(addrs, list) or not addrs:
        raise UserError(f"{host}: the node has not started its network yet")
    port: str | None = None
    for addr in addrs:
        try:
            port = multiaddr.Multiaddr(str(addr)).value_for_protocol("tcp")
            break
        except Exception:  # noqa: S112 - another of its addresses may be usable
            continue
    if port is None:
        raise UserError(f"{host}: the node reports no TCP address")
    try:
        family = "ip6" if ipaddress.ip_address(host).version == 6 else "ip4"
    except ValueError:
        family = "dns4"
    return f"/{family}/{host}/tcp/{port}/p2p/{peer_id}"


def resolve(nodes: list[str], wait_s: float) -> str:
    """Poll the nodes' /status until one answers; return its bootstrap multiaddr."""
    targets = []
    for node in nodes:
        try:
            targets.append((node, parse_host_port(node)[0]))
        except ValueError as exc:
            raise UserError(f"join: {exc}") from None
    deadline = time.monotonic() + wait_s
    last = "no answer"
    while True:
        for address, host in targets:
            try:
                return bootstrap_addr(host, fetch_status(address, timeout=3.0))
            except UserError as exc:
                last = str(exc)
        if time.monotonic() >= deadline:
            raise UserError(f"join: no node answered within {wait_s:g} s (last: {last})")
        time.sleep(POLL_S)


def _split(args: argparse.Namespace) -> tuple[float, list[str]]:
    """(wait, run args). argparse's REMAINDER also swallows join's own options given after
    HOST:PORT (`join HOST --wait 60 -- run ...`), so those are parsed here, up to `--`."""
    rest = list(args.run_args)
    if "--" not in rest:
        return args.wait, rest
    cut = rest.index("--")
    own = argparse.ArgumentParser(prog="qudag-node join", add_help=False)
    own.add_argument("--wait", type=float, default=args.wait)
    try:
        parsed, unknown = own.parse_known_args(rest[:cut])
    except SystemExit:
        raise UserError("join: --wait needs a number of seconds") from None
    if unknown:
        raise UserError(f"join: unknown option(s) before `--`: {' '.join(unknown)}")
    return parsed.wait, rest[cut + 1 :]


def _join(args: argparse.Namespace) -> int:
    wait, run_args = _split(args)
    args.wait = wait
    if run_args[:1] != ["run"]:
        raise UserError("join: give the run command after `--`, e.g. `join HOST:8700 -- run`")
    if args.wait < 0:
        raise UserError("--wait must be >= 0")
    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]
    if not nodes:
        raise UserError("join: give at least one HOST:PORT")
    addr = resolve(nodes, args.wait)
    print(f"qudag-node join: bootstrapping from {addr}", file=sys.stderr, flush=True)
    argv = [sys.executable, "-m", "qudag.node", *run_args, "--bootstrap", addr]
    os.execv(sys.executable, argv)
    return 0  # not reached
