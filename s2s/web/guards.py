"""What one client may hold of an API process: its connections, how slowly it may send, who it says it is.

- Connections per client (S2S_MAX_CONNECTIONS_PER_CLIENT), the client as :func:`s2s.admission.client_key`
  computes it (IPv4, or IPv6 /64): direct connections are counted when accepted, and one over the cap is
  closed at once. Behind a trusted proxy every connection comes from the proxy, which holds the clients'
  own, so there the cap is on each client's requests still being received (by X-Forwarded-For), and one
  over it is answered ``429 too_many_connections``. A WebSocket leaves these counts once it is open:
  S2S_MAX_SOCKETS_PER_CLIENT caps those.
- A request body must keep arriving (S2S_BODY_MIN_BYTES_PER_S over every S2S_BODY_RATE_WINDOW_S): a
  client trickling one (slowloris) is cut at the first window it sends less, holding no connection and
  no handler for long. Headers and idle keep-alive are bounded by S2S_IDLE_TIMEOUT_S (Tornado's
  ``idle_connection_timeout``, which is also its header timeout).
- Behind a trusted proxy the client's address is the last X-Forwarded-For entry, the one the proxy
  appended. Tornado's ``xheaders`` would prefer X-Real-Ip (and X-Scheme), which the proxy does not set and
  a client can: they are dropped before Tornado sees them, so no client picks its own rate budget.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

from tornado import httputil
from tornado.http1connection import HTTP1ServerConnection
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

from s2s.admission import client_key
from s2s.settings import Settings
from s2s.web.draining import DrainingHTTPServer
from s2s.web.tornado_internals import TornadoInternalsChanged

log = logging.getLogger("s2s.api")

if "stream" not in HTTP1ServerConnection.__init__.__code__.co_names:  # on_close finds a connection's client by it
    raise TornadoInternalsChanged("HTTP1ServerConnection no longer keeps its .stream")

#: Headers Tornado's ``xheaders`` trust that a proxy appending X-Forwarded-For does not set.
FORGEABLE = ("X-Real-Ip", "X-Scheme")


class GuardedHTTPServer(DrainingHTTPServer):
    """The API's HTTP server: :class:`DrainingHTTPServer` with the per-client bounds of this module."""

    def initialize(self, *args, settings: Settings, **kwargs) -> None:
        super().initialize(*args, xheaders=settings.trust_proxy, idle_connection_timeout=settings.idle_timeout_s,
                           **kwargs)
        self.guard = settings
        self.per_client: Counter = Counter()  # open direct connections, or requests being received behind a proxy
        self._client_of: dict[IOStream, str] = {}

    def handle_stream(self, stream: IOStream, address: tuple) -> None:
        cap = self.guard.max_connections_per_client
        if cap and not self.guard.trust_proxy:
            client = client_key(address[0] if isinstance(address, tuple) and address else "")
            if self.per_client[client] >= cap:
                log.info("connection refused", extra={"client": client, "open": self.per_client[client]})
                stream.close()
                return
            self.per_client[client] += 1
            self._client_of[stream] = client
        super().handle_stream(stream, address)

    def on_close(self, server_conn: HTTP1ServerConnection) -> None:
        client = self._client_of.pop(server_conn.stream, None)
        if client is not None:
            self.per_client[client] -= 1
            if self.per_client[client] <= 0:
                del self.per_client[client]
        super().on_close(server_conn)

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return _Guarded(super().start_request(server_conn, request_conn), request_conn, self)

    def admit_request(self, headers: httputil.HTTPHeaders) -> str | None:
        """Behind a proxy: count one more request being received for its client; None if one too many."""
        client = client_key(headers.get("X-Forwarded-For", "").split(",")[-1].strip())
        if self.per_client[client] >= self.guard.max_connections_per_client:
            log.info("request refused", extra={"client": client, "in_flight": self.per_client[client]})
            return None
        self.per_client[client] += 1
        return client

    def release_request(self, client: str) -> None:
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]


class _Guarded(httputil.HTTPMessageDelegate):
    """One request's delegate: forged proxy headers out, and a body that must keep its pace."""

    __slots__ = ("delegate", "connection", "server", "settings", "received", "checked", "timer", "client",
                 "refused", "done")

    def __init__(self, delegate: httputil.HTTPMessageDelegate, connection: httputil.HTTPConnection,
                 server: GuardedHTTPServer) -> None:
        self.delegate = delegate
        self.connection = connection
        self.server = server
        self.settings = server.guard
        self.received = 0
        self.checked = 0  # bytes received at the last pace check
        self.timer = None
        self.client: str | None = None  # behind a proxy, with a cap: the client whose request this is
        self.refused = False
        self.done = False

    def headers_received(self, start_line, headers: httputil.HTTPHeaders):
        for name in FORGEABLE:
            headers.pop(name, None)
        if self.settings.trust_proxy and self.settings.max_connections_per_client:
            self.client = self.server.admit_request(headers)
            if self.client is None:
                return self._refuse()
        has_body = headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in headers
        ready = self.delegate.headers_received(start_line, headers)
        if not (has_body and self.settings.body_min_bytes_per_s):
            return ready
        if ready is None:
            self._check_later()
            return None
        return self._pace_once_reading(ready)

    async def _pace_once_reading(self, ready) -> None:
        """Tornado reads no body until the handler's prepare() is done (it may wait for room to upload,
        s2s/web/upload_gate.py): the client cannot send meanwhile, so its pace is counted from then."""
        await ready
        if not self.done:
            self._check_later()

    def _check_later(self) -> None:
        self.timer = IOLoop.current().call_later(self.settings.body_rate_window_s, self._check_pace)

    def _check_pace(self) -> None:
        window = self.settings.body_rate_window_s
        sent = self.received - self.checked
        if sent < self.settings.body_min_bytes_per_s * window:
            log.info("slow body cut", extra={"bytes": self.received, "window_s": window, "last_window_bytes": sent})
            self.timer = None
            self.connection.close()  # nothing useful can be answered to a client that is not done sending
            return
        self.checked = self.received
        self._check_later()

    def _stop(self) -> None:
        if self.timer is not None:
            IOLoop.current().remove_timeout(self.timer)
            self.timer = None

    def _refuse(self) -> None:
        """429 from here, the application never seeing the request; the connection closes after it."""
        self.refused = True
        cap = self.settings.max_connections_per_client
        body = json.dumps({"error": f"Too many requests under way from your address (at most {cap}); wait for "
                                    "some to finish and try again.", "code": "too_many_connections",
                           "details": {"maxConnections": cap}}).encode()
        self.connection.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", 429, "Too Many Requests"),
            httputil.HTTPHeaders({"Content-Type": "application/json; charset=utf-8", "Retry-After": "10",
                                  "Content-Length": str(len(body)), "Connection": "close"}), body)
        self.connection.finish()

    def _done(self) -> None:
        self.done = True
        self._stop()
        if self.client is not None:
            self.server.release_request(self.client)
            self.client = None

    def data_received(self, chunk: bytes):
        self.received += len(chunk)
        return None if self.refused else self.delegate.data_received(chunk)

    def finish(self) -> None:
        self._done()
        if not self.refused:
            self.delegate.finish()

    def on_connection_close(self) -> None:
        self._done()
        if not self.refused:
            self.delegate.on_connection_close()
