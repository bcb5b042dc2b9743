"""Issue 13 item 14: every shell command in the README runs as written.

The commands that can run offline run here, in the README's order, in one temporary directory,
through the installed console script (a shell, as a reader pastes them). The files they expect
from earlier steps that need a network (a node's `state` ledger, a pulled `best.template`) are
made first, the way those steps would make them. Every other command is listed in SKIPPED with
the reason, and a README command in neither list fails the test, so a new command must be
classified (and, when it can run offline, run).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qudag.crypto.signing import Identity
from qudag.dag.store import Store
from qudag.evolution.genome import Genome
from qudag.evolution.tasks import get_task
from qudag.evolution.template import from_genome, save_template
from qudag.node.protocol.core import NODE_DECODERS, CoreConfig, PeerCore, task_tolerances

README = Path(__file__).resolve().parent.parent / "README.md"
NOW = 1_700_000_000_000

# Prefix of a command -> why it does not run here.
SKIPPED = {
    "make demo": "runs a 4-node network for about a minute",
    "make test": "the whole suite (this test is part of it)",
    "qudag-node templates ": "needs a running node's HTTP API",
    "qudag-node status ": "needs a running node's HTTP API",
    "qudag-node simulate ": "minutes of CPU (tests/test_simulations_studies.py runs the studies)",
    "qudag-node evolve --task digits": "10-60 s of CPU",
    "qudag-node evolve --resume runs/digits": "continues the digits run above",
    "docker compose": "needs a Docker engine",
    "sudo ": "needs root and network namespaces",
    "python benchmarks/bench_simulation.py": "10,000 simulated peers: 11 minutes, 7.6 GB",
    "qudag-node run ": "starts a daemon (tests/test_published_task_network.py runs these)",
}
# Prefixes of the commands that must run (the README's offline commands).
RUN = (
    "QUDAG_PASS=",
    "qudag-node dag ",
    "qudag-node synthesize ",
    "qudag-node template export ",
    "qudag-node evolve --task xor",
    "qudag-node mcp --help",
    "qudag-node task ",
)


def readme_commands() -> list[str]:
    """Shell command lines of the README's ```sh blocks, comments stripped."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.DOTALL):
        for line in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


def prepare(cwd: Path) -> None:
    """What the skipped network steps leave behind: a node's ledger and a pulled template."""
    (cwd / "state").mkdir()
    store = Store.open(cwd / "state" / "ledger.sqlite3", decoders=NODE_DECODERS)
    PeerCore(
        Identity.generate(),
        store,
        CoreConfig(tasks=("xor",), tolerances=task_tolerances(("xor",))),
        random.Random(0),
    ).start(NOW)
    store.close()
    task = get_task("digits")
    genome = Genome.random(np.random.default_rng(0), task.n_inputs, [8], task.n_outputs)
    save_template(from_genome(genome, task, 0.5, latency_repeats=1), cwd / "best.template")
    rng = np.random.default_rng(0)  # the user's csv of the "Bring your own task" section
    rows = ["a,b,label"] + [f"{x:.4f},{y:.4f},{int(x > y)}" for x, y in rng.normal(size=(60, 2))]
    (cwd / "mine.csv").write_text("\n".join(rows) + "\n")


def test_every_readme_command_is_classified() -> None:
    for command in readme_commands():
        skipped = [p for p in SKIPPED if command.startswith(p)]
        run = [p for p in RUN if command.startswith(p)]
        assert len(skipped) + len(run) == 1, f"classify this README command: {command}"


@pytest.mark.multiprocess
def test_readme_offline_commands_run_as_written(tmp_path: Path) -> None:
    prepare(tmp_path)
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    ran = 0
    for command in readme_commands():
        if not command.startswith(RUN):
            continue
        done = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        assert "Traceback" not in done.stderr
        ran += 1
    assert ran >= 8
    assert (tmp_path / "runs" / "xor" / "best.template").is_file()
    assert (tmp_path / "other" / "ledger.sqlite3").is_file()


@pytest.mark.parametrize("prefix", sorted(SKIPPED))
def test_skipped_commands_are_still_in_the_readme(prefix: str) -> None:
    assert any(c.startswith(prefix) for c in readme_commands()), f"stale SKIPPED entry {prefix}"
