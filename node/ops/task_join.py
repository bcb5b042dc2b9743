"""`run --task <task id or prefix>`: join a published task, fetching its data first if needed.

Why a phase before the node proper: a node's tasks shape everything it builds at start (claim
tolerances, topics, one evolution child per task), and a published task cannot be loaded
before its data is here. So when a task's vertex or data is missing, the node first runs
with no task of its own (it syncs the ledger, serves what it holds and fetches the data, chunk
by chunk, from any peer: node/protocol/datafetch.py), stops once every named task's data is
in its cache and checked, and then starts as usual with the tasks loadable. A later start
finds the data in the cache and skips the phase; a fetch cut short resumes with the chunks
already on disk.

Every node, fetching or not, has its data dir's cache (`PeerCore.data`, given by the daemon),
so it serves the data of the tasks it holds to the peers that join them.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import signal
from pathlib import Path

import trio

from qudag.dag.records import StoreError
from qudag.dag.store import Store, ledger_path
from qudag.evolution.published import blob_cache, set_task_root
from qudag.evolution.taskspec import TASK_ID_HEX, TASK_PREFIX, task_name
from qudag.node.errors import UserError
from qudag.node.ops.config import NodeConfig
from qudag.node.ops.preflight import DataDirLock
from qudag.node.ops.task_ledger import (
    MIN_PREFIX,
    LedgerTask,
    ledger_task,
    match_task,
    record_task,
)
from qudag.node.protocol.core import NODE_DECODERS, PeerCore

log = logging.getLogger("qudag.node.tasks")

FETCH_POLL_S = 0.2
_HEX_REF = re.compile(f"[0-9a-f]{{{MIN_PREFIX},{TASK_ID_HEX}}}")


def published_ref(spec: str) -> str | None:
    """The id (or id prefix) a `--task` value names if it is a published task: `task:HEX` or
    bare hex of >= 8 digits (no built-in task name is hex); else None."""
    ref = spec.removeprefix(TASK_PREFIX).lower()
    if spec.startswith(TASK_PREFIX) or _HEX_REF.fullmatch(ref):
        return ref
    return None


def resolve_tasks(config: NodeConfig) -> tuple[NodeConfig, list[bytes]]:
    """`config` with published task refs replaced by their names (`task:<id hex>`), and the
    ids of those whose vertex or data is not here yet. Raises `UserError` for a prefix that
    names no task in the ledger (only a full id can be fetched from peers)."""
    names, missing = resolve_refs(config.data_dir, config.tasks)
    return dataclasses.replace(config, tasks=tuple(dict.fromkeys(names))), missing


def resolve_offline(data_dir: Path, specs: list[str]) -> list[str]:
    """`specs` with published task refs resolved in a stopped node's data dir, whose data
    must be here (for commands that evolve or simulate on one machine)."""
    names, missing = resolve_refs(data_dir, specs)
    if missing:
        raise UserError(
            f"task {missing[0].hex()[:16]}: its vertex or data is not in {data_dir}; "
            f"fetch it first: qudag-node run --data-dir {data_dir} --task {missing[0].hex()} "
            "--bootstrap ADDR"
        )
    return names


def resolve_refs(
    data_dir: Path, specs: tuple[str, ...] | list[str]
) -> tuple[list[str], list[bytes]]:
    """Names for `specs` (published refs resolved through the ledger of `data_dir`, the
    rest unchanged) and the ids of published tasks whose vertex or data is missing; makes
    `data_dir`'s published tasks loadable in this process and its children."""
    set_task_root(data_dir)
    refs = {spec: ref for spec in specs if (ref := published_ref(spec)) is not None}
    resolved: dict[str, LedgerTask] = {}
    if refs and ledger_path(data_dir).is_file():
        lock = DataDirLock(data_dir)
        lock.acquire()
        try:
            with Store.open(ledger_path(data_dir), decoders=NODE_DECODERS) as store:
                # The ids come from the store's task index; only the tasks named are decoded.
                ids = [vid.hex() for vid in store.task_vertex_ids()]
                for spec, ref in refs.items():
                    if any(i.startswith(ref) for i in ids):
                        task = ledger_task(store, bytes.fromhex(match_task(ref, ids)))
                        assert task is not None  # the store listed it
                        resolved[spec] = task
        except StoreError as exc:
            raise UserError(str(exc)) from None
        finally:
            lock.release()
    names: list[str] = []
    missing: list[bytes] = []
    for spec in specs:
        if spec not in refs:
            names.append(spec)
            continue
        task = resolved.get(spec)
        if task is not None:
            names.append(task.name)
            if not record_task(data_dir, task):
                missing.append(task.id)
            continue
        ref = refs[spec]
        if len(ref) != TASK_ID_HEX:
            raise UserError(
                f"--task {spec}: no task with that id prefix in the ledger of {data_dir}; give "
                f"the full {TASK_ID_HEX}-digit id to fetch it from peers"
            )
        names.append(task_name(bytes.fromhex(ref)))
        missing.append(bytes.fromhex(ref))
    return names, missing


async def fetch_task_data(config: NodeConfig, wanted: list[bytes]) -> bool:
    """Run a node with no task of its own until the vertices and data of `wanted` are here;
    False if a signal stopped it first."""
    from qudag.node.daemon import Daemon

    phase = dataclasses.replace(config, tasks=(), when_done="serve")
    daemon = Daemon(phase)
    joining = Joining(config.data_dir)
    done = False
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(daemon.run)

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
                while not done:
                    await trio.sleep(FETCH_POLL_S)
                    done = all([joining.done(daemon.core, tid) for tid in wanted])
                nursery.cancel_scope.cancel()
    finally:
        daemon.close()
    return done


class Joining:
    """The wanted tasks of a fetch phase, looked at every `FETCH_POLL_S`: each task's vertex
    is looked up by its id until it is here, then decoded, recorded and its fetch started
    once; later looks ask only the cache and the fetch's progress."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.cache = blob_cache(data_dir)
        self.tasks: dict[bytes, LedgerTask] = {}  # wanted tasks whose vertex is here
        self._reported: dict[bytes, object] = {}  # the last state logged of each task

    def done(self, core: PeerCore, tid: bytes) -> bool:
        """True once task `tid`'s data is in the cache, checked; `UserError` if `tid` is not
        a task or its data's chunks do not make up the announced file."""
        task = self.tasks.get(tid)
        if task is None:
            found = ledger_task(core.store, tid)
            if found is None:
                self._report(tid, "waiting", "waiting for its vertex from peers")
                return False
            task = self.tasks[tid] = found
            if record_task(self.data_dir, task):
                return True
            core.fetch_task_data(tid)
        digest = task.spec.data.blake3
        if self.cache.has(digest):
            return True
        assert core.data is not None  # the daemon attaches its data dir's cache
        failed = core.data.failed.get(digest)
        if failed:
            raise UserError(f"task {tid.hex()[:16]}: {failed}")
        progress = core.data.progress(digest)
        self._report(tid, progress, f"data chunks {progress}")
        return False

    def _report(self, tid: bytes, state: object, what: str) -> None:
        if self._reported.get(tid) != state:
            log.info("task %s: %s", tid.hex()[:16], what)
            self._reported[tid] = state
