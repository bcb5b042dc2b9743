"""A discrete-event scheduler: a heap of (time, sequence number, callback).

Why a sequence number: two events at the same simulated millisecond run in the order they
were scheduled, never in an order that depends on comparing callbacks, so a run is a pure
function of its seed. Time only moves when an event runs: a simulated minute costs exactly
the CPU its events need.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


class Scheduler:
    def __init__(self) -> None:
        self.now: float = 0.0
        self._heap: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = 0
        self.executed = 0

    def at(self, time_ms: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` at simulated `time_ms` (never before the current time)."""
        self._seq += 1
        heapq.heappush(self._heap, (max(time_ms, self.now), self._seq, fn, args))

    def after(self, delay_ms: float, fn: Callable[..., Any], *args: Any) -> None:
        self.at(self.now + delay_ms, fn, *args)

    def __len__(self) -> int:
        return len(self._heap)

    def run_until(self, end_ms: float, stop: Callable[[], bool] | None = None) -> None:
        """Run events up to and including `end_ms` (or until `stop()` is true after one)."""
        heap = self._heap
        while heap and heap[0][0] <= end_ms:
            t, _, fn, args = heapq.heappop(heap)
            self.now = t
            fn(*args)
            self.executed += 1
            if stop is not None and stop():
                return
        self.now = max(self.now, end_ms)

    def run_before(self, end_ms: float) -> None:
        """Run every event earlier than `end_ms` (a window of a parallel run: an event at
        exactly `end_ms` may still be joined by one another process sends at that time).
        `now` stays at the last event run, so such arrivals can still be scheduled."""
        heap = self._heap
        while heap and heap[0][0] < end_ms:
            t, _, fn, args = heapq.heappop(heap)
            self.now = t
            fn(*args)
            self.executed += 1
