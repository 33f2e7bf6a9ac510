"""The few long-lived actors behind /ws: a registry, a subscriber and a pinger per API process.

They are started together on the IOLoop's thread (which is how they learn the
loop to call back into) and stopped together, source first, leaving no thread.
Sockets are never actors: 10,000 of them share these three.
"""

from __future__ import annotations

import logging

import pykka
from attrs import frozen
from tornado.ioloop import IOLoop

from s2s.actors.pinger import Pinger
from s2s.actors.registry import JobRegistry, Progress
from s2s.actors.subscriber import Subscriber
from s2s.keys import Keys
from s2s.settings import Settings

log = logging.getLogger("s2s.ws")


@frozen
class LiveActors:
    registry: pykka.ActorRef
    subscriber: pykka.ActorRef
    pinger: pykka.ActorRef
    progress: Progress  # the registry's, read on the loop to tell it busy from wedged

    @classmethod
    def start(cls, settings: Settings, io_loop: IOLoop) -> LiveActors:
        """Start the actors; call on the loop thread with ``IOLoop.current()``."""
        progress = Progress()
        registry = JobRegistry.start(io_loop, progress)
        pinger = Pinger.start(io_loop, settings.ws_ping_interval_ms / 1000, settings.ws_ping_timeout_ms / 1000)
        subscriber = Subscriber.start(settings, Keys(settings.key_prefix).events_channel, registry)
        return cls(registry=registry, subscriber=subscriber, pinger=pinger, progress=progress)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the source of events first, then the rest; blocks, so run it off the loop."""
        for ref in (self.subscriber, self.pinger, self.registry):
            try:
                ref.stop(block=True, timeout=timeout)  # False when it had already died
            except pykka.Timeout:
                log.warning("an actor did not stop in time", extra={"actor": str(ref)})
