"""Who may submit a job now: a per-client rate limit and a cap on waiting jobs.

Both are decided in Redis so that every API process applies the same budget: a
client spreading its submits over several API instances behind a load balancer
still gets N a minute, not N per instance.

- The rate limit is a sliding window per client (a ZSET of submit tokens scored
  by time), counting accepted jobs only: a parent who fixes a bad photo and tries
  again is not punished for the first refusal.
- The cap refuses new submits with 503 while the waiting list is full, so a flood
  (or a worker fleet that is down) cannot grow the queue without bound.

The API checks once before reading the body (a refused client costs no upload and
no image decoding) and takes its token atomically just before queueing, so two
processes cannot both let the last allowed submit through.
"""

from __future__ import annotations

import ipaddress
import math
import secrets

import redis.asyncio as aioredis
from attrs import frozen

from s2s import scripts
from s2s.keys import Keys
from s2s.replies import text
from s2s.settings import Settings

WINDOW_MS = 60_000
QUEUE_FULL_RETRY_S = 30  # a full queue drains at the workers' pace: come back in a while, not at once


@frozen
class Refusal:
    """Why a submit is refused, in the contract's error shape."""

    status: int
    code: str
    message: str
    retry_after_s: int
    details: dict


def client_key(remote_ip: str) -> str:
    """The unit a limit applies to: an IPv4 address, or an IPv6 /64 (one household's or phone's prefix).

    ``remote_ip`` is already the client's address: Tornado takes it from X-Forwarded-For
    only when S2S_TRUST_PROXY is on (``xheaders``), so a client cannot pick its own.
    """
    try:
        address = ipaddress.ip_address(remote_ip)
    except ValueError:
        return remote_ip or "unknown"
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False).network_address) + "/64"
    return str(address)


class Admission:
    """The submit limits of S2S_SUBMIT_PER_MINUTE and S2S_MAX_WAITING; 0 turns each off."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, settings: Settings):
        self.per_minute = settings.submit_per_minute
        self.max_waiting = settings.max_waiting
        self._redis = redis
        self._keys = keys

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0 or self.max_waiting > 0

    async def check(self, client: str) -> Refusal | None:
        """Would a submit from ``client`` be refused now? Takes nothing."""
        return await self._run(client, "")

    async def take(self, client: str) -> tuple[str | None, Refusal | None]:
        """Take one submit from ``client``'s budget: (token, None), or (None, why not)."""
        token = secrets.token_hex(8)
        refusal = await self._run(client, token)
        return (None, refusal) if refusal else (token, None)

    async def give_back(self, client: str, token: str | None) -> None:
        """Return a token whose submit did not create a job (an idempotent replay)."""
        if token and self.per_minute > 0:
            await self._redis.zrem(self._keys.submits(client), token)

    async def _run(self, client: str, token: str) -> Refusal | None:
        if not self.enabled:
            return None
        value, reason = await scripts.call(self._redis, "admit", [self._keys.submits(client), self._keys.waiting],
                                           [token, self.per_minute, WINDOW_MS, self.max_waiting])
        reason = text(reason)
        if reason == "rate_limited":
            wait_s = max(1, math.ceil(int(value) / 1000))
            return Refusal(429, "rate_limited",
                           f"Too many images requested from your address: at most {self.per_minute} a minute. "
                           f"Try again in {wait_s} s.", wait_s, {"limitPerMinute": self.per_minute})
        if reason == "queue_full":
            return Refusal(503, "queue_full",
                           "Too many pictures are waiting to be drawn right now; try again in a little while.",
                           QUEUE_FULL_RETRY_S, {"waiting": int(value), "maxWaiting": self.max_waiting})
        return None
