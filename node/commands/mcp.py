"""`qudag-node mcp`: serve the Model Context Protocol on stdin/stdout for an orchestrator.

An MCP client (Claude Desktop, an agent framework, the SDK's own client) starts this command
and speaks JSON-RPC over its stdin and stdout, so nothing else may ever be printed to stdout
here: logs go to stderr. The tools are in `qudag.node.ops.mcp_server`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from qudag.node.commands.status import DEFAULT_ADDRESS, node_address, status_url
from qudag.node.errors import UserError

DESCRIPTION = """\
Serve the Model Context Protocol (MCP) over stdin/stdout, for an orchestrator (an LLM client
such as Claude Desktop, or any MCP client) that starts this command itself. Tools:

  list_tasks        task specs this machine can evolve (and a node's tasks)
  leaderboard       a node's templates of a task, best verified first (its own ranking)
  pull_template     fetch a template from a node; id and ML-DSA-65 signature checked
  run_template      run a template on input rows or a CSV file (the synthesize runtime)
  start_evolution   run `qudag-node evolve` on a task or a CSV file in the background
  evolution_status  a job's progress and result; list_evolutions, cancel_evolution
  node_status       a node's GET /status

Nodes are reached over their HTTP address (`qudag-node run --http`); a tool may name another
node, on loopback only unless --allow-remote-nodes. Everything the server writes goes under
--work-dir. Example client configuration (JSON):

  {"mcpServers": {"qudag": {"command": "/path/to/.venv/bin/qudag-node",
                            "args": ["mcp", "--http", "127.0.0.1:8700"]}}}
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "mcp",
        help="serve MCP tools (leaderboards, templates, evolution) on stdio for an orchestrator",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        default=None,
        help=f"the default node's HTTP address (default: $QUDAG_HTTP, else {DEFAULT_ADDRESS}); "
        "the node need not run when the server starts",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="per HTTP request to a node (default 5)",
    )
    parser.add_argument(
        "--allow-remote-nodes",
        action="store_true",
        help="let tool calls name non-loopback node addresses (default: loopback only)",
    )
    parser.add_argument(
        "--work-dir",
        metavar="DIR",
        default=None,
        help="where pulled templates and evolution jobs are written (kept); default: a "
        "temporary directory removed when the server exits",
    )
    parser.add_argument(
        "--max-jobs",
        type=int,
        default=1,
        metavar="N",
        help="evolution runs at once (default 1; each takes a core)",
    )
    parser.add_argument(
        "--max-job-seconds",
        type=float,
        default=600.0,
        metavar="S",
        help="the longest run a tool call may ask for (default 600)",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="of the log on stderr (default WARNING)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qudag.node.ops.evolve_jobs import JobLimits, JobManager
    from qudag.node.ops.mcp_server import McpSettings, Tools, build_server

    if not args.timeout > 0:
        raise UserError(f"--timeout must be > 0, got {args.timeout}")
    if args.max_jobs < 1:
        raise UserError(f"--max-jobs must be at least 1, got {args.max_jobs}")
    if not args.max_job_seconds > 0:
        raise UserError(f"--max-job-seconds must be > 0, got {args.max_job_seconds}")
    address, source = node_address(args.http)
    status_url(address, source)  # a malformed address is an error now, not at each call
    if args.work_dir is not None:
        work_dir, temporary = Path(args.work_dir).expanduser().resolve(), False
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--work-dir {args.work_dir}: {exc.strerror or exc}") from None
    else:
        work_dir, temporary = Path(tempfile.mkdtemp(prefix="qudag-mcp-")), True
    jobs = JobManager(
        work_dir / "jobs", JobLimits(max_running=args.max_jobs, max_seconds=args.max_job_seconds)
    )
    settings = McpSettings(address, source, args.timeout, args.allow_remote_nodes, work_dir)
    app = build_server(Tools(settings, jobs))
    logging.getLogger().setLevel(args.log_level)

    def cleanup() -> None:
        jobs.close()
        if temporary:
            shutil.rmtree(work_dir, ignore_errors=True)

    def stop(signum: int, frame: Any) -> None:
        """SIGTERM/SIGINT: stop the runs, remove a temporary work dir, exit at once. Not by
        unwinding: the SDK reads stdin in a worker thread that nothing can interrupt, and the
        event loop's shutdown waits for it (a `kill` left the server running until stdin
        closed)."""
        cleanup()
        sys.stderr.flush()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        app.run("stdio")  # returns when the client closes our stdin
    finally:
        cleanup()
    return 0
