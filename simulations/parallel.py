"""One simulation run by several processes: conservative parallel discrete-event simulation.

Why: at 1,000 peers every peer ingests every vertex, millions of ingests, each a few dozen
microseconds of Python and SQLite. One process uses one of this machine's two cores.

How: worker k simulates the peers whose index is k modulo the number of workers (their
stores, cores and breeders); every worker knows every peer's key, links and gossip mesh
(`RemotePeer`). Simulated time advances in windows as long as the smallest latency a message
can have (`LinkModel.min_latency_ms`): nothing sent inside a window can arrive before the
window ends, so each worker runs its own events of the window without waiting, then the
workers swap what their peers sent to the others' peers (`Outbox`) and go on. The result is
deterministic for a seed and a number of workers (each worker draws latencies from its own
generator); with constant latencies it is the single-process run, event for event (a test
checks that).

What cannot be split this way is refused when the run is configured (`SimConfig`): churn,
partitions and Byzantine peers open and close links on both sides at once.

The processes are fresh interpreters (`python -m qudag.simulations.parallel`), connected by
socket pairs; everything between them is strict msgpack (crypto.canonical), never pickle.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import select
import selectors
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from qudag.crypto.canonical import DecodeError, pack, unpack
from qudag.simulations import gossip, stats
from qudag.simulations.config import SimConfig
from qudag.simulations.gossip import ParallelError
from qudag.simulations.network import LinkModel
from qudag.simulations.sim import Simulation
from qudag.simulations.stats import merge_sample, merge_summary

MAX_FRAME = 1 << 30  # a window's traffic is ~1 MB at 1,000 peers; the final report more
_LEN = struct.Struct(">Q")


class Channels:
    """Sockets to the other workers, and a frame swap with all of them at once.

    Full duplex through a selector: two workers that each send a large frame before
    reading would otherwise both block once the socket buffers are full.
    """

    def __init__(self, socks: dict[int, socket.socket]) -> None:
        self.socks = socks
        self._selector = selectors.DefaultSelector()
        # Bytes read past a frame: the next window's frame from a worker that finished this
        # swap and the window after it before we read.
        self._early: dict[int, bytearray] = {k: bytearray() for k in socks}
        for sock in socks.values():
            sock.setblocking(False)

    def swap(self, frames: dict[int, bytes]) -> dict[int, Any]:
        """Send `frames[k]` to worker k and return what each worker sent (decoded)."""
        out = {k: memoryview(_LEN.pack(len(f)) + f) for k, f in frames.items()}
        done: dict[int, bytes] = {}
        for k in self.socks:
            frame = self._take_frame(k)
            if frame is not None:
                done[k] = frame
        sel = self._selector
        for k, sock in self.socks.items():
            want = (selectors.EVENT_READ if k not in done else 0) | (
                selectors.EVENT_WRITE if len(out[k]) else 0
            )
            if want:
                sel.register(sock, want, k)
        try:
            while len(done) < len(self.socks) or any(len(v) for v in out.values()):
                for key, events in sel.select():
                    k = key.data
                    sock = self.socks[k]
                    if events & selectors.EVENT_WRITE and len(out[k]):
                        try:
                            sent = sock.send(out[k])
                        except (BrokenPipeError, ConnectionResetError):
                            # The worker is gone: the reason it sent before leaving (or
                            # its end of stream) is read below, not this write's error.
                            sent = len(out[k])
                        out[k] = out[k][sent:]
                    if events & selectors.EVENT_READ and k not in done:
                        chunk = sock.recv(1 << 20)
                        if not chunk:
                            raise ParallelError(f"worker {k} ended the run (see its error above)")
                        self._early[k] += chunk
                        frame = self._take_frame(k)
                        if frame is not None:
                            done[k] = frame
                    want = selectors.EVENT_READ if k not in done else 0
                    if len(out[k]):
                        want |= selectors.EVENT_WRITE
                    if want:
                        sel.modify(sock, want, k)
                    else:
                        sel.unregister(sock)
        finally:
            for sock in self.socks.values():
                try:
                    sel.unregister(sock)
                except KeyError:
                    pass
        return {k: _decode(k, data) for k, data in done.items()}

    def receive(self, k: int) -> Any:
        """One frame from worker k alone (a worker's configuration, before any window)."""
        sock = self.socks[k]
        while (frame := self._take_frame(k)) is None:
            select.select([sock], [], [])
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise ParallelError(f"worker {k} ended the run")
            self._early[k] += chunk
        return _decode(k, frame)

    def _take_frame(self, k: int) -> bytes | None:
        """A whole frame from worker k's buffered bytes, if there is one."""
        buf = self._early[k]
        if len(buf) < _LEN.size:
            return None
        (n,) = _LEN.unpack_from(buf)
        if n > MAX_FRAME:
            raise ParallelError(f"worker {k} sent a {n}-byte frame")
        if len(buf) < _LEN.size + n:
            return None
        frame = bytes(buf[_LEN.size : _LEN.size + n])
        del buf[: _LEN.size + n]
        return frame

    def close(self) -> None:
        self._selector.close()
        for sock in self.socks.values():
            sock.close()


def _decode(k: int, data: bytes) -> Any:
    try:
        value = unpack(data, MAX_FRAME)
    except DecodeError as exc:
        raise ParallelError(f"worker {k} sent a malformed frame ({exc.reason})") from None
    if isinstance(value, dict) and "error" in value:
        raise ParallelError(f"worker {k} failed: {value['error']}")
    return value


def _window_frame(value: Any) -> list[list[list[Any]]]:
    if not (isinstance(value, list) and len(value) == 3 and all(type(x) is list for x in value)):
        raise ParallelError("a worker sent a window frame of the wrong shape")
    return value


def drive(sim: Simulation, channels: Channels) -> None:
    """Run this worker's share of the simulation in lockstep windows with the others."""
    cfg = sim.config
    window = cfg.link.min_latency_ms
    sim.start()
    end = sim.end_ms
    k = 0
    while (k + 1) * window < end:
        k += 1
        sim.sched.run_before(k * window)
        frames = {w: pack(sim.outboxes[w].take()) for w in channels.socks}
        t0 = time.perf_counter()
        received = channels.swap(frames)
        sim.wait_s += time.perf_counter() - t0
        for w in sorted(received):
            gossip.receive(sim, _window_frame(received[w]))
    # The last window: whatever it sends arrives after the end of the run.
    sim.sched.run_until(end)
    sim.finish()


def _report(sim: Simulation) -> dict[str, Any]:
    """What worker 0 needs from another worker to describe the whole run."""
    return {
        "samples": sim.samples,
        "summary": stats.summary_part(sim),
        "events": sim.events,
        "evaluations": [list(e) for e in sim._evals_at],
        "done_checks": sim._done_checks,
        "last_finish": sim._last_finish,
    }


def merge_reports(sim: Simulation, reports: list[dict[str, Any]]) -> None:
    """Worker 0: the rows, events and summary of the whole run, from every worker's report
    (its own included)."""
    # As in one process: "generations-done" is the first look of a finished peer at whether
    # all peers are done, after the last one finished.
    last_finish = max(r["last_finish"] for r in reports)
    looks = [t for r in reports for t in r["done_checks"] if t >= last_finish]
    done_at = min(looks) if looks else None
    by_time: dict[int, list[dict[str, Any]]] = {}
    for report in reports:
        for part in report["samples"]:
            by_time.setdefault(part["t_ms"], []).append(part)
    sim.rows = []
    identical_at: int | None = None
    for t in sorted(by_time):
        row = merge_sample(by_time[t], sim.target)
        done = done_at is not None and done_at <= t
        if row["identical"] and done and identical_at is None:
            identical_at = t
        sim.rows.append(row)
    events = [e for r in reports for e in r["events"] if e.get("event") != "generations-done"]
    if done_at is not None:
        events.append({"t_ms": done_at, "event": "generations-done"})
    sim.events = sorted(events, key=lambda e: e["t_ms"])
    summary = merge_summary(sim.config, [r["summary"] for r in reports])
    reached = summary["reached_t_ms"]
    if reached is not None:
        # Evaluations spent by all workers up to that instant (each logs its own).
        total = 0
        for r in reports:
            log = r["evaluations"]
            times = [t for t, _ in log]
            total += sum(n for _, n in log[: bisect.bisect_right(times, reached)])
        summary["reached_evals"] = total
    summary["identical_t_ms"] = identical_at
    summary["wall_s"] = sim.wall_s
    sim._merged = summary


def config_to_dict(config: SimConfig) -> dict[str, Any]:
    value = dataclasses.asdict(config)
    value["partitions"] = []  # a tuple (msgpack has arrays only), and empty here
    return value


def config_from_dict(value: Any) -> SimConfig:
    """The `SimConfig` worker 0 sent (only what a parallel run can have: no churn, no
    partitions, no Byzantine peers)."""
    names = {f.name for f in dataclasses.fields(SimConfig)}
    if not isinstance(value, dict) or set(value) != names:
        raise ParallelError("the run's configuration has the wrong fields")
    link = value["link"]
    if not isinstance(link, dict) or value["churn"] is not None or value["partitions"]:
        raise ParallelError("a parallel run has no churn and no partitions")
    fields = {**value, "link": LinkModel(**link), "partitions": ()}
    return SimConfig(**fields)


def run_workers(sim: Simulation) -> None:
    """Worker 0 (this process, `sim`): start the other workers, run with them, merge."""
    cfg = sim.config
    n = cfg.workers
    t0 = time.perf_counter()
    pairs = {(a, b): socket.socketpair() for a in range(n) for b in range(a + 1, n)}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for w in range(1, n):
            # worker w's end of each pair it is in, by the other worker's number
            ends = {b: pair[0] for (a, b), pair in pairs.items() if a == w}
            ends |= {a: pair[1] for (a, b), pair in pairs.items() if b == w}
            spec = ",".join(f"{other}:{s.fileno()}" for other, s in sorted(ends.items()))
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "qudag.simulations.parallel", str(w), spec],
                    pass_fds=[s.fileno() for s in ends.values()],
                )
            )
        for (a, _), pair in pairs.items():  # the children have their ends now
            if a != 0:
                pair[0].close()
            pair[1].close()
        channels = Channels({b: pair[0] for (a, b), pair in pairs.items() if a == 0})
        config_frame = pack(config_to_dict(cfg))
        for sock in channels.socks.values():
            sock.sendall(_LEN.pack(len(config_frame)) + config_frame)
        try:
            drive(sim, channels)
            reports = channels.swap({w: pack({"ok": True}) for w in channels.socks})
        finally:
            channels.close()
        sim.wall_s = time.perf_counter() - t0
        merge_reports(sim, [_report(sim), *(reports[w] for w in sorted(reports))])
        for proc in procs:
            if proc.wait(timeout=60) != 0:
                raise ParallelError(f"a worker exited with status {proc.returncode}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def worker_main(argv: Sequence[str] | None = None) -> int:
    """A worker process: `python -m qudag.simulations.parallel K OTHER:FD,...`."""
    parser = argparse.ArgumentParser(description="one worker of a parallel simulation")
    parser.add_argument("worker", type=int)
    parser.add_argument("sockets", help="OTHER_WORKER:FD pairs, comma-separated")
    args = parser.parse_args(argv)
    socks = {}
    for item in args.sockets.split(","):
        other, fd = item.split(":")
        socks[int(other)] = socket.socket(fileno=int(fd))
    channels = Channels(socks)
    try:
        config = config_from_dict(channels.receive(0))
        sim = Simulation(config, worker=args.worker)
        try:
            drive(sim, channels)
            report = pack(_report(sim))
        finally:
            sim.close()
    except ParallelError as exc:  # another worker failed: it reported why
        print(f"parallel simulation worker {args.worker}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # reported to worker 0 in place of this window's frame
        frame = pack({"error": f"{type(exc).__name__}: {exc}"})
        try:
            socks[0].setblocking(True)
            socks[0].sendall(_LEN.pack(len(frame)) + frame)
        except OSError:
            pass
        raise
    channels.swap({0: report} | {w: pack({"ok": True}) for w in socks if w != 0})
    channels.close()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
