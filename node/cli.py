"""The `qudag-node` command line.

Each subcommand lives in its own module under `qudag.node.commands` and exposes
`register(subparsers)`; this module only assembles them, so features can be added without
touching each other. Every command turns user errors into one clear line on stderr and exit
status 2 (never a traceback): raise `UserError` for those.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from qudag.node.commands import COMMAND_MODULES
from qudag.node.errors import UserError


def _version() -> str:
    """The installed distribution's version (pyproject.toml), or 'unknown' outside one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qudag-evo")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qudag-node",
        description=(
            "QuDAG-Evo: peers that evolve tiny neural networks together and share them as "
            "post-quantum signed templates on a gossiped DAG ledger."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"qudag.node.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except UserError as exc:
        print(f"qudag-node {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qudag-node {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
