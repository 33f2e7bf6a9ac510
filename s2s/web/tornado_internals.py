"""The one place /ws reaches past Tornado's public API: raw frame writes, and what a socket keeps once open.

Tornado's ``write_message`` encodes and frames the same text again for every
socket and wraps each write in a new task; under load that was half the API's
time. So an event is framed once (:func:`s2s.events.wire`) and the bytes go
straight to the IOStream under ``WebSocketHandler.ws_connection.stream``, whose
``max_write_buffer_size`` cuts off a client that stopped reading. Neither is
public API: :func:`check` runs when this module is imported (so an API process
on a Tornado without them does not start), :func:`limit_unsent` checks the live
objects at each socket's open, and tests/test_tornado_internals.py runs both
against the installed Tornado. Each fails with :class:`TornadoInternalsChanged`
naming what is missing, never by quietly going slower.

:func:`read_on_its_own` lets the coroutines that answered the upgrade end, and
:func:`release_handshake` empties, once a socket is open, what only its upgrade
request needed (its headers, the response's, the HTTP/1 connection objects),
and gives its stream write queues that hold nothing while idle (:class:`LazyDeque`):
an idle socket held all that for its whole life, 40% of its memory.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import inspect

import tornado
from tornado import httputil
from tornado.httputil import HTTPServerRequest
from tornado.iostream import BaseIOStream, StreamBufferFullError, StreamClosedError, _StreamBuffer
from tornado.log import app_log
from tornado.web import RequestHandler
from tornado.websocket import WebSocketHandler, WebSocketProtocol, WebSocketProtocol13


class TornadoInternalsChanged(RuntimeError):
    """The installed Tornado lacks an internal /ws writes through; pin Tornado or update this module."""

    def __init__(self, what: str):
        super().__init__(f"Tornado {tornado.version}: {what}. s2s/web/tornado_internals.py writes WebSocket "
                         "frames through it; pin a Tornado that has it or change that module.")


def _uses(function, name: str) -> bool:
    code = getattr(function, "__code__", None)
    return code is not None and name in code.co_names


def check() -> None:
    """Raise :class:`TornadoInternalsChanged` unless this Tornado still works the way the raw writes assume."""
    if not _uses(WebSocketHandler.__init__, "ws_connection"):
        raise TornadoInternalsChanged("WebSocketHandler no longer sets .ws_connection")
    if not _uses(WebSocketProtocol13._write_frame, "stream"):
        raise TornadoInternalsChanged("WebSocketProtocol13._write_frame no longer writes its frames to .stream")
    if not _uses(BaseIOStream.write, "max_write_buffer_size"):
        raise TornadoInternalsChanged("BaseIOStream.write no longer enforces .max_write_buffer_size")
    if not callable(getattr(WebSocketProtocol, "is_closing", None)):
        raise TornadoInternalsChanged("WebSocketProtocol has no .is_closing()")
    if not _uses(RequestHandler.clear, "_headers"):
        raise TornadoInternalsChanged("RequestHandler no longer keeps its response headers in ._headers")
    if not (_uses(BaseIOStream.__init__, "_write_futures") and _uses(_StreamBuffer.__init__, "_buffers")):
        raise TornadoInternalsChanged("BaseIOStream no longer queues its writes in ._write_futures and "
                                      "._write_buffer._buffers")
    if not (_uses(WebSocketProtocol13._accept_connection, "_receive_frame_loop")
            and inspect.iscoroutinefunction(WebSocketProtocol13._receive_frame_loop)
            and callable(getattr(WebSocketProtocol13, "_abort", None))):
        raise TornadoInternalsChanged("WebSocketProtocol13._accept_connection no longer awaits the coroutine "
                                      "_receive_frame_loop (or _abort is gone)")
    if not _uses(HTTPServerRequest.__init__, "server_connection"):
        raise TornadoInternalsChanged("HTTPServerRequest no longer keeps .server_connection")


def read_on_its_own(handler: WebSocketHandler) -> None:
    """In open(): the socket's frames are read by a task of its own, so that the upgrade's coroutines end.

    Tornado reads frames inside the coroutines that answered the upgrade (``RequestHandler._execute`` ->
    ``get`` -> ``accept_connection`` -> ``_accept_connection`` -> ``_receive_frame_loop``): the outer four,
    their task and their locals (the upgrade's headers among them) stayed alive as long as the socket.
    Here ``_accept_connection``'s ``await self._receive_frame_loop()`` returns at once, the same loop
    running as a task, and the handshake's coroutines finish.
    """
    protocol = handler.ws_connection
    if type(protocol) is not WebSocketProtocol13:
        raise TornadoInternalsChanged(f"WebSocketHandler.ws_connection is {type(protocol).__name__}, "
                                      "not WebSocketProtocol13")
    protocol.__class__ = _OwnReadLoop


_readers: set[asyncio.Task] = set()  # a task is only weakly held by the loop: these are the running ones


class _OwnReadLoop(WebSocketProtocol13):
    """WebSocketProtocol13 whose frame loop runs as its own task (see :func:`read_on_its_own`)."""

    def _receive_frame_loop(self):
        task = asyncio.ensure_future(WebSocketProtocol13._receive_frame_loop(self))
        _readers.add(task)
        task.add_done_callback(self._read_loop_done)
        return _done()

    def _read_loop_done(self, task: asyncio.Task) -> None:
        _readers.discard(task)
        if task.cancelled():
            self._abort()  # as accept_connection does when the coroutine reading frames is cancelled
        elif task.exception() is not None:
            app_log.error("reading a WebSocket's frames failed", exc_info=task.exception())
            self._abort()


async def _done() -> None:
    """What ``_accept_connection`` awaits in place of the frame loop: nothing."""


def release_handshake(handler: WebSocketHandler) -> None:
    """Once open: empty the upgrade's request and response headers, let its HTTP/1 connection objects go.

    The headers are emptied in place: Tornado's ``get`` coroutine, alive as long as the socket, still
    refers to them. Call it after everything that reads the request's headers has read them.
    """
    request = handler.request
    headers = request.headers
    if not isinstance(headers, httputil.HTTPHeaders) or not isinstance(getattr(handler, "_headers", None),
                                                                       httputil.HTTPHeaders):
        raise TornadoInternalsChanged("a handshake's request or response headers are not HTTPHeaders")
    for table in vars(headers).values():
        if isinstance(table, dict):
            table.clear()
    handler._headers = _SENT  # written with the 101; Tornado's header setters refuse from here on
    handler._write_buffer = handler._transforms = handler.path_args = ()  # an HTTP response's, done with
    request.connection = None  # detached: its stream is the socket's now, and nothing else is left in it
    request.server_connection = None
    handler.ui = None  # the template namespace (as Tornado's own _break_cycles does at close)
    stream = handler.ws_connection.stream
    buffer = getattr(stream, "_write_buffer", None)
    if not (isinstance(getattr(stream, "_write_futures", None), collections.deque)
            and isinstance(getattr(buffer, "_buffers", None), collections.deque)):
        raise TornadoInternalsChanged("the IOStream no longer queues its writes in deques (._write_futures, "
                                      "._write_buffer._buffers)")
    if not stream._write_futures and not buffer._buffers:
        stream._write_futures = LazyDeque()
        buffer._buffers = LazyDeque()


_SENT = httputil.HTTPHeaders()


class LazyDeque:
    """The deque operations an IOStream's write queues use, holding a deque only while something waits.

    An empty ``collections.deque`` is 760 bytes; an idle socket's stream had two. Here an idle socket
    holds none: the deque is made at the first write and let go once it is empty again.
    """

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: collections.deque | None = None

    def append(self, item) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)

    def popleft(self):
        if self._items is None:
            raise IndexError("pop from an empty deque")
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    def clear(self) -> None:
        self._items = None

    def __getitem__(self, index: int):
        if self._items is None:
            raise IndexError("deque index out of range")
        return self._items[index]

    def __len__(self) -> int:
        return 0 if self._items is None else len(self._items)

    def __bool__(self) -> bool:
        return self._items is not None

    def __iter__(self):
        return iter(()) if self._items is None else iter(self._items)


def limit_unsent(handler: WebSocketHandler, max_bytes: int) -> None:
    """At open: bound what may wait unsent for this socket; past it :func:`write_frame` says FULL."""
    stream = getattr(handler.ws_connection, "stream", None)
    if not isinstance(stream, BaseIOStream):
        raise TornadoInternalsChanged(f"WebSocketHandler.ws_connection.stream is {type(stream).__name__}, "
                                      "not an IOStream")
    if not isinstance(getattr(stream, "max_write_buffer_size", None), (int, type(None))):
        raise TornadoInternalsChanged("the IOStream has no .max_write_buffer_size")
    stream.max_write_buffer_size = max_bytes


class Written(enum.Enum):
    SENT = "sent"  # queued on the stream, in one piece
    CLOSING = "closing"  # a close is under way (Tornado's own close handling will follow): nothing was written
    CLOSED = "closed"  # the connection is gone: nothing was written
    FULL = "full"  # the client is too far behind: the connection was cut (no close frame; there is no room)


def write_frame(handler: WebSocketHandler, frame: bytes) -> Written:
    """Write one whole WebSocket frame; call on the loop, so it never lands inside another frame."""
    protocol = handler.ws_connection
    if protocol is None or protocol.is_closing():
        return Written.CLOSING
    try:
        protocol.stream.write(frame)  # its future fails quietly if the peer leaves (Tornado silences it)
    except StreamClosedError:
        return Written.CLOSED
    except StreamBufferFullError:
        protocol.stream.close()
        return Written.FULL
    return Written.SENT


check()
