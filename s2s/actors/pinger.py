"""Pinger: one actor pings every socket each WS_PING_INTERVAL and drops those that stopped answering.

A socket that sent nothing (no pong, no frame) for WS_PING_TIMEOUT after a
ping is closed, which frees its subscriptions. The pinger only keeps the list;
the sweep itself runs on the IOLoop (sockets are touched on their own thread
only). Each round is spread over the interval in thin slices: pinging 10,000
sockets at once brings 10,000 pongs back at once, and reading them stalled live
events by half a second in the benchmark (bench/ws_bench.py).
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple, Protocol

import pykka
from tornado.ioloop import IOLoop

SWEEP_CHUNK = 500  # sockets pinged per loop turn
MIN_TICK_S = 0.1
MAX_SLICES = 250  # at the default 25 s interval: a slice every 0.1 s, 40 of 10,000 sockets


class Pingable(Protocol):
    client_id: str

    def check_alive(self, now: float, timeout_s: float) -> None:
        """On the loop: drop the socket if a ping went unanswered for ``timeout_s``, else ping it."""


class Track(NamedTuple):
    conn: Pingable


class Untrack(NamedTuple):
    conn: Pingable


class Tick(NamedTuple):
    pass


def sweep(io_loop: IOLoop, conns: list[Pingable], timeout_s: float, start: int = 0) -> None:
    """On the loop: check one chunk, then yield the loop before the next one."""
    now = time.monotonic()
    end = min(start + SWEEP_CHUNK, len(conns))
    for conn in conns[start:end]:
        conn.check_alive(now, timeout_s)
    if end < len(conns):
        io_loop.add_callback(sweep, io_loop, conns, timeout_s, end)


class Pinger(pykka.ThreadingActor):
    def __init__(self, io_loop: IOLoop, interval_s: float, timeout_s: float):
        super().__init__()
        self.io_loop = io_loop
        self.timeout_s = timeout_s
        self.slices: list[dict[str, Pingable]] = [{} for _ in range(max(1, min(MAX_SLICES,
                                                                               int(interval_s / MIN_TICK_S))))]
        self.tick_s = interval_s / len(self.slices)
        self.ticks = 0
        self._stopping = threading.Event()
        self._ticker: threading.Thread | None = None

    def on_start(self) -> None:
        self._ticker = threading.Thread(target=self._tick_forever, name="s2s-ping-ticker")
        self._ticker.start()

    def on_stop(self) -> None:
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)

    def _tick_forever(self) -> None:
        while not self._stopping.wait(self.tick_s):
            try:
                self.actor_ref.tell(Tick())
            except pykka.ActorDeadError:
                return

    def _slice(self, conn: Pingable) -> dict[str, Pingable]:
        return self.slices[hash(conn.client_id) % len(self.slices)]

    def on_receive(self, message) -> None:
        if isinstance(message, Tick):
            due = self.slices[self.ticks % len(self.slices)]
            self.ticks += 1
            if due:
                self.io_loop.add_callback(sweep, self.io_loop, list(due.values()), self.timeout_s)
        elif isinstance(message, Track):
            self._slice(message.conn)[message.conn.client_id] = message.conn
        elif isinstance(message, Untrack):
            self._slice(message.conn).pop(message.conn.client_id, None)

    def tracked(self) -> int:
        """For diagnostics and tests (ask through a proxy, off the loop)."""
        return sum(len(s) for s in self.slices)
