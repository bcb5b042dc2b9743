"""Evolution and re-evaluation in a child process, so a generation never stalls the network.

Why a process and not a thread: a generation is thousands of small numpy calls, and small numpy
calls hold the GIL; in a thread they delay every step of the daemon's trio loop (gossip
validation and relaying) by up to the interpreter's switch interval, again and again. In a child
process the trio loop keeps its own interpreter, and the child is background work for the
kernel: Linux `SCHED_IDLE` (it runs only on a CPU that nothing else wants, so a daemon with a
gossip message to relay never waits behind a generation) on top of `nice +10` (`WORKER_NICE`;
the only lowering where `SCHED_IDLE` does not exist). The machine's idle CPU still goes to
evolution at full speed; only the order changes.

One child per task (`EvolutionProcess`, owning that task's `Breeder`, its checkpoint and lineage
files) and one for re-measuring other peers' fitness claims (`VerifierProcess`). Both speak the
same protocol over the child's stdin/stdout: frames of a 4-byte big-endian length and canonical
msgpack (`qudag.crypto.canonical`), decoded strictly on both sides; templates travel as their
own canonical bytes. Nothing is pickled, and the child is started with plain `argv` (no
`multiprocessing` state hand-over).

Crash safety is the breeder's: the child checkpoints after every generation and again after
`mark_published`, atomically, exactly as the daemon did in a thread before. The child asks the
kernel to SIGKILL it when its parent dies (Linux `PR_SET_PDEATHSIG`) and exits on EOF, so after
`kill -9` of the daemon no orphan keeps writing the state a restarted daemon reads.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import trio

from qudag.crypto.canonical import DecodeError, fields, pack, unpack
from qudag.evolution.es import ResultSet
from qudag.evolution.holdout import Holdout, PrivateScore
from qudag.evolution.template import MAX_TEMPLATE_BYTES, Template

WORKER_NICE = 10  # added to the daemon's niceness: the network runs first on a busy machine
# "idle": SCHED_IDLE + nice (the default); "nice": nice only (the design before, kept so that
# benchmarks/bench_node.py can measure the difference in one run).
WORKER_SCHED = "idle"
MAX_FRAME = 64 * 1024 * 1024  # a hello carries the injected set; templates are ~100 KB at most
_LEN = struct.Struct(">I")
PR_SET_PDEATHSIG = 1


class WorkerError(RuntimeError):
    """The child failed (its message says why) or broke the protocol."""


# ------------------------------------------------------------------------- framing (both sides)
def _frame(value: Any) -> bytes:
    data = pack(value)
    return _LEN.pack(len(data)) + data


def _decode(data: bytes) -> dict[str, Any]:
    value = unpack(data, MAX_FRAME)
    if not isinstance(value, dict):
        raise DecodeError("type", "worker frame must be a map")
    return value


# ------------------------------------------------------------------------- child side
def _lower_priority(sched: str) -> None:
    """Make this process background work: nice +`WORKER_NICE`, and with "idle" also
    `SCHED_IDLE` (allowed unprivileged on Linux; ignored where it does not exist)."""
    os.nice(WORKER_NICE)
    if sched == "idle" and hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:  # a kernel or sandbox that refuses it: nice still applies
            pass


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: EOF on stdin still ends the child
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _read_frame(stream: BinaryIO) -> dict[str, Any] | None:
    header = stream.read(_LEN.size)
    if len(header) < _LEN.size:
        return None
    (n,) = _LEN.unpack(header)
    if n > MAX_FRAME:
        raise DecodeError("oversize", f"frame of {n} bytes")
    data = stream.read(n)
    if len(data) < n:
        return None
    return _decode(data)


def _numbers(value: Any, size: int) -> bool:
    """A reply's [n, fitness, ...]: a list of `size`, an int then floats."""
    return (
        isinstance(value, list)
        and len(value) == size
        and isinstance(value[0], int)
        and not isinstance(value[0], bool)
        and all(isinstance(v, float) for v in value[1:])
    )


def _write_frame(stream: BinaryIO, value: Any) -> None:
    stream.write(_frame(value))
    stream.flush()


def _snapshot(breeder: Any) -> dict[str, Any]:
    best = breeder.best
    return {
        "generation": int(breeder.generation),
        "evaluations": int(breeder.evolution.evaluations),
        "best_id": bytes(best.id),
        "best_fitness": float(best.task_fitness),
    }


def _evolution_child(args: argparse.Namespace, out: BinaryIO, inp: BinaryIO) -> None:
    from qudag.evolution.engine import default_config
    from qudag.evolution.es import task_config
    from qudag.evolution.tasks import get_task
    from qudag.node.protocol.breeder import Breeder

    task = get_task(args.task)
    breeder = Breeder(
        task,
        args.seed,
        config=default_config(task, population=args.population),
        state_dir=Path(args.state_dir),
        search=args.search,
        es_config=task_config(task.name),
    )
    _write_frame(out, {"ok": True, **_snapshot(breeder), "injected": sorted(breeder.injected)})
    while (request := _read_frame(inp)) is not None:
        op = request.get("op")
        if op == "advance":
            value = fields(request, {"op": str, "migrants": list, "results": list}, "advance")
            migrants = [
                (bytes(vid), Template.from_bytes(bytes(raw))) for vid, raw in value["migrants"]
            ]
            results = [ResultSet.from_dict(r) for r in value["results"]]
            before = set(breeder.injected)
            report = breeder.advance(migrants, results)
            _write_frame(
                out,
                {
                    "ok": True,
                    **_snapshot(breeder),
                    "injected": sorted(breeder.injected - before),
                    "mean_fitness": float(report.mean_fitness),
                    "best_params": int(report.best_params),
                    "migrants_injected": int(report.migrants_injected),
                    "results": None if report.results is None else report.results.to_dict(),
                },
            )
        elif op == "best_template":
            _write_frame(out, {"ok": True, "template": breeder.best_template().to_bytes()})
        elif op == "mark_published":
            value = fields(request, {"op": str, "genome": bytes, "vertex": bytes}, "mark")
            best = breeder.best
            if best.id == value["genome"]:
                breeder.mark_published(best.id, value["vertex"])
                breeder.save()
            _write_frame(out, {"ok": best.id == value["genome"]})
        else:
            _write_frame(out, {"ok": False, "error": f"unknown op {op!r}"})


def _verifier_child(out: BinaryIO, inp: BinaryIO) -> None:
    from qudag.evolution.verify import remeasure_designated, remeasure_with_holdout

    _write_frame(out, {"ok": True})
    while (request := _read_frame(inp)) is not None:
        # "seed": the held-out draw's randomness (`Reevaluation.holdout_seed`): the held-out
        # score is measured beside the claim and sent back as [n, fitness, stderr] (or None);
        # for a claim that holds of a task whose private rows this node holds, its designated
        # score as [n, fitness] (or None).
        value = fields(request, {"op": str, "template": bytes, "seed": bytes}, "verify")
        template = Template.from_bytes(value["template"])
        status, measured, held = remeasure_with_holdout(template, value["seed"])  # type: ignore[arg-type]
        holdout = None if held is None else [held.n, held.fitness, held.stderr]
        private = remeasure_designated(template) if held is not None else None  # type: ignore[arg-type]
        designated = None if private is None else [private.n, private.fitness]
        _write_frame(
            out,
            {
                "ok": True,
                "status": status,
                "fitness": measured,
                "holdout": holdout,
                "designated": designated,
            },
        )


def child_main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="qudag-evo worker process (internal)")
    parser.add_argument("mode", choices=("evolve", "verify"))
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--task", default="")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--state-dir", default="")
    parser.add_argument("--search", choices=("islands", "es"), default="islands")
    parser.add_argument("--sched", choices=("idle", "nice"), default="idle")
    args = parser.parse_args(argv)
    _lower_priority(args.sched)
    _die_with_parent(args.parent)
    # One BLAS thread here too: the daemon's own limit (node/commands/run.py) does not reach
    # its children, and two OpenBLAS threads per worker, spinning on a 2-core machine shared
    # with other nodes, made a 4-node mnist1d testnet spend ~0.25 CPU s per generation in
    # this process against ~7 ms in one process alone.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    if args.mode == "evolve":
        serve_frames(lambda out, inp: _evolution_child(args, out, inp))
    else:
        serve_frames(_verifier_child)


def serve_frames(body: Callable[[BinaryIO, BinaryIO], None]) -> None:
    """Run a child's frame loop on stdout/stdin: SIGINT ignored (the daemon decides when
    the child stops: EOF), stdout kept for frames only, and a failure reported to the
    daemon as an error frame before the traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out, inp = sys.stdout.buffer, sys.stdin.buffer
    sys.stdout = sys.stderr  # nothing else may write to the frame stream
    try:
        body(out, inp)
    except BrokenPipeError:
        pass
    except Exception as exc:
        try:
            _write_frame(out, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        except BrokenPipeError:
            pass
        raise


# ------------------------------------------------------------------------- daemon side
class _Child:
    """One child process and its frame stream (requests strictly one at a time)."""

    def __init__(self, argv: list[str], what: str) -> None:
        self.argv = argv
        self.what = what
        self.process: subprocess.Popen[bytes] | None = None
        self._stdin: trio.lowlevel.FdStream | None = None
        self._stdout: trio.lowlevel.FdStream | None = None
        self._buf = bytearray()
        self._lock = trio.Lock()

    async def start(self) -> dict[str, Any]:
        # Popen from this (the trio) thread, not `trio.lowlevel.open_process`, which forks from
        # a worker thread: PR_SET_PDEATHSIG fires when the *thread* that forked exits, and
        # trio's idle worker threads exit after a few seconds, killing the child with them.
        self.process = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdin is not None and self.process.stdout is not None
        self._stdin = trio.lowlevel.FdStream(os.dup(self.process.stdin.fileno()))
        self._stdout = trio.lowlevel.FdStream(os.dup(self.process.stdout.fileno()))
        self.process.stdin.close()
        self.process.stdout.close()
        return await self._receive()

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            if self._stdin is None:
                raise WorkerError(f"{self.what}: not running")
            try:
                await self._stdin.send_all(_frame(request))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise WorkerError(f"{self.what}: the worker process is gone") from None
            return await self._receive()

    async def _receive(self) -> dict[str, Any]:
        stdout = self._stdout
        if stdout is None:
            raise WorkerError(f"{self.what}: not running")
        while True:
            if len(self._buf) >= _LEN.size:
                (n,) = _LEN.unpack(self._buf[: _LEN.size])
                if n > MAX_FRAME:
                    raise WorkerError(f"{self.what}: oversize frame ({n} bytes)")
                if len(self._buf) >= _LEN.size + n:
                    data = bytes(self._buf[_LEN.size : _LEN.size + n])
                    del self._buf[: _LEN.size + n]
                    try:
                        reply = _decode(data)
                    except DecodeError as exc:
                        raise WorkerError(f"{self.what}: bad frame: {exc}") from None
                    if reply.get("ok") is False and "error" in reply:
                        raise WorkerError(f"{self.what}: {reply['error']}")
                    return reply
            chunk = await stdout.receive_some(1 << 20)
            if not chunk:
                raise WorkerError(f"{self.what}: the worker process exited")
            self._buf += chunk

    async def aclose(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with trio.CancelScope(shield=True):
            for stream in (self._stdin, self._stdout):
                if stream is not None:
                    await stream.aclose()  # EOF: the child exits after its current step
            self._stdin = self._stdout = None
            deadline = trio.current_time() + 5
            while process.poll() is None and trio.current_time() < deadline:
                await trio.sleep(0.05)
            if process.poll() is None:
                process.kill()
                process.wait()


def _child_argv(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "qudag.node.workers.evolution_worker",
        *args,
        "--parent",
        str(os.getpid()),
        "--sched",
        WORKER_SCHED,
    ]


@dataclass
class GenerationResult:
    generation: int
    evaluations: int
    best_fitness: float
    migrants_injected: int
    best_id: bytes
    results: ResultSet | None = None  # es search: this generation's set, for the network


@dataclass
class EvolutionProcess:
    """The daemon's handle on one task's breeder running in a child process.

    Mirrors what the daemon reads of a `Breeder` (generation, evaluations, best fitness, the
    injected migrant ids) as of the last reply; every method that changes state is async."""

    task: str
    seed: int
    population: int
    state_dir: Path
    search: str = "islands"
    generation: int = 0
    evaluations: int = 0
    best_id: bytes = b""
    best_fitness: float = 0.0
    injected: set[bytes] = field(default_factory=set)
    _child: _Child | None = None

    async def start(self) -> None:
        argv = _child_argv(
            "evolve", "--task", self.task, "--seed", str(self.seed),
            "--population", str(self.population), "--state-dir", str(self.state_dir),
            "--search", self.search,
        )  # fmt: skip
        self._child = _Child(argv, f"evolution of {self.task}")
        self._update(await self._child.start())

    def _update(self, reply: dict[str, Any]) -> None:
        try:
            self.generation = int(reply["generation"])
            self.evaluations = int(reply["evaluations"])
            self.best_id = bytes(reply["best_id"])
            self.best_fitness = float(reply["best_fitness"])
            self.injected.update(bytes(v) for v in reply["injected"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkerError(f"evolution of {self.task}: malformed reply ({exc!r})") from None

    async def advance(
        self,
        migrants: Sequence[tuple[bytes, Template]] = (),
        results: Sequence[ResultSet] = (),
    ) -> GenerationResult:
        assert self._child is not None, "start() first"
        reply = await self._child.call(
            {
                "op": "advance",
                "migrants": [[vid, t.to_bytes()] for vid, t in migrants],
                "results": [r.to_dict() for r in results],
            }
        )
        self._update(reply)
        try:
            own = reply.get("results")
            own_set = None if own is None else ResultSet.from_dict(own)
        except DecodeError as exc:
            raise WorkerError(f"evolution of {self.task}: malformed result set ({exc})") from None
        return GenerationResult(
            self.generation,
            self.evaluations,
            self.best_fitness,
            int(reply["migrants_injected"]),
            self.best_id,
            own_set,
        )

    async def best_template(self) -> Template:
        assert self._child is not None, "start() first"
        reply = await self._child.call({"op": "best_template"})
        raw = reply.get("template")
        if not isinstance(raw, bytes) or len(raw) > MAX_TEMPLATE_BYTES:
            raise WorkerError(f"evolution of {self.task}: malformed template reply")
        return Template.from_bytes(raw)

    async def mark_published(self, genome_id: bytes, vertex_id: bytes) -> bool:
        """Record (and checkpoint) that the best individual went out as `vertex_id`; False if
        the best changed meanwhile (it cannot: the daemon awaits each call in turn)."""
        assert self._child is not None, "start() first"
        reply = await self._child.call(
            {"op": "mark_published", "genome": genome_id, "vertex": vertex_id}
        )
        return bool(reply.get("ok"))

    async def aclose(self) -> None:
        if self._child is not None:
            await self._child.aclose()


class VerifierProcess:
    """Re-measures fitness claims (`evolution.verify.verify_claim`) in a child process."""

    def __init__(self) -> None:
        self._child = _Child(_child_argv("verify"), "re-evaluation")

    async def start(self) -> None:
        await self._child.start()

    async def verify(
        self, template: Template, seed: bytes
    ) -> tuple[str, float | None, Holdout | None, PrivateScore | None]:
        """("measured", fitness, held-out score for the draw `seed`, designated score on the
        task's private rows if we hold them) or ("unknown task: ...", None, None, None) when
        we cannot judge."""
        request = {"op": "verify", "template": template.to_bytes(), "seed": seed}
        reply = await self._child.call(request)
        status, fitness, held = reply.get("status"), reply.get("fitness"), reply.get("holdout")
        private = reply.get("designated")
        if not isinstance(status, str) or not (fitness is None or isinstance(fitness, float)):
            raise WorkerError("re-evaluation: malformed reply")
        holdout: Holdout | None = None
        if held is not None:
            if not _numbers(held, 3):
                raise WorkerError("re-evaluation: malformed held-out reply")
            holdout = Holdout(held[0], held[1], held[2])
        designated: PrivateScore | None = None
        if private is not None:
            if not _numbers(private, 2):
                raise WorkerError("re-evaluation: malformed designated reply")
            designated = PrivateScore(private[0], private[1])
        return status, fitness, holdout, designated

    async def aclose(self) -> None:
        await self._child.aclose()


if __name__ == "__main__":
    child_main()
