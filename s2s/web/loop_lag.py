"""Whether the API's own loop stalled: a Redis read that timed out then may have timed out on us, not on Redis.

An asyncio deadline fires when the loop gets round to it. If one loop pass runs longer than the Redis
timeout (a storm of 1,500 catch-ups on a slow 2-core CI machine held it for over a second), a read whose
answer came back within a millisecond still ends in a timeout: the answer waits in the socket buffer, and
the deadline's callback runs before the task that would read it. Failing that read would tell every socket
sharing it ``unavailable`` because the process was busy, which :mod:`s2s.web.subscribing` promises not to.

:class:`LoopLag` ticks every ``TICK_S`` on the loop and remembers when a tick came late by more than
``stall_s``; a caller whose read timed out asks :meth:`stalled_since` and, if so, tries again (bounded).
A frozen Redis on an idle loop still fails at the first timeout.
"""

from __future__ import annotations

import asyncio

TICK_S = 0.1


class LoopLag:
    """Late ticks of one asyncio loop, started on first use (on that loop)."""

    __slots__ = ("stall_s", "loop", "last_tick", "stalled_at", "stalls", "_handle")

    def __init__(self, stall_s: float = 0.25):
        self.stall_s = stall_s  # a tick this late (beyond TICK_S) counts as a stall
        self.loop: asyncio.AbstractEventLoop | None = None
        self.last_tick = 0.0
        self.stalled_at = float("-inf")  # loop time of the end of the last stall seen
        self.stalls = 0  # stalls seen, for tests and diagnostics
        self._handle: asyncio.TimerHandle | None = None

    def watch(self) -> None:
        """Start ticking on the running loop (again if the loop changed: tests run one per test)."""
        loop = asyncio.get_running_loop()
        if self.loop is loop:
            return
        if self._handle is not None:
            self._handle.cancel()
        self.loop, self.last_tick = loop, loop.time()
        self._handle = loop.call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        if now - self.last_tick - TICK_S > self.stall_s:
            self.stalled_at = now
            self.stalls += 1
        self.last_tick = now
        self._handle = self.loop.call_later(TICK_S, self._tick)

    def stalled_since(self, started: float) -> bool:
        """Did the loop stall after loop time ``started`` (one seen, or one going on now: a tick overdue)?"""
        if self.loop is None:
            return False
        now = self.loop.time()
        return self.stalled_at >= started or now - self.last_tick - TICK_S > self.stall_s
