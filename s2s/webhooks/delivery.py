"""Workers send the webhooks: lease what is due, POST it signed, record the outcome (never the API's loop).

Bounded: S2S_WEBHOOK_CONCURRENCY deliveries at once per worker, S2S_WEBHOOK_TIMEOUT_S per attempt
(connect, send, the answer's status), no redirects followed. A 2xx ends a delivery; 410 Gone
disables its URL (recorded with why: later deliveries to it are not attempted until an operator
redelivers); anything else is tried again on the schedule (:mod:`.schedule`), after at least its
Retry-After. The body is built once, from the job's status answer, and kept for the next tries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import redis.exceptions

from s2s.backoff import Backoff
from s2s.metrics.counters import WEBHOOK_DELIVERIES, Counts, field
from s2s.models import iso_ms
from s2s.queue import Queue
from s2s.settings import Settings
from s2s.webhooks import destinations, schedule, signing
from s2s.webhooks.store import Leased, WebhookStore

log = logging.getLogger("s2s.webhooks")

POLL_S = 0.5  # how often an idle worker looks for due deliveries: the first try goes within this of the job's end
LEASE_MARGIN_S = 5  # a delivery's lease: the attempt's timeout and this, so a live worker never loses it mid-attempt
REDIS_BACKOFF = Backoff(initial=0.5, maximum=5.0)


def tasks(settings: Settings, queue: Queue, counts: Counts) -> list[asyncio.Future]:
    """The worker's delivery loop, when this deployment signs webhooks (none without a secret)."""
    if not settings.webhook_secret:
        if settings.webhook_url or settings.webhook_per_job:
            log.warning("webhooks are off: S2S_WEBHOOK_SECRET is not set, so nothing is signed or sent")
        return []
    return [asyncio.ensure_future(Deliverer(settings, queue, counts).run())]


def _describe(exc: BaseException, timeout_s: int) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {timeout_s} s"
    return f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__


class Deliverer:
    def __init__(self, settings: Settings, queue: Queue, counts: Counts):
        self.settings = settings
        self.queue = queue
        self.store = WebhookStore(queue.redis, queue.keys)
        self.counts = counts
        self.lease_ms = (settings.webhook_timeout_s + LEASE_MARGIN_S) * 1000
        self._running: set[asyncio.Task] = set()

    async def run(self) -> None:
        """Until cancelled (the worker stopping): deliveries in flight then are left to their lease."""
        limit = self.settings.webhook_concurrency
        connector = aiohttp.TCPConnector(resolver=destinations.GuardedResolver(self.settings.webhook_hosts),
                                         limit=limit)
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
        failures = 0
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            try:
                while True:
                    free = limit - len(self._running)
                    leased = []
                    if free > 0:
                        try:
                            leased = await self.store.claim(free, self.lease_ms)
                            failures = 0
                        except redis.exceptions.RedisError as exc:
                            failures += 1
                            log.warning("webhook claim failed", extra={"error": str(exc)})
                            await asyncio.sleep(REDIS_BACKOFF.delay(failures))
                            continue
                    for item in leased:
                        task = asyncio.ensure_future(self._deliver(session, item))
                        self._running.add(task)
                        task.add_done_callback(self._running.discard)
                    if not leased or len(self._running) >= limit:
                        await asyncio.sleep(POLL_S)
            finally:
                for task in list(self._running):
                    task.cancel()
                await asyncio.gather(*self._running, return_exceptions=True)

    async def _body(self, item: Leased) -> bytes | None:
        job = await self.queue.get(item.job_id)
        if job is None:
            return None
        data = job.to_json(self.settings.public_url or "")  # the status answer, as GET /status builds it
        return json.dumps({"type": item.event, "timestamp": iso_ms(item.at_ms), "data": data},
                          separators=(",", ":")).encode()

    async def _deliver(self, session: aiohttp.ClientSession, item: Leased) -> None:
        try:
            outcome, status, error, delay_s, body = await self._attempt(session, item)
            settled = await self.store.settle(item, outcome, status=status, error=error,
                                              delay_ms=int((delay_s or 0) * 1000), body=body)
        except redis.exceptions.RedisError as exc:  # its lease passes and a worker tries again
            log.warning("webhook outcome not recorded", extra={"job": item.job_id, "error": str(exc)})
            return
        except Exception:  # a bug must not stop the loop: the lease passes and the delivery is tried again
            log.exception("webhook attempt crashed", extra={"job": item.job_id})
            return
        if settled:
            self.counts.add(field(WEBHOOK_DELIVERIES, outcome=outcome))
            log.log(logging.DEBUG if outcome == "delivered" else logging.INFO, "webhook attempt",
                    extra={"job": item.job_id, "event": item.event, "outcome": outcome, "status": status,
                           "attempt": item.attempts + 1})

    async def _attempt(self, session: aiohttp.ClientSession,
                       item: Leased) -> tuple[str, int | None, str, float | None, bytes]:
        """(outcome, HTTP status, error, seconds to the next try, the body to keep) of one try."""
        disabled = await self.store.disabled(item.url)
        if disabled:
            return ("skipped", None, f"not sent: this URL answered {disabled.get('status', 410)} Gone at "
                    f"{iso_ms(disabled.get('at'))} (webhook {disabled.get('webhookId')}); Redeliver enables it again",
                    None, b"")
        try:
            destinations.split(item.url, self.settings.webhook_hosts)
        except destinations.Refused as refused:
            return "failed", None, f"destination refused: the URL {refused.reason}", None, b""
        body = item.body or await self._body(item)
        if body is None:
            return "failed", None, "the job is gone (deleted or expired)", None, b""
        timeout_s = self.settings.webhook_timeout_s
        headers = signing.headers(self.settings.webhook_secret, item.msg_id, int(time.time()), body)
        status, retry_after, error = None, None, ""
        try:
            async with session.post(item.url, data=body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                retry_after = schedule.retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            error = _describe(exc, timeout_s)
        if status is not None and 200 <= status < 300:
            return "delivered", status, "", None, body
        if status == 410:
            return "disabled", status, "the receiver answered 410 Gone: nothing more is sent to this URL", None, body
        if status is not None:
            error = f"the receiver answered {status}"
        delay = schedule.next_delay_s(self.settings.webhook_retry_s, item.tries + 1, retry_after)
        if delay is None:
            return "failed", status, f"{error}; the retry schedule is used up", None, body
        return "retry", status, error, delay, body
