"""Atomic file replacement: the one way this project writes (or moves into place) a state file.

Why: a checkpoint, a template or a lineage file half-written at a crash (`kill -9`, power
loss) would be worse than the old one. The bytes go to a temporary file in the same directory,
are fsynced, then renamed over the target (atomic on POSIX), and the directory is fsynced so
the rename itself survives. It lives in `crypto` because that is the package every other one
already depends on. (Key files have stricter needs, mode 0600 from the first byte and no
overwrite race, and keep their own writer in `crypto/keystore.py`.)
"""

from __future__ import annotations

import os
from pathlib import Path


def write_file_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace `path` with `data` atomically and durably; raise OSError on failure (the
    temporary file is removed)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target)
    return target


def move_file_atomic(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Rename the complete file `source` over `target` (same file system) atomically and
    durably: for a file built in place, such as a fetch written chunk by chunk, whose bytes
    need not be copied again. Raises OSError on failure (`source` is then left as it was)."""
    fd = os.open(source, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    target = Path(target)
    os.replace(source, target)
    _fsync_dir(target)
    return target


def _fsync_dir(target: Path) -> None:
    """Make a rename into `target`'s directory survive a crash."""
    try:
        fd = os.open(target.parent if str(target.parent) else ".", os.O_RDONLY)
    except OSError:
        return  # a directory we cannot open for fsync: the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
