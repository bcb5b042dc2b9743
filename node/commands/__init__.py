"""Subcommands of `qudag-node`, one module each, each with `register(subparsers)`.

Add a module's name here to expose it on the command line.
"""

COMMAND_MODULES: list[str] = [
    "keys",
    "status",
    "template",
    "run",
    "testnet",
    "evolve",
    "dag",
    "templates",
    "simulate",
    "join",
    "netns_testnet",
    "mcp",
    "task",
]
