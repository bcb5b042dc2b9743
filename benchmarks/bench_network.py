"""Network benchmark: gossip publish->receive latency over one hop vs a direct sync round trip.

Two `P2PNode` processes on 127.0.0.1 (tests/net_helpers.py), B bootstrapped from A:
- gossip: A publishes N messages of 5 KB at a fixed rate on one topic; B records receive time
  minus the send timestamp carried in the message (same machine clock);
- sync: B sends N requests of 5 KB to A over `/qudag/sync/1.0.0` (PQ-encrypted, stream reused)
  and times each round trip;
- handshake: the CPU cost of one ML-KEM-768 + ML-DSA-65 handshake in-process, beside its
  dominant part (one ML-DSA-65 signature) as the baseline.
Prints p50/p99 and the ratios (medians) measured in the same run.

Run: `python benchmarks/bench_network.py [--quick]`
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from net_helpers import NodeProc  # noqa: E402

from qudag.crypto.handshake import Initiator, Responder  # noqa: E402
from qudag.crypto.signing import Identity  # noqa: E402

TOPIC = "qudag/bench/1"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def handshake_cost(rounds: int) -> tuple[float, float]:
    alice, bob = Identity.generate(), Identity.generate()
    times, signs = [], []
    clock = time.process_time  # CPU time: robust to other jobs on a shared machine
    for _ in range(rounds):
        t0 = clock()
        i = Initiator(alice, b"bench")
        accept, _ = Responder(bob, b"bench").accept(i.hello())
        i.finish(accept)
        times.append((clock() - t0) * 1000)
        t0 = clock()
        alice.sign(b"x" * 200, b"bench")
        signs.append((clock() - t0) * 1000)
    return statistics.median(times), statistics.median(signs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages (~10 s)")
    parser.add_argument("--rate", type=float, default=100.0, help="gossip msg/s (default 100)")
    args = parser.parse_args()
    n = 100 if args.quick else 500
    rate = args.rate

    hs_ms, sign_ms = handshake_cost(20 if args.quick else 100)
    a = b = None
    try:
        a = NodeProc(topics=[TOPIC]).wait_ready()
        b = NodeProc(bootstrap=a.addrs, topics=[TOPIC]).wait_ready()
        st = b.wait_for(lambda s: a.peer_id in s["topic_peers"][TOPIC], 15.0, topics=[TOPIC])
        assert a.peer_id in st["topic_peers"][TOPIC], "nodes did not connect"
        time.sleep(1.5)  # mesh formed
        # warm-up (first sync request includes the stream open and PQ handshake)
        first = b.call(cmd="request", peer=a.peer_id, data="00")["ms"]
        a.call(cmd="publish", topic=TOPIC, count=20, size=5000, rate=rate)
        time.sleep(0.5)
        b.call(cmd="latencies")

        def cpu() -> float:
            assert a is not None and b is not None
            return float(a.call(cmd="status")["cpu_s"] + b.call(cmd="status")["cpu_s"])

        # background CPU (heartbeats, DHT refresh, identify) while idle, to subtract below
        c0, w0 = cpu(), time.monotonic()
        time.sleep(3.0)
        idle_rate = (cpu() - c0) / (time.monotonic() - w0)
        cpu_a0, cpu_b0 = a.call(cmd="status")["cpu_s"], b.call(cmd="status")["cpu_s"]
        w_g = time.monotonic()
        a.call(cmd="publish", topic=TOPIC, count=n, size=5000, rate=rate, timeout=n / rate + 30)
        st = b.wait_for(lambda s: s["received"].get(TOPIC, 0) >= n + 20, 15.0)
        gossip = b.call(cmd="latencies")["latencies_ms"]
        delivered = st["received"].get(TOPIC, 0) - 20
        cpu_a1, cpu_b1 = a.call(cmd="status")["cpu_s"], st["cpu_s"]
        w_r = time.monotonic()
        rr = b.call(cmd="request_many", peer=a.peer_id, count=n, size=5000, timeout=120)[
            "latencies_ms"
        ]
        cpu_a2, cpu_b2 = a.call(cmd="status")["cpu_s"], b.call(cmd="status")["cpu_s"]
        w_end = time.monotonic()
    finally:
        for p in (a, b):
            if p is not None:
                p.kill()

    g50, g99 = statistics.median(gossip), pct(gossip, 0.99)
    r50, r99 = statistics.median(rr), pct(rr, 0.99)
    print(f"messages: {n} x 5 KB at {rate:.0f} msg/s; delivered {delivered}/{n}")
    print(f"gossip 1 hop      p50 {g50:7.2f} ms   p99 {g99:7.2f} ms")
    print(f"sync round trip   p50 {r50:7.2f} ms   p99 {r99:7.2f} ms  (PQ-encrypted, 5 KB each way)")
    print(f"ratio gossip/sync (p50): {g50 / r50:.2f}x   (p99): {g99 / r99:.2f}x")
    print(f"first sync request incl. stream open + PQ handshake: {first:.1f} ms")
    # CPU per message is robust to other load on the machine, unlike wall-clock latency
    g_cpu = ((cpu_a1 - cpu_a0) + (cpu_b1 - cpu_b0) - idle_rate * (w_r - w_g)) / n * 1000
    r_cpu = ((cpu_a2 - cpu_a1) + (cpu_b2 - cpu_b1) - idle_rate * (w_end - w_r)) / n * 1000
    print(
        f"CPU per message, both processes, idle background ({idle_rate * 1000:.0f} ms/s) "
        f"subtracted: gossip {g_cpu:.2f} ms, sync round trip {r_cpu:.2f} ms "
        f"(ratio {g_cpu / r_cpu:.2f}x)"
    )
    print(
        f"PQ handshake CPU time (both sides, in-process) {hs_ms:.2f} ms = "
        f"{hs_ms / sign_ms:.1f}x one ML-DSA-65 signature ({sign_ms:.2f} ms)"
    )


if __name__ == "__main__":
    main()
