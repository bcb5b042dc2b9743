"""`qudag-node task publish|list|show`: put a user's csv on the ledger as a task, and look.

Why offline, into a stopped node's data dir: publishing is a signed vertex, and the signing key
and the ledger belong to the node; a command must never write the SQLite file a live daemon
writes (the data dir's lock refuses it with a clear message). The node gossips the task vertex
when it next runs, and serves the data, chunk by chunk, to any peer that joins the task.

`publish` reads the file, builds the task once (so a file that cannot be learnt from is
refused here, with the line and column at fault), stores the data in the content-addressed
cache DATA_DIR/blobs/, and appends the task vertex. Its id is printed: `qudag-node run --task
ID` on any peer. A unique prefix of the id (8 hex digits or more) is enough only where the
ledger already holds the task vertex (the publisher's data dir, a peer that synced it): a
peer that never saw it needs the full id to fetch it (node/ops/task_join.py).

`list` and `show` read a stopped node's data dir (`--data-dir`, default qudag-data) or ask a
running node (`--http`, `GET /api/tasks`), never both at once.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from qudag.crypto.canonical import DecodeError
from qudag.dag.records import StoreError
from qudag.dag.store import Store, ledger_path
from qudag.evolution.genome import DEFAULT_LIMITS
from qudag.evolution.published import (
    PrivateRowsError,
    blob_cache,
    make_spec,
    save_private,
)
from qudag.evolution.tasks import TaskError
from qudag.evolution.taskspec import (
    MAX_DATA_BYTES,
    MAX_DESCRIPTION,
    MAX_LICENCE,
    MAX_NAME,
)
from qudag.node.commands.templates import NodeClient, one_source
from qudag.node.errors import UserError
from qudag.node.ops.config import NodeConfig
from qudag.node.ops.preflight import DataDirLock
from qudag.node.ops.task_ledger import (
    LedgerTask,
    ledger_tasks,
    match_task,
    record_task,
    task_json,
)

DEFAULT_DATA_DIR = str(NodeConfig.data_dir)


def _open_store(data_dir: Path) -> Store:
    from qudag.node.protocol.core import NODE_DECODERS

    try:
        return Store.open(ledger_path(data_dir), decoders=NODE_DECODERS)
    except StoreError as exc:
        raise UserError(str(exc)) from None


def _locked(data_dir: Path, what: str) -> DataDirLock:
    if not data_dir.is_dir():
        raise UserError(f"no data dir {data_dir} (is --data-dir right?)")
    lock = DataDirLock(data_dir)
    lock.acquire(what)
    return lock


def _publish(args: argparse.Namespace) -> int:
    from qudag.node.daemon import load_or_create_identity
    from qudag.node.protocol.core import CoreConfig, PeerCore

    path = Path(args.file)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    if path.stat().st_size > MAX_DATA_BYTES:
        raise UserError(f"{path}: larger than {MAX_DATA_BYTES} bytes, the limit of a task's data")
    data = path.read_bytes()
    private = _read_private(args.private_holdout)
    if private == data:  # rows every peer trains on would be scored as held out
        raise UserError(f"--private-holdout {args.private_holdout}: the same rows as {path}")
    name = args.name if args.name is not None else path.stem[:MAX_NAME]
    try:
        spec = make_spec(
            data,
            target=args.target,
            name=name,
            description=args.description,
            licence=args.licence,
            kind=args.kind,
            limits=replace(DEFAULT_LIMITS, max_params=args.max_params),
            private=private,
        )
    except PrivateRowsError as exc:
        raise UserError(f"--private-holdout {args.private_holdout}: {exc}") from None
    except (TaskError, DecodeError) as exc:
        raise UserError(f"{path}: {exc}") from None
    data_dir = Path(args.data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir}: not a directory")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--data-dir {data_dir}: {exc.strerror}") from None
    lock = _locked(data_dir, "task publish")
    try:
        config = NodeConfig(data_dir=data_dir, passphrase_env=args.passphrase_env)
        identity = load_or_create_identity(config)
        with _open_store(data_dir) as store:
            existing = [t for t in ledger_tasks(store) if t.spec == spec]
            if existing:
                task = existing[0]
            else:
                core = PeerCore(identity, store, CoreConfig(tasks=()), random.Random())
                vid, _ = core.publish_task(spec, time.time_ns() // 1_000_000)
                task = LedgerTask(vid, identity.key_id, 0, spec)
        blob_cache(data_dir).put(data, spec.data.blake3)
        if private is not None:
            save_private(data_dir, task.id, private)
        record_task(data_dir, task)
    finally:
        lock.release()
    out: dict[str, Any] = {
        "task": task.id.hex(),
        "name": spec.name,
        "kind": spec.kind,
        "target": spec.target,
    }
    if spec.private is not None:
        out["private_holdout"] = {"blake3": spec.private.blake3.hex(), "rows": spec.private.rows}
    if args.json:
        print(json.dumps(out))
    else:
        again = " (already published)" if existing else ""
        print(f"task {task.id.hex()}{again}")
        print(f"  {spec.name}: {spec.kind} of {spec.target!r} from {len(spec.features)} features")
        print(f"  run it: qudag-node run --task {task.id.hex()[:16]} --data-dir {data_dir}")
        if spec.private is not None:
            print(
                f"  private held-out rows: {spec.private.rows} (BLAKE3 "
                f"{spec.private.blake3.hex()[:16]}...), kept in {data_dir}/private/, never "
                "served: this node is the task's designated verifier"
            )
    return 0


def _read_private(name: str | None) -> bytes | None:
    """The bytes of `--private-holdout FILE`, or None without it."""
    if name is None:
        return None
    path = Path(name)
    if not path.is_file():
        raise UserError(f"--private-holdout {path}: no such file")
    if path.stat().st_size > MAX_DATA_BYTES:
        raise UserError(f"--private-holdout {path}: larger than {MAX_DATA_BYTES} bytes")
    return path.read_bytes()


def _read_ledger(args: argparse.Namespace) -> tuple[Path, DataDirLock]:
    data_dir = Path(args.data_dir if args.data_dir is not None else DEFAULT_DATA_DIR)
    lock = _locked(data_dir, f"task {args.task_command}")
    if not ledger_path(data_dir).is_file():
        lock.release()
        raise UserError(f"no ledger in {data_dir} (is --data-dir right?)")
    return data_dir, lock


def _rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The tasks as `task_json` rows: from a running node (`--http`, `GET /api/tasks`) or
    from a stopped node's data dir."""
    one_source(args)
    if args.http is not None:
        from qudag.node.commands.status import node_address

        address, source = node_address(args.http)
        rows = NodeClient(address, args.timeout, source).get_json("/api/tasks").get("tasks")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise UserError(f"{address}/api/tasks: unexpected answer (no task list)")
        return rows
    data_dir, lock = _read_ledger(args)
    try:
        with _open_store(data_dir) as store:
            tasks = ledger_tasks(store)
    finally:
        lock.release()
    cache = blob_cache(data_dir)
    return [task_json(t, cache.has(t.spec.data.blake3)) for t in tasks]


def _list(args: argparse.Namespace) -> int:
    rows = _rows(args)
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no published tasks in this ledger")
    for r in rows:
        held = "data here" if r["data"]["held"] else "data not here"
        print(
            f"{r['id'][:16]}  {r['name']:<20} {r['kind']:<14} target={r['target']:<12} "
            f"{r['data']['bytes']:>9} B  {held}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    rows = {str(r.get("id", "")): r for r in _rows(args)}
    print(json.dumps(rows[match_task(args.id, list(rows))], indent=2))
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "task",
        help="publish a csv as a task on the ledger; list and show published tasks",
        description=(
            "Publish a csv file as a task (a signed ledger vertex naming the data by its BLAKE3 "
            "content address) into a stopped node's data dir; peers that run the task fetch "
            "the data from any peer holding it. List and show the tasks a ledger holds."
        ),
    )
    actions = parser.add_subparsers(dest="task_command", metavar="ACTION")
    actions.required = True

    def data_dir(p: argparse.ArgumentParser, default: str | None) -> None:
        p.add_argument(
            "--data-dir", default=default, metavar="DIR",
            help=f"the (stopped) node's data dir (default {DEFAULT_DATA_DIR})",
        )  # fmt: skip

    def node(p: argparse.ArgumentParser) -> None:
        # No default here: --data-dir given with --http is refused, not silently ignored.
        data_dir(p, None)
        p.add_argument(
            "--http", default=None, metavar="HOST:PORT",
            help="ask a running node at this HTTP address instead of reading --data-dir",
        )  # fmt: skip
        p.add_argument(
            "--timeout", type=float, default=5.0, metavar="SECONDS", help="per request (5)"
        )

    pub = actions.add_parser("publish", help="publish a csv file as a task")
    pub.add_argument("file", help="the csv file (header row, numeric features)")
    pub.add_argument("--target", default=None, help="target column (default: the last)")
    pub.add_argument("--name", default=None, help=f"short name, 1-{MAX_NAME} characters")
    pub.add_argument("--description", default="", help=f"at most {MAX_DESCRIPTION} characters")
    pub.add_argument("--licence", default="", help=f"the data's licence ({MAX_LICENCE} chars)")
    pub.add_argument(
        "--kind", choices=("classification", "regression"), default=None,
        help="default: classification for <= 20 integer or any text labels, else regression",
    )  # fmt: skip
    pub.add_argument(
        "--max-params", type=int, default=DEFAULT_LIMITS.max_params, metavar="N",
        help=f"the task's genome limit, 1-{DEFAULT_LIMITS.max_params} parameters "
        f"(default {DEFAULT_LIMITS.max_params})",
    )  # fmt: skip
    pub.add_argument(
        "--private-holdout", default=None, metavar="FILE.csv",
        help="private held-out rows (same columns as FILE): kept in the data dir, never "
        "served; the task vertex commits to their BLAKE3 and row count, and this node's "
        "attestations carry each template's score on them (the task's designated verifier)",
    )  # fmt: skip
    pub.add_argument(
        "--passphrase-env", default=None, metavar="VAR",
        help="env var holding the node key's passphrase",
    )  # fmt: skip
    pub.add_argument("--json", action="store_true", help="print one JSON line")
    data_dir(pub, DEFAULT_DATA_DIR)
    pub.set_defaults(handler=_publish)

    ls = actions.add_parser("list", help="the tasks published in a ledger")
    node(ls)
    ls.add_argument("--json", action="store_true", help="print a JSON list")
    ls.set_defaults(handler=_list)

    show = actions.add_parser("show", help="one task's definition")
    node(show)
    show.add_argument("id", help="task id or unique prefix (>= 8 hex)")
    show.set_defaults(handler=_show)
