"""A P2PNode in its own process, driven by JSON lines, for the multi-process network tests.

Run: `python tests/net_helpers.py [--bootstrap ADDR ...] [--topic T ...]`. It prints
`{"event": "ready", "peer_id": ..., "addrs": [...]}` once listening, then answers one JSON line
per command line on stdin (see `COMMANDS`). Echoes sync requests as `b"echo:" + request`;
a request starting with `b"sleep:"` sleeps that many seconds first (for timeout tests).
`NodeProc` is the test side: it starts the process and calls commands with timeouts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio
from libp2p.abc import INotifee

from qudag.crypto.signing import Identity
from qudag.node.net.libp2p_patches import quiet_libp2p_logging
from qudag.node.net.sync_protocol import SyncError
from qudag.node.net.transport import Delivery, MessageTooLarge, NetConfig, P2PNode

HERE = Path(__file__).resolve().parent


class DisconnectCounter(INotifee):
    """Counts the connections closed, per peer (base58 id): proof, from this side, that a peer
    dropped us even if it re-dials or accepts us again a moment later."""

    def __init__(self) -> None:
        self.closed: Counter[str] = Counter()

    async def disconnected(self, network: Any, conn: Any) -> None:
        self.closed[conn.muxed_conn.peer_id.to_base58()] += 1
        await trio.lowlevel.checkpoint()

    async def connected(self, network: Any, conn: Any) -> None:
        await trio.lowlevel.checkpoint()

    async def opened_stream(self, network: Any, stream: Any) -> None:
        await trio.lowlevel.checkpoint()

    async def closed_stream(self, network: Any, stream: Any) -> None:
        await trio.lowlevel.checkpoint()

    async def listen(self, network: Any, multiaddr: Any) -> None:
        await trio.lowlevel.checkpoint()

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        await trio.lowlevel.checkpoint()


class Helper:
    def __init__(self, node: P2PNode) -> None:
        self.node = node
        self.received: Counter[str] = Counter()
        self.latencies_ms: list[float] = []
        self.first_bytes: dict[str, set[int]] = {}
        self.drops = DisconnectCounter()
        node.host.get_network().register_notifee(self.drops)

    async def on_message(self, d: Delivery) -> None:
        self.received[d.topic] += 1
        if len(d.data) >= 12:
            seq = int.from_bytes(d.data[:4], "big")
            sent_ns = int.from_bytes(d.data[4:12], "big")
            self.latencies_ms.append((time.time_ns() - sent_ns) / 1e6)
            self.first_bytes.setdefault(d.topic, set()).add(seq)

    async def on_request(self, peer: str, request: bytes) -> bytes:
        if request.startswith(b"sleep:"):
            await trio.sleep(float(request[6:]))
        return b"echo:" + request

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        node = self.node
        op = cmd["cmd"]
        if op == "status":
            return {
                "peer_id": node.peer_id,
                "peers": node.peers(),
                "topic_peers": {t: node.topic_peers(t) for t in cmd.get("topics", [])},
                "received": dict(self.received),
                "distinct": {t: len(s) for t, s in self.first_bytes.items()},
                "rejections": node.rejections,
                "stats": node.stats,
                "health": node.health(),
                "cpu_s": time.process_time(),
            }
        if op == "publish":
            size = int(cmd.get("size", 5000))
            rate = float(cmd.get("rate", 0))
            start = int(cmd.get("start", 0))
            for i in range(int(cmd["count"])):
                head = (start + i).to_bytes(4, "big") + time.time_ns().to_bytes(8, "big")
                try:
                    await node.publish(cmd["topic"], head + b"x" * max(0, size - 12))
                except MessageTooLarge as exc:
                    return {"error": "oversize", "detail": str(exc)}
                if rate:
                    await trio.sleep(1 / rate)
            return {"ok": True}
        if op == "raw_publish":  # bypasses our size checks (send and own validator), as a
            # hostile peer would
            saved = node.pubsub.topic_validators.pop(cmd["topic"], None)
            try:
                await node.pubsub.publish(cmd["topic"], b"z" * int(cmd["size"]))
            finally:
                if saved is not None:
                    node.pubsub.topic_validators[cmd["topic"]] = saved
            return {"ok": True}
        if op == "latencies":
            lat, self.latencies_ms = self.latencies_ms, []
            return {"latencies_ms": lat}
        if op == "request":
            t0 = time.perf_counter()
            try:
                data = await node.request(
                    cmd["peer"], bytes.fromhex(cmd["data"]), float(cmd.get("req_timeout", 10))
                )
            except SyncError as exc:
                return {"error": exc.reason, "detail": str(exc)}
            return {"response": data.hex(), "ms": (time.perf_counter() - t0) * 1000}
        if op == "request_many":
            lat = []
            for _ in range(int(cmd["count"])):
                t0 = time.perf_counter()
                await node.request(cmd["peer"], b"x" * int(cmd.get("size", 100)), 10)
                lat.append((time.perf_counter() - t0) * 1000)
            return {"latencies_ms": lat}
        if op == "connect":
            try:
                return {"peer_id": await node.connect(cmd["addr"])}
            except Exception as exc:
                return {"error": repr(exc)}
        if op == "garbage":
            return await self.garbage(cmd)
        raise ValueError(f"unknown command {op}")

    async def garbage(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Open a stream on `protocol` to `peer`, write raw bytes, report what happened."""
        from libp2p.peer.id import ID

        node = self.node
        pid = ID.from_base58(cmd["peer"])
        stream = None
        before = self.drops.closed[cmd["peer"]]
        for _ in range(10):  # the peer may still be refusing us for a moment (cooldown)
            try:
                if cmd.get("addr"):
                    await node.connect(cmd["addr"])
                stream = await node.host.new_stream(pid, [cmd["protocol"]])
                break
            except Exception:
                await trio.sleep(0.3)
        if stream is None:
            return {"error": "could not open a stream"}
        try:  # once only: a retry after a write that raised could deliver the garbage twice
            await stream.write(bytes.fromhex(cmd["data"]))
        except Exception as exc:
            return {"stream": f"write: {type(exc).__name__}", "dropped": True}
        outcome = "open"
        with trio.move_on_after(float(cmd.get("wait", 3))):
            try:
                while await stream.read(65536):
                    pass
                outcome = "eof"
            except Exception as exc:
                outcome = type(exc).__name__
        with trio.move_on_after(float(cmd.get("wait", 3))):
            while self.drops.closed[cmd["peer"]] == before:
                await trio.sleep(0.02)
        return {"stream": outcome, "dropped": self.drops.closed[cmd["peer"]] > before}


async def serve(args: argparse.Namespace) -> None:
    quiet_libp2p_logging()
    logging.getLogger("qudag").setLevel(logging.INFO)
    holder: list[Helper] = []

    async def on_message(d: Delivery) -> None:
        await holder[0].on_message(d)

    async def on_request(peer: str, req: bytes) -> bytes:
        return await holder[0].on_request(peer, req)

    node = P2PNode(
        Identity.generate(),
        bootstrap=args.bootstrap,
        topics={t: None for t in args.topic},
        on_message=on_message,
        sync_handler=on_request,
        config=NetConfig(sync_handler_timeout=args.handler_timeout, penalty_cooldown=args.cooldown),
    )
    holder.append(Helper(node))
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with node:
        print(json.dumps({"event": "ready", "peer_id": node.peer_id, "addrs": node.addrs}))
        sys.stdout.flush()
        buf = b""
        running = True
        while running:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                break
            buf += chunk
            while running and b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = json.loads(line)
                if cmd["cmd"] == "quit":
                    running = False
                    break
                try:
                    reply = await holder[0].command(cmd)
                except Exception as exc:
                    reply = {"error": "exception", "detail": repr(exc)}
                print(json.dumps(reply))
                sys.stdout.flush()
        t0 = time.perf_counter()
    sys.stderr.write(f"shutdown took {time.perf_counter() - t0:.3f} s\n")


class NodeProc:
    """Test side: one helper process, commands with timeouts, killed for sure at the end."""

    def __init__(
        self,
        bootstrap: list[str] | None = None,
        topics: list[str] | None = None,
        handler_timeout: float = 10.0,
        cooldown: float = 30.0,
        ready_timeout: float = 20.0,
    ) -> None:
        argv = [sys.executable, str(HERE / "net_helpers.py")]
        for b in bootstrap or []:
            argv += ["--bootstrap", b]
        for t in topics or []:
            argv += ["--topic", t]
        argv += ["--handler-timeout", str(handler_timeout), "--cooldown", str(cooldown)]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, False), daemon=True).start()
        self._ready_timeout = ready_timeout
        self.peer_id = ""
        self.addrs: list[str] = []

    def _pump(self, pipe: Any, is_stdout: bool) -> None:
        for line in pipe:
            if is_stdout:
                self._lines.put(line)
            else:
                self._stderr.append(line)

    def wait_ready(self) -> NodeProc:
        ready = self._read(self._ready_timeout)
        assert ready.get("event") == "ready", ready
        self.peer_id, self.addrs = ready["peer_id"], ready["addrs"]
        return self

    def _read(self, timeout: float) -> dict[str, Any]:
        try:
            return json.loads(self._lines.get(timeout=timeout))
        except queue.Empty:
            raise TimeoutError(
                f"no reply in {timeout} s; stderr tail: {''.join(self._stderr[-20:])}"
            ) from None

    def call(self, timeout: float = 15.0, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def wait_for(self, predicate: Any, timeout: float, **status: Any) -> dict[str, Any]:
        """Poll `status` until `predicate(status)` holds; return the last status."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.call(cmd="status", **status)
            if predicate(st) or time.monotonic() > deadline:
                return st
            time.sleep(0.1)

    def quit(self, timeout: float = 10.0) -> float:
        """Ask the node to stop; returns seconds until the process exited."""
        t0 = time.monotonic()
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=timeout)
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--topic", action="append", default=[])
    parser.add_argument("--handler-timeout", type=float, default=10.0)
    parser.add_argument("--cooldown", type=float, default=30.0)
    trio.run(serve, parser.parse_args())
