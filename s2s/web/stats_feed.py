"""``queue_stats`` for every stats subscriber of this process from one Redis read a second."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import redis.exceptions

from s2s import events
from s2s.queue import Queue
from s2s.web import frames

log = logging.getLogger("s2s.ws")

REDIS_TIMEOUT_S = 5.0


class FrameSink(Protocol):
    def write_frame(self, frame: bytes) -> None:
        """Write one whole pre-built WebSocket frame (on the loop)."""


class StatsFeed:
    """One task on the loop, running only while someone listens: a hundred operator consoles cost what one does."""

    def __init__(self, queue: Queue, interval_s: float = 1.0):
        self.queue = queue
        self.interval_s = interval_s
        self.sockets: set[FrameSink] = set()
        self._task: asyncio.Task | None = None

    def add(self, socket: FrameSink) -> None:
        self.sockets.add(socket)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
            self._task.add_done_callback(_report_failure)

    def discard(self, socket: FrameSink) -> None:
        self.sockets.discard(socket)

    def stop(self) -> None:
        self.sockets.clear()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while self.sockets:
            try:
                stats = await asyncio.wait_for(self.queue.overview.snapshot(), REDIS_TIMEOUT_S)
            except (asyncio.TimeoutError, redis.exceptions.RedisError, OSError) as exc:
                log.warning("cannot read queue stats for sockets", extra={"error": repr(exc)})
            else:
                frame = events.wire(frames.stats_frame(stats))
                for socket in list(self.sockets):
                    socket.write_frame(frame)
            await asyncio.sleep(self.interval_s)


def _report_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the queue stats feed failed", exc_info=task.exception())
