"""How much upload work one API process holds at once, whatever arrives.

Two byte budgets and one process pool. A submit reserves twice its ``Content-Length`` from the
*body* budget before its body is read (its chunks and their copy to a decode process; a waiting upload
is not read from the socket at all, so TCP holds it back), and the decode's working set, read from the
image header, from the *decode* budget before any pixel is decoded. JSON, base64 and decoding run in a
pool of ``S2S_MAX_DECODES`` processes: not on the IOLoop, and not in its threads either, since json,
base64 and Pillow's JPEG encoder hold the GIL for tens of ms on a 2 MB photo, which stalls every
socket. A reservation larger than a whole budget runs alone. Waiting is FIFO and bounded by
``S2S_UPLOAD_WAIT_MS``; past it the submit gets 503 ``server_busy`` with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import collections
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from s2s.settings import Settings
from s2s.uploads import InputError

MB = 1024 * 1024
#: Decode room a submit takes before its header is known, so the usual photo is read and decoded in one
#: trip to a decode process: a 4000x3000 JPEG (decoded at 1/4 scale, 1000x750) needs 18 MB.
USUAL_DECODE = 24 * MB
DECODE_NICENESS = 10
_POOLS: dict[int, ProcessPoolExecutor] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    """The decode processes, one pool per process (forkserver: no fork of a process with threads). They run
    at a lower priority (nice 10): on a busy machine the IOLoop's sockets come before decoding."""
    pool = _POOLS.get(workers)
    if pool is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["s2s.uploads"])
        pool = _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=context, initializer=os.nice,
                                                     initargs=(DECODE_NICENESS,))
    return pool


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


class UploadGate:
    """The per-process limits on upload memory and decoding (one per API process, in AppContext)."""

    def __init__(self, settings: Settings):
        self.decodes = settings.max_decodes or os.cpu_count() or 1
        self.bodies = ByteBudget(settings.upload_body_mb * MB)
        self.pixels = ByteBudget(settings.decode_memory_mb * MB)
        self.wait_s = settings.upload_wait_ms / 1000
        self.usual_decode = min(USUAL_DECODE, self.pixels.total)

    async def reserve(self, budget: ByteBudget, nbytes: int) -> int:
        """``budget.take`` or 503 server_busy: the process is at its upload limit for longer than a submit waits."""
        try:
            return await budget.take(nbytes, self.wait_s)
        except TimeoutError:
            raise InputError(503, "server_busy", "The server is busy with other uploads; try again shortly.",
                             {"retryAfterSeconds": self.retry_after_s}) from None

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.wait_s / 2))

    async def run(self, fn, *args):
        """``fn(*args)`` in a decode process. One killed (out of memory) breaks the pool: it is made anew
        and the submit answered 503 server_busy."""
        try:
            return await asyncio.get_running_loop().run_in_executor(_pool(self.decodes), fn, *args)
        except BrokenProcessPool:
            _POOLS.pop(self.decodes, None)
            raise InputError(503, "server_busy", "The server could not decode this upload now; try again shortly.",
                             {"retryAfterSeconds": self.retry_after_s}) from None
