"""A real `qudag-node run` daemon driven over a JSON-lines command channel, and its client.

Why: the propagation benchmark (bench_propagation.py) needs the product's own daemon in its own
process, plus a way to publish probes and read when each gossiped message first reached the
validator. Run by `Worker` as `python benchmarks/node_worker.py [options] -- DAEMON_ARGS`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from qudag.node.ops.cpu import cpu_tree

HERE = Path(__file__).resolve()


def net_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["degree=4", ...]` -> NetConfig field values of the right type (`--net`)."""
    import dataclasses

    from qudag.node.net.transport import NetConfig

    kinds = {f.name: type(getattr(NetConfig(), f.name)) for f in dataclasses.fields(NetConfig)}
    out: dict[str, Any] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in kinds:
            raise SystemExit(f"--net {pair}: NetConfig has no field {name!r}")
        kind = kinds[name]
        out[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


def daemon_worker_main(
    daemon_args: list[str], sched: str = "idle", net: tuple[str, ...] = ()
) -> None:
    """A real `qudag-node run` daemon (everything: PeerCore, ledger, evolution children,
    re-evaluation, sync, heads, HTTP) plus a JSON-lines command channel on stdin/stdout that
    publishes probes and reports when each gossiped message first reached the validator.

    `sched="nice"` starts the children at nice +10 only (the design before SCHED_IDLE)."""
    import argparse as _argparse
    import logging

    import blake3
    import trio

    from qudag.node.daemon import Daemon
    from qudag.node.net.libp2p_patches import quiet_libp2p_logging
    from qudag.node.net.transport import NetConfig
    from qudag.node.ops.config import add_run_arguments, load_config
    from qudag.node.protocol.core import CONTROL_TOPIC
    from qudag.node.workers import evolution_worker

    evolution_worker.WORKER_SCHED = sched

    parser = _argparse.ArgumentParser()
    add_run_arguments(parser)
    config = load_config(parser.parse_args(daemon_args), {})
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    quiet_libp2p_logging()
    received: dict[str, int] = {}  # BLAKE3 of the message (hex) -> first validator call, ns

    class TimedDaemon(Daemon):
        def _validator(self, topic: str) -> Any:
            inner = super()._validator(topic)

            def validate(peer: str, data: bytes) -> bool:
                received.setdefault(blake3.blake3(data).hexdigest(), time.time_ns())
                return inner(peer, data)

            return validate

    ready: dict[str, Any] = {}
    daemon = TimedDaemon(
        config, on_ready=ready.update, net_config=NetConfig(**net_overrides(list(net)))
    )

    async def commands() -> None:
        while not ready:
            await trio.sleep(0.05)
        _emit({"event": "ready", **ready})
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        buf = b""
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = json.loads(line)
                op = cmd["cmd"]
                assert daemon.net is not None
                if op == "quit":
                    return
                if op == "status":
                    st = daemon.status()
                    _emit(
                        {
                            "peers": daemon.net.peers(),
                            "topic_peers": daemon.net.topic_peers(CONTROL_TOPIC),
                            "received": len(received),
                            "generation": sum(t["generation"] for t in st["tasks"].values()),
                            "vertices": st["vertices"],
                            "rejected": sum(st["rejected"].values()),
                            "cpu_s": cpu_tree(os.getpid()),
                        }
                    )
                elif op == "times":
                    wanted = set(cmd["ids"])
                    _emit({"received": {k: v for k, v in received.items() if k in wanted}})
                elif op == "publish":
                    sent: dict[str, int] = {}
                    interval = 1.0 / float(cmd["rate"])
                    start = trio.current_time()
                    for i, h in enumerate(cmd["vertices"]):
                        raw = bytes.fromhex(h)
                        await trio.sleep_until(start + i * interval)
                        sent[blake3.blake3(raw).hexdigest()] = time.time_ns()
                        await daemon.net.publish(CONTROL_TOPIC, raw)
                    _emit({"sent": sent})

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.run)
            await commands()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        daemon.close()


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


class Worker:
    """Test side of one worker process: JSON commands with bounded waits."""

    def __init__(
        self,
        daemon_args: list[str],
        stderr: Path,
        sched: str,
        net: tuple[str, ...] = (),
    ) -> None:
        argv = [
            sys.executable, str(HERE),
            "--worker-sched", sched, *(f"--net={pair}" for pair in net), "--", *daemon_args,
        ]  # fmt: skip
        stderr.parent.mkdir(parents=True, exist_ok=True)
        self.stderr = stderr
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr.open("wb"),
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:
                self.lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        self.peer_id = ""
        self.addrs: list[str] = []

    def read(self, timeout: float) -> dict[str, Any]:
        try:
            return dict(json.loads(self.lines.get(timeout=timeout)))
        except queue.Empty:
            raise RuntimeError(f"worker gave no answer within {timeout} s") from None

    def ready(self, timeout: float = 300.0) -> Worker:  # 8 daemons starting at load 20: slow
        info = self.read(timeout)
        self.peer_id, self.addrs = info["peer_id"], info["addrs"]
        return self

    def call(self, timeout: float = 30.0, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=15)
            except Exception:
                self.proc.kill()
                self.proc.wait(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-sched", choices=("idle", "nice"), default="idle")
    parser.add_argument("--net", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("daemon_args", nargs="*")
    args = parser.parse_args()
    daemon_worker_main(args.daemon_args, args.worker_sched, tuple(args.net))


if __name__ == "__main__":
    main()
