"""An HTTP server that stops without cutting a request in half (see :class:`DrainingHTTPServer`)."""

from __future__ import annotations

from tornado import httputil
from tornado.httpserver import HTTPServer


class DrainingHTTPServer(HTTPServer):
    """An HTTPServer that can stop without cutting a request in half.

    Tornado's ``close_all_connections`` closes every connection at once, requests in flight
    included: a submit cut after its job was queued but before its 202 leaves the client not
    knowing whether it was accepted. After :meth:`drain` a connection is closed as soon as it is
    idle instead: at once if it waits for a request, right after its response otherwise.
    """

    def initialize(self, *args, **kwargs) -> None:
        super().initialize(*args, **kwargs)
        self.draining = False
        self.open_connections: dict[object, httputil.HTTPConnection | None] = {}  # -> its connection while idle

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        if self.draining:
            request_conn.close()  # the previous response is out: no next request on this connection
        self.open_connections[server_conn] = request_conn

        def busy() -> None:
            self.open_connections[server_conn] = None

        return _OnHeaders(super().start_request(server_conn, request_conn), busy)

    def on_close(self, server_conn: object) -> None:
        self.open_connections.pop(server_conn, None)  # also when a WebSocket takes its stream over
        super().on_close(server_conn)

    def drain(self) -> None:
        """Stop serving: idle connections close now, busy ones after their response."""
        self.draining = True
        for request_conn in list(self.open_connections.values()):
            if request_conn is not None:
                request_conn.close()


class _OnHeaders(httputil.HTTPMessageDelegate):
    """A request's delegate, telling when the request began (its headers arrived)."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate, began) -> None:
        self.delegate = delegate
        self.began = began

    def headers_received(self, start_line, headers):
        self.began()
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes):
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()
