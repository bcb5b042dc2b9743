"""A lying peer for the multi-process tests: the real daemon, publishing inflated fitness claims.

Run exactly like `qudag-node run` (same flags, same ready line on stdout), plus `--inflate X`.
Everything is the product's own code (`Daemon`: PeerCore, P2PNode, store, HTTP), except the
evolution loop: after each generation it signs and gossips its best template with its claimed
fitness raised by X, every generation. Honest peers must re-measure the claim, attest it as
invalid, ban the author and never sample its templates. Kept out of the product on purpose: the
daemon has no "lie" switch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from typing import Any

import trio

from qudag.node.daemon import Daemon, now_ms, run_until_signal
from qudag.node.net.libp2p_patches import quiet_libp2p_logging
from qudag.node.ops.config import add_run_arguments, load_config


class LyingDaemon(Daemon):
    inflate: float = 0.5
    pace_s: float = 0.2

    async def _evolution_loop(self, task: str) -> None:
        breeder = self.breeders[task]
        limit = self.config.generations
        while limit is None or breeder.generation < limit:
            await breeder.advance(())
            honest = await breeder.best_template()
            lie = replace(honest, fitness=honest.fitness + self.inflate)
            vid, actions = self.core.publish_template(lie, now_ms())
            self.best_template_id[task] = vid
            self._queue(actions)
            await trio.sleep(self.pace_s)


def _print_ready(info: dict[str, Any]) -> None:
    print(json.dumps(info), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    parser.add_argument("--inflate", type=float, default=0.5)
    args = parser.parse_args()
    config = load_config(args, os.environ)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    quiet_libp2p_logging()
    daemon = LyingDaemon(config, on_ready=_print_ready)
    daemon.inflate = args.inflate
    try:
        trio.run(run_until_signal, daemon)
    finally:
        daemon.close()


if __name__ == "__main__":
    main()
