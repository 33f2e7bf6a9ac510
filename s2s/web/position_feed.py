"""A queued job's new place in line for its /ws subscribers: one read a second for the whole process.

Coalesced: one task on the loop (running only while a socket of this process watches a job
that has not ended) reads the places of the watched jobs with one script per tick
(:meth:`s2s.line.Line.places`), and writes a frame to a socket only where the place it was
last told moved (:meth:`s2s.line.Place.worth_telling`). A claim in a 5,000-deep queue is
no event per waiting job: a subscriber hears at most one frame a tick, and only on a change.

These frames are not events, so they carry no ``seq``: a place in line is not in the job's
log, and seq goes on rising by one per event (a client that drops frames by seq never drops
one of these, and "every seq once" holds for every frame that has a seq). Each is a
``job_progress`` of the queued job with ``queuePosition`` and ``etaSeconds``, written only to
a socket whose last seq is that of the job's latest event at the reading (it has every event,
nothing newer, and is not catching up): it always describes the state the client last heard of.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import redis.exceptions

from s2s import events
from s2s.line import Line, Place
from s2s.web.catch_up import JobWatch

log = logging.getLogger("s2s.ws")

REDIS_TIMEOUT_S = 5.0
_ENDED = ("", "completed", "failed", "cancelled")  # '' : the job is gone


class Watching(Protocol):
    """A socket as the feed sees it (on the loop)."""

    closed: bool
    jobs: dict[str, JobWatch]

    @staticmethod
    def place_framing(text: str) -> bytes:
        """How this kind of watcher frames a place (events.wire for /ws, events.sse_data for a stream)."""

    def write_frame(self, frame: bytes) -> None: ...


def place_frame(job_id: str, place: Place) -> dict:
    """The job_progress frame telling a queued job's place (no seq: see the module's docstring)."""
    return {"type": "job_progress", "jobId": job_id, "status": "queued", "progress": 0, "message": place.message,
            **place.fields()}


class PositionFeed:
    """Job id -> the sockets watching it here; one task ticking while there are any."""

    def __init__(self, line: Line, interval_s: float = 1.0):
        self.line = line
        self.interval_s = interval_s
        self.watched: dict[str, set[Watching]] = {}
        self.ticks = 0  # lines read, and
        self.frames_sent = 0  # frames written: for tests and the bench
        self._task: asyncio.Task | None = None
        self._asked: dict[str, asyncio.Future] = {}  # catch-ups' places, read together once per loop tick

    def track(self, socket: Watching, job_id: str) -> None:
        """Tell ``socket`` of ``job_id``'s place while it is queued (forgotten once it unsubscribes or closes)."""
        self.watched.setdefault(job_id, set()).add(socket)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
            self._task.add_done_callback(_report_failure)

    def stop(self) -> None:
        self.watched.clear()
        if self._task is not None:
            self._task.cancel()

    async def fields_of(self, job_id: str, seq: int) -> dict:
        """For a catch-up's state frame: the queued job's ``queuePosition`` and ``etaSeconds`` if the line was
        read at that very seq; {} otherwise (the feed tells it within a tick). The catch-ups of one loop tick
        share one read."""
        loop = asyncio.get_running_loop()
        if not self._asked:
            loop.call_soon(self._read_asked)
        future = self._asked.get(job_id)
        if future is None:
            future = self._asked[job_id] = loop.create_future()
        try:
            place = await asyncio.shield(future)
        except (asyncio.TimeoutError, redis.exceptions.RedisError, OSError) as exc:
            log.info("no place in line for a catch-up", extra={"job": job_id, "error": repr(exc)})
            return {}
        return place.fields() if place is not None and place.queued and place.seq == seq else {}

    def _read_asked(self) -> None:
        asked, self._asked = self._asked, {}

        def answer(task: asyncio.Future) -> None:
            failed = None if task.cancelled() else task.exception()
            for job_id, future in asked.items():
                if future.done():
                    continue
                if task.cancelled() or failed is not None:
                    future.set_exception(failed or asyncio.TimeoutError())
                    future.exception()  # retrieved: a waiter that left makes no noise
                else:
                    future.set_result(task.result().get(job_id))

        read = asyncio.ensure_future(asyncio.wait_for(self.line.places(list(asked)), REDIS_TIMEOUT_S))
        read.add_done_callback(answer)

    async def _run(self) -> None:
        while self.watched:
            await asyncio.sleep(self.interval_s)  # first: a catch-up has just told the place
            try:
                await asyncio.wait_for(self.tick(), REDIS_TIMEOUT_S)
            except (asyncio.TimeoutError, redis.exceptions.RedisError, OSError) as exc:
                log.warning("cannot read places in line for sockets", extra={"error": repr(exc)})

    async def tick(self) -> None:
        """Read the watched jobs' places once; write a frame to each socket whose place moved."""
        for job_id, sockets in list(self.watched.items()):
            still = {s for s in sockets if not s.closed and job_id in s.jobs}
            if still:
                self.watched[job_id] = still
            else:
                del self.watched[job_id]
        places = await self.line.places(list(self.watched))
        self.ticks += 1
        for job_id, place in places.items():
            if place.status in _ENDED:
                self.watched.pop(job_id, None)
            elif place.queued:
                self._tell(job_id, place)

    def _tell(self, job_id: str, place: Place) -> None:
        text, frames = None, {}  # framed once per kind of watcher
        for socket in list(self.watched.get(job_id, ())):
            watch = socket.jobs.get(job_id)
            if (watch is None or watch.buffer is not None or watch.last_seq != place.seq
                    or not place.worth_telling(watch.told)):
                continue
            text = text or events.encode(place_frame(job_id, place))
            frame = frames.get(socket.place_framing)
            if frame is None:
                frame = frames[socket.place_framing] = socket.place_framing(text)
            watch.told = (place.position, place.eta_s)
            socket.write_frame(frame)
            self.frames_sent += 1


def _report_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the place-in-line feed failed", exc_info=task.exception())
