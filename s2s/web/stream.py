"""GET /api/jobs/<id>/stream: one job's events as Server-Sent Events, for clients without a WebSocket.

A stream is one more watcher of the registry beside the /ws sockets, served the same way and by the
same actors: no thread or actor of its own. It subscribes as a socket does (:mod:`s2s.web.subscribing`),
catches up as one does (:mod:`s2s.web.catch_up`) from ``Last-Event-ID`` (the seq its client saw last),
gets its keep-alive comment from the pinger's sweep (every WS_PING_INTERVAL) and ends after the job's
last event (or after S2S_STREAM_MAX_SECONDS: the browser reconnects). The registry frames each event
once per base URL for all streams (:func:`s2s.events.stream_frame`).
A reader that falls MAX_UNSENT_BYTES behind is cut, as on /ws: its browser reconnects with Last-Event-ID
and catches up. Streams count toward S2S_MAX_SOCKETS_PER_CLIENT with the client's WebSockets: behind a
proxy, the connection cap counts only requests still being received, and a stream is received at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import secrets

import pykka
import redis.exceptions

from s2s import events
from s2s.actors.pinger import Track
from s2s.admission import client_key
from s2s.web.catch_up import JobWatch, WatchingJobs, catch_up, first_frames, tell
from s2s.web.describe import describe, error, operation, ref, retry_after
from s2s.web.handlers import ApiHandler, AppContext
from s2s.web.subscribing import Overloaded, Stalled, retry_after_ms
from s2s.web.ws import MAX_UNSENT_BYTES, UNAVAILABLE_RETRY_MS, WsContext

log = logging.getLogger("s2s.ws")

KEEP_ALIVE = b": keep-alive\n\n"
RECONNECT_MS = 2000  # the base of the stream's ``retry:``, jittered per stream so a restart's reconnects spread
MAX_SEQ_DIGITS = 15
LAST_EVENT_ID = {"type": "string", "pattern": f"^[0-9]{{1,{MAX_SEQ_DIGITS}}}$"}


#: one event of the stream, as OpenAPI 3.1 describes an event stream's items
EVENT = {"type": "object", "required": ["data", "id"], "properties": {
    "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": ref("JobEvent"),
             "description": "One frame, exactly as /ws sends it."},
    "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The frame's `seq`."},
    "event": {"const": "message", "description": "Always the default type: `onmessage` gets every event."},
    "retry": {"type": "integer", "minimum": 0}}}


class InvalidLastEventId(ValueError):
    pass


def last_seq_of(header: str | None, query: str | None) -> int | None:
    """The seq the client saw last: the ``Last-Event-ID`` header (a browser's reconnect), else ``lastEventId``."""
    seqs = [_seq(given) for given in (header, query) if given is not None]  # a bad one is refused, either
    return seqs[0] if seqs else None


def _seq(given: str) -> int:
    if not (given.isascii() and given.isdigit() and len(given) <= MAX_SEQ_DIGITS):
        raise InvalidLastEventId(given)
    return int(given)


def _description(settings, catalog) -> dict:
    return operation(
        "streamJob", "jobs", "A job's events as Server-Sent Events, for clients without a WebSocket",
        description=(
            "`text/event-stream`: each event's `data:` is one frame exactly as `/ws` sends it (`job_progress`, "
            "`job_completed`, `job_failed`, `job_cancelled`), its `id:` the frame's `seq`. Without "
            "`Last-Event-ID` the first event is the job's current state; with it, every kept event after that "
            "seq, each once (or the current state if the log no longer reaches back). A comment line "
            f"(`: keep-alive`) comes every WS_PING_INTERVAL ({settings.ws_ping_interval_ms} ms) and `retry:` "
            "says how long a browser waits before reconnecting. The stream ends after the job's last event, or "
            f"once it has lasted S2S_STREAM_MAX_SECONDS ({settings.stream_max_s} s): the client then reconnects "
            "with `Last-Event-ID` and misses nothing. "
            "Streams count toward S2S_MAX_SOCKETS_PER_CLIENT with the client's WebSockets."),
        parameters=[
            {"name": "Last-Event-ID", "in": "header", "required": False, "schema": LAST_EVENT_ID,
             "description": "The `id:` (seq) of the last event seen; a browser's EventSource sends it on reconnect."},
            {"name": "lastEventId", "in": "query", "required": False, "schema": LAST_EVENT_ID,
             "description": "The same, for clients that cannot set the header; the header wins."}],
        responses={
            200: {"description": "The events, until the job's last one.",
                  "headers": {"Cache-Control": {"required": True, "schema": {"const": "no-store"}}},
                  "content": {"text/event-stream": {"schema": EVENT}}},
            204: {"description": "The job has ended and its last event was already seen (`Last-Event-ID`): "
                                 "nothing more will come, and an EventSource stops reconnecting."},
            400: error("`Last-Event-ID` (or `lastEventId`) is not a seq.", "invalid_last_event_id"),
            404: "JobNotFound",
            429: error("The client holds S2S_MAX_SOCKETS_PER_CLIENT live connections (WebSockets and streams) on "
                       "this API process.", "too_many_sockets", headers=retry_after(required=True)),
            503: error("The process is busy (`overloaded`) or live updates are unavailable (`unavailable`); try "
                       "again after `Retry-After`.", "overloaded", "unavailable", headers=retry_after(required=True)),
        })


@describe("/api/jobs/{jobId}/stream", get=_description)
class JobStreamHandler(WatchingJobs, ApiHandler):
    """One client's stream of one job: a :class:`s2s.actors.registry.Watcher`, touched on the loop only."""

    framing = staticmethod(events.stream_frame)  # how the registry frames this stream's events
    place_framing = staticmethod(events.sse_data)  # and the place-in-line feed its places (no seq, so no id:)

    def initialize(self, ctx: AppContext, live: WsContext | None) -> None:
        super().initialize(ctx)
        self.live = live
        self.client_id = secrets.token_urlsafe(9)
        self.address = ""
        self.jobs: dict[str, JobWatch] = {}
        self.unsent = 0  # bytes handed to the connection and not yet written to the client
        self.opened = False  # counted in, subscribed: _forget undoes it
        self.closed = False
        self.over: asyncio.Future | None = None  # set when the stream is done, for whatever reason

    async def get(self, job_id: str) -> None:
        live = self.live
        if live is None:  # an app made without the actors (the route table alone)
            self.set_header("Retry-After", "1")
            return self.fail(503, "unavailable", "Live updates are not served by this process.")
        try:
            last_seq = last_seq_of(self.request.headers.get("Last-Event-ID"),
                                   self.get_query_argument("lastEventId", None))
        except InvalidLastEventId:
            return self.fail(400, "invalid_last_event_id", "Last-Event-ID (or lastEventId) must be the seq of an "
                                                           "event: digits only.")
        self.address = client_key(self.request.remote_ip)
        cap = self.ctx.settings.max_sockets_per_client
        if cap and live.per_client[self.address] >= cap:
            log.info("stream refused", extra={"client": self.address, "open": live.per_client[self.address]})
            self.set_header("Retry-After", "10")
            return self.fail(429, "too_many_sockets", f"Too many live connections from your address (at most {cap}); "
                                                      "close some and try again.", {"maxSockets": cap})
        subscriptions = live.subscriptions
        try:
            subscriptions.admit()
        except Overloaded as exc:
            self.set_header("Retry-After", str(math.ceil(exc.retry_after_ms / 1000)))
            return self.fail(503, "overloaded", "The server is busy; try again after Retry-After seconds.")
        self.base_url = self.base_url()  # from here an attribute, as the registry and catch-up read it
        loop = asyncio.get_running_loop()
        watch = JobWatch(-1 if last_seq is None else last_seq, loop.create_future())
        self.over = loop.create_future()
        self._open(job_id, watch)
        try:
            await subscriptions.watch(self, job_id, watch.confirmed)
            watch.confirmed = None
            if self.closed:
                return
            first = await first_frames(subscriptions.reads, job_id, last_seq, self.base_url, live.positions)
            ended = first == [] and await self._ended(job_id)  # a reconnect that missed nothing: is that all?
        except (pykka.ActorDeadError, Stalled, asyncio.TimeoutError, redis.exceptions.RedisError, OSError) as exc:
            log.warning("stream subscribe failed", extra={"client": self.client_id, "job": job_id, "error": repr(exc)})
            self._forget()
            self.set_header("Retry-After", str(math.ceil(retry_after_ms(UNAVAILABLE_RETRY_MS) / 1000)))
            return self.fail(503, "unavailable", "Live updates are unavailable right now; try again shortly.")
        finally:
            subscriptions.done()
        if self.closed:
            return
        if first is None:
            self._forget()
            return self.job_not_found(job_id)
        if ended:
            self._forget()  # its last event was seen: 204 is what stops an EventSource from reconnecting
            self.clear_header("Content-Type")
            self.set_status(204)
            return
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")  # nginx: pass each event on as it comes
        self._write(f"retry: {retry_after_ms(RECONNECT_MS)}\n\n".encode())
        tell(live.actors.pinger, Track(self))
        if first and first[-1]["type"] == "job_progress":  # not ended: told its place in line while queued
            live.positions.track(self, job_id)
        await catch_up(self, subscriptions.reads, job_id, watch, first)
        try:  # Tornado finishes the answer when this returns
            await asyncio.wait_for(asyncio.shield(self.over), self.ctx.settings.stream_max_s)
        except asyncio.TimeoutError:
            self._forget()  # long enough on this process: the browser reconnects, maybe to another, and resumes

    async def _ended(self, job_id: str) -> bool:
        job, _ = await self.live.subscriptions.reads.job_and_events(job_id, None)
        return job is None or job.status.ended

    # ---- called on the loop by the actors and catch-up ---------------------------------------
    def send(self, text: str) -> None:
        """A frame catch-up read from Redis (already filtered by seq and with its base URL)."""
        event = events.parse_event(text)
        if event is not None:
            self.deliver(events.stream_frame(event, text))

    def check_alive(self, now: float, timeout_s: float) -> None:
        """The pinger's sweep: a comment line keeps proxies and the browser from giving up on a quiet job."""
        self._write(KEEP_ALIVE)

    def interrupted(self) -> None:
        """Catch-up cannot go on, or the process is stopping: end the answer; the browser reconnects."""
        self._forget()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._forget()

    # ---- plumbing ------------------------------------------------------------------------------
    def write_frame(self, frame: bytes) -> None:
        """A place in line from the feed (s2s/web/position_feed.py), framed by ``place_framing``."""
        self._write(frame)

    def deliver(self, frame: events.StreamFrame) -> None:  # WatchingJobs: a registry-framed event
        self._write(frame.data)
        if frame.ends:
            self._forget()  # the job's last event: the answer ends after it

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.unsent + len(data) > MAX_UNSENT_BYTES:
            log.info("stream too far behind; closed it", extra={"client": self.client_id})
            self._forget()
            self.request.connection.close()  # no room to finish the answer: cut it
            return
        self.unsent += len(data)
        self.write(data)
        self.flush().add_done_callback(functools.partial(self._written, len(data)))

    def _written(self, size: int, done: asyncio.Future) -> None:
        self.unsent -= size
        if done.cancelled() or done.exception() is not None:
            self._forget()  # the client left

    def _open(self, job_id: str, watch: JobWatch) -> None:
        self.opened = True
        self.jobs[job_id] = watch
        self.live.per_client[self.address] += 1
        self.live.streams.add(self)

    def _forget(self) -> None:
        """The stream is done (or its client gone): drop its subscription and let get() return."""
        if self.closed or not self.opened:
            return
        self.closed = True
        self.stop_watching(self.live.streams)
        if self.over is not None and not self.over.done():
            self.over.set_result(None)

