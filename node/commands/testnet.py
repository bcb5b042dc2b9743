"""`qudag-node testnet`: N daemons on this machine evolving together, watched live.

The README's main command. Every node is a real `qudag-node run` process on 127.0.0.1
(node 0 first; the others bootstrap from it and find each other through the DHT). The command
shows each node's progress from its /status, stops them all after G generations and a final
sync round, and reports per node: best verified fitness, vertices held, rejected vertices, and
whether all nodes ended with identical vertex sets (the ledger converged). With `--isolated`
the nodes run the same way but without a network (no bootstrap, no migrants): the baseline
against which sharing is measured.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from qudag.node.errors import UserError
from qudag.node.ops.cluster import NodeProcess, interrupt_on_sigterm, start_nodes, stop_all
from qudag.node.ops.config import NodeConfig
from qudag.node.ops.outdir import OutDir

POLL_S = 0.5


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "testnet",
        help="run N nodes on this machine evolving together; live progress and a summary",
        description=(
            "Start N `qudag-node run` daemons on 127.0.0.1 (the first is the bootstrap node), "
            "show their progress live, stop them after G generations and a final sync round, "
            "and print a summary (also written to OUT/summary.json, with a PNG of best "
            "verified fitness over time per node)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--nodes", type=int, default=4, metavar="N", help="number of nodes (default 4)")
    p.add_argument("--task", default="digits", help="task every node evolves (default digits)")
    p.add_argument(
        "--generations", type=int, default=25, metavar="G", help="generations per node (25)"
    )
    p.add_argument(
        "--out",
        default="testnet-out",
        metavar="DIR",
        help="output directory: new, empty, or an earlier testnet's (see --force, --keep)",
    )
    p.add_argument(
        "--until-fitness",
        type=float,
        metavar="F",
        help="a node is done once its best fitness reaches F (default: --generations only)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        metavar="S",
        help="a node is done after S seconds of evolution (default: --generations only)",
    )
    p.add_argument("--population", type=int, default=32, help="individuals per node (32)")
    p.add_argument(
        "--search",
        choices=("islands", "es"),
        default="islands",
        help="islands: NSGA-II fed verified templates; es: the shared evolution strategy "
        "(nodes pool each other's result sets) (default islands)",
    )
    p.add_argument(
        "--target",
        type=float,
        metavar="F",
        help="report when each node's best first reached F (does not stop the nodes)",
    )
    p.add_argument(
        "--publish-every", type=int, default=2, metavar="K", help="publish every K generations"
    )
    p.add_argument(
        "--migrants",
        type=int,
        default=4,
        help="migrants per generation (es: a verified template better than our best becomes "
        "our centre, which is how a node that started late catches up)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of node 0; node i gets seed+i")
    p.add_argument(
        "--sync-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="after the last generation, wait up to S seconds for identical vertex sets",
    )
    p.add_argument(
        "--isolated",
        action="store_true",
        help="baseline: no bootstrap and no migrants (each node evolves alone)",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="after the network, run the same nodes (same seeds, same CPUs) isolated, and "
        "compare when each run first reached --target",
    )
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    p.add_argument(
        "--keep",
        action="store_true",
        help="continue with the data of an earlier testnet in OUT (its node directories)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an earlier testnet's outputs in OUT: only what testnet created there "
        "(listed in OUT/.qudag-out) is deleted, never other files",
    )
    p.set_defaults(handler=run)


def _check(args: argparse.Namespace) -> None:
    if not 1 <= args.nodes <= 32:
        raise UserError("--nodes must be between 1 and 32")
    if args.generations < 1:
        raise UserError("--generations must be >= 1")
    if args.population < 2:
        raise UserError("--population must be >= 2")
    if args.publish_every < 1:
        raise UserError("--publish-every must be >= 1")
    if not 0 <= args.migrants <= args.population:
        raise UserError("--migrants must be between 0 and --population")
    if args.keep and args.force:
        raise UserError("--keep continues an earlier run and --force replaces it: choose one")
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise UserError("--max-seconds must be > 0")
    if args.sync_timeout < 0:
        raise UserError("--sync-timeout must be >= 0")
    if args.baseline and (args.isolated or args.target is None):
        raise UserError("--baseline compares a network with isolated nodes: give --target F, "
                        "without --isolated")  # fmt: skip
    from qudag.evolution.tasks import TaskError, get_task

    try:
        args.task = get_task(args.task).name  # the name the nodes report it under
    except TaskError as exc:
        raise UserError(f"--task: {exc}") from None


def run(args: argparse.Namespace) -> int:
    _check(args)
    interrupt_on_sigterm()
    out = Path(args.out)
    outputs = [f"node{i}" for i in range(args.nodes)] + ["summary.json", "best_fitness.png"]
    if args.baseline:
        outputs += [f"baseline-node{i}" for i in range(args.nodes)]
    out_dir = OutDir(out, "testnet")
    out_dir.prepare(outputs, force=args.force, keep=args.keep)
    console = Console(stderr=args.json)
    summary, history = _run_network(args, out, "", out_dir, console)
    if args.baseline:
        console.print("the same nodes again, isolated (the baseline) ...", style="dim")
        alone = argparse.Namespace(**{**vars(args), "isolated": True})
        base, _ = _run_network(alone, out, "baseline-", out_dir, console)
        summary["baseline"] = {
            "mode": "isolated",
            "first_reached_seconds": base["first_reached_seconds"],
            "first_at_target": base["first_at_target"],
            "daemon_cpu_share": base["daemon_cpu_share"],
            "daemon_cpu_share_evolving": base["daemon_cpu_share_evolving"],
            "all_nodes_ok": base["all_nodes_ok"],
            "per_node": base["per_node"],
        }
    out_dir.record("summary.json", "best_fitness.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(history, args, out / "best_fitness.png")
    _print_summary(summary, console)
    if args.json:
        print(json.dumps(summary), flush=True)
    ok = summary["all_nodes_ok"] and summary.get("baseline", {}).get("all_nodes_ok", True)
    return 0 if ok else 1


def _run_network(
    args: argparse.Namespace, out: Path, prefix: str, out_dir: OutDir, console: Console
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start the nodes (sharing, or isolated with `args.isolated`), watch them until every
    one is done, run the final sync round, stop them; (summary, history)."""
    nodes: list[NodeProcess] = []
    history: list[dict[str, Any]] = []
    t0 = time.monotonic()
    names = [f"{prefix}node{i}" for i in range(args.nodes)]
    try:
        launches = []
        for i in range(args.nodes):
            node_args = [
                "--task",
                args.task,
                "--generations",
                str(args.generations),
                "--population",
                str(args.population),
                "--publish-every",
                str(args.publish_every),
                "--migrants",
                "0" if args.isolated else str(args.migrants),
                "--seed",
                str(args.seed + i),
                "--heads-interval",
                "1",
                "--reeval-budget-ms",
                "300",
                # the nodes keep serving once done: the final sync round compares their ledgers
                "--when-done",
                "serve",
                "--search",
                args.search,
                # a network evolves in step: nobody starts before the others are there
                "--wait-peers",
                "0" if args.isolated else str(args.nodes - 1),
            ]
            if args.until_fitness is not None:
                node_args += ["--until-fitness", str(args.until_fitness)]
            if args.max_seconds is not None:
                node_args += ["--max-seconds", str(args.max_seconds)]
            launches.append(node_args)
        console.print(f"starting {args.nodes} nodes ...", style="dim")
        out_dir.record(*names)  # listed as they are created, not before
        if args.isolated:
            # Nobody needs anyone's address: all start together, as the sharing nodes begin
            # together once connected (--wait-peers); a node started alone first would have
            # the CPU to itself while the others start up.
            nodes += start_nodes(
                [(names[i], out / names[i], launches[i], []) for i in range(args.nodes)]
            )
        else:
            # node0's address is known before it starts (its key made here, a free port), so
            # all start at once, as the isolated baseline does; the others dial node0 until it
            # listens (discovery retries within a second).
            port = free_loopback_port()
            seed = f"/ip4/127.0.0.1/tcp/{port}/p2p/{bootstrap_peer_id(out / names[0])}"
            launches[0] += ["--listen", f"/ip4/127.0.0.1/tcp/{port}"]
            nodes += start_nodes(
                [(names[0], out / names[0], launches[0], [])]
                + [(names[i], out / names[i], launches[i], [seed]) for i in range(1, args.nodes)]
            )
        print_pages(nodes, console)
        statuses = _watch(nodes, args, console, history, t0)
        converged, sync_s = (
            (True, 0.0) if args.isolated else _final_sync(nodes, args.sync_timeout, console)
        )
        statuses = {n.name: n.status() for n in nodes}
    finally:
        stop_all(nodes)
    summary = _summary(args, nodes, statuses, converged, sync_s, time.monotonic() - t0, history)
    return summary, history


def print_pages(nodes: list[NodeProcess], console: Console) -> None:
    """Where each node's observatory page is (its HTTP address, node/ops/observatory.py)."""
    console.print(
        "observatory pages: " + ", ".join(f"{n.name} http://{n.http}/" for n in nodes),
        soft_wrap=True,
    )


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's choice); the node binds it a moment
    later, and a node that cannot bind it stops with the reason in its log."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bootstrap_peer_id(data_dir: Path) -> str:
    """The libp2p peer id the node in `data_dir` will have: its key file, made now if the
    directory has none yet (as `run` would make it), and the node's own key derivation."""
    from qudag.node.daemon import load_or_create_identity
    from qudag.node.net.transport import P2PNode, peer_key_seed

    data_dir.mkdir(parents=True, exist_ok=True)
    identity = load_or_create_identity(NodeConfig(data_dir=data_dir, tasks=("xor",)))
    return P2PNode(identity, key_seed=peer_key_seed(identity)).peer_id


def _watch(
    nodes: list[NodeProcess],
    args: argparse.Namespace,
    console: Console,
    history: list[dict[str, Any]],
    t0: float,
) -> dict[str, dict[str, Any] | None]:
    statuses: dict[str, dict[str, Any] | None] = {}
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while True:
            statuses = {n.name: n.status() for n in nodes}
            now = time.monotonic() - t0
            for name, st in statuses.items():
                task = (st or {}).get("tasks", {}).get(args.task)
                if task:
                    cpu = (st or {}).get("cpu_s") or {}
                    history.append(
                        {
                            "t": now,
                            "node": name,
                            "generation": task["generation"],
                            "best": task["best_verified_fitness"],
                            "own_best": task.get("best_fitness", float("-inf")),
                            "cpu": cpu.get("self", 0.0) + cpu.get("children", 0.0),
                            "cpu_self": cpu.get("self", 0.0),
                        }
                    )
            live.update(_table(nodes, statuses, args, now))
            dead = [n.name for n in nodes if not n.alive()]
            if dead:
                raise UserError(f"node(s) {', '.join(dead)} exited; see their node.log")
            if all(st and st.get("done") for st in statuses.values()):
                return statuses
            time.sleep(POLL_S)


def _table(
    nodes: list[NodeProcess],
    statuses: dict[str, dict[str, Any] | None],
    args: argparse.Namespace,
    now: float,
) -> Table:
    mode = "isolated" if args.isolated else "sharing"
    table = Table(title=f"testnet: {len(nodes)} nodes, task {args.task}, {mode}, {now:5.1f} s")
    for col in ("node", "gen", "best", "verified", "vertices", "peers", "migr", "reeval", "rej"):
        table.add_column(col, justify="right")
    for node in nodes:
        st = statuses.get(node.name)
        if not st:
            table.add_row(node.name, "-", "-", "-", "-", "-", "-", "-", "-")
            continue
        task = st.get("tasks", {}).get(args.task, {})
        table.add_row(
            node.name,
            f"{task.get('generation', 0)}/{args.generations}",
            f"{task.get('best_fitness', 0.0):.4f}",
            f"{task.get('best_verified_fitness', 0.0):.4f}",
            str(st.get("vertices")),
            str(len(st.get("peers", []))),
            str(task.get("migrants_injected", 0)),
            str(sum(st.get("reevaluations", {}).values())),
            str(sum(st.get("rejected", {}).values())),
        )
    return table


def _final_sync(nodes: list[NodeProcess], timeout_s: float, console: Console) -> tuple[bool, float]:
    """Wait until every node reports the same vertex-set digest twice in a row."""
    console.print("final sync round: waiting for identical vertex sets ...")
    start = time.monotonic()
    previous: set[str] | None = None
    while time.monotonic() - start <= timeout_s:
        digests = {str((n.status() or {}).get("vertex_set_digest")) for n in nodes}
        if len(digests) == 1 and "None" not in digests and digests == previous:
            return True, time.monotonic() - start
        previous = digests
        time.sleep(1.0)
    return False, time.monotonic() - start


def _summary(
    args: argparse.Namespace,
    nodes: list[NodeProcess],
    statuses: dict[str, dict[str, Any] | None],
    converged: bool,
    sync_s: float,
    wall_s: float,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    per_node = []
    for node in nodes:
        st = statuses.get(node.name) or {}
        task = st.get("tasks", {}).get(args.task, {})
        per_node.append(
            {
                "node": node.name,
                "key_id": st.get("key_id"),
                "generation": task.get("generation"),
                "evaluations": task.get("evaluations"),
                "best_fitness": task.get("best_fitness"),
                "best_verified_fitness": task.get("best_verified_fitness"),
                "vertices": st.get("vertices"),
                "migrants_injected": task.get("migrants_injected"),
                "es_sets_pooled": task.get("es_sets_pooled"),
                "es_mean_lag": task.get("es_mean_lag"),
                "published": task.get("published"),
                "bred_from_others": task.get("bred_from_others"),
                "reevaluations": st.get("reevaluations", {}),
                "rejected": sum(st.get("rejected", {}).values()) if st else None,
                "cpu_s": st.get("cpu_s"),
                "answered": bool(st),
            }
        )
    reached = _reached(history, args.target) if args.target is not None else {}
    for p in per_node:
        p["reached_target"] = reached.get(p["node"])
    first = _first_at_target(history, args.target) if args.target is not None else None
    cpus = [p["cpu_s"] for p in per_node if p["cpu_s"]]
    daemon_cpu = sum(c["self"] for c in cpus)
    worker_cpu = sum(c["children"] for c in cpus)
    return {
        "task": args.task,
        "nodes": len(nodes),
        "generations": args.generations,
        "mode": "isolated" if args.isolated else "sharing",
        "search": args.search,
        "target": args.target,
        "first_reached_seconds": first["seconds"] if first else None,
        "first_at_target": first,
        # what the network costs a peer: its daemon's CPU (gossip, sync, ledger, core) as a
        # share of all its CPU (daemon + evolution, re-evaluation and signature workers)
        "daemon_cpu_share": (
            round(daemon_cpu / (daemon_cpu + worker_cpu), 4) if daemon_cpu + worker_cpu else None
        ),
        "daemon_cpu_share_evolving": _evolving_daemon_share(history),
        "identical_vertex_sets": converged,
        "final_sync_seconds": round(sync_s, 2),
        "wall_seconds": round(wall_s, 2),
        "all_nodes_ok": all(p["answered"] for p in per_node),
        "per_node": per_node,
    }


def _reached(history: list[dict[str, Any]], target: float) -> dict[str, dict[str, float]]:
    """When (seconds since the start, generation) each node's own best first reached
    `target`, as seen by the status polls (every POLL_S)."""
    out: dict[str, dict[str, float]] = {}
    for h in history:
        if h["node"] not in out and h["own_best"] >= target:
            out[h["node"]] = {"seconds": round(h["t"], 2), "generation": h["generation"]}
    return out


def _evolving_daemon_share(history: list[dict[str, Any]]) -> float | None:
    """The daemons' share of all node CPU from the network's first generation to the last
    poll: what the network costs a peer while it evolves, start-up (imports, data, keys: a
    large part of a short run) left out."""
    began = min((h["t"] for h in history if h["generation"] > 0), default=None)
    if began is None:
        return None
    first: dict[str, dict[str, Any]] = {}
    last: dict[str, dict[str, Any]] = {}
    for h in history:
        if h["t"] <= began:
            first[h["node"]] = h
        last[h["node"]] = h
    total = sum(last[n]["cpu"] - first[n]["cpu"] for n in first)
    daemons = sum(last[n].get("cpu_self", 0.0) - first[n].get("cpu_self", 0.0) for n in first)
    return round(daemons / total, 4) if total > 0 else None


def _first_at_target(history: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first node at `target`, in the measures that do not depend on how long the
    nodes took to start: `evolving_s`, seconds since the first node's first generation;
    `generation`, that node's; `node_cpu_s`, the CPU seconds of every process of every node
    (daemons and their workers, start-up included) at that poll, and `evolving_cpu_s` the
    part of it spent since the first generation. None if nobody reached it."""
    hit = next((h for h in history if h["own_best"] >= target), None)
    if hit is None:
        return None
    began = min((h["t"] for h in history if h["generation"] > 0), default=hit["t"])
    cpu: dict[str, float] = {}
    at_start: dict[str, float] = {}
    for h in history:
        if h["t"] > hit["t"]:
            break
        cpu[h["node"]] = h.get("cpu", 0.0)
        if h["t"] <= began:
            at_start[h["node"]] = h.get("cpu", 0.0)
    return {
        "node": hit["node"],
        "seconds": round(hit["t"], 2),
        "evolving_s": round(hit["t"] - began, 2),
        "generation": hit["generation"],
        "node_cpu_s": round(sum(cpu.values()), 2),
        # the same since the network's first generation: start-up (imports, data) left out
        "evolving_cpu_s": round(sum(cpu.values()) - sum(at_start.values()), 2),
    }


def _print_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(title="summary")
    for col in (
        "node",
        "gen",
        "verified",
        "vertices",
        "migr",
        "sets",
        "pub",
        "bred",
        "reeval",
        "rej",
    ):
        table.add_column(col, justify="right")
    for p in summary["per_node"]:
        table.add_row(
            p["node"],
            str(p["generation"]),
            f"{p['best_verified_fitness']:.4f}" if p["best_verified_fitness"] is not None else "-",
            str(p["vertices"]),
            str(p["migrants_injected"]),
            str(p["es_sets_pooled"]),
            str(p["published"]),
            str(p["bred_from_others"]),
            str(sum(p["reevaluations"].values())),
            str(p["rejected"]),
        )
    console.print(table)
    console.print(
        "verified: best fitness the node re-measured itself; migr: ledger templates injected "
        "into its population; sets: other nodes' result sets its es search pooled; pub: "
        "templates it published; bred: of those, how many descend from another node's "
        "template; reeval: claims it re-evaluated; rej: vertices it rejected"
    )
    if summary["target"] is not None:
        reached = {p["node"]: p["reached_target"] for p in summary["per_node"]}
        parts = [
            f"{name} {r['seconds']:.1f} s (generation {r['generation']:g})"
            if r
            else f"{name} not reached"
            for name, r in reached.items()
        ]
        console.print(f"first reached {summary['target']:g}: " + "; ".join(parts))
    base = summary.get("baseline")
    if base is not None:
        shared, alone = summary["first_reached_seconds"], base["first_reached_seconds"]

        def fmt(t: float | None) -> str:
            return "not reached" if t is None else f"{t:.1f} s"

        line = (
            f"first node at {summary['target']:g}: network {fmt(shared)}, the same nodes "
            f"isolated {fmt(alone)} since launch"
        )
        if shared and alone:
            line += f" (the network took {shared / alone:.2f}x the isolated time)"
        console.print(line, style="bold")
        net_first, alone_first = summary.get("first_at_target"), base.get("first_at_target")
        if net_first and alone_first:
            console.print(
                "  since the first generation: network {:.1f} s, isolated {:.1f} s; generations: "
                "{} vs {}; CPU of all nodes since then: {:.1f} s vs {:.1f} s".format(
                    net_first["evolving_s"],
                    alone_first["evolving_s"],
                    net_first["generation"],
                    alone_first["generation"],
                    net_first["evolving_cpu_s"],
                    alone_first["evolving_cpu_s"],
                ),
                style="bold",
            )
    if summary["daemon_cpu_share"] is not None:
        evolving = summary.get("daemon_cpu_share_evolving")
        console.print(
            f"daemon CPU (network, ledger, core) as a share of all node CPU: "
            f"{100 * summary['daemon_cpu_share']:.1f} % (start-up included)"
            + (f", {100 * evolving:.1f} % while evolving" if evolving is not None else "")
        )
    console.print(
        f"identical vertex sets: {summary['identical_vertex_sets']} "
        f"(final sync {summary['final_sync_seconds']} s); wall time {summary['wall_seconds']} s"
    )


def _plot(history: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in sorted({h["node"] for h in history}):
        points = [(h["generation"], h["best"]) for h in history if h["node"] == name]
        ax.step([p[0] for p in points], [p[1] for p in points], where="post", label=name)
    late = sorted(h["best"] for h in history if h["generation"] >= 1)
    if late:
        low, high = late[len(late) // 10], late[-1]
        margin = max(1e-3, (high - low) * 0.1)
        ax.set_ylim(low - margin, high + margin)
    ax.set_xlabel("generation")
    ax.set_ylabel(f"best verified fitness ({args.task})")
    ax.set_title(f"{len({h['node'] for h in history})} nodes, {args.task}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
