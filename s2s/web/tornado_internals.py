"""The one place /ws reaches past Tornado's public API: writing pre-built frames to a socket's stream.

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
"""

from __future__ import annotations

import enum

import tornado
from tornado.iostream import BaseIOStream, StreamBufferFullError, StreamClosedError
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
