"""What every fake upstream shares: an aiohttp app on 127.0.0.1 in a thread of its own.

It runs beside the test (and the worker processes the test starts), records each
request as the real upstream would have seen it, answers from a plan of replies
(the default reply when the plan is empty), and notes every client that hangs up
while it is still answering: that is how tests see a cancellation reach upstream.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections import deque
from typing import Any

from aiohttp import web
from attrs import define, field
from PIL import Image

#: How long a "hang" reply keeps the client waiting before giving up by itself.
HANG_S = 30.0


def png(color: tuple[int, int, int], size: tuple[int, int] = (48, 72)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@define
class Seen:
    """One request as it reached the fake upstream."""

    method: str
    path: str
    raw_path: str  # path and query exactly as sent (a signed URL must arrive untouched)
    headers: dict[str, str]
    at: float  # time.monotonic()
    fields: dict[str, str] = field(factory=dict)  # multipart text parts
    files: dict[str, tuple[str | None, str, bytes]] = field(factory=dict)  # name -> (filename, type, bytes)
    json: Any = None


#: Where a request's record is kept while it is answered.
SEEN = web.RequestKey("seen", Seen)


class FakeUpstream:
    """Subclasses add routes in :meth:`routes` and pick replies with :meth:`next_reply`."""

    def __init__(self, default_reply: Any):
        self.requests: list[Seen] = []
        self.disconnects: list[Seen] = []
        self.max_in_flight = 0
        self.port = 0
        self._in_flight = 0
        self._default = default_reply
        self._plan: deque = deque()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- planning and observing --------------------------------------------------------
    def plan(self, *replies: Any) -> None:
        """Answer the next requests with these replies, in order; then the default again."""
        with self._lock:
            self._plan.extend(replies)

    def next_reply(self) -> Any:
        with self._lock:
            return self._plan.popleft() if self._plan else self._default

    async def answer_for(self, seen: Seen) -> tuple[Any, bool]:
        """(reply, refused): the contract's refusal of this request, else the next planned reply
        once its delay or hang is over."""
        refusal = self._contract(seen)
        if refusal:
            return refusal, True
        reply = self.next_reply()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.hang:
            await self.hang()
        return reply, False

    def _contract(self, seen: Seen) -> Any:
        """The provider's own refusal of a malformed request (subclasses), or None."""
        return None

    def record(self, request: web.Request, seen: Seen) -> Seen:
        request[SEEN] = seen
        with self._lock:
            self.requests.append(seen)
        return seen

    @staticmethod
    async def hang() -> None:
        """Keep the client waiting (until it hangs up, or HANG_S)."""
        await asyncio.sleep(HANG_S)

    def tracked(self, handler):
        """Count calls in flight at once (what a shared concurrency limit must bound), and note each
        client that hangs up before its answer is complete (aiohttp cancels the handler then)."""

        async def run(request: web.Request) -> web.StreamResponse:
            with self._lock:
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
            try:
                return await handler(request)
            except asyncio.CancelledError:
                with self._lock:
                    self.disconnects.append(request.get(SEEN))
                raise
            finally:
                with self._lock:
                    self._in_flight -= 1

        return run

    @staticmethod
    async def seen(request: web.Request) -> Seen:
        seen = Seen(method=request.method, path=request.path, raw_path=request.raw_path,
                    headers=dict(request.headers), at=time.monotonic())
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if part.filename is not None:
                    data = bytes(await part.read())
                    seen.files[part.name] = (part.filename, part.headers.get("Content-Type", ""), data)
                else:
                    seen.fields[part.name] = await part.text()
        elif request.can_read_body:
            try:
                seen.json = await request.json()
            except ValueError:
                seen.json = None
        return seen

    # ---- life cycle --------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._thread = threading.Thread(target=self._serve, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._failure:
            raise RuntimeError(f"{type(self).__name__} did not start: {self._failure!r}")
        return self

    def __exit__(self, *exc_info) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.routes(app)
        # handler_cancellation: a client hanging up cancels its handler, which is how disconnects are seen
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
        except BaseException as exc:  # surfaced by __enter__
            self._failure = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()
