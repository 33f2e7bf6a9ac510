"""A provider's account limits, shared by every worker process through Redis.

An upstream limits the whole account, not one process: ten workers each keeping to
"20 a minute" would send 200. So the budget lives in Redis and one Lua script takes
from it atomically:

- requests per minute: a sliding window, a ZSET of request tokens scored by start time;
- calls in flight: a ZSET of slot tokens scored by a lease deadline. A holder renews
  its lease while its call runs, so the slot of a worker that died (SIGKILL, lost
  host) frees itself when the lease runs out, and nothing is ever stuck;
- a pause: when the upstream answers 429 with Retry-After, every worker waits it out.

Waiting polls with jitter (no FIFO fairness: a waiter may be overtaken), and is an
ordinary ``await``, so cancelling the job stops the wait at once (see
:mod:`s2s.timeouts` for the cancellations redis-py can lose). Redis 6.2 only:
EVALSHA scripts, no functions.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import redis.exceptions

from s2s import scripts
from s2s.backoff import equal_jitter
from s2s.keys import Keys
from s2s.replies import text
from s2s.timeouts import cancel, cancel_requested

log = logging.getLogger("s2s.ratelimit")

#: Why a caller waits: the upstream asked us to back off, every slot is taken, or the minute's budget is spent.
PAUSED, BUSY, PER_MINUTE = "paused", "busy", "per_minute"

OnWait = Callable[[str], Awaitable[None]]


class RateLimiter:
    """Requests per minute and calls in flight for one provider; 0 turns a limit off."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, provider: str, *, per_minute: int, concurrency: int,
                 lease_ms: int = 30_000, window_ms: int = 60_000, poll_ms: int = 250):
        self.provider = provider
        self.per_minute = per_minute
        self.concurrency = concurrency
        self.lease_ms = lease_ms
        self.window_ms = window_ms
        self.poll_ms = poll_ms
        self._redis = redis
        self._keys = [keys.rate_requests(provider), keys.rate_slots(provider), keys.rate_pause(provider)]

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0 or self.concurrency > 0

    @asynccontextmanager
    async def slot(self, on_wait: OnWait | None = None) -> AsyncIterator[None]:
        """Hold one call's share of the budget for the ``async with`` body.

        ``on_wait(reason)`` is awaited once if the caller has to wait first.
        """
        token = await self.acquire(on_wait)
        renewer = asyncio.ensure_future(self._keep(token)) if self.concurrency > 0 else None
        try:
            yield
        finally:
            if renewer:
                cancel(renewer)
                await asyncio.gather(renewer, return_exceptions=True)
            await asyncio.shield(self.release(token))

    async def acquire(self, on_wait: OnWait | None = None) -> str:
        """Wait until a call may go; return its token (for :meth:`release`)."""
        token = secrets.token_hex(8)
        told = False
        while True:
            try:
                wait_ms, reason = await self.try_acquire(token)
                if cancel_requested():  # swallowed by redis-py's wait_for: still a cancellation
                    raise asyncio.CancelledError()
            except asyncio.CancelledError:
                # the script may have run before the cancellation landed: do not leave the slot taken
                await asyncio.shield(self.release(token))
                raise
            if wait_ms <= 0:
                return token
            if on_wait and not told:
                told = True
                await on_wait(reason)
            # a slot may free at any moment: poll; a window or a pause ends at a known time
            ceiling = self.poll_ms if reason == BUSY else min(wait_ms, 5_000)
            await asyncio.sleep(equal_jitter(ceiling) / 1000)

    async def try_acquire(self, token: str) -> tuple[int, str]:
        """One attempt: (0, "ok") and the token recorded, or (ms to wait at most, reason)."""
        if not self.enabled:
            wait_ms = await self._redis.pttl(self._keys[2])
            return (wait_ms, PAUSED) if wait_ms > 0 else (0, "ok")
        wait_ms, reason = await scripts.call(
            self._redis, "rate_acquire", self._keys,
            [token, self.per_minute, self.concurrency, self.lease_ms, self.window_ms])
        return int(wait_ms), text(reason)

    async def release(self, token: str) -> None:
        """Free the call's slot (its place in the minute's window stays: the request was made)."""
        if self.concurrency <= 0:
            return
        try:
            await self._redis.zrem(self._keys[1], token)
        except redis.exceptions.RedisError as exc:  # the lease runs out by itself
            log.warning("cannot release a rate-limit slot", extra={"provider": self.provider, "error": str(exc)})

    async def pause(self, seconds: float) -> None:
        """Make every worker hold its next calls for ``seconds`` (the upstream's Retry-After)."""
        try:
            await scripts.call(self._redis, "rate_pause", self._keys[2:], [max(1, int(seconds * 1000))])
        except redis.exceptions.RedisError as exc:
            log.warning("cannot record the upstream's back-off", extra={"provider": self.provider,
                                                                          "error": str(exc)})

    async def _keep(self, token: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await scripts.call(self._redis, "rate_renew", self._keys[1:2], [token, self.lease_ms])
            except redis.exceptions.RedisError as exc:
                log.warning("cannot renew a rate-limit slot", extra={"provider": self.provider, "error": str(exc)})
            if cancel_requested():  # a lost cancellation would keep this loop, and the slot's exit, forever
                raise asyncio.CancelledError()
