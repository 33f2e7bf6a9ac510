"""Subscriber: the process's one link to the events channel, handing events to the registry.

Every API process listens to the whole channel (so any process serves any job)
with a plain redis-py pub/sub on its own thread. Events are read in bursts and
told to the registry as one batch. When the link drops it reconnects with
backoff; each time the channel is (re)joined the registry is told to resync,
because events published while no one listened reached no socket.
"""

from __future__ import annotations

import logging
import threading

import pykka
import redis

from s2s import connections
from s2s.actors.registry import Publish, Resync
from s2s.backoff import Backoff
from s2s.events import Event, parse_event
from s2s.settings import Settings

log = logging.getLogger("s2s.ws")

POLL_S = 0.2  # how long one read waits: also how fast the thread notices it should stop
BURST = 512  # events read back to back before they are handed over as one batch
RECONNECT = Backoff(initial=0.1, maximum=5.0)  # s, between tries to rejoin the channel


class Subscriber(pykka.ThreadingActor):
    def __init__(self, settings: Settings, channel: str, registry: pykka.ActorRef):
        super().__init__()
        self.settings = settings
        self.channel = channel
        self.registry = registry
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None

    def on_start(self) -> None:
        self._thread = threading.Thread(target=self._listen_forever, name="s2s-events-listener")
        self._thread.start()

    def on_stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=POLL_S * 10 + RECONNECT.maximum)

    def is_connected(self) -> bool:
        return self._connected.is_set()

    # ---- the listening thread -----------------------------------------------------------------
    def _listen_forever(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            client = connections.sync_client(self.settings)
            pubsub = client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                self._read(pubsub)
            except Exception as exc:  # whatever broke the link, listening must resume
                if self._connected.is_set():
                    failures = 0  # it had been working: start the backoff over
                failures += 1
                self._connected.clear()
                backoff = RECONNECT.delay(failures)
                if isinstance(exc, (redis.RedisError, OSError)):
                    log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                            "events channel unreachable; retrying", extra={"error": str(exc), "retry_in_s": backoff})
                else:
                    log.exception("events listener failed; restarting it", extra={"retry_in_s": backoff})
                self._stopping.wait(backoff)
            finally:
                self._connected.clear()
                try:
                    pubsub.close()
                    client.close()
                except (redis.RedisError, OSError):
                    pass

    def _read(self, pubsub: redis.client.PubSub) -> None:
        """Read until told to stop; raises when the connection is lost for good."""
        while not self._stopping.is_set():
            message = pubsub.get_message(timeout=POLL_S)
            if message is None:
                continue
            batch: list[Event] = []
            while message is not None:
                if message["type"] == "message":
                    event = parse_event(message["data"])
                    if event is not None:
                        batch.append(event)
                elif message["type"] == "subscribe":
                    # joined (or silently rejoined by redis-py): first pass on what came before, then resync
                    if batch:
                        self.registry.tell(Publish(batch))
                        batch = []
                    self._connected.set()
                    log.info("listening to the events channel", extra={"channel": self.channel})
                    self.registry.tell(Resync())
                if len(batch) >= BURST:
                    break
                message = pubsub.get_message(timeout=0)
            if batch:
                self.registry.tell(Publish(batch))
