"""A TCP hop between a client and the server that can fail the way networks and proxies do."""

from __future__ import annotations

import socket
import threading


class FlakyNetwork:
    """A TCP hop between a client (a browser, `s2s submit`) and the server that can fail the way networks do.

    ``cut()`` drops every open connection and refuses new ones until ``restore()`` (Wi-Fi gone);
    ``block_websockets`` closes any connection that asks for a WebSocket upgrade (some proxies);
    ``block_event_streams`` any that asks for Server-Sent Events (proxies that buffer whole answers).
    """

    def __init__(self, port: int):
        self.port = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/"
        self.down = self.closed = False
        self.block_websockets = False
        self.block_event_streams = False  # closes any request for Server-Sent Events (Accept: text/event-stream)
        self.refused = 0
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                browser, _ = self.server.accept()
            except OSError:  # the 0.2 s timeout, or closed
                continue
            browser.settimeout(None)
            if self.down:
                self.refused += 1
                browser.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            server.settimeout(None)
            with self.lock:
                self.open |= {browser, server}
            threading.Thread(target=self._pipe, args=(browser, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, browser, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_browser: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_browser and self.block_websockets and b"upgrade: websocket" in data.lower():
                    self.refused += 1
                    break
                if from_browser and self.block_event_streams and b"accept: text/event-stream" in data.lower():
                    self.refused += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(src)
            self._drop(dst)

    def _drop(self, sock: socket.socket) -> None:
        with self.lock:
            self.open.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def cut(self) -> None:
        self.down = True
        with self.lock:
            dropping = list(self.open)
        for sock in dropping:
            self._drop(sock)

    def restore(self) -> None:
        self.down = False

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.server.close()
