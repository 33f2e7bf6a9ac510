"""/ws: live job progress over a native WebSocket (the contract's "WebSocket: /ws").

A socket is a plain Tornado handler, never a thread or an actor: the registry
actor routes events to it through ``io_loop.add_callback`` and the pinger
sweeps it on the loop. How a subscriber gets what it missed and then live
events is :mod:`s2s.web.catch_up`; operators' ``queue_stats`` come from
:mod:`s2s.web.stats_feed`; frames go out through :mod:`s2s.web.tornado_internals`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
import time
from collections import Counter
from collections.abc import Awaitable
from urllib.parse import urlsplit

import pykka
import redis.exceptions
import tornado.websocket
from attrs import Factory, define, field

from s2s import events
from s2s.actors import LiveActors
from s2s.actors.pinger import Track
from s2s.actors.registry import Unwatch
from s2s.admission import client_key
from s2s.queue import Queue
from s2s.settings import Settings
from s2s.web import frames, tornado_internals
from s2s.web.access import bearer_token, check_operator, origin_allowed
from s2s.web.catch_up import JobWatch, WatchingJobs, catch_up, first_frames, tell
from s2s.web.frames import FrameError, Ping, Subscribe, SubscribeStats, Unsubscribe
from s2s.web.position_feed import PositionFeed
from s2s.web.stats_feed import StatsFeed
from s2s.web.subscribing import Overloaded, Stalled, Subscriptions, retry_after_ms
from s2s.web.tornado_internals import Written

log = logging.getLogger("s2s.ws")

HARD_MAX_MESSAGE_BYTES = 1024 * 1024  # Tornado drops a socket over this; up to it we answer frame_too_large
MAX_JOBS_PER_SOCKET = 100
MAX_UNSENT_BYTES = 1024 * 1024  # a client this far behind is cut off; it reconnects with lastSeq and catches up
UNAVAILABLE_RETRY_MS = 1000  # the base of the wait asked of a client whose subscribe failed


@define
class WsContext:
    """What every socket needs, passed in through the route table; ``sockets`` are the open ones."""

    settings: Settings
    queue: Queue
    actors: LiveActors
    sockets: set = field(factory=set)
    streams: set = field(factory=set)  # the open SSE streams (s2s.web.stream)
    per_client: Counter = field(factory=Counter)  # open sockets by client address (S2S_MAX_SOCKETS_PER_CLIENT)
    stats: StatsFeed = field(default=Factory(lambda self: StatsFeed(self.queue), takes_self=True))
    positions: PositionFeed = field(default=Factory(lambda self: PositionFeed(self.queue.line), takes_self=True))
    subscriptions: Subscriptions = field(default=Factory(lambda self: Subscriptions(
        self.queue, self.actors.registry, self.actors.progress, self.settings.ws_max_pending_subscribes),
        takes_self=True))

    def close_all(self, reason: str = "The server is restarting; reconnect and resubscribe with lastSeq.") -> None:
        self.stats.stop()
        self.positions.stop()
        for socket in list(self.sockets):
            socket.close(1001, reason)
        for stream in list(self.streams):
            stream.interrupted()  # the browser reconnects (elsewhere) with Last-Event-ID


class JobSocket(WatchingJobs, tornado.websocket.WebSocketHandler):
    framing = staticmethod(events.websocket_frame)  # how the registry frames this socket's events
    place_framing = staticmethod(events.wire)  # and the place-in-line feed its places
    # Slots, so Tornado's own attributes are few enough for the instance dict to stay a small shared-key one.
    __slots__ = ("live", "client_id", "address", "base_url", "jobs", "silent_since", "closed", "budget",
                 "upgrade_token")

    def initialize(self, live: WsContext) -> None:
        self.live = live
        self.client_id = ""
        self.address = ""
        self.base_url = ""
        self.jobs: dict[str, JobWatch] = {}
        self.silent_since: float | None = None  # when the first unanswered ping went out
        self.closed = False
        self.budget: frames.FrameBudget | None = None  # made at the first frame: most sockets send one or two
        self.upgrade_token: str | None = None  # the upgrade's Authorization: Bearer, kept past its headers

    # ---- handshake ---------------------------------------------------------------------------
    @property
    def max_message_size(self) -> int:
        return HARD_MAX_MESSAGE_BYTES

    def get_compression_options(self) -> None:
        return None  # frames are written pre-built (events.wire): no per-message deflate

    def check_origin(self, origin: str) -> bool:
        """CORS_ORIGINS, plus the API's own pages (same origin), whatever Tornado's version does by default."""
        same_origin = urlsplit(origin).netloc.lower() == self.request.host.lower()
        return same_origin or origin_allowed(origin, self.live.settings.cors_origins)

    def prepare(self) -> None:
        """Refuse the upgrade (429, before any socket exists) to a client already holding its share."""
        self.address = sys.intern(client_key(self.request.remote_ip))  # one copy per client, not per socket
        cap = self.live.settings.max_sockets_per_client
        if cap and self.live.per_client[self.address] >= cap:
            log.info("socket refused", extra={"client": self.address, "open": self.live.per_client[self.address]})
            self.set_status(429)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.set_header("Retry-After", "10")
            self.finish(json.dumps({"error": f"Too many live connections from your address (at most {cap}); "
                                             "close some and try again.", "code": "too_many_sockets",
                                    "details": {"maxSockets": cap}}))

    def open(self) -> None:
        self.live.per_client[self.address] += 1
        self.client_id = secrets.token_urlsafe(9)
        self.base_url = sys.intern(self.live.settings.public_url or f"{self.request.protocol}://{self.request.host}")
        self.upgrade_token = bearer_token(self.request.headers.get("Authorization"))
        self.set_nodelay(True)  # small frames: Nagle would hold one back for the peer's delayed ACK
        tornado_internals.limit_unsent(self, MAX_UNSENT_BYTES)
        tornado_internals.release_handshake(self)  # nothing reads the upgrade's headers from here on
        tornado_internals.read_on_its_own(self)  # so the coroutines that answered the upgrade end now
        self.live.sockets.add(self)
        tell(self.live.actors.pinger, Track(self))
        self.send(frames.confirmed_frame(self.client_id))
        log.debug("socket open", extra={"client": self.client_id, "ip": self.request.remote_ip})

    def on_close(self) -> None:
        self._forget()
        log.debug("socket closed", extra={"client": self.client_id, "code": self.close_code})

    # ---- client frames -----------------------------------------------------------------------
    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        self.silent_since = None
        now = time.monotonic()
        if self.budget is None:
            settings = self.live.settings
            self.budget = frames.FrameBudget(settings.ws_frames_per_s, settings.ws_frame_burst, now)
        if not self.budget.take(now):
            return self.send(frames.rate_limited_frame(self.live.settings.ws_frames_per_s))
        try:
            command = frames.parse_command(message)
        except FrameError as exc:
            return self.send(frames.error_frame(exc))
        if isinstance(command, Ping):
            return self.send(frames.PONG)
        if isinstance(command, Subscribe):
            return self.subscribe(command)  # Tornado reads the next frame once this is done
        if isinstance(command, Unsubscribe):
            return self.unsubscribe(command.job_id)
        if isinstance(command, SubscribeStats):
            return self.subscribe_stats(command)

    def on_pong(self, data: bytes) -> None:
        self.silent_since = None

    def on_ping(self, data: bytes) -> None:
        self.silent_since = None

    async def subscribe(self, command: Subscribe) -> None:
        job_id = command.job_id
        if job_id in self.jobs:
            return  # already live here: everything since is on its way, and nothing is sent twice
        if len(self.jobs) >= MAX_JOBS_PER_SOCKET:
            return self.send(frames.error_frame(FrameError(
                "too_many_subscriptions", f"A socket may watch at most {MAX_JOBS_PER_SOCKET} jobs at once.", job_id)))
        subscriptions = self.live.subscriptions
        try:
            subscriptions.admit()
        except Overloaded as exc:
            return self.send(frames.error_frame(FrameError(
                "overloaded", "The server is busy; try again after retryAfterMs.", job_id, exc.retry_after_ms)))
        watch = JobWatch(-1 if command.last_seq is None else command.last_seq,
                         asyncio.get_running_loop().create_future())
        self.jobs[job_id] = watch
        try:
            await subscriptions.watch(self, job_id, watch.confirmed)
            watch.confirmed = None
            if self.jobs.get(job_id) is not watch:
                return  # the socket closed meanwhile
            first = await first_frames(subscriptions.reads, job_id, command.last_seq, self.base_url,
                                       self.live.positions)
        except (pykka.ActorDeadError, Stalled, asyncio.TimeoutError, redis.exceptions.RedisError, OSError) as exc:
            log.warning("subscribe failed", extra={"client": self.client_id, "job": job_id, "error": repr(exc)})
            self.unsubscribe(job_id)
            return self.send(frames.error_frame(FrameError(
                "unavailable", "Live updates are unavailable right now; try again shortly.", job_id,
                retry_after_ms(UNAVAILABLE_RETRY_MS))))
        finally:
            subscriptions.done()
        if self.jobs.get(job_id) is not watch:
            return  # the socket closed meanwhile
        if first is None:
            self.unsubscribe(job_id)
            return self.send(frames.error_frame(FrameError(
                "job_not_found", f"No job {job_id!r} (it may have expired).", job_id)))
        if first and first[-1]["type"] == "job_progress":  # not ended: told its place in line while queued
            self.live.positions.track(self, job_id)
        await catch_up(self, subscriptions.reads, job_id, watch, first)

    def subscribe_stats(self, command: SubscribeStats) -> None:
        """Operators only: the token in the frame, or the upgrade's ``Authorization: Bearer``."""
        given = command.token or self.upgrade_token
        denied = check_operator(self.live.settings.admin_token, given, 'a "token" field or Authorization: Bearer')
        if denied is not None:
            return self.send(frames.error_frame(FrameError(denied.code, denied.message)))
        self.live.stats.add(self)

    def unsubscribe(self, job_id: str) -> None:
        if self.jobs.pop(job_id, None) is not None:
            tell(self.live.actors.registry, Unwatch(self, job_id))

    # ---- called on the loop by the actors --------------------------------------------------------
    def check_alive(self, now: float, timeout_s: float) -> None:
        if self.closed:
            return
        if self.silent_since is None:
            self.silent_since = now
        elif now - self.silent_since >= timeout_s:
            log.debug("socket stopped answering pings", extra={"client": self.client_id})
            self._forget()
            self.close(1001, "No answer to ping.")
            return
        self.write_frame(frames.PING)

    # ---- plumbing ------------------------------------------------------------------------------
    def send(self, text: str) -> None:
        self.write_frame(events.wire(text))

    def deliver(self, frame: bytes) -> None:  # WatchingJobs: a registry-framed event
        self.write_frame(frame)

    def write_frame(self, frame: bytes) -> None:
        """Write a whole pre-built frame (see events.wire), cutting off a client too far behind."""
        if self.closed:
            return
        written = tornado_internals.write_frame(self, frame)
        if written is Written.FULL:
            log.info("socket too far behind; closed it", extra={"client": self.client_id})
        if written in (Written.CLOSED, Written.FULL):
            self._forget()

    def interrupted(self) -> None:
        self._forget()
        self.close(1013, "Live updates were interrupted; reconnect and resubscribe with lastSeq.")

    def _forget(self) -> None:
        """The socket is gone (or going): drop its subscriptions, quietly."""
        if self.closed:
            return
        self.closed = True
        self.stop_watching(self.live.sockets, self.live.stats)

