"""Content-addressed data files of published tasks, in a node's data dir.

Why content addressing: a task's data is named by BLAKE3 of its bytes, so a copy from any peer
is as good as the publisher's, and a file that changed on disk (bit rot, an edit) is noticed
on read instead of silently changing fitness. Layout, under ROOT (DATA_DIR/blobs):

    ROOT/<blake3 hex>               a complete file, written atomically (a finished fetch
                                    is renamed here), verified on every read
    ROOT/partial/<blake3 hex>.part  a fetch under way: the file at its final size, chunks
                                    written in place as they arrive

A partial file is kept across restarts: on reopening, each chunk slot is hashed again and
compared with the task's chunk list, so a fetch resumes with exactly the chunks that are
really there (a torn write or a zeroed region is just a chunk still missing).
"""

from __future__ import annotations

import os
from pathlib import Path

import blake3

from qudag.crypto.files import move_file_atomic, write_file_atomic
from qudag.evolution.taskspec import DataRef

_READ_PIECE = 1 << 20  # bytes hashed at a time when a finished fetch is checked


class BlobError(ValueError):
    """A cached file that is missing or does not hash to its name; the message says which."""


class BlobCache:
    """Complete and partial data files under one root directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, digest: bytes) -> Path:
        return self.root / digest.hex()

    def has(self, digest: bytes) -> bool:
        return self.path(digest).is_file()

    def put(self, data: bytes, digest: bytes | None = None) -> bytes:
        """Store `data` under its BLAKE3 (atomically); return the digest. `digest`: that
        BLAKE3 if the caller has just computed it from these bytes (a task's spec names it),
        so that a 64 MiB file is not hashed again; a wrong one is found on every read."""
        if digest is None:
            digest = blake3.blake3(data).digest()
        if not self.has(digest):
            self.root.mkdir(parents=True, exist_ok=True)
            write_file_atomic(self.path(digest), data)
        return digest

    def read(self, digest: bytes, max_size: int | None = None) -> bytes:
        """The bytes stored under `digest`, checked against it; `BlobError` otherwise."""
        path = self.path(digest)
        try:
            with open(path, "rb") as fh:
                data = fh.read() if max_size is None else fh.read(max_size + 1)
        except FileNotFoundError:
            raise BlobError(f"data {digest.hex()} is not in {self.root}") from None
        if max_size is not None and len(data) > max_size:
            raise BlobError(f"{path}: larger than {max_size} bytes")
        if blake3.blake3(data).digest() != digest:
            raise BlobError(f"{path}: content does not hash to its name (corrupt; fetch again)")
        return data

    def read_range(self, digest: bytes, start: int, end: int) -> bytes | None:
        """Bytes [start, end) of a complete file (unchecked here: the asker checks the chunk
        hash, and a server that sends a bad chunk is struck), or None if we lack it."""
        try:
            with open(self.path(digest), "rb") as fh:
                fh.seek(start)
                return fh.read(end - start)
        except FileNotFoundError:
            return None

    def partial(self, ref: DataRef) -> PartialBlob:
        return PartialBlob(self, ref)


class PartialBlob:
    """A fetch of one data file in progress (see the module doc)."""

    def __init__(self, cache: BlobCache, ref: DataRef) -> None:
        self.cache = cache
        self.ref = ref
        self.path = cache.root / "partial" / f"{ref.hex}.part"
        self.held: set[int] = set()
        if self.path.is_file():
            self.held = self._verify_existing()

    def _verify_existing(self) -> set[int]:
        held = set()
        with open(self.path, "rb") as fh:
            for i, expected in enumerate(self.ref.chunks):
                start, end = self.ref.chunk_range(i)
                fh.seek(start)
                piece = fh.read(end - start)
                if len(piece) == end - start and blake3.blake3(piece).digest() == expected:
                    held.add(i)
        return held

    def write_chunk(self, index: int, data: bytes) -> None:
        """Write chunk `index`, which the caller has checked against the chunk list
        (`taskspec.chunk_ok`; `DataFetch.on_chunk` checks every answer before it is written),
        so that each chunk is hashed once on its way in. A chunk that is not the listed one
        would not be kept: the whole file is checked before it enters the cache, and a
        reopened partial file keeps only the chunks that hash right."""
        start, end = self.ref.chunk_range(index)
        if not 0 <= index < len(self.ref.chunks) or len(data) != end - start:
            raise ValueError(f"chunk {index} of {len(data)} bytes is not a chunk of {self.ref.hex}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, start)
        finally:
            os.close(fd)
        self.held.add(index)

    @property
    def complete(self) -> bool:
        return len(self.held) == len(self.ref.chunks)

    def finish(self) -> Path:
        """Check the whole file against the data hash and rename it into the cache (the
        partial file is already the complete file: its bytes are read once, to hash them,
        and not copied).

        `BlobError` if it does not match (every chunk matched its hash, so the chunk list
        itself does not describe this data: the announcement is wrong); the partial file is
        then removed, since nothing in it can be reused for this address.
        """
        digest = blake3.blake3()
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            while piece := fh.read(_READ_PIECE):
                digest.update(piece)
        if size != self.ref.size or digest.digest() != self.ref.blake3:
            self.path.unlink(missing_ok=True)
            self.held.clear()
            raise BlobError(f"data {self.ref.hex}: chunks do not make up the announced file")
        self.cache.root.mkdir(parents=True, exist_ok=True)
        return move_file_atomic(self.path, self.cache.path(self.ref.blake3))
