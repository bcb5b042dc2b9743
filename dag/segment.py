"""The segment file: a ledger's vertex bytes, appended beside its SQLite file.

Why outside SQLite: a ~5 KB vertex written into an SQLite row is written twice (the WAL, then
the checkpoint into the database file), which costs CPU per vertex in bulk ingest that a plain
file written once does not (`benchmarks/bench_ingest.py --rows-ab` measures both;
docs/benchmarks.md, "DAG ingest"). SQLite keeps the row, its indexes and the (offset, length)
of the bytes; the segment's committed size is a row of its own (`segment.size`), written in
the same transaction as the vertex rows. Only bulk ingests (`ingest_many`,
`ingest_prechecked`) write here: the sync below costs a journal commit, paid once per batch
(`bench_ingest.py --single` times one); a single `ingest` keeps its bytes in its row.

Crash safety, and how it is kept (`StoreBase._begin`, `_seg_start`, `_flush`, `_commit`):

- the bytes of a transaction are written and `fdatasync`ed before the SQLite commit that
  references them, so a committed row never points at bytes a crash (or power loss) lost;
- a transaction that dies before its commit leaves bytes past the committed size (a tail):
  a transaction that writes segment bytes, holding SQLite's write lock, reads the committed
  size and cuts the file to it before it hands out its first offset, so its bytes go where
  its rows will say they are and no other store (another process with the same ledger open)
  can be writing at that moment; a transaction that writes none (a single `ingest`, a
  verdict) leaves a tail alone, as it neither moves the committed size nor writes past it;
- a store's first write transaction after open, and its next one after a rolled-back batch,
  cut the file too, so a killed or failed writer's tail does not stay on disk;
- readers trust only rows: they read `length` bytes at `offset`, below the committed size,
  and `dag verify` re-derives each vertex's id from those bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

from qudag.dag.records import StoreError

# Buffers one pwritev takes (Linux's IOV_MAX); os.sysconf knows the platform's.
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


def segment_path(ledger: str | os.PathLike[str]) -> Path:
    """Where the vertex bytes of the ledger file `ledger` are kept (beside it, like its WAL)."""
    return Path(os.fspath(ledger) + "-vertices")


class Segment:
    """An open segment file: positioned reads and writes, no file offset of its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open vertex bytes file {str(path)!r}: {exc}") from None

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset`; `StoreError` if the file is shorter (damaged)."""
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise StoreError(
                f"{self.path.name} ends before the bytes at {offset} (+{length}): "
                "the ledger's vertex bytes file is damaged or from another ledger"
            )
        return data

    def write(self, offset: int, parts: list[bytes]) -> None:
        """Write `parts` back to back at `offset`, vectored (no joined copy of a batch's
        megabytes); a short write is continued, never ignored."""
        for start in range(0, len(parts), _IOV_MAX):
            chunk = parts[start : start + _IOV_MAX]
            size = sum(map(len, chunk))
            written = os.pwritev(self._fd, chunk, offset)
            if written < size:
                rest = memoryview(b"".join(chunk))[written:]
                while rest:
                    more = os.pwrite(self._fd, rest, offset + written)
                    rest = rest[more:]
                    written += more
            offset += size

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def cut(self, size: int) -> None:
        """Drop what lies past `size` (bytes of a transaction that never committed)."""
        if self.size() > size:
            os.ftruncate(self._fd, size)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
