"""How much upload work one API process holds at once, whatever arrives.

One byte budget and one process pool. A submit reserves twice its ``Content-Length`` from the *body*
budget before its body is read (its chunks and their copy to a decode process; a waiting upload is not
read from the socket at all, so TCP holds it back). JSON, base64 and the photo's check and strip
(:mod:`s2s.photo_intake`: no pixel is decoded in the API; the worker does that) run in a pool of
``S2S_MAX_DECODES`` processes: not on the IOLoop, and not in its threads either, since json and base64
hold the GIL for several ms on a 2 MB photo, which stalls every socket. The body goes there, and the
stripped photo comes back, in shared memory (:mod:`s2s.body_handoff`; the pool's pipe where that cannot
work). A reservation larger than the whole budget runs alone. Waiting is FIFO and bounded by
``S2S_UPLOAD_WAIT_MS``; past it the submit gets 503 ``server_busy`` with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial

from attrs import evolve

from s2s import body_handoff, uploads
from s2s.byte_budget import ByteBudget
from s2s.catalog import Catalog
from s2s.job_requests import NewJob
from s2s.settings import Settings
from s2s.uploads import InputError

log = logging.getLogger("s2s.uploads")

MB = 1024 * 1024
DECODE_NICENESS = 10
_POOLS: dict[int, ProcessPoolExecutor] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    """The decode processes, one pool per process (forkserver: no fork of a process with threads). They run
    at a lower priority (nice 10): on a busy machine the IOLoop's sockets come before reading uploads."""
    pool = _POOLS.get(workers)
    if pool is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["s2s.uploads", "s2s.body_handoff"])
        pool = _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=context, initializer=os.nice,
                                                     initargs=(DECODE_NICENESS,))
    return pool


class UploadGate:
    """The per-process limits on upload memory and work (one per API process, in AppContext)."""

    def __init__(self, settings: Settings):
        self.decodes = settings.max_decodes or os.cpu_count() or 1
        self.bodies = ByteBudget(settings.upload_body_mb * MB)
        self.wait_s = settings.upload_wait_ms / 1000
        self.shared_memory: bool | None = None  # bodies go to the decode processes in memory files (``warm``)
        self._warming: asyncio.Future | None = None

    async def reserve(self, budget: ByteBudget, nbytes: int) -> int:
        """``budget.take`` or 503 server_busy: the process is at its upload limit for longer than a submit waits."""
        try:
            return await budget.take(nbytes, self.wait_s)
        except TimeoutError:
            raise InputError(503, "server_busy", "The server is busy with other uploads; try again shortly.",
                             {"retryAfterSeconds": self.retry_after_s}) from None

    def warm(self, timeout_s: float = 30.0) -> None:
        """Start every decode process now, at start-up: the first uploads would otherwise start the fork
        server and its processes on the IOLoop (~120 ms with every socket waiting). One task each: a pool
        starts a process per task while none is idle. Then find out whether bodies can be handed over in
        shared memory (s2s/body_handoff.py)."""
        pool = _pool(self.decodes)
        for started in [pool.submit(os.getpid) for _ in range(self.decodes)]:
            started.result(timeout_s)
        self.shared_memory = body_handoff.works(lambda fn, *args: pool.submit(fn, *args).result(timeout_s))
        if not self.shared_memory:
            log.info("upload bodies go to the decode processes through pipes (no memfd_create or /proc here)")

    async def read_job(self, chunks: list[bytes], catalog: Catalog, *, max_bytes: int, max_pixels: int) -> NewJob:
        """:func:`s2s.uploads.read_job` in a decode process; the chunks are emptied. In shared memory once
        ``warm`` found it works (the body is written there in a thread: 12 MB is ms of copying, without the
        GIL), else through the pool's pipe. ``s2s serve`` warms the gate at start; otherwise the first upload
        does, in a thread."""
        if self.shared_memory is None:
            if self._warming is None:
                self._warming = asyncio.ensure_future(asyncio.to_thread(self.warm))
            await asyncio.shield(self._warming)
        if not self.shared_memory:
            return await self.run(uploads.read_job, chunks, catalog, max_bytes=max_bytes, max_pixels=max_pixels)
        body = await asyncio.to_thread(body_handoff.Body, chunks)
        try:
            chunks.clear()
            job, length = await self.run(body_handoff.read_job, body.path, body.size, catalog,
                                         max_bytes=max_bytes, max_pixels=max_pixels)
            return evolve(job, photo=await asyncio.to_thread(body.read, length))
        finally:
            body.close()

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.wait_s / 2))

    async def run(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` in a decode process. One killed (out of memory) breaks the pool: it is made
        anew and the submit answered 503 server_busy."""
        try:
            return await asyncio.get_running_loop().run_in_executor(_pool(self.decodes), partial(fn, *args, **kwargs))
        except BrokenProcessPool:
            _POOLS.pop(self.decodes, None)
            raise InputError(503, "server_busy", "The server could not read this upload now; try again shortly.",
                             {"retryAfterSeconds": self.retry_after_s}) from None
