"""`qudag-node run`: start a daemon (evolve, sign, gossip, sync, re-evaluate, attest, breed)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import trio

from qudag.node.errors import UserError
from qudag.node.ops.config import add_run_arguments, load_config


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a peer: evolve, publish signed templates, gossip and sync the ledger",
        description=(
            "Run a QuDAG-Evo peer until SIGINT/SIGTERM, or until every task is done "
            "(--generations, --until-fitness, --max-seconds: then a final sync round and exit 0, "
            "or keep serving with --when-done serve). One node per data directory (locked "
            "while it runs) and per port. On start it prints "
            "one JSON line {peer_id, addrs, key_id, http} to stdout; other nodes bootstrap from "
            "one of its addrs. Settings: flags > --config TOML > QUDAG_* env vars > defaults."
        ),
    )
    add_run_arguments(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args, os.environ)
    # libp2p configures its loggers when imported: set ours up after that import, so that its
    # lines get a timestamp and a level too (qudag.node.ops.logs).
    from qudag.node.net.libp2p_patches import quiet_libp2p_logging
    from qudag.node.ops.logs import setup_logging

    setup_logging(config.log_level)
    quiet_libp2p_logging()
    # One BLAS thread: a node's evolution runs beside its network and other nodes on the same
    # cores; BLAS's own threads then only oversubscribe them (measured: up to 80x slower
    # single matmuls on a busy 2-core machine, docs/benchmarks.md "Evolution").
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    from qudag.node.daemon import Daemon, run_until_signal
    from qudag.node.ops.task_join import fetch_task_data, resolve_tasks

    config, wanted = resolve_tasks(config)
    if wanted:
        try:
            if not trio.run(fetch_task_data, config, wanted):
                return 130  # stopped by a signal while fetching
        except BaseExceptionGroup as group:
            raise _user_error_in(group) or group from None
    daemon = Daemon(config, on_ready=_print_ready)
    try:
        trio.run(run_until_signal, daemon)
    except BaseExceptionGroup as group:
        # A setting's fault raised inside the daemon's nurseries (e.g. a port taken between
        # the preflight check and the bind) arrives wrapped in exception groups: show the one
        # line, not 145 lines of traceback (issue 13, item 4).
        raise _user_error_in(group) or group from None
    finally:
        daemon.close()
    return 0


def _user_error_in(group: BaseExceptionGroup) -> UserError | None:
    """The first UserError inside (nested) exception groups, if any."""
    for exc in group.exceptions:
        if isinstance(exc, UserError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _user_error_in(exc)
            if found is not None:
                return found
    return None


def _print_ready(info: dict[str, Any]) -> None:
    print(json.dumps(info), flush=True)
