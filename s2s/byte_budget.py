"""A byte budget: how much memory the photo work of one process may hold at once.

The API reserves upload bodies from one (s2s/web/upload_gate.py); a worker reserves the decoded size of
each photo it prepares (s2s/photo_prep.py), read from the header before any pixel is decoded.
"""

from __future__ import annotations

import asyncio
import collections


class ByteBudget:
    """An asyncio semaphore counted in bytes, first come first served."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    async def take(self, nbytes: int, wait_s: float) -> int:
        """Reserve ``nbytes`` (at most the whole budget) within ``wait_s``; the amount to give back."""
        nbytes = max(0, min(nbytes, self.total))
        if not self._waiters and self.used + nbytes <= self.total:
            self.used += nbytes
            return nbytes
        loop = asyncio.get_running_loop()
        entry = (nbytes, loop.create_future())
        self._waiters.append(entry)
        timer = loop.call_later(wait_s, lambda: entry[1].done() or entry[1].set_exception(TimeoutError()))
        try:
            await entry[1]
        except BaseException:
            if entry[1].done() and not entry[1].cancelled() and entry[1].exception() is None:
                self.give_back(nbytes)  # granted, but the submit went away (client gone) at the same moment
            elif entry in self._waiters:
                self._waiters.remove(entry)
                self._wake()
            raise
        finally:
            timer.cancel()
        return nbytes

    def give_back(self, nbytes: int) -> None:
        self.used -= nbytes
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.total:
            nbytes, fut = self._waiters.popleft()
            if not fut.done():
                self.used += nbytes
                fut.set_result(None)
