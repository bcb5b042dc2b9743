"""`qudag-node dag verify|export|import`: check a ledger, and move vertices between ledgers.

The ledger of a node lives at DATA_DIR/ledger.sqlite3. Export writes the stored vertices as a
stream of raw wire bytes in topological order (each vertex is self-delimiting, so the file is
just the vertices back to back: docs/vertex-format.md). Import validates every vertex exactly
as bytes from the network are validated, in one transaction: if any vertex is invalid or the
file is not a vertex stream, nothing is imported; a vertex with missing parents is pending.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from qudag.dag.errors import VertexError
from qudag.dag.records import BatchRejected, StoreError
from qudag.dag.segment import segment_path
from qudag.dag.store import Store, ledger_path
from qudag.dag.vertex import iter_vertex_stream
from qudag.node.errors import UserError
from qudag.node.ops.preflight import LOCK_FILE, DataDirLock


def _open_existing(data_dir: str) -> Store:
    path = ledger_path(data_dir)
    if not path.is_file():
        raise UserError(f"no ledger at {path} (is --data-dir right?)")
    return _open(path)


def _open(path: Path) -> Store:
    """Open with a running node's payload decoders, so that import and verify judge template
    payloads exactly as the node does (evolution's strict decoder)."""
    from qudag.node.protocol.core import NODE_DECODERS

    try:
        return Store.open(path, decoders=NODE_DECODERS)
    except StoreError as exc:
        raise UserError(str(exc)) from None


def _verify(args: argparse.Namespace) -> int:
    with _open_existing(args.data_dir) as store:
        report = store.verify_all()
    for problem in report.problems:
        print(f"qudag-node dag verify: {problem}", file=sys.stderr)
    print(json.dumps(report.summary()))
    return 0 if report.invalid == 0 and not report.problems else 1


def _export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"{out} exists (use --force to overwrite)")
    if not out.parent.is_dir():
        raise UserError(f"directory {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    count = 0
    size = 0
    with _open_existing(args.data_dir) as store:
        try:
            with open(tmp, "wb") as handle:
                for raw in store.iter_raw():
                    handle.write(raw)
                    count += 1
                    size += len(raw)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, out)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write {out}: {exc.strerror}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    print(json.dumps({"vertices": count, "bytes": size, "out": str(out)}))
    return 0


def _import(args: argparse.Namespace) -> int:
    source = Path(args.input)
    if not source.is_file():
        raise UserError(f"no such file: {source}")
    data_dir = Path(args.data_dir)
    new_dir = not data_dir.exists()
    new_ledger = not ledger_path(data_dir).exists()
    new_lock = not (data_dir / LOCK_FILE).exists()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {data_dir}: {exc.strerror}") from None
    lock = DataDirLock(data_dir)
    try:
        lock.acquire("import")  # never write a ledger that a running node holds
        return _import_into(source, data_dir)
    except BaseException:
        # A failed import leaves nothing behind that it created (issue 13, item 4): not the
        # folder, not an empty ledger.
        lock.release()
        if new_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
        elif new_ledger:
            ledger = ledger_path(data_dir)
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{ledger}{suffix}").unlink(missing_ok=True)
            segment_path(ledger).unlink(missing_ok=True)
        if not new_dir and new_lock:
            (data_dir / LOCK_FILE).unlink(missing_ok=True)
        raise
    finally:
        lock.release()


def _import_into(source: Path, data_dir: Path) -> int:
    now_ms = int(time.time() * 1000)
    offsets: list[int] = []

    def records(handle: BinaryIO) -> Iterator[bytes]:
        for offset, raw in iter_vertex_stream(handle):
            offsets.append(offset)
            yield raw

    with _open(ledger_path(data_dir)) as store:
        try:
            with open(source, "rb") as handle:
                results = store.ingest_many(records(handle), now_ms, atomic=True)
        except VertexError as exc:
            raise UserError(f"{source}: not a vertex stream ({exc}); nothing imported") from None
        except BatchRejected as exc:
            where = offsets[exc.index] if exc.index < len(offsets) else "?"
            raise UserError(
                f"{source}: vertex #{exc.index + 1} at byte {where} rejected "
                f"({exc.result.reason}); nothing imported"
            ) from None
        except OSError as exc:
            raise UserError(f"cannot read {source}: {exc.strerror}") from None
        statuses = Counter(result.status.value for result in results)
        released = sum(len(result.released) for result in results)
        summary = {
            "read": len(results),
            "accepted": statuses["accepted"] + released,
            "duplicate": statuses["duplicate"],
            "pending": store.orphan_count(),
            "vertices": store.count(),
            "tips": len(store.tips()),
        }
    print(json.dumps(summary))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dag = subparsers.add_parser(
        "dag",
        help="verify a ledger, export or import its vertices",
        description="Inspect and move the signed DAG ledger kept at DATA_DIR/ledger.sqlite3.",
    )
    actions = dag.add_subparsers(dest="dag_command", metavar="ACTION")
    actions.required = True

    verify = actions.add_parser(
        "verify",
        help="re-verify every stored vertex and print a JSON summary",
        description=(
            "Re-check every stored vertex from its bytes (structure, ML-DSA-65 signature, "
            "parents, seq chain) and the store's DAG invariants; print "
            '{"vertices": N, "invalid": K, "orphans": O, "tips": T}. Exit status 1 if '
            "anything is invalid."
        ),
    )
    verify.add_argument("--data-dir", required=True, metavar="DIR", help="the node's data dir")
    verify.set_defaults(handler=_verify)

    export = actions.add_parser(
        "export",
        help="write every stored vertex to a file (raw bytes, topological order)",
        description=(
            "Write the stored vertices, parents first, as a stream of raw vertex bytes (no "
            "header; pending vertices are not written). Framing: docs/vertex-format.md, "
            "section 7 'Export stream (framing)'."
        ),
    )
    export.add_argument("--data-dir", required=True, metavar="DIR", help="the node's data dir")
    export.add_argument("--out", required=True, metavar="FILE", help="file to write")
    export.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    export.set_defaults(handler=_export)

    imp = actions.add_parser(
        "import",
        help="validate and add the vertices of an export file",
        description=(
            "Validate every vertex of FILE as if it came from the network and add them to the "
            "ledger at DATA_DIR (created if needed), in one transaction: an invalid vertex or "
            "a malformed file imports nothing. A vertex whose parents are missing is not "
            "invalid: it is stored as pending (counted in the summary) until they arrive."
        ),
    )
    imp.add_argument("--data-dir", required=True, metavar="DIR", help="the node's data dir")
    imp.add_argument("--in", dest="input", required=True, metavar="FILE", help="file to read")
    imp.set_defaults(handler=_import)
