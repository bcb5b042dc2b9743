"""ML-DSA checks of bulk sync pages in a child process, away from the daemon's GIL.

Why a process: in a catch-up the daemon decodes, stores and talks to the network on its trio
thread, all of it Python holding the GIL. pyca's ML-DSA verify releases the GIL, but the Python
loop around it does not: with the verifies in worker threads, each of the ~20,000 verifies of a
catch-up gave the GIL up and waited to get it back from a thread that was decoding or storing,
and the client used 8.1-10.2 s of CPU where a bare decode + verify loop uses ~5 s
(docs/benchmarks.md, "Catch-up"). Here the daemon still decodes every vertex (it stores the
decoded `Vertex`); the child gets only what a check needs, the body and signature bytes and the
author's raw public key, and answers one byte per vertex. The child has its own interpreter and
runs at normal priority (it is on the catch-up's critical path, unlike the evolution children).

Protocol: the framing of `node/workers/evolution_worker.py` (4-byte big-endian length + canonical
msgpack, strictly decoded on both sides; nothing is pickled). Request
``{"op": "check", "keys": [public_key, ...], "items": [[key_index, body, signature], ...]}``,
reply ``{"ok": true, "valid": bytes}`` (``valid[i]`` is 1 if item i's signature verified).
Requests may be pipelined: the child answers them in order, so the daemon sends page k+1 while
page k is being checked.

Soundness: the child verifies with exactly the key bytes the daemon sent, and the daemon marks
a vertex as checked only with the key object those bytes came from; the store honours a
precheck only if that key is the one it holds for the author (tests/test_dag_parallel.py), so
a wrong or missing answer costs a verify on the store's thread, never a rule. If the child is
unusable the daemon falls back to worker threads (`dag.validate.precheck`).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import trio

from qudag.crypto.canonical import DecodeError, fields
from qudag.dag.errors import VertexError
from qudag.dag.validate import (
    PublicKey,
    enable_parsed_key_cache,
    load_public_key,
    signature_ok,
)
from qudag.dag.vertex import Vertex
from qudag.node.workers.evolution_worker import (
    WorkerError,
    _Child,
    _die_with_parent,
    _frame,
    _read_frame,
    _write_frame,
    serve_frames,
)

PIPE_BYTES = 4 * 1024 * 1024  # wanted size of the pipe to the child (see `_grow_pipe`)
_CHECK_SCHEMA: dict[str, type | tuple[type, ...]] = {"op": str, "keys": list, "items": list}


# ------------------------------------------------------------------------- child side
def check_request(request: dict[str, Any]) -> bytes:
    """Answer one "check" request: one byte per item, 1 if its signature verified. Raises
    `DecodeError` on a malformed request (the child then reports it and exits)."""
    value = fields(request, _CHECK_SCHEMA, "check")
    if value["op"] != "check":
        raise DecodeError("type", f"unknown op {value['op']!r}")
    keys: list[PublicKey | None] = []
    for raw_key in value["keys"]:
        if type(raw_key) is not bytes:
            raise DecodeError("type", "check.keys: public keys are byte strings")
        try:
            keys.append(load_public_key(raw_key))
        except VertexError:
            keys.append(None)  # not an ML-DSA-65 key: nothing verifies with it
    items: list[Any] = value["items"]
    valid = bytearray(len(items))
    for i, item in enumerate(items):
        if (
            type(item) is not list
            or len(item) != 3
            or type(item[0]) is not int
            or type(item[1]) is not bytes
            or type(item[2]) is not bytes
        ):
            raise DecodeError("type", "check.items: [key index, body, signature]")
        if not 0 <= item[0] < len(keys):
            raise DecodeError("range", "check.items: key index out of range")
        key = keys[item[0]]
        valid[i] = key is not None and signature_ok(key, item[1], item[2])
    return bytes(valid)


def _signature_child(out: BinaryIO, inp: BinaryIO) -> None:
    enable_parsed_key_cache()  # the same few authors' keys come back in every page
    _write_frame(out, {"ok": True})
    while (request := _read_frame(inp)) is not None:
        _write_frame(out, {"ok": True, "valid": check_request(request)})


def child_main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="qudag-evo signature worker (internal)")
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    serve_frames(_signature_child)  # a failure is reported: the daemon falls back to threads


# ------------------------------------------------------------------------- daemon side
class _PipelinedChild(_Child):
    """A `_Child` whose requests may overlap: each is sent as soon as the stream is free, and
    the replies, which the child writes in request order, are handed out in that order.

    A caller cancelled (or failing) between its send and its reply leaves the stream out of
    step with the callers: the child is then marked broken and every later call raises
    `WorkerError` (the daemon falls back to threads)."""

    def __init__(self, argv: list[str], what: str) -> None:
        super().__init__(argv, what)
        self._send_lock = trio.Lock()
        self._turn = trio.Event()
        self._turn.set()
        self.broken: str | None = None

    async def start(self) -> dict[str, Any]:
        reply = await super().start()
        if self._stdin is not None:
            _grow_pipe(self._stdin.fileno())
        return reply

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        frame = _frame(request)
        async with self._send_lock:
            if self.broken is not None:
                raise WorkerError(f"{self.what}: {self.broken}")
            if self._stdin is None:
                raise WorkerError(f"{self.what}: not running")
            before, mine = self._turn, trio.Event()
            self._turn = mine
            try:
                await self._stdin.send_all(frame)
            except BaseException as exc:
                self.broken = f"send failed ({type(exc).__name__})"
                mine.set()
                if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
                    raise WorkerError(f"{self.what}: the worker process is gone") from None
                raise
        try:
            await before.wait()
            if self.broken is not None:
                raise WorkerError(f"{self.what}: {self.broken}")
            return await self._receive()
        except BaseException as exc:
            if self.broken is None:
                self.broken = f"a reply was lost ({type(exc).__name__})"
            raise
        finally:
            mine.set()


def _grow_pipe(fd: int) -> None:
    """Let the pipe to the child hold a whole request (a sync page is ~1 MB; Linux pipes hold
    64 KB by default). With the default, each page crossed in 16+ writes, each waiting for the
    trio loop to come round while it decoded, stored and did network I/O, and the child idled
    waiting for its input (per-page timeline, docs/benchmarks.md "Catch-up"). Best effort:
    Linux only, capped by /proc/sys/fs/pipe-max-size (1 MiB by default)."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is None:
        return
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        limit = PIPE_BYTES
    try:
        fcntl.fcntl(fd, setpipe, min(PIPE_BYTES, limit))
    except OSError:
        pass


def _signature_argv() -> list[str]:
    return [
        sys.executable,
        "-m",
        "qudag.node.workers.signature_worker",
        "--parent",
        str(os.getpid()),
    ]


class SignatureProcess:
    """The daemon's handle on the signature worker process (see the module docstring)."""

    def __init__(self) -> None:
        self._child = _PipelinedChild(_signature_argv(), "signature checks")

    async def start(self) -> None:
        try:
            await self._child.start()
        except BaseException as exc:
            self._child.broken = f"did not start ({type(exc).__name__})"
            raise

    @property
    def usable(self) -> bool:
        return self._child.process is not None and self._child.broken is None

    async def check(
        self, vertices: Sequence[Vertex | None], keys: Mapping[bytes, PublicKey]
    ) -> list[bool]:
        """For each vertex, whether its signature verifies with `keys[author]` (False for None
        and for an author without a key here, which is not sent)."""
        good = [False] * len(vertices)
        index: dict[bytes, int] = {}
        key_bytes: list[bytes] = []
        items: list[list[Any]] = []
        where: list[int] = []
        for i, vertex in enumerate(vertices):
            if vertex is None:
                continue
            key = keys.get(vertex.author)
            if key is None:
                continue
            k = index.get(vertex.author)
            if k is None:
                k = index[vertex.author] = len(key_bytes)
                key_bytes.append(key.public_bytes_raw())
            items.append([k, vertex.body, vertex.signature])
            where.append(i)
        if not items:
            return good
        reply = await self._child.call({"op": "check", "keys": key_bytes, "items": items})
        valid = reply.get("valid")
        if type(valid) is not bytes or len(valid) != len(items):
            self._child.broken = "malformed reply"
            raise WorkerError("signature checks: malformed reply")
        for i, ok in zip(where, valid, strict=True):
            good[i] = ok == 1
        return good

    async def aclose(self) -> None:
        await self._child.aclose()


if __name__ == "__main__":
    child_main()
