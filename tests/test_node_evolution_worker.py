"""The evolution child process: state survives a restart, and it never outlives a killed daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from qudag.evolution.holdout import holdout_seed
from qudag.evolution.verify import remeasure_holdout
from qudag.node.workers import evolution_worker
from qudag.node.workers.evolution_worker import EvolutionProcess, VerifierProcess

TASK = "xor"


pytestmark = pytest.mark.multiprocess  # every test starts evolution or verifier children


def test_generations_and_publication_marks_survive_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        with trio.fail_after(120):
            first = EvolutionProcess(TASK, 7, 8, tmp_path)
            await first.start()
            assert first.generation == 0
            await first.advance()
            result = await first.advance()
            assert result.generation == first.generation == 2
            template = await first.best_template()
            assert template.task == TASK and template.fitness == first.best_fitness
            assert await first.mark_published(first.best_id, b"\x01" * 32)
            # A stale genome id (the best changed since) is refused, not recorded.
            assert not await first.mark_published(b"\x02" * 32, b"\x03" * 32)
            await first.aclose()

            again = EvolutionProcess(TASK, 7, 8, tmp_path)
            await again.start()
            assert (again.generation, again.best_id) == (2, first.best_id)
            # The published individual's descendants descend from its vertex.
            child_template = await again.best_template()
            assert child_template.parents == (b"\x01" * 32,)
            verifier = VerifierProcess()
            await verifier.start()
            seed = holdout_seed(b"\x04" * 32, [])
            status, measured, holdout, designated = await verifier.verify(template, seed)
            assert status == "measured" and measured == template.fitness
            assert designated is None  # not a published task with private rows here
            # The held-out score is the one anyone computes for that draw.
            assert holdout == remeasure_holdout(template, seed)
            await verifier.aclose()
            await again.aclose()

    trio.run(main)


PARENT = """
import sys, trio
from pathlib import Path
from qudag.node.workers.evolution_worker import EvolutionProcess
async def main():
    e = EvolutionProcess("xor", 1, 8, Path(sys.argv[1]))
    await e.start()
    print(e._child.process.pid, flush=True)
    await trio.sleep(60)
trio.run(main)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_child_dies_with_a_sigkilled_daemon(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        # Past trio's idle worker-thread lifetime: the child must not be tied to a thread.
        time.sleep(12)
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the evolution child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait(timeout=10)


def _policy_and_nice(pid: int) -> tuple[int, int]:
    return os.sched_getscheduler(pid), os.getpriority(os.PRIO_PROCESS, pid)


def test_children_are_background_work_sched_idle_and_niced(tmp_path: Path) -> None:
    """Both children run under SCHED_IDLE and nice +10, so a daemon with network work never
    waits for a CPU behind a generation or a re-evaluation; the daemon itself is untouched."""
    own = _policy_and_nice(0)

    async def main() -> None:
        with trio.fail_after(60):
            evolution = EvolutionProcess(TASK, 3, 8, tmp_path)
            verifier = VerifierProcess()
            await evolution.start()
            await verifier.start()
            try:
                for child in (evolution._child, verifier._child):
                    assert child is not None and child.process is not None
                    policy, nice = _policy_and_nice(child.process.pid)
                    assert policy == os.SCHED_IDLE
                    assert nice == min(19, own[1] + evolution_worker.WORKER_NICE)
                assert (await evolution.advance()).generation == 1  # it still evolves
            finally:
                await verifier.aclose()
                await evolution.aclose()

    trio.run(main)
    assert _policy_and_nice(0) == own


def test_an_es_child_shares_result_sets_and_resumes_exactly_after_a_restart(
    tmp_path: Path,
) -> None:
    """The shared-ES search in the daemon's child: each generation gives a result set for the
    network, takes the others', and a restart continues the same search (same next set)."""
    from qudag.evolution.es import ResultSet

    async def main() -> None:
        with trio.fail_after(120):
            a = EvolutionProcess(TASK, 7, 8, tmp_path / "a", "es")
            b = EvolutionProcess(TASK, 8, 8, tmp_path / "b", "es")
            await a.start()
            await b.start()
            first_a = await a.advance()
            first_b = await b.advance((), [first_a.results] if first_a.results else [])
            assert isinstance(first_a.results, ResultSet) and isinstance(first_b.results, ResultSet)
            assert first_a.results.task == TASK and first_a.results.generation == 0
            await a.advance((), [first_b.results])
            await a.aclose()
            resumed = EvolutionProcess(TASK, 7, 8, tmp_path / "a", "es")
            await resumed.start()
            assert resumed.generation == 2
            twin = EvolutionProcess(TASK, 7, 8, tmp_path / "twin", "es")
            await twin.start()
            await twin.advance()
            await twin.advance((), [first_b.results])
            # The restarted search and one that never stopped draw the same next perturbations.
            nxt, twin_next = await resumed.advance(), await twin.advance()
            assert nxt.results is not None and twin_next.results is not None
            assert nxt.results.seeds == twin_next.results.seeds
            assert nxt.results.center == twin_next.results.center
            for proc in (b, resumed, twin):
                await proc.aclose()

    trio.run(main)
