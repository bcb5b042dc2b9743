"""Cost of moving a published task's data by content address, against a local checked copy.

Run: `python benchmarks/bench_taskdata.py [--mib 16] [--rounds 5]`.

The fetch path without the network: a serving `TaskData` answers `chunk/get` requests from
its cache, the answers are encoded and decoded as sync messages, the fetching `TaskData`
checks each chunk against the hash list, writes it into its partial file, and at the end
checks the whole file and moves it into its cache (node/protocol/datafetch.py). The baseline,
measured in the same run, is what a peer must do with the bytes in any case: read the file,
BLAKE3 it, write it atomically. The ratio says what the chunking, per-chunk hashing, message
codec and partial file cost on top; network transfer is left out (it is the transport's).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import blake3

from qudag.crypto.files import write_file_atomic
from qudag.evolution.blobcache import BlobCache
from qudag.evolution.taskspec import CHUNK_SIZE, DataRef, chunk_hashes
from qudag.node.protocol import messages
from qudag.node.protocol.datafetch import OK, TaskData


def fetch_once(src: Path, dst: Path, ref: DataRef) -> float:
    server, client = TaskData(BlobCache(src)), TaskData(BlobCache(dst))
    t0 = time.perf_counter()
    client.want(ref)
    rng = random.Random(0)
    while not client.has(ref.blake3):
        for _peer, request in client.requests(0, ["server"], rng):
            ask = messages.decode(request)
            if not isinstance(ask, messages.GetChunk):
                raise SystemExit(f"the fetch asked for something else: {ask!r}")
            answer = messages.decode(messages.encode(server.serve(ask)))
            if not isinstance(answer, messages.Chunk) or client.on_chunk("server", answer, 0) != OK:
                raise SystemExit(f"the chunk protocol failed: {answer!r}")
    return time.perf_counter() - t0


def copy_once(src: Path, dst: Path, digest: bytes) -> float:
    t0 = time.perf_counter()
    data = (src / digest.hex()).read_bytes()
    assert blake3.blake3(data).digest() == digest
    dst.mkdir(parents=True, exist_ok=True)
    write_file_atomic(dst / digest.hex(), data)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=16, help="data size in MiB (default 16)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    args = parser.parse_args()
    data = os.urandom(args.mib * 2**20)
    ref = DataRef(
        "csv", ",", True, len(data), blake3.blake3(data).digest(), CHUNK_SIZE, chunk_hashes(data)
    )
    fetch, copy = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        BlobCache(root / "src").put(data)
        for i in range(args.rounds):  # alternate, so a load spike hits both alike
            fetch.append(fetch_once(root / "src", root / f"fetch{i}", ref))
            copy.append(copy_once(root / "src", root / f"copy{i}", ref.blake3))
    f, c = statistics.median(fetch), statistics.median(copy)
    print(f"data {args.mib} MiB in {len(ref.chunks)} chunks of {CHUNK_SIZE // 1024} KiB")
    print(f"fetch by chunks (codec, per-chunk BLAKE3, partial file, final check): {f * 1e3:.1f} ms"
          f" = {args.mib / f:.0f} MiB/s")  # fmt: skip
    print(f"baseline local checked copy (read, BLAKE3, atomic write): {c * 1e3:.1f} ms"
          f" = {args.mib / c:.0f} MiB/s")  # fmt: skip
    print(f"ratio fetch/baseline: {f / c:.2f}x (median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
