"""The Tornado internals /ws writes through (s2s/web/tornado_internals.py), against the installed Tornado.

If a Tornado release moves them, these fail with TornadoInternalsChanged naming
the attribute; the API process refuses to start the same way, rather than
serving sockets on a slower or unbounded path.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from types import SimpleNamespace

import pytest
import tornado.iostream
import tornado.web
import tornado.websocket
from tornado.httpclient import HTTPRequest

from s2s.embedded import free_port
from s2s.events import wire
from s2s.web import tornado_internals
from s2s.web.tornado_internals import TornadoInternalsChanged, Written

LIMIT = 1024


class RawSocket(tornado.websocket.WebSocketHandler):
    """Writes only through the internals, and records each outcome and any failure at open."""

    def initialize(self, seen: dict) -> None:
        self.seen = seen

    def open(self) -> None:
        try:
            tornado_internals.limit_unsent(self, LIMIT)
        except TornadoInternalsChanged as exc:
            self.seen["open failed"] = exc
            raise
        self.seen["handler"] = self

    def on_message(self, message: str) -> None:
        size = {"small": 20, "large": LIMIT * 4}[message]
        self.seen.setdefault("written", []).append(tornado_internals.write_frame(self, wire("é" * (size // 2))))


async def _talk(seen: dict) -> tuple[list, str | None, str | None]:
    port = free_port()
    server = tornado.web.Application([(r"/raw", RawSocket, {"seen": seen})]).listen(port, "127.0.0.1")
    try:
        request = HTTPRequest(f"ws://127.0.0.1:{port}/raw", connect_timeout=10, request_timeout=10)
        client = await tornado.websocket.websocket_connect(request)
        await client.write_message("small")
        small = await asyncio.wait_for(client.read_message(), 10)
        await client.write_message("large")
        after_large = await asyncio.wait_for(client.read_message(), 10)  # None: the server cut the connection
        client.close()
        return seen.get("written", []), small, after_large
    finally:
        server.stop()
        await server.close_all_connections()


def test_this_tornado_has_the_internals_that_raw_frames_use():
    tornado_internals.check()  # raises TornadoInternalsChanged, naming what is missing


def test_prebuilt_frames_reach_a_tornado_client_and_a_full_buffer_cuts_the_socket():
    seen: dict = {}
    written, small, after_large = asyncio.run(asyncio.wait_for(_talk(seen), 30))
    assert "open failed" not in seen, f"Tornado internals changed: {seen.get('open failed')}"
    assert seen["handler"].ws_connection is None or seen["handler"].ws_connection.is_closing()
    assert small == "é" * 10, "a frame built by s2s.events.wire, written to ws_connection.stream, reads as text"
    assert written == [Written.SENT, Written.FULL], (
        "a frame over the limit set as ws_connection.stream.max_write_buffer_size must be refused "
        f"(StreamBufferFullError), got {written}")
    assert after_large is None, "the socket of a client too far behind is closed"


def test_a_tornado_without_the_write_limit_is_named(monkeypatch):
    def write(self, data):  # a write that no longer looks at max_write_buffer_size
        return self._write_buffer.append(data)

    monkeypatch.setattr(tornado.iostream.BaseIOStream, "write", write)
    with pytest.raises(TornadoInternalsChanged, match=r"BaseIOStream.write .*max_write_buffer_size"):
        tornado_internals.check()


def test_a_tornado_that_frames_elsewhere_is_named(monkeypatch):
    monkeypatch.setattr(tornado.websocket.WebSocketProtocol13, "_write_frame", lambda self, *args: None)
    with pytest.raises(TornadoInternalsChanged, match=r"_write_frame .*\.stream"):
        tornado_internals.check()


def test_a_socket_without_a_stream_is_named_at_open():
    handler = SimpleNamespace(ws_connection=SimpleNamespace())
    with pytest.raises(TornadoInternalsChanged, match=r"ws_connection\.stream is NoneType"):
        tornado_internals.limit_unsent(handler, LIMIT)


def test_the_api_does_not_start_on_a_changed_tornado():
    script = ("import tornado.iostream as s\n"
              "s.BaseIOStream.write = lambda self, data: None\n"
              "import s2s.web.app\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "TornadoInternalsChanged" in done.stderr and "max_write_buffer_size" in done.stderr, done.stderr


class ReleasedSocket(tornado.websocket.WebSocketHandler):
    """Lets go of its handshake at open, as /ws does; then answers "burst" with frames small and large."""

    def initialize(self, seen: dict) -> None:
        self.seen = seen

    def open(self) -> None:
        tornado_internals.limit_unsent(self, 1024 * 1024)
        tornado_internals.release_handshake(self)
        tornado_internals.read_on_its_own(self)
        self.seen["handler"] = self
        stream = self.ws_connection.stream
        self.seen["idle queues"] = (len(stream._write_futures), len(stream._write_buffer._buffers))
        self.seen["queue types"] = {type(stream._write_futures), type(stream._write_buffer._buffers)}

    def on_message(self, message: str) -> None:
        for i in range(50):  # small frames coalesce in the stream's buffer; those over 2 KiB go as views
            tornado_internals.write_frame(self, wire(f"{i}:" + "x" * (10 if i % 2 else 5000)))


async def _burst(seen: dict) -> list[str]:
    port = free_port()
    server = tornado.web.Application([(r"/released", ReleasedSocket, {"seen": seen})]).listen(port, "127.0.0.1")
    try:
        request = HTTPRequest(f"ws://127.0.0.1:{port}/released", connect_timeout=10, request_timeout=10,
                              headers={"X-Big": "y" * 4000})
        client = await tornado.websocket.websocket_connect(request)
        got = []
        for _ in range(2):  # the queues are emptied once, then used again
            await client.write_message("burst")
            got += [await asyncio.wait_for(client.read_message(), 10) for _ in range(50)]
        seen["upgrade coroutines"] = [task for task in asyncio.all_tasks()
                                      if task.get_coro().__qualname__ == "RequestHandler._execute"]
        stream = seen["handler"].ws_connection.stream
        seen["queues after"] = (len(stream._write_futures), len(stream._write_buffer._buffers))
        client.close()
        return got
    finally:
        server.stop()
        await server.close_all_connections()


def test_a_socket_that_let_go_of_its_handshake_still_reads_and_sends_every_frame_in_order():
    seen: dict = {}
    got = asyncio.run(asyncio.wait_for(_burst(seen), 30))
    expected = [f"{i}:" + "x" * (10 if i % 2 else 5000) for i in range(50)]
    assert got == expected * 2
    handler = seen["handler"]
    assert dict(handler.request.headers) == {}, "the upgrade's headers are let go once open"
    assert handler.request.connection is None and handler.request.server_connection is None
    assert seen["idle queues"] == (0, 0) and seen["queues after"] == (0, 0)
    assert seen["queue types"] == {tornado_internals.LazyDeque}
    assert seen["upgrade coroutines"] == [], "the coroutines that answered the upgrade end; frames are read apart"


def test_a_lazy_deque_does_what_the_streams_ask_of_a_deque():
    lazy, real = tornado_internals.LazyDeque(), __import__("collections").deque()
    for queue in (lazy, real):
        assert not queue and len(queue) == 0 and list(queue) == []
        with pytest.raises(IndexError):
            queue.popleft()
        with pytest.raises(IndexError):
            queue[0]
        queue.append(1)
        queue.append(2)
        assert queue and len(queue) == 2 and (queue[0], queue[-1]) == (1, 2) and list(queue) == [1, 2]
        assert queue.popleft() == 1 and queue.popleft() == 2 and not queue
        queue.append(3)
        queue.clear()
        assert not queue and list(queue) == []
    assert lazy._items is None, "an empty one holds no deque"


def test_a_tornado_that_queues_writes_elsewhere_is_named(monkeypatch):
    monkeypatch.setattr(tornado.iostream._StreamBuffer, "__init__", lambda self: None)
    with pytest.raises(TornadoInternalsChanged, match=r"_write_buffer\._buffers"):
        tornado_internals.check()


def test_a_tornado_that_reads_frames_elsewhere_is_named(monkeypatch):
    async def accept(self, handler):  # an _accept_connection that no longer awaits _receive_frame_loop
        return None

    monkeypatch.setattr(tornado.websocket.WebSocketProtocol13, "_accept_connection", accept)
    with pytest.raises(TornadoInternalsChanged, match=r"_accept_connection no longer awaits"):
        tornado_internals.check()
