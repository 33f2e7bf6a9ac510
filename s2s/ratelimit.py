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
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import redis.exceptions

from s2s.keys import Keys
from s2s.timeouts import cancel, cancel_requested

log = logging.getLogger("s2s.ratelimit")

#: Why a caller waits: the upstream asked us to back off, every slot is taken, or the minute's budget is spent.
PAUSED, BUSY, PER_MINUTE = "paused", "busy", "per_minute"

_CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: requests, slots, pause. ARGV: token, rpm, concurrency, lease_ms, window_ms.
# Returns {0, 'ok'} when the call may go (its token is recorded), else {ms to wait at most, reason}.
_ACQUIRE = _CLOCK + """
local paused = redis.call('PTTL', KEYS[3])
if paused > 0 then return {paused, 'paused'} end
local rpm, concurrency = tonumber(ARGV[2]), tonumber(ARGV[3])
local lease, window = tonumber(ARGV[4]), tonumber(ARGV[5])
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= concurrency then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {math.max(1, tonumber(first[2]) - now), 'busy'}
  end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {math.max(1, tonumber(oldest[2]) + window - now), 'per_minute'}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], window)
end
if concurrency > 0 then
  redis.call('ZADD', KEYS[2], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], lease)
end
return {0, 'ok'}
"""

# KEYS: slots. ARGV: token, lease_ms. The call is still running, so the slot is (re)taken even if it lapsed.
_RENEW = _CLOCK + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# KEYS: pause. ARGV: ms. Only ever lengthens a pause another worker set.
_PAUSE = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"""

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
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._pause = redis.register_script(_PAUSE)

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
            await asyncio.sleep(ceiling * random.uniform(0.5, 1.0) / 1000)

    async def try_acquire(self, token: str) -> tuple[int, str]:
        """One attempt: (0, "ok") and the token recorded, or (ms to wait at most, reason)."""
        if not self.enabled:
            wait_ms = await self._redis.pttl(self._keys[2])
            return (wait_ms, PAUSED) if wait_ms > 0 else (0, "ok")
        wait_ms, reason = await self._acquire(
            keys=self._keys, args=[token, self.per_minute, self.concurrency, self.lease_ms, self.window_ms])
        return int(wait_ms), reason.decode() if isinstance(reason, bytes) else str(reason)

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
            await self._pause(keys=self._keys[2:], args=[max(1, int(seconds * 1000))])
        except redis.exceptions.RedisError as exc:
            log.warning("cannot record the upstream's back-off", extra={"provider": self.provider,
                                                                          "error": str(exc)})

    async def _keep(self, token: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await self._renew(keys=self._keys[1:2], args=[token, self.lease_ms])
            except redis.exceptions.RedisError as exc:
                log.warning("cannot renew a rate-limit slot", extra={"provider": self.provider, "error": str(exc)})
            if cancel_requested():  # a lost cancellation would keep this loop, and the slot's exit, forever
                raise asyncio.CancelledError()
