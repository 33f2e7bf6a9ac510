"""The Redis side of webhooks: where a job's deliveries are, their leases, their attempt logs.

A delivery is recorded by the script that ends its job (s2s/lua/_webhooks.lua); workers lease due
ones from a schedule (a ZSET of due times, :meth:`WebhookStore.claim`) and write each attempt's
outcome fenced by that lease (:meth:`WebhookStore.settle`), so a worker killed mid-delivery leaves
it to the next one once the lease has passed.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis
from attrs import frozen

from s2s import scripts
from s2s.keys import Keys
from s2s.settings import Settings

MAX_LOG = 50  # attempts kept per delivery: 8 on the schedule, and what redeliveries add


def destination(job_url: str | None, settings: Settings) -> str | None:
    """Where a new job's end is sent: its own ``webhookUrl`` (checked at submit), else S2S_WEBHOOK_URL;
    nowhere without a secret to sign with."""
    if not settings.webhook_secret:
        return None
    return job_url or settings.webhook_url


def job_fields(job_url: str | None, settings: Settings) -> list[str]:
    """The job record's fields naming its destination (read by the scripts that end it)."""
    url = destination(job_url, settings)
    if not url:
        return []
    return ["webhook", url, *(["webhookStarted", "1"] if settings.webhook_started else [])]


@frozen
class Leased:
    """A delivery this worker holds the lease of."""

    msg_id: str
    fence: str
    job_id: str
    event: str
    url: str
    at_ms: int
    attempts: int
    tries: int  # of this round: redelivery starts a new one
    body: bytes  # b"" until the first attempt built it


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class WebhookStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys):
        self.redis = redis
        self.keys = keys

    async def claim(self, count: int, lease_ms: int) -> list[Leased]:
        raw = await scripts.call(self.redis, "webhook_claim", [self.keys.webhook_due],
                                 [count, lease_ms, self.keys.webhook_prefix])
        out = []
        for i in range(0, len(raw), 9):
            msg, fence, job_id, event, url, at, attempts, tries, body = raw[i:i + 9]
            out.append(Leased(_text(msg), _text(fence), _text(job_id), _text(event), _text(url), int(at),
                              int(attempts), int(tries), body if isinstance(body, bytes) else body.encode()))
        return out

    async def settle(self, leased: Leased, outcome: str, *, status: int | None = None, error: str = "",
                     delay_ms: int = 0, body: bytes = b"") -> bool:
        """Record one attempt's ``outcome`` (delivered, retry, failed, disabled, skipped); False: the lease was lost."""
        k = self.keys
        done = await scripts.call(
            self.redis, "webhook_settle",
            [k.webhook_due, k.webhook(leased.msg_id), k.webhook_log(leased.msg_id), k.webhook_disabled],
            [leased.msg_id, leased.fence, outcome, "" if status is None else status, error, delay_ms, body, MAX_LOG])
        return bool(done)

    async def disabled(self, url: str) -> dict | None:
        """Why ``url`` gets no more deliveries (it answered 410 Gone), or None."""
        raw = await self.redis.hget(self.keys.webhook_disabled, url)
        return json.loads(raw) if raw else None

    async def deliveries(self, job_id: str) -> list[dict]:
        """The job's deliveries, each with its attempt log, oldest first (the operator's view)."""
        k = self.keys
        ids = [_text(m) for m in await self.redis.lrange(k.job_webhooks(job_id), 0, -1)]
        pipe = self.redis.pipeline(transaction=False)
        for msg in ids:
            pipe.hmget(k.webhook(msg), "event", "url", "state", "attempts", "at", "nextAt")
            pipe.lrange(k.webhook_log(msg), 0, -1)
        answers = await pipe.execute() if ids else []
        out = []
        for i, msg in enumerate(ids):
            fields, log = answers[2 * i], answers[2 * i + 1]
            if fields[0] is None:
                continue  # expired with its job
            event, url, state, attempts, at, next_at = (_text(f) if f is not None else None for f in fields)
            item = {"webhookId": msg, "event": event, "url": url, "state": state, "attempts": int(attempts or 0),
                    "createdAtMs": int(at), "attemptLog": [json.loads(e) for e in log]}
            if next_at and state == "pending":
                item["nextAttemptAtMs"] = int(next_at)
            disabled = await self.disabled(url)
            if disabled:
                item["urlDisabled"] = disabled
            out.append(item)
        return out

    async def redeliver(self, job_id: str) -> int:
        """Schedule the job's ended deliveries again now (same webhook-id); their URLs are enabled again."""
        k = self.keys
        return int(await scripts.call(self.redis, "webhook_redeliver",
                                      [k.webhook_due, k.job_webhooks(job_id), k.webhook_disabled],
                                      [k.webhook_prefix]))
