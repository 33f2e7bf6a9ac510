"""JobRegistry: which socket watches which job, and handing each event to exactly those sockets.

One actor for the whole process, whatever the number of sockets. Everything it
does to a socket goes through ``io_loop.add_callback``: the sockets live on the
Tornado loop and only the loop may write to them. A batch of events becomes one
callback, and each event's wire frame is made once per kind of watcher and base URL, not once per socket.

It keeps no copy of job state: a new subscriber reads that from Redis, after the
registry confirmed its watch, which is what makes the hand-over gap-free.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple, Protocol

import pykka
from tornado.ioloop import IOLoop

from s2s.events import Event, event_text
from s2s.metrics.counters import EVENTS_DELIVERED_FIELD, Counts

log = logging.getLogger("s2s.ws")


class Watcher(Protocol):
    """What the registry needs of a subscriber (a /ws socket, an SSE stream). Methods are called on the IOLoop.

    ``framing`` (a static method, the same object for every watcher of a kind) makes an event's wire form
    from the event and its text for this base URL; it is called once per kind and base URL, not per watcher.
    """

    client_id: str
    base_url: str
    framing: Callable[[Event, str], object]

    def on_event(self, job_id: str, seq: int, frame: object) -> None:
        """``frame`` is what this watcher's ``framing`` made, ready for its connection."""

    def on_watching(self, job_id: str) -> None:
        """The registry now routes this job's events here: replaying from Redis cannot miss one."""

    def on_resync(self, job_id: str) -> None:
        """Live events may have been lost (the pub/sub link dropped): fetch what was missed."""


# ---- messages (all sent with tell) -----------------------------------------------------------
class WatchMany(NamedTuple):
    """Every subscribe of one IOLoop tick, in one message: a storm of 10,000 is a few messages, not 10,000."""

    pairs: list[tuple[Watcher, str]]


class Unwatch(NamedTuple):
    conn: Watcher
    job_id: str


class Forget(NamedTuple):
    """The socket closed: drop every subscription it had."""

    conn: Watcher


class Publish(NamedTuple):
    """Events off the channel, in the order Redis published them."""

    events: list[Event]


class Resync(NamedTuple):
    """The subscriber (re)joined the channel; events published meanwhile reached no one."""


Delivery = tuple[tuple[Watcher, ...], Event]


def deliver(deliveries: list[Delivery]) -> None:
    """On the loop: hand each event to its watchers, in order, framing it once per kind and base URL."""
    for conns, event in deliveries:
        frames: dict[tuple, object] = {}
        for conn in conns:
            kind = (conn.framing, conn.base_url)
            frame = frames.get(kind)
            if frame is None:
                frame = frames[kind] = conn.framing(event, event_text(event, conn.base_url))
            conn.on_event(event.job_id, event.seq, frame)


def confirm(pairs: list[tuple[Watcher, str]]) -> None:
    """On the loop: tell each socket of a WatchMany that its job's events are routed to it now."""
    for conn, job_id in pairs:
        conn.on_watching(job_id)


def resync(pairs: list[tuple[Watcher, str]]) -> None:
    for conn, job_id in pairs:
        conn.on_resync(job_id)


class Progress:
    """How far the registry got: the loop tells a busy registry (still counting) from a wedged one by it.

    Written by the actor's thread only, read on the loop (int attributes: no lock needed).
    """

    __slots__ = ("messages", "batches")

    def __init__(self) -> None:
        self.messages = 0  # messages of any kind handled
        self.batches = 0  # WatchMany handled: the loop's n-th batch is confirmed once this reaches n


class JobRegistry(pykka.ThreadingActor):
    """Job id -> the sockets watching it, by client id."""

    def __init__(self, io_loop: IOLoop, progress: Progress | None = None):
        super().__init__()
        self.io_loop = io_loop
        self.progress = progress or Progress()
        self.watchers: dict[str, dict[str, Watcher]] = {}
        self.jobs_of: dict[str, set[str]] = {}  # client id -> job ids, to forget a closed socket at once
        self.delivered = Counts()  # events handed to sockets, for /metrics (read on the loop, added to here)

    def on_receive(self, message) -> None:
        self.progress.messages += 1
        try:
            if isinstance(message, Publish):
                self._publish(message.events)
            elif isinstance(message, WatchMany):
                self._watch_many(message.pairs)
            elif isinstance(message, Unwatch):
                self._unwatch(message.conn.client_id, message.job_id)
            elif isinstance(message, Forget):
                self._forget(message.conn.client_id)
            elif isinstance(message, Resync):
                self._resync()
            else:
                log.warning("registry got an unknown message", extra={"message": type(message).__name__})
        except Exception:  # one bad message must not stop live updates for everyone
            log.exception("registry failed on a message", extra={"message": type(message).__name__})

    def _publish(self, events: list[Event]) -> None:
        deliveries: list[Delivery] = []
        handed = 0
        for event in events:
            conns = self.watchers.get(event.job_id)
            if conns:
                deliveries.append((tuple(conns.values()), event))
                handed += len(conns)
        if deliveries:
            self.delivered.add(EVENTS_DELIVERED_FIELD, handed)
            self.io_loop.add_callback(deliver, deliveries)

    def _watch_many(self, pairs: list[tuple[Watcher, str]]) -> None:
        try:
            for conn, job_id in pairs:
                self.watchers.setdefault(job_id, {})[conn.client_id] = conn
                self.jobs_of.setdefault(conn.client_id, set()).add(job_id)
            self.io_loop.add_callback(confirm, pairs)
        finally:
            self.progress.batches += 1

    def _unwatch(self, client_id: str, job_id: str) -> None:
        conns = self.watchers.get(job_id)
        if conns is not None:
            conns.pop(client_id, None)
            if not conns:
                del self.watchers[job_id]
        jobs = self.jobs_of.get(client_id)
        if jobs is not None:
            jobs.discard(job_id)
            if not jobs:
                del self.jobs_of[client_id]

    def _forget(self, client_id: str) -> None:
        for job_id in list(self.jobs_of.get(client_id, ())):
            self._unwatch(client_id, job_id)

    def _resync(self) -> None:
        pairs = [(conn, job_id) for job_id, conns in self.watchers.items() for conn in conns.values()]
        if pairs:
            log.info("catching up sockets after rejoining the events channel", extra={"subscriptions": len(pairs)})
            self.io_loop.add_callback(resync, pairs)

    def counts(self) -> dict[str, int]:
        """For diagnostics and tests (ask through a proxy, off the loop)."""
        return {"sockets": len(self.jobs_of), "jobs": len(self.watchers),
                "subscriptions": sum(len(c) for c in self.watchers.values())}
