"""What can stop a node is checked before the node creates anything (issue 13, items 2-4).

A node used to write `node.key` and the ledger, start libp2p and only then find its HTTP port
taken (a 145-line traceback of nested exception groups), and a second node on the same data
directory or TCP port simply ran beside the first: two processes signing with one key reuse
sequence numbers, which the network treats as equivocation. Here:

- `check_port_free`: binds a plain socket (SO_REUSEADDR as trio's listeners, no SO_REUSEPORT)
  and closes it. py-libp2p sets SO_REUSEPORT on its listeners, so two nodes could both bind
  one port; a socket without SO_REUSEPORT cannot join them, which is what makes this check
  see the first node.
- `DataDirLock`: an exclusive `flock` on DATA_DIR/node.lock, held as long as the process
  lives. The kernel releases it when the process dies, `kill -9` included, so a stale lock
  file never blocks a restart; the file only carries the holder's PID for the message.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from qudag.node.errors import UserError

LOCK_FILE = "node.lock"


def check_port_free(host: str, port: int, what: str) -> None:
    """Raise UserError (one line) if TCP `host:port` cannot be bound now; port 0 always can."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"{what} {host}:{port}: cannot resolve {host}: {exc.strerror}") from None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(1)
        except OSError as exc:
            hint = (
                " (another node or program listens there: stop it or choose another port)"
                if exc.errno == errno.EADDRINUSE
                else ""
            )
            raise UserError(f"{what} {host}:{port}: {exc.strerror or exc}{hint}") from None
        finally:
            sock.close()


def listen_host_port(multiaddr: str) -> tuple[str, int]:
    """(host, port) of a checked `/ip4|ip6/<addr>/tcp/<port>` listen multiaddr."""
    parts = multiaddr.strip("/").split("/")
    return parts[1], int(parts[3])


class DataDirLock:
    """An exclusive lock on a data directory for this process's life (see module doc)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, what: str = "node") -> None:
        """Take the lock or raise UserError naming the holder's PID. The directory must exist."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"data directory {self.path.parent} is in use by another node (pid {holder}); "
                f"stop it first or choose another --data-dir (this {what} did nothing)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Unlock (the file stays: removing it could race with a node that just opened it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
