"""`qudag-node evolve`: one peer's neuroevolution run, with no network and no ledger.

Runs `qudag.evolution.engine.Evolution` for a task, shows progress (rich), and writes to
`--out`: `logbook.csv`, `fitness.png`, `best.template` (the best net as a template file that
`qudag-node template ...` and `synthesize` read) and `checkpoint.qcp` (every
`CHECKPOINT_EVERY` generations, at the end and on Ctrl-C), so `--resume DIR` continues a run
exactly where it stopped. `--generations` is the run's total: resuming a run checkpointed at
generation 30 with `--generations 60` runs 30 more. Tasks with a natural "solved" threshold
(xor, parity-N, two-spirals, cartpole) stop once solved unless `--no-early-stop`;
`--until-fitness F` and `--max-seconds S` stop any run earlier. Ctrl-C saves the checkpoint,
the logbook and the best net so far (`best.template`).

`--out DIR` must be new, empty, or an earlier `evolve` output (marked by `DIR/.qudag-out`):
an earlier run's files are overwritten only with `--force` (or continued with `--resume DIR`),
and only the files evolve itself wrote there.

With `--json` the progress display goes to stderr and the last line of stdout is one JSON
object: task, generations, evaluations, best_fitness, test_score, template, template_bytes,
seconds (plus solved_at, gradient_steps, params, checkpoint).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qudag.evolution.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from qudag.evolution.engine import LOGBOOK_FIELDS, Evolution, default_config
from qudag.evolution.tasks import SCORE_NAMES, Task, TaskError, get_task, list_tasks
from qudag.node.errors import UserError
from qudag.node.ops.outdir import OutDir

CHECKPOINT_EVERY = 10
PROGRESS_PREFIX = "progress "
"""Starts each `--progress jsonl` line, so that a reader tells them from notes and errors."""
TEMPLATE_FILE = "best.template"
LOGBOOK_FILE = "logbook.csv"
PLOT_FILE = "fitness.png"


def default_generations(task: Task) -> int:
    """Enough for the tuned defaults to reach their targets (see docs/benchmarks.md)."""
    if task.name == "digits":
        return 60
    if task.solved_fitness is not None:
        return 200  # stops early once solved
    return 40


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evolve",
        help="evolve a tiny network for a task on this machine (no network)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", help="task spec: " + "; ".join(list_tasks()))
    p.add_argument(
        "--tasks-from", metavar="DATA_DIR", default=None,
        help="a (stopped) node's data dir: --task may be a published task's id or id prefix "
        "from its ledger, its data read from its cache",
    )  # fmt: skip
    p.add_argument("--generations", type=int, help="total generations (default: per task)")
    p.add_argument("--population", type=int, help="population size (default: per task)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--out",
        help="output directory (default: evolve-out, or the --resume DIR); must be new, empty "
        "or an earlier evolve's (then --force replaces only the files evolve wrote there)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite an earlier run's outputs in --out (only files evolve created there)",
    )
    p.add_argument(
        "--until-fitness",
        type=float,
        metavar="F",
        help="stop once the best validation fitness reaches F (as neat-python's fitness_threshold)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        metavar="S",
        help="stop after S seconds of wall time (outputs are written as at any end)",
    )
    p.add_argument("--resume", metavar="DIR", help="continue the run checkpointed in DIR")
    p.add_argument("--max-bytes", type=int, help="hard limit on parameter bytes (default 51200)")
    p.add_argument("--max-params", type=int, help="hard limit on parameters (default 12800)")
    p.add_argument(
        "--lamarck-steps",
        type=int,
        help="Adam steps per child on the training split (0 = pure evolution; default per task)",
    )
    p.add_argument(
        "--no-early-stop", action="store_true", help="keep going after the task is solved"
    )
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON summary")
    p.add_argument(
        "--progress",
        choices=("bar", "jsonl"),
        default="bar",
        help="bar: a live progress bar (default); jsonl: one line per generation on stderr, "
        f"{PROGRESS_PREFIX!r} followed by JSON (generation, total, best, median, params, "
        "evals, seconds), for programs",
    )
    p.set_defaults(handler=run)


def _positive(value: int | None, name: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{name} must be at least 1, got {value}")


def _start(args: argparse.Namespace) -> Evolution:
    if args.tasks_from is not None:
        from qudag.node.ops.task_join import resolve_offline

        # Resolving also makes the data dir's published tasks loadable (a resumed run's).
        names = resolve_offline(Path(args.tasks_from), [args.task] if args.task else [])
        args.task = names[0] if names else args.task
    if args.resume:
        if args.population or args.max_bytes or args.max_params or args.lamarck_steps is not None:
            raise UserError(
                "--population/--max-bytes/--max-params/--lamarck-steps cannot change a resumed run"
            )
        try:
            evo = load_checkpoint(args.resume)
        except CheckpointError as exc:
            raise UserError(str(exc)) from None
        if args.task and get_task_or_error(args.task).name != evo.task.name:
            raise UserError(f"--task {args.task} differs from the checkpoint's {evo.task.name}")
        return evo
    if not args.task:
        raise UserError("--task is required (or --resume DIR)")
    task = get_task_or_error(args.task)
    overrides: dict[str, Any] = {}
    if args.population:
        overrides["population"] = args.population
    if args.max_bytes:
        overrides["max_bytes"] = args.max_bytes
    if args.max_params:
        overrides["max_params"] = args.max_params
    if args.lamarck_steps is not None:
        if args.lamarck_steps < 0:
            raise UserError(f"--lamarck-steps must be >= 0, got {args.lamarck_steps}")
        overrides["lamarck_steps"] = args.lamarck_steps
    try:
        config = default_config(task, **overrides)
        return Evolution(task, config, seed=args.seed)
    except (TaskError, ValueError) as exc:
        raise UserError(str(exc)) from None


def get_task_or_error(spec: str) -> Task:
    """The task, its choices made for the user shown on stderr (a default csv target...)."""
    try:
        task = get_task(spec)
    except TaskError as exc:
        raise UserError(str(exc)) from None
    for note in task.notes:
        print(f"qudag-node evolve: note: {note}", file=sys.stderr)
    return task


def _write_logbook(evo: Evolution, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(LOGBOOK_FIELDS)
        for row in evo.logbook:
            writer.writerow([row[k] for k in LOGBOOK_FIELDS])


def _write_plot(evo: Evolution, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = [row["gen"] for row in evo.logbook]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(gens, [row["best"] for row in evo.logbook], label="best (validation)")
    ax.plot(gens, [row["median"] for row in evo.logbook], label="median", alpha=0.7)
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness")
    ax.set_title(f"{evo.task.name}: fitness over generations (seed {evo.seed})")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(gens, [row["best_params"] for row in evo.logbook], "k:", label="best params")
    ax2.set_ylabel("parameters of the best net")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _write_template(evo: Evolution, path: Path) -> int:
    from qudag.evolution.template import TemplateError, from_genome, save_template

    best = evo.best
    try:
        # Task.kind is a Literal; TaskLike declares a plain mutable `str` attribute, which
        # mypy treats as invariant, hence the Any.
        task: Any = evo.task
        template = from_genome(
            best.genome,
            task,
            fitness=best.task_fitness,
            parents=(),
            operator=best.operator[:64],
            generation=best.born,
        )
        save_template(template, path)
    except TemplateError as exc:
        raise UserError(str(exc)) from None
    return len(template.to_bytes())


def _checkpoint(evo: Evolution, out: Path) -> Path:
    try:
        return save_checkpoint(evo, out / CHECKPOINT_FILE)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None


def stop_reason(best: float, started: float, args: argparse.Namespace) -> str | None:
    """Why the run should stop before --generations, if it should: --until-fitness reached
    or --max-seconds spent (checked between generations, so a generation is never cut)."""
    if args.until_fitness is not None and best >= args.until_fitness:
        return f"reached --until-fitness {args.until_fitness:g}"
    if args.max_seconds is not None and time.perf_counter() - started >= args.max_seconds:
        return f"spent --max-seconds {args.max_seconds:g}"
    return None


@contextmanager
def _progress(
    kind: str, console: Any, evo: Evolution, total: int, started: float
) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A function to call with each generation's logbook row: a rich progress bar for a person
    ("bar"), or one JSON line per generation on stderr for a program ("jsonl": a live bar on a
    pipe shows nothing until the end, and the MCP server polls a run's progress from these
    lines). The first jsonl line is the state before the first generation (a resumed run's)."""
    first = evo.logbook[-1]
    if kind == "jsonl":

        def line(row: dict[str, Any]) -> None:
            record = {
                "generation": evo.generation,
                "total": total,
                "best": row["best"],
                "median": row["median"],
                "params": row["best_params"],
                "evals": row["evals"],
                "seconds": round(time.perf_counter() - started, 3),
            }
            print(PROGRESS_PREFIX + json.dumps(record), file=sys.stderr, flush=True)

        line(first)
        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[best]:.4f}  median {task.fields[median]:.4f}"),
        TextColumn("params {task.fields[params]}  evals {task.fields[evals]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(
            f"{evo.task.name} gen",
            total=total,
            completed=min(evo.generation, total),
            best=first["best"],
            median=first["median"],
            params=first["best_params"],
            evals=first["evals"],
        )

        def update(row: dict[str, Any]) -> None:
            progress.update(
                bar,
                completed=evo.generation,
                best=row["best"],
                median=row["median"],
                params=row["best_params"],
                evals=row["evals"],
            )

        yield update


def run(args: argparse.Namespace) -> int:
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise UserError(f"--max-seconds must be > 0, got {args.max_seconds}")
    _positive(args.generations, "--generations")
    _positive(args.population, "--population")
    _positive(args.max_bytes, "--max-bytes")
    _positive(args.max_params, "--max-params")
    started = time.perf_counter()
    evo = _start(args)
    out = Path(args.out or args.resume or "evolve-out")
    outputs = [CHECKPOINT_FILE, LOGBOOK_FILE, PLOT_FILE, TEMPLATE_FILE]
    resuming_here = bool(args.resume) and out.resolve() == Path(args.resume).resolve()
    out_dir = OutDir(out, "evolve")
    out_dir.prepare(outputs, force=args.force, keep=resuming_here, ours=resuming_here)
    out_dir.record(*outputs)
    total = args.generations or default_generations(evo.task)
    early_stop = not args.no_early_stop

    from rich.console import Console

    console = Console(stderr=args.json)
    try:
        with _progress(args.progress, console, evo, total, started) as update:
            while evo.generation < total and not (early_stop and evo.solved):
                if stop_reason(evo.best.task_fitness, started, args) is not None:
                    break
                update(evo.step())
                if evo.generation % CHECKPOINT_EVERY == 0:
                    _checkpoint(evo, out)
    except KeyboardInterrupt:
        # Save what was reached, not only the means to continue: the best net so far is what
        # a user stopping a long run usually wants (issue 13, item 6).
        _checkpoint(evo, out)
        _write_template(evo, out / TEMPLATE_FILE)
        _write_logbook(evo, out / LOGBOOK_FILE)
        print(
            f"interrupted at generation {evo.generation}; best so far in {out / TEMPLATE_FILE}, "
            f"checkpoint in {out} (--resume {out})",
            file=sys.stderr,
        )
        raise
    evolve_seconds = time.perf_counter() - started
    stopped_by = stop_reason(evo.best.task_fitness, started, args)
    checkpoint_path = _checkpoint(evo, out)
    _write_logbook(evo, out / LOGBOOK_FILE)
    _write_plot(evo, out / PLOT_FILE)
    template_path = out / TEMPLATE_FILE
    template_bytes = _write_template(evo, template_path)
    best = evo.best
    test_score = evo.task.score(best.genome, "test")
    summary = {
        "task": evo.task.name,
        "generations": evo.generation,
        "evaluations": evo.evaluations,
        "best_fitness": best.task_fitness,
        "test_score": test_score,
        "template": str(template_path),
        "template_bytes": template_bytes,
        "seconds": round(time.perf_counter() - started, 3),
        "evolve_seconds": round(evolve_seconds, 3),
        "solved_at": evo.solved_at,
        "gradient_steps": evo.gradient_steps,
        "params": best.genome.n_params,
        "layers": list(best.genome.layer_sizes),
        "checkpoint": str(checkpoint_path),
        "stopped_by": stopped_by,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        console.print(
            f"[bold]{evo.task.name}[/]: best validation fitness {best.task_fitness:.5f}, "
            f"test {SCORE_NAMES[evo.task.kind]} {test_score:.4f}, {best.genome.n_params} params "
            f"({best.genome.n_bytes} bytes, layers {list(best.genome.layer_sizes)}), "
            f"{evo.evaluations} evaluations in {summary['seconds']} s"
            + (f"; solved after {evo.solved_at} evaluations" if evo.solved_at else "")
            + (f"; stopped early: {stopped_by}" if stopped_by else "")
        )
        console.print(
            f"wrote {out}/{{{LOGBOOK_FILE}, {PLOT_FILE}, {TEMPLATE_FILE}, {CHECKPOINT_FILE}}}"
        )
    return 0
