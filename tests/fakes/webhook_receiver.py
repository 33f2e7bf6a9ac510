"""A frontend's server receiving webhooks, on 127.0.0.1: records each delivery's headers and raw body
(what a receiver verifies the signature over) and answers from a plan (204 when the plan is empty)."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from attrs import define, field

from tests.fakes.server import FakeUpstream


@define
class Answer:
    status: int = 204
    headers: dict[str, str] = field(factory=dict)
    hang: bool = False  # keep the sender waiting (until it hangs up)
    delay: float = 0.0


@define
class Delivery:
    path: str  # with its query, as sent
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()


class WebhookReceiver(FakeUpstream):
    def __init__(self):
        super().__init__(Answer())
        self.deliveries: list[Delivery] = []

    @property
    def hook_url(self) -> str:
        return self.url + "/hooks"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/hooks", self.tracked(self.receive))

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            self.deliveries.append(Delivery(request.raw_path, dict(request.headers), body, time.monotonic()))
        reply = self.next_reply()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.hang:
            await self.hang()
        return web.Response(status=reply.status, headers=reply.headers)
