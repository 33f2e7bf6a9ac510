"""Catch-up: a new subscriber gets what it missed, then live events, with no gap and no duplicate.

On subscribe a socket

1. asks the registry to route the job's events here, keeping them in a buffer;
2. once the registry confirms, reads the job (or its event log) from Redis:
   anything published before the confirmation is already there;
3. sends that, then the buffer, dropping every event whose ``seq`` it has
   already sent; from then on events go straight out, filtered the same way.

A resync (the events link dropped, events may be lost) runs steps 2-3 again.
Reads go through :class:`s2s.web.subscribing.SharedReads`: the sockets of one job
waiting at the same time share one read, each taking the events after its own seq.
A read is bounded by the Redis client's own timeout (``S2S_REDIS_TIMEOUT_MS``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import pykka
import redis.exceptions

from s2s import events
from s2s.actors.pinger import Untrack
from s2s.actors.registry import Forget
from s2s.models import JobStatus
from s2s.web.subscribing import SharedReads

log = logging.getLogger("s2s.ws")

CATCH_UP_ATTEMPTS = 4  # then the socket is closed: never go on live with a gap


class JobWatch:
    """One socket's view of one job: the last seq it was sent, and a buffer while it catches up."""

    __slots__ = ("last_seq", "buffer", "stale", "confirmed", "told")

    def __init__(self, last_seq: int, confirmed: asyncio.Future | None = None):
        self.last_seq = last_seq
        self.buffer: list[tuple[int, bytes]] | None = []  # None: caught up, events go straight out
        self.stale = False  # a resync came while catching up: read the log once more
        self.confirmed = confirmed  # set by the registry's confirmation (or by the socket closing)
        self.told: tuple[int | None, int | None] = (None, None)  # the place in line it was last sent (position_feed)

    def live(self, seq: int, frame: bytes) -> bool:
        """A live event: kept while catching up; True when it is to be written now."""
        if self.buffer is not None:
            self.buffer.append((seq, frame))
            return False
        if seq <= self.last_seq:
            return False
        self.last_seq, self.told = seq, (None, None)  # a new state: its place, if queued, is told anew
        return True

    def resync(self) -> bool:
        """Events may have been lost: True when a catch-up has to start (none is running)."""
        self.stale = True
        if self.buffer is not None:
            return False
        self.buffer = []
        return True


class Placing(Protocol):
    """Where a queued job stands in line (:class:`s2s.web.position_feed.PositionFeed`)."""

    async def fields_of(self, job_id: str, seq: int) -> dict: ...


class Catching(Protocol):
    """The socket, as catch-up sees it (on the loop)."""

    jobs: dict[str, JobWatch]
    base_url: str

    def send(self, text: str) -> None: ...

    def on_event(self, job_id: str, seq: int, frame: bytes) -> None: ...

    def interrupted(self) -> None:
        """Catch-up cannot go on: close so that the client resubscribes with lastSeq."""


async def first_frames(reads: SharedReads, job_id: str, last_seq: int | None, base_url: str,
                       places: Placing | None = None) -> list[dict] | None:
    """What a new subscriber missed: the current state (a queued job's with its place in line, from ``places``),
    or the kept events after ``last_seq``; None: no job."""
    job, kept = await reads.job_and_events(job_id, last_seq)
    if job is None:
        return None
    if last_seq is None or (job.seq > last_seq and (not kept or kept[0]["seq"] > last_seq + 1)):
        frame = events.state_frame(job, base_url)  # with lastSeq: the log no longer reaches back, say where it stands
        if places is not None and job.status is JobStatus.QUEUED:
            frame.update(await places.fields_of(job_id, job.seq))
        return [frame]
    return kept


class WatchingJobs:
    """The registry's calls on the loop, the same for a /ws socket and a GET /stream (one copy of them).

    The class using it has ``jobs`` (job id -> JobWatch) and ``live`` (the WsContext), and ``deliver(frame)``
    writes one registry-framed event (``framing``) to its client.
    """

    __slots__ = ()

    def on_watching(self, job_id: str) -> None:
        watch = self.jobs.get(job_id)
        if watch is not None and watch.confirmed is not None and not watch.confirmed.done():
            watch.confirmed.set_result(None)

    def on_event(self, job_id: str, seq: int, frame) -> None:
        watch = self.jobs.get(job_id)
        if watch is not None and watch.live(seq, frame):
            self.deliver(frame)

    def on_resync(self, job_id: str) -> None:
        watch = self.jobs.get(job_id)
        if watch is not None and watch.resync():
            reads = self.live.subscriptions.reads
            asyncio.ensure_future(catch_up(self, reads, job_id, watch, [])).add_done_callback(report_failure)

    def stop_watching(self, *members: set) -> None:
        """The client is gone (or going; the caller has marked itself closed): a subscribe in progress sees
        it and ends, its jobs are dropped, it leaves ``members`` and its client's connection count, and the
        registry and the pinger forget it."""
        for watch in self.jobs.values():
            if watch.confirmed is not None and not watch.confirmed.done():
                watch.confirmed.set_result(None)
        self.jobs.clear()
        live = self.live
        for group in members:
            group.discard(self)
        live.per_client[self.address] -= 1
        if live.per_client[self.address] <= 0:
            del live.per_client[self.address]
        tell(live.actors.registry, Forget(self))
        tell(live.actors.pinger, Untrack(self))


def tell(ref: pykka.ActorRef, message) -> None:
    """A message to one of the live actors; nothing when it has stopped (the server is stopping)."""
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        pass


async def catch_up(socket: Catching, reads: SharedReads, job_id: str, watch: JobWatch, missed: list[dict]) -> None:
    """Send ``missed`` then the buffered live events, each seq once and in order; then go live.

    While ``watch.stale``, the job's log is read again from the last seq sent.
    """
    failures = 0
    while True:
        for frame in missed:
            if frame["seq"] > watch.last_seq:
                watch.last_seq = frame["seq"]
                watch.told = (frame.get("queuePosition"), frame.get("etaSeconds"))
                socket.send(events.encode(events.with_base_url(frame, socket.base_url)))
        if not watch.stale or socket.jobs.get(job_id) is not watch:
            break
        watch.stale = False
        try:
            _, missed = await reads.job_and_events(job_id, watch.last_seq, with_job=False)
        except (asyncio.TimeoutError, redis.exceptions.RedisError, OSError) as exc:
            failures += 1
            if failures >= CATCH_UP_ATTEMPTS:
                log.warning("cannot catch up; closing the socket so that its client resubscribes",
                            extra={"job": job_id, "error": repr(exc)})
                socket.interrupted()
                return
            missed, watch.stale = [], True
            await asyncio.sleep(0.2 * failures)
    buffered, watch.buffer = watch.buffer or [], None
    for seq, frame in buffered:
        socket.on_event(job_id, seq, frame)


def report_failure(task: asyncio.Future) -> None:
    """Done-callback for a catch-up run as a task: its failure is logged, not lost."""
    if not task.cancelled() and task.exception() is not None:
        log.error("catching up a socket failed", exc_info=task.exception())
