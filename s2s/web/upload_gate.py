"""How much upload work one API process holds at once, whatever arrives.

One byte budget and one process pool. A submit reserves twice its ``Content-Length`` from the *body*
budget before its body is read (its chunks and their copy to a decode process; a waiting upload is not
read from the socket at all, so TCP holds it back). JSON, base64 and the photo's check and strip
(:mod:`s2s.photo_intake`: no pixel is decoded in the API; the worker does that) run in a pool of
``S2S_MAX_DECODES`` processes: not on the IOLoop, and not in its threads either, since json and base64
hold the GIL for several ms on a 2 MB photo, which stalls every socket. A reservation larger than the
whole budget runs alone. Waiting is FIFO and bounded by ``S2S_UPLOAD_WAIT_MS``; past it the submit gets
503 ``server_busy`` with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from s2s.byte_budget import ByteBudget
from s2s.settings import Settings
from s2s.uploads import InputError

MB = 1024 * 1024
DECODE_NICENESS = 10
_POOLS: dict[int, ProcessPoolExecutor] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    """The decode processes, one pool per process (forkserver: no fork of a process with threads). They run
    at a lower priority (nice 10): on a busy machine the IOLoop's sockets come before reading uploads."""
    pool = _POOLS.get(workers)
    if pool is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["s2s.uploads"])
        pool = _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=context, initializer=os.nice,
                                                     initargs=(DECODE_NICENESS,))
    return pool


class UploadGate:
    """The per-process limits on upload memory and work (one per API process, in AppContext)."""

    def __init__(self, settings: Settings):
        self.decodes = settings.max_decodes or os.cpu_count() or 1
        self.bodies = ByteBudget(settings.upload_body_mb * MB)
        self.wait_s = settings.upload_wait_ms / 1000

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
            raise InputError(503, "server_busy", "The server could not read this upload now; try again shortly.",
                             {"retryAfterSeconds": self.retry_after_s}) from None
