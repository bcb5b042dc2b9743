"""Evolution runs that a long-lived process (the MCP server) starts, polls and cancels.

Why a child process running `qudag-node evolve`, not an `Evolution` in a thread: a generation
is thousands of small numpy calls holding the GIL (the daemon moved evolution into children
for the same reason), and the server must keep answering while a run goes on. Running the
command itself also means a job does exactly what `qudag-node evolve` does, writes the same
files (`best.template`, `checkpoint.qcp`, `logbook.csv`, `fitness.png`: `evolve --resume DIR`
continues a job) and stops for the same reasons; nothing of evolve is written again here.

What crosses the process boundary is text: `--progress jsonl` lines on the child's stderr
(`PROGRESS_PREFIX` + JSON, one per generation) and the `--json` summary, the last line of its
stdout. Nothing is unpickled.

Bounds: at most `JobLimits.max_running` runs at once; every run gets `--max-seconds` (at most
`JobLimits.max_seconds`) and is killed if it is still alive `grace_s` after that (the final
writes and the test score come after the last generation); at most `MAX_JOBS` jobs are
remembered (the oldest finished ones are forgotten, their files stay). The children run at
nice +`JOB_NICE`: the machine's cores are shared with nodes and people.

Cancelling sends SIGINT, which `evolve` handles as Ctrl-C: it saves the checkpoint and the
best net so far before it exits, so a cancelled job still yields a template.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qudag.evolution.tasks import TaskError, get_task
from qudag.node.commands.evolve import PROGRESS_PREFIX, TEMPLATE_FILE
from qudag.node.errors import UserError

MAX_JOBS = 100
JOB_NICE = 10
MAX_MESSAGES = 20  # stderr lines kept per job (notes, warnings, the error that ended it)
MAX_LINE = 64 * 1024  # a longer stderr line is cut (a runaway warning must not fill memory)
CANCEL_WAIT_S = 20.0  # for evolve to save its state after SIGINT, before SIGKILL

RUNNING, DONE, FAILED, CANCELLED, TIMED_OUT = "running", "done", "failed", "cancelled", "timed-out"


@dataclass(frozen=True)
class JobLimits:
    """What one caller may ask of this machine."""

    max_running: int = 1
    max_seconds: float = 600.0
    max_generations: int = 100_000
    max_population: int = 4096
    grace_s: float = 60.0


@dataclass(frozen=True)
class EvolveRequest:
    """One `qudag-node evolve` run: the task spec and the options a caller may set."""

    task: str
    max_seconds: float
    generations: int | None = None
    population: int | None = None
    seed: int = 0
    until_fitness: float | None = None


@dataclass
class Job:
    """A run: its process, and what it has reported so far (guarded by `lock`)."""

    id: str
    request: EvolveRequest
    task_name: str
    out_dir: Path
    process: subprocess.Popen[bytes]
    started: float  # time.monotonic()
    started_unix: float
    state: str = RUNNING
    progress: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    messages: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_MESSAGES))
    returncode: int | None = None
    ended: float | None = None
    cancel_requested: bool = False
    killed_at_deadline: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: threading.Event = field(default_factory=threading.Event)
    timer: threading.Timer | None = None  # kills the run at its deadline

    @property
    def template_path(self) -> Path:
        return self.out_dir / TEMPLATE_FILE

    def snapshot(self) -> dict[str, Any]:
        """What a caller sees of the job (JSON-able)."""
        with self.lock:
            end = self.ended if self.ended is not None else time.monotonic()
            template = self.template_path if self.template_path.is_file() else None
            return {
                "job_id": self.id,
                "state": self.state,
                "task": self.task_name,
                "seed": self.request.seed,
                "max_seconds": self.request.max_seconds,
                "generations_requested": self.request.generations,
                "until_fitness": self.request.until_fitness,
                "elapsed_s": round(end - self.started, 3),
                "started_unix": round(self.started_unix, 3),
                "progress": dict(self.progress) if self.progress else None,
                "result": dict(self.summary) if self.summary else None,
                "template": str(template) if template and self.state != RUNNING else None,
                "out_dir": str(self.out_dir),
                "pid": self.process.pid,
                "returncode": self.returncode,
                "messages": list(self.messages),
            }


class JobManager:
    """Starts `qudag-node evolve` children under `root/<job id>/` and follows them."""

    def __init__(self, root: Path, limits: JobLimits, python: str = sys.executable) -> None:
        self.root = root
        self.limits = limits
        self.python = python
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._closed = False

    # --- requests ---------------------------------------------------------------------
    def validate(self, request: EvolveRequest) -> str:
        """The task's canonical name; every out-of-bounds value is one `UserError` line."""
        lim = self.limits
        if not (request.max_seconds > 0 and request.max_seconds <= lim.max_seconds):
            raise UserError(
                f"max_seconds must be > 0 and at most {lim.max_seconds:g} (this server's "
                f"--max-job-seconds), got {request.max_seconds:g}"
            )
        if request.generations is not None and not 1 <= request.generations <= lim.max_generations:
            raise UserError(f"generations must be between 1 and {lim.max_generations}")
        if request.population is not None and not 2 <= request.population <= lim.max_population:
            raise UserError(f"population must be between 2 and {lim.max_population}")
        if not 0 <= request.seed < 2**32:
            raise UserError("seed must be between 0 and 2**32 - 1")
        if request.until_fitness is not None and request.until_fitness != request.until_fitness:
            raise UserError("until_fitness must be a number")
        try:
            task = get_task(request.task)
        except TaskError as exc:
            raise UserError(str(exc)) from None
        return task.name

    def argv(self, request: EvolveRequest, out_dir: Path) -> list[str]:
        """The command line of a run (the same `evolve` a user types)."""
        argv = [self.python, "-m", "qudag.node", "evolve", "--task", request.task]
        argv += ["--out", str(out_dir), "--json", "--progress", "jsonl"]
        argv += ["--seed", str(request.seed), "--max-seconds", repr(float(request.max_seconds))]
        if request.generations is not None:
            argv += ["--generations", str(request.generations)]
        if request.population is not None:
            argv += ["--population", str(request.population)]
        if request.until_fitness is not None:
            argv += ["--until-fitness", repr(float(request.until_fitness))]
        return argv

    def start(self, request: EvolveRequest) -> Job:
        task_name = self.validate(request)
        with self._lock:
            if self._closed:
                raise UserError("the server is shutting down")
            running = sum(1 for j in self._jobs.values() if j.state == RUNNING)
            if running >= self.limits.max_running:
                raise UserError(
                    f"{running} evolution job(s) already running (at most "
                    f"{self.limits.max_running} at once, --max-jobs): wait for one or cancel it"
                )
            self._forget_old()
            job_id = secrets.token_hex(6)
            out_dir = self.root / job_id
            out_dir.mkdir(parents=True)
            process = subprocess.Popen(
                self.argv(request, out_dir),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=out_dir,
            )
            try:
                os.setpriority(
                    os.PRIO_PROCESS, process.pid, os.getpriority(os.PRIO_PROCESS, 0) + JOB_NICE
                )
            except OSError:  # gone already, or not allowed: the run is still bounded in time
                pass
            job = Job(
                id=job_id,
                request=request,
                task_name=task_name,
                out_dir=out_dir,
                process=process,
                started=time.monotonic(),
                started_unix=time.time(),
            )
            self._jobs[job_id] = job
        job.timer = threading.Timer(
            request.max_seconds + self.limits.grace_s, self._deadline, (job,)
        )
        job.timer.daemon = True
        job.timer.start()
        threading.Thread(
            target=self._follow, args=(job,), daemon=True, name=f"job-{job_id}"
        ).start()
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id.strip().lower())
        if job is None:
            raise UserError(f"no evolution job {job_id!r} on this server (see list_evolutions)")
        return job

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job_id: str, wait_s: float = CANCEL_WAIT_S) -> Job:
        """SIGINT (evolve saves its best so far), then SIGKILL after `wait_s`."""
        job = self.get(job_id)
        with job.lock:
            if job.state != RUNNING:
                return job
            job.cancel_requested = True
        _signal(job.process, signal.SIGINT)
        if not job.finished.wait(wait_s):
            _signal(job.process, signal.SIGKILL)
            job.finished.wait(10.0)
        return job

    def close(self) -> None:
        """Stop every run (the server is going away; a run must not outlive it for long)."""
        with self._lock:
            self._closed = True
            running = [j for j in self._jobs.values() if j.state == RUNNING]
        for job in running:
            with job.lock:
                job.cancel_requested = True
            _signal(job.process, signal.SIGINT)
        deadline = time.monotonic() + CANCEL_WAIT_S
        for job in running:
            if not job.finished.wait(max(0.0, deadline - time.monotonic())):
                _signal(job.process, signal.SIGKILL)
                job.finished.wait(5.0)

    # --- the children -----------------------------------------------------------------
    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.state != RUNNING]
        finished.sort(key=lambda j: j.started)
        while len(self._jobs) >= MAX_JOBS and finished:
            del self._jobs[finished.pop(0).id]

    def _deadline(self, job: Job) -> None:
        if job.finished.is_set():
            return
        with job.lock:
            job.killed_at_deadline = True
        _signal(job.process, signal.SIGKILL)

    def _follow(self, job: Job) -> None:
        """Read the child's stderr line by line until it exits, then its summary."""
        process = job.process
        stderr, stdout = process.stderr, process.stdout
        assert stderr is not None and stdout is not None
        for raw in iter(lambda: stderr.readline(MAX_LINE), b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if line.startswith(PROGRESS_PREFIX):
                try:
                    record = json.loads(line[len(PROGRESS_PREFIX) :])
                except json.JSONDecodeError:
                    record = None
                if isinstance(record, dict):
                    with job.lock:
                        job.progress = record
                    continue
            if line:
                with job.lock:
                    job.messages.append(line)
        out = stdout.read(1024 * 1024)
        code = process.wait()
        summary: dict[str, Any] | None = None
        lines = out.decode("utf-8", "replace").strip().splitlines()
        if code == 0 and lines:
            try:
                value = json.loads(lines[-1])
                summary = value if isinstance(value, dict) else None
            except json.JSONDecodeError:
                summary = None
        with job.lock:
            job.returncode = code
            job.summary = summary
            job.ended = time.monotonic()
            if job.killed_at_deadline:
                job.state = TIMED_OUT
            elif job.cancel_requested:
                job.state = CANCELLED
            elif code == 0 and summary is not None:
                job.state = DONE
            else:
                job.state = FAILED
        stderr.close()
        stdout.close()
        if job.timer is not None:
            job.timer.cancel()
        job.finished.set()


def _signal(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is None:
        try:
            process.send_signal(sig)
        except ProcessLookupError:
            pass


__all__ = ["EvolveRequest", "Job", "JobLimits", "JobManager"]
