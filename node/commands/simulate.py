"""`qudag-node simulate STUDY`: convergence studies over many simulated peers in one process.

Each study drives the node's real sans-IO peer core, ledger store and evolution engine over a
simulated network (simulations/sim.py) and writes STUDY.csv, STUDY.png and STUDY.md to --out.
The report's first line is the command that regenerates it. Studies: sharing, topology,
byzantine, partition, scale, collective (see docs/studies.md). --quick runs each in under a
minute.

collective: time to target of N sharing peers against the same N peers isolated and one
peer, e.g. `qudag-node simulate collective --task gym:Pendulum-v1 --peers 1,2,4,8 --seeds 10`;
--peers takes a comma-separated list there.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

from qudag.evolution.tasks import TaskError, get_task
from qudag.node.errors import UserError


class _StudyHelp(argparse.Action):
    """`-h` that also describes the study named before it (`simulate byzantine --help`):
    argparse has consumed the positional by then, so the namespace holds it."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, *_: Any) -> None:
        from qudag.simulations.studies import STUDY_HELP

        parser.print_help()
        study = getattr(namespace, "study", None)
        if study in STUDY_HELP:
            print("\n" + textwrap.fill(f"study {study}: {STUDY_HELP[study]}", width=79))
        parser.exit()


def register(subparsers: Any) -> None:
    from qudag.simulations.studies import STUDIES

    p = subparsers.add_parser(
        "simulate",
        help="run a convergence study over simulated peers (CSV + PNG + markdown report)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    p.add_argument(
        "-h", "--help", action=_StudyHelp, help="show this help (and STUDY's options) and exit"
    )
    p.add_argument("study", choices=sorted(STUDIES), help="which study")
    p.add_argument("--quick", action="store_true", help="small settings (< 1 minute)")
    p.add_argument(
        "--peers",
        help="number of peers (default: per study); collective and scale: a list such as "
        "1,2,4,8,16,32",
    )
    p.add_argument(
        "--search",
        choices=("es", "islands"),
        default="es",
        help="collective: the peers' search (es: shared evolution strategy; islands: NSGA-II "
        "with migrants; default es)",
    )
    p.add_argument("--seeds", type=int, help="number of seeds (default: per study)")
    p.add_argument("--first-seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--generations", type=int, help="generations per peer (default: per study)")
    p.add_argument("--task", action="append", help="task(s) to use (default: per study)")
    p.add_argument(
        "--tasks-from", metavar="DATA_DIR", default=None,
        help="a (stopped) node's data dir: a --task may be a published task's id or id prefix "
        "from its ledger, its data read from its cache",
    )  # fmt: skip
    p.add_argument(
        "--store",
        choices=("memory", "disk"),
        default="memory",
        help="where each peer's ledger lives (disk: a temporary directory)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing each run's peers (scale study only, runs of 1,000 peers or "
        "more; results are a function of the seed and this number; default 1)",
    )
    p.add_argument(
        "--latency-ms",
        type=float,
        help="collective: median one-way link latency in ms (default 1: a LAN)",
    )
    p.add_argument(
        "--target",
        type=float,
        help="collective, byzantine: the fitness that counts as reached (default: per task)",
    )
    p.add_argument(
        "--msg-cpu-ms",
        type=float,
        help="collective: CPU ms a peer spends per gossip message it sends or receives, "
        "charged to its generations (default 0: free; ~0.8 measured on real daemons)",
    )
    p.add_argument(
        "--es-group-size",
        type=int,
        help="collective: the shared ES pools within groups of about this many peers "
        "(default 0: one group of all peers)",
    )
    p.add_argument(
        "--strategy",
        help="byzantine: the Byzantine strategy, or a comma-separated list (default: every "
        "one); with --json the last line is issue 17's summary of each strategy and fraction",
    )
    p.add_argument(
        "--fraction",
        help="byzantine: the Byzantine fraction(s) of the peers, e.g. 0.25 or 0.1,0.25,0.4 "
        "(default 0.1, 0.25, 0.5; the honest-only runs, fraction 0, always run)",
    )
    p.add_argument(
        "--no-holdout",
        action="store_true",
        help="byzantine: verifiers check claims only, no held-out score (the defence against "
        "overfit nets off, to measure what it prevents)",
    )
    p.add_argument(
        "--no-rediscover",
        action="store_true",
        help="byzantine: keep the fixed degree-4 graph of the start, the setting of the "
        "figures measured before rediscovery; by default a peer that a Disconnect left below "
        "its degree dials new peers, as the daemon's discovery does",
    )
    p.add_argument("--out", default="studies-out", help="output directory (default studies-out)")
    p.add_argument("--json", action="store_true", help="print the summary rows as JSON")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace this study's files in --out (STUDY.csv/.png/.md) if they exist; "
        "nothing else there is touched",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qudag.simulations.studies import STUDIES, StudyArgs, study_outputs

    many = args.study in ("collective", "scale")
    peer_list = _peer_list(args.peers, many)
    args.peers = peer_list[0] if peer_list and not many else None
    for name in ("peers", "seeds", "generations"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    if args.latency_ms is not None and (args.study != "collective" or not args.latency_ms > 0):
        raise UserError("--latency-ms is a positive number, for the collective study")
    if args.target is not None and args.study not in ("collective", "byzantine"):
        raise UserError("--target is for the collective and byzantine studies")
    if args.msg_cpu_ms is not None and (args.study != "collective" or args.msg_cpu_ms < 0):
        raise UserError("--msg-cpu-ms is a number >= 0, for the collective study")
    if args.es_group_size is not None and (args.study != "collective" or args.es_group_size < 0):
        raise UserError("--es-group-size is a number >= 0, for the collective study")
    strategies, fractions = _byzantine_choices(args)
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and args.study != "scale":
        raise UserError(
            "--workers > 1 is for the scale study (the others have churn, "
            "partitions or Byzantine peers, or many small runs)"
        )
    if (args.peers is not None and args.peers < 2) or (
        args.study == "scale" and any(n < 2 for n in peer_list)
    ):
        raise UserError("--peers must be at least 2")
    if args.tasks_from is not None:
        from qudag.node.ops.task_join import resolve_offline

        args.task = resolve_offline(Path(args.tasks_from), list(args.task or ()))
    for task in args.task or ():
        try:
            get_task(task)
        except TaskError as exc:
            raise UserError(f"--task {task}: {exc}") from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    existing = [name for name in study_outputs(args.study) if (out / name).exists()]
    if existing and not args.force:
        raise UserError(
            f"--out {out} already holds {', '.join(existing)}: add --force to replace them "
            "(only these files are replaced)"
        )
    study_args = StudyArgs(
        out=out,
        quick=args.quick,
        peers=args.peers,
        seeds=args.seeds,
        generations=args.generations,
        tasks=tuple(args.task or ()),
        store=args.store,
        first_seed=args.first_seed,
        workers=args.workers,
        peer_list=peer_list if many else (),
        search=args.search,
        latency_ms=args.latency_ms,
        target=args.target,
        msg_cpu_ms=args.msg_cpu_ms or 0.0,
        es_group_size=args.es_group_size or 0,
        strategies=strategies,
        fractions=fractions,
        holdout=not args.no_holdout,
        rediscover=not args.no_rediscover,
    )
    from qudag.simulations.report import code_version

    code_version()  # the version of the code as the study starts (read once, cached)
    try:
        result = STUDIES[args.study](study_args)
    except ValueError as exc:  # bad combinations of settings (e.g. a topology's degree)
        raise UserError(str(exc)) from None
    if args.json:
        summary: Any = result.summary
        if args.study == "collective" and len(summary) == 1:
            summary = summary[0]
        if args.study == "byzantine":
            from qudag.simulations.byzantine_study import byzantine_verdicts

            verdicts = byzantine_verdicts(result.rows)
            summary = verdicts[0] if len(verdicts) == 1 else verdicts
        print(json.dumps(summary, default=str))
    else:
        print(f"{result.name}: {len(result.rows)} runs in {result.wall_s:.1f} s")
        print(f"report: {result.report}")
    return 0


def _byzantine_choices(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """`--strategy` and `--fraction`, checked: for the byzantine study only."""
    from qudag.simulations.config import STRATEGIES

    chosen = (
        args.strategy is not None
        or args.fraction is not None
        or args.no_holdout
        or args.no_rediscover
    )
    if chosen and args.study != "byzantine":
        raise UserError(
            "--strategy, --fraction, --no-holdout and --no-rediscover are for the byzantine study"
        )
    strategies: tuple[str, ...] = ()
    if args.strategy is not None:
        strategies = tuple(args.strategy.split(","))
        unknown = [s for s in strategies if s not in STRATEGIES]
        if unknown or len(set(strategies)) != len(strategies):
            raise UserError(
                f"--strategy is one of {', '.join(STRATEGIES)} or a list of distinct ones, "
                f"got {args.strategy!r}"
            )
    fractions: tuple[float, ...] = ()
    if args.fraction is not None:
        try:
            fractions = tuple(float(v) for v in args.fraction.split(","))
        except ValueError:
            raise UserError(f"--fraction: not a number or a list: {args.fraction!r}") from None
        if not all(0.0 <= f < 1.0 for f in fractions) or len(set(fractions)) != len(fractions):
            raise UserError(f"--fraction: distinct numbers in [0, 1), got {args.fraction!r}")
    return strategies, fractions


def _peer_list(value: str | None, many: bool) -> tuple[int, ...]:
    """`--peers` as a number, or for the collective and scale studies a comma-separated
    list."""
    if value is None:
        return ()
    try:
        counts = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise UserError(f"--peers: not a number or a list of numbers: {value!r}") from None
    if not many and len(counts) != 1:
        raise UserError("--peers takes a list only in the collective and scale studies")
    if many and (any(n < 1 for n in counts) or len(set(counts)) != len(counts)):
        raise UserError(f"--peers: distinct numbers >= 1, got {value!r}")
    return tuple(sorted(counts))
