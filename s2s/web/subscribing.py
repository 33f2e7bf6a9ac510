"""Subscribe storms: 10,000 sockets subscribing at once (an API restart) cost a few messages and reads, not 10,000.

Three things make a storm cheap and keep it from failing under its own load:

- the watches of one IOLoop tick go to the registry as one ``WatchMany``, and come back as one callback;
- the sockets of one job that need its job record and event log share one Redis read (:class:`SharedReads`):
  at most one read per job is in flight, the sockets arriving meanwhile gather for the next one, and each
  filters the shared answer by its own ``lastSeq``;
- nothing gives up because the process is busy. The wait for the registry ends in :class:`Stalled` only
  when the registry made no progress at all for ``stall_s`` (it is wedged, not busy); a Redis read is bounded
  by the client's own timeout (``S2S_REDIS_TIMEOUT_MS``), which holds for one read per job, however many wait
  on it; a read that timed out while this process's own loop stalled is tried again (:mod:`s2s.web.loop_lag`).
  When more subscribes are in progress than the process takes (``S2S_WS_MAX_PENDING_SUBSCRIBES``) a new one
  is refused at once with :class:`Overloaded`, which carries how long to wait (jittered), and the client
  backs off instead of reconnecting in a tight loop.
"""

from __future__ import annotations

import asyncio
import random

import pykka
import redis.exceptions
from attrs import define, field

from s2s.actors.registry import Progress, Watcher, WatchMany
from s2s.models import Job
from s2s.queue import Queue
from s2s.web.loop_lag import LoopLag

OVERLOADED_RETRY_MS = 2000  # the base of the wait an overloaded process asks for; jittered up to twice that
READ_ATTEMPTS = 3  # a shared read timed out while the loop stalled is tried again, this many times in all


class Stalled(Exception):
    """A dependency made no progress for the whole stall window: it is wedged."""


class Overloaded(Exception):
    """More subscribes are in progress than the process takes; try again after ``retry_after_ms``."""

    def __init__(self, retry_after_ms: int):
        super().__init__(f"overloaded; retry after {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


def retry_after_ms(base_ms: int = OVERLOADED_RETRY_MS) -> int:
    """A jittered wait, so that the clients turned away together do not come back together."""
    return int(base_ms * (1 + random.random()))


class _Read:
    """One gathering or in-flight read of a job: the lowest ``after_seq`` its sockets need, and its answer."""

    __slots__ = ("after_seq", "with_job", "answer")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.after_seq: int | None = None  # None: no socket needs the event log
        self.with_job = False
        self.answer: asyncio.Future = loop.create_future()

    def want(self, after_seq: int | None, with_job: bool) -> None:
        self.with_job |= with_job
        if after_seq is not None:
            self.after_seq = after_seq if self.after_seq is None else min(self.after_seq, after_seq)


@define
class SharedReads:
    """Per job: one Redis read of the job record and/or event log at a time, shared by the sockets that wait."""

    queue: Queue
    lag: LoopLag = field(factory=LoopLag)
    gathering: dict[str, _Read] = field(factory=dict)
    in_flight: dict[str, _Read] = field(factory=dict)
    reads: int = 0  # Redis reads made, for tests and the bench
    retried: int = 0  # reads tried again after a timeout in a loop stall

    async def job_and_events(self, job_id: str, after_seq: int | None, with_job: bool = True
                             ) -> tuple[Job | None, list[dict]]:
        """The job (if ``with_job``) and its kept events above ``after_seq`` (none if it is None).

        Every read starts after the call, so it sees whatever was published before the call.
        """
        read = self.gathering.get(job_id)
        if read is None:
            read = self.gathering[job_id] = _Read(asyncio.get_running_loop())
            if job_id not in self.in_flight:
                asyncio.get_running_loop().call_soon(self._start, job_id)  # the rest of this tick joins it
        read.want(after_seq, with_job)
        job, kept = await asyncio.shield(read.answer)  # one socket going away does not cancel the others' read
        if after_seq is None:
            return job, []
        return job, [frame for frame in kept if frame["seq"] > after_seq]

    async def _fetch(self, job_id: str, read: _Read) -> tuple[Job | None, list[dict]]:
        """The read, again (up to READ_ATTEMPTS) when it timed out while the loop stalled: not Redis' fault."""
        self.lag.watch()
        for attempt in range(1, READ_ATTEMPTS + 1):
            started = asyncio.get_running_loop().time()
            try:
                job = await self.queue.get(job_id) if read.with_job else None
                kept = [] if read.after_seq is None else await self.queue.events(job_id, read.after_seq)
                return job, kept
            except (redis.exceptions.TimeoutError, asyncio.TimeoutError):
                if attempt == READ_ATTEMPTS or not self.lag.stalled_since(started):
                    raise
                self.retried += 1

    def _start(self, job_id: str) -> None:
        read = self.gathering.pop(job_id, None)
        if read is None:
            return
        self.in_flight[job_id] = read
        asyncio.ensure_future(self._read(job_id, read))

    async def _read(self, job_id: str, read: _Read) -> None:
        self.reads += 1
        try:
            job, kept = await self._fetch(job_id, read)
        except BaseException as exc:  # noqa: BLE001 - every waiter gets the failure, whatever it is
            read.answer.set_exception(exc)
            read.answer.exception()  # retrieved: no "never retrieved" noise when all waiters left
        else:
            read.answer.set_result((job, kept))
        finally:
            del self.in_flight[job_id]
            if job_id in self.gathering:
                self._start(job_id)


@define
class Subscriptions:
    """The process's subscribes in progress: batched to the registry, reads shared, overload said early."""

    queue: Queue
    registry: pykka.ActorRef
    progress: Progress
    max_pending: int  # subscribes in progress past which new ones are refused (0: no cap)
    stall_s: float = 5.0
    reads: SharedReads = field(default=None)
    pending: int = 0
    batch: list[tuple[Watcher, str]] = field(factory=list)
    sent_batches: int = 0
    registry_dead: bool = False

    def __attrs_post_init__(self) -> None:
        if self.reads is None:
            self.reads = SharedReads(self.queue)

    def admit(self) -> None:
        """Count a subscribe in; :class:`Overloaded` when the process has as many as it takes. Pair with done()."""
        if self.max_pending and self.pending >= self.max_pending:
            raise Overloaded(retry_after_ms())
        self.pending += 1

    def done(self) -> None:
        self.pending -= 1

    async def watch(self, conn: Watcher, job_id: str, confirmed: asyncio.Future) -> None:
        """Have the registry route ``job_id`` to ``conn``; return once it does (``confirmed`` is set).

        :class:`Stalled` if the registry handled nothing for ``stall_s`` while this waited;
        ``pykka.ActorDeadError`` if it is gone (the server is stopping).
        """
        if not self.batch:
            asyncio.get_running_loop().call_soon(self._flush)
        self.batch.append((conn, job_id))
        mine = self.sent_batches + 1  # the number of the batch this watch goes out in
        seen = self.progress.messages
        while not confirmed.done():
            await asyncio.wait({confirmed}, timeout=self.stall_s)
            if confirmed.done():
                break
            handled = self.progress.messages
            if self.progress.batches < mine and handled == seen:
                raise Stalled(f"the registry handled no message in {self.stall_s:g} s")
            seen = handled  # busy, not wedged (or done, its confirmation queued on this busy loop)
        if self.registry_dead:
            raise pykka.ActorDeadError("the registry is stopped")

    def _flush(self) -> None:
        batch, self.batch = self.batch, []
        if batch:
            self.sent_batches += 1
            try:
                self.registry.tell(WatchMany(batch))
            except pykka.ActorDeadError:  # the server is stopping: release the waiters, which then fail
                self.registry_dead = True
                for conn, job_id in batch:
                    conn.on_watching(job_id)
