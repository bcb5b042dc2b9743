"""Log lines a daemon's user can read: every line timestamped and levelled, no floods.

Two things made `qudag-node run`'s stderr hard to use (issue 13, item 8):

- py-libp2p configures its `libp2p` logger with no handler and `propagate = False` unless
  LIBP2P_DEBUG is set, so its warnings and errors reached stderr through Python's last-resort
  handler: the bare message, no time, no level. `setup_logging` lets them propagate to our
  handler like every other logger's (levels are still set by `quiet_libp2p_logging`).
- A peer that is gone produced the same warning for every dial (96 lines a minute of "Failed
  to open TCP stream ..."). `RepeatFilter` lets the first line of a kind through and then at
  most one per `window_s`, saying how many like it were suppressed meanwhile. A "kind" is the
  logger, the level and the message *template* (`record.msg` before its %-arguments), so
  one line per peer address or error text does not count as news.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REPEAT_WINDOW_S = 60.0

_installed: logging.Handler | None = None


class RepeatFilter(logging.Filter):
    """Rate-limit repeated WARNING-and-above messages of one kind (see module doc); INFO and
    DEBUG lines are what the user asked for and always pass."""

    def __init__(
        self,
        window_s: float = REPEAT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        min_level: int = logging.WARNING,
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self.min_level = min_level
        # kind -> (time its last line went out, lines suppressed since)
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        last = self._seen.get(kind)
        if last is not None and now - last[0] < self.window_s:
            self._seen[kind] = (last[0], last[1] + 1)
            return False
        suppressed = last[1] if last is not None else 0
        self._seen[kind] = (now, 0)
        if suppressed:
            record.msg = (
                f"{record.msg} ({suppressed} more like this in the last {self.window_s:g} s)"
            )
        if len(self._seen) > 10_000:  # a bounded memory, whatever the messages
            self._seen.clear()
        return True


LIBRARIES = ("libp2p", "multiaddr", "async_service")


def _library_floor(record: logging.LogRecord) -> bool:
    """libp2p's own INFO/WARNING chatter stays out (some of its loggers set their own level,
    so `quiet_libp2p_logging`'s level on the parent does not reach them); errors come through."""
    return record.levelno >= logging.ERROR or not record.name.startswith(LIBRARIES)


def setup_logging(level: str | int = "INFO", stream: TextIO | None = None) -> logging.Handler:
    """One handler on the root logger (timestamps, levels, repeat filter) that every logger,
    libp2p's included, reaches. Calling it again replaces the handler it installed before."""
    global _installed
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_library_floor)
    handler.addFilter(RepeatFilter())
    root.addHandler(handler)
    root.setLevel(level)
    libp2p = logging.getLogger("libp2p")
    libp2p.handlers.clear()
    libp2p.propagate = True
    _installed = handler
    return handler
