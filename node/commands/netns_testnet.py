"""`qudag-node netns-testnet`: the docker-compose testnet without Docker, one namespace per node.

Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2. Every node is a real `qudag-node`
process started with docker-compose.yml's command line inside its own network namespace, on its
own address 10.77.0.(10+i) behind a bridge (see qudag.node.ops.netns). The command prints one
progress line per interval, stops after `--duration` seconds (or Ctrl-C), and removes every
namespace and process it created, also after an error.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from qudag.node.errors import UserError
from qudag.node.ops.cluster import interrupt_on_sigterm


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "netns-testnet",
        help="run the compose testnet's nodes in Linux network namespaces (root)",
        description=(
            "Create N network namespaces on a private bridge (10.77.0.0/24, as in "
            "docker-compose.yml), start one node per namespace with the compose file's command "
            "line, optionally shape links with tc netem, report progress, and tear everything "
            "down on exit (also on Ctrl-C or an error)."
        ),
    )
    p.add_argument("--nodes", type=int, default=4, metavar="N", help="number of nodes (4)")
    p.add_argument("--out", default="netns-testnet-out", metavar="DIR", help="data directories")
    p.add_argument(
        "--duration",
        type=float,
        default=0.0,
        metavar="S",
        help="stop after S seconds (default: run until Ctrl-C)",
    )
    p.add_argument(
        "--netem",
        default=None,
        metavar="SPEC",
        help='tc netem spec applied to every node\'s link, e.g. "delay 40ms 10ms loss 1%%"',
    )
    p.add_argument("--interval", type=float, default=5.0, metavar="S", help="progress period")
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE.toml",
        help="settings file every node gets as QUDAG_CONFIG (default deploy/node.toml)",
    )
    p.add_argument(
        "run_args",
        nargs=argparse.REMAINDER,
        metavar="-- RUN_ARGS",
        help="extra `qudag-node run` flags appended to every node, e.g. -- --population 16",
    )
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qudag.node.ops.netns import DEFAULT_CONFIG, HTTP_PORT, NetnsTestnet, unavailable_reason

    if not 1 <= args.nodes <= 200:
        raise UserError("--nodes must be between 1 and 200")
    if args.duration < 0 or args.interval <= 0:
        raise UserError("--duration must be >= 0 and --interval > 0")
    reason = unavailable_reason()
    if reason is not None:
        raise UserError(reason)
    extra = list(args.run_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    config = Path(args.config) if args.config else DEFAULT_CONFIG
    if not config.is_file():
        raise UserError(f"--config: {config} does not exist")
    interrupt_on_sigterm()
    summary: dict[str, Any] = {}
    t0 = time.monotonic()
    with NetnsTestnet(
        args.nodes, Path(args.out), extra_args=extra, config=config, netem=args.netem
    ) as net:
        try:
            net.start_all()
            print(
                f"{args.nodes} nodes up in {time.monotonic() - t0:.1f} s: "
                + ", ".join(f"{n.name}={n.ip}" for n in net.nodes),
                flush=True,
            )
            # The pages answer inside the testnet's namespaces only (every node's HTTP port
            # is on its own 10.77.0.x address), e.g. `ip netns exec NS curl URL`.
            pages = [f"{n.name} http://{n.ip}:{HTTP_PORT}/ (netns {n.ns})" for n in net.nodes]
            print("observatory pages (inside the namespaces): " + ", ".join(pages), flush=True)
            while args.duration == 0 or time.monotonic() - t0 < args.duration:
                time.sleep(args.interval)
                line = []
                for node in net.nodes:
                    st = net.status(node.index) or {}
                    gens = [t.get("generation", 0) for t in st.get("tasks", {}).values()]
                    line.append(
                        f"{node.name}: gen {max(gens, default='-')} "
                        f"v {st.get('vertices', '-')} peers {len(st.get('peers', []))}"
                    )
                print(f"[{time.monotonic() - t0:6.1f} s] " + " | ".join(line), flush=True)
        except KeyboardInterrupt:
            print("interrupted: stopping nodes and removing namespaces", flush=True)
        finally:
            statuses = {n.name: net.status(n.index) for n in net.nodes}
            digests = {str((st or {}).get("vertex_set_digest")) for st in statuses.values()}
            summary = {
                "nodes": args.nodes,
                "seconds": round(time.monotonic() - t0, 1),
                "identical_vertex_sets": len(digests) == 1 and "None" not in digests,
                "per_node": {
                    name: {
                        "vertices": (st or {}).get("vertices"),
                        "peers": len((st or {}).get("peers", [])),
                        "answered": st is not None,
                    }
                    for name, st in statuses.items()
                },
            }
    print(f"namespaces removed; identical vertex sets: {summary['identical_vertex_sets']}")
    if args.json:
        print(json.dumps(summary), flush=True)
    return 0
