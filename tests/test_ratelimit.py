"""The shared per-provider limit against a real Redis: several limiters stand for several worker processes."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from s2s import timeouts
from s2s.keys import Keys
from s2s.providers.base import ProviderError
from s2s.providers.failures import RATE_LIMITED
from s2s.providers.limited import RateLimitedProvider
from s2s.ratelimit import BUSY, PAUSED, PER_MINUTE, RateLimiter
from tests.helpers import wait_until_async

KEYS = Keys("s2s")


def run(redis_url: str, scenario) -> object:
    """Run ``scenario(make_limiter)`` on a fresh loop, closing every Redis client it opened."""

    async def main():
        clients = []

        def limiter(**limits) -> RateLimiter:
            clients.append(aioredis.Redis.from_url(redis_url))
            return RateLimiter(clients[-1], KEYS, "openai", **{"per_minute": 0, "concurrency": 0, **limits})

        try:
            return await scenario(limiter)
        finally:
            for client in clients:
                await client.aclose()

    return asyncio.run(main())


def test_calls_in_flight_are_capped_across_workers(redis_url, redis_client):
    async def scenario(limiter):
        workers = [limiter(concurrency=2, poll_ms=20) for _ in range(3)]
        in_flight = peak = 0

        async def call(worker):
            nonlocal in_flight, peak
            async with worker.slot():
                in_flight += 1
                peak = max(peak, in_flight)
                await asyncio.sleep(0.05)
                in_flight -= 1

        await asyncio.gather(*(call(workers[n % 3]) for n in range(9)))
        return peak

    assert run(redis_url, scenario) == 2
    assert redis_client.zcard(KEYS.rate_slots("openai")) == 0, "every slot was given back"


def test_requests_per_minute_is_a_sliding_window(redis_url, redis_client):
    async def scenario(limiter):
        a, b = limiter(per_minute=3, window_ms=600), limiter(per_minute=3, window_ms=600)
        waits = []  # (which call, why) for each call that had to wait

        began = time.monotonic()  # before the first call enters the window
        fourth_went = None
        for n, worker in enumerate((a, b, a, b)):
            async def waited(reason, n=n):
                waits.append((n, reason))

            async with worker.slot(on_wait=waited):
                fourth_went = time.monotonic() - began
        return fourth_went, waits

    fourth_went, waits = run(redis_url, scenario)
    assert waits == [(3, PER_MINUTE)], "the first three go without waiting; the fourth waits for the window"
    assert fourth_went >= 0.55, "the fourth waits until the first leaves the window"


def test_the_slot_of_a_worker_that_died_frees_when_its_lease_runs_out(redis_url, redis_client):
    async def scenario(limiter):
        dead = limiter(concurrency=1, lease_ms=300)
        taken = await dead.acquire()  # taken and never released nor renewed: the process was killed
        alive = limiter(concurrency=1, lease_ms=300, poll_ms=20)
        reasons = []

        async def waited(reason):
            reasons.append(reason)

        began = time.monotonic()
        # the deadline is the test's: a slot that never frees would keep the waiter waiting forever
        token = await asyncio.wait_for(alive.acquire(waited), 10)
        waited_s = time.monotonic() - began
        held = [t.decode() for t in await alive._redis.zrange(KEYS.rate_slots("openai"), 0, -1)]
        await alive.release(token)
        return waited_s, reasons, held, taken, token

    waited_s, reasons, held, taken, token = run(redis_url, scenario)
    assert reasons == [BUSY], "it waited for the dead worker's slot"
    assert waited_s >= 0.2, "and got it only once that lease had run out"
    assert held == [token] and taken not in held, "the dead worker's slot is gone, not shared"


def test_a_long_call_keeps_its_slot_by_renewing_the_lease(redis_url, redis_client):
    lease_ms = 600

    async def scenario(limiter):
        holder = limiter(concurrency=1, lease_ms=lease_ms)
        other = limiter(concurrency=1, lease_ms=lease_ms, poll_ms=20)
        r, slots = holder._redis, KEYS.rate_slots("openai")
        async with holder.slot():
            ((token, first_deadline),) = await r.zrange(slots, 0, -1, withscores=True)
            waiter = asyncio.ensure_future(other.acquire())

            async def a_lease_past_the_first_deadline():
                held = await r.zrange(slots, 0, -1, withscores=True)
                seconds, micros = await r.time()  # the clock the script judges leases by, read after the slots
                now_ms = seconds * 1000 + micros // 1000
                assert [t for t, _ in held] == [token] and held[0][1] > now_ms, "the running call's slot lapsed"
                assert not waiter.done(), "another caller took the running call's slot"
                return now_ms > first_deadline + lease_ms

            # without renewal the slot would have lapsed a whole lease ago, and the waiter had it
            await wait_until_async(a_lease_past_the_first_deadline, timeout=10, what="two lease times to pass")
        await asyncio.wait_for(waiter, 5)  # the slot goes to the waiter once the call ends

    run(redis_url, scenario)


def test_waiting_can_be_cancelled_and_takes_nothing(redis_url, redis_client):
    async def scenario(limiter):
        holder, other = limiter(concurrency=1), limiter(concurrency=1, poll_ms=20)
        reasons = []

        async def waited(reason):
            reasons.append(reason)

        async with holder.slot():
            waiter = asyncio.ensure_future(other.acquire(waited))
            await wait_until_async(lambda: reasons, what="the caller to be waiting")
            timeouts.cancel(waiter)  # as the worker cancels a job: on 3.10 redis-py's wait_for may swallow it
            await asyncio.gather(waiter, return_exceptions=True)
            assert waiter.cancelled()
            assert await other._redis.zcard(KEYS.rate_slots("openai")) == 1, "only the holder"
        return reasons

    assert run(redis_url, scenario) == [BUSY]
    assert redis_client.zcard(KEYS.rate_slots("openai")) == 0


def test_a_cancellation_lost_inside_redis_py_still_stops_the_wait(redis_url, redis_client, monkeypatch):
    """redis-py writes through asyncio.wait_for, which before Python 3.12 can drop a cancellation that lands as
    the write completes; the task still counts it, and the wait must end all the same."""
    real = RateLimiter.try_acquire
    cancelled_once = []

    async def swallowing(self, token):
        if not cancelled_once:
            cancelled_once.append(True)
            timeouts.cancel(asyncio.current_task())  # as the worker cancels a job
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                pass  # what wait_for does when the inner call has just finished
        return await real(self, token)

    async def scenario(limiter):
        holder, other = limiter(concurrency=1), limiter(concurrency=1, poll_ms=20)
        async with holder.slot():
            monkeypatch.setattr(RateLimiter, "try_acquire", swallowing)
            waiter = asyncio.ensure_future(other.acquire())
            await asyncio.wait([waiter], timeout=5)
            assert waiter.cancelled(), "the wait ended as cancelled instead of polling on"
            assert await other._redis.zcard(KEYS.rate_slots("openai")) == 1, "and took no slot"

    run(redis_url, scenario)


def test_an_upstream_pause_holds_every_worker_and_only_lengthens(redis_url, redis_client):
    async def scenario(limiter):
        told, other = limiter(), limiter()  # no limits configured: a pause still holds
        reasons = []

        async def waited(reason):
            reasons.append(reason)

        began = time.monotonic()  # before the pause begins
        await told.pause(0.4)
        await told.pause(0.1)  # a shorter pause from another worker does not cut it short
        async with other.slot(on_wait=waited):
            return time.monotonic() - began, reasons

    waited_s, reasons = run(redis_url, scenario)
    assert waited_s >= 0.3 and reasons == [PAUSED]


class Throttled:
    name = "openai"

    async def generate(self, request, report):
        raise ProviderError("busy", retry_after=0.5, code=RATE_LIMITED)

    async def close(self):
        pass


def test_a_429_with_retry_after_pauses_every_worker(redis_url, redis_client):
    async def scenario(limiter):
        provider = RateLimitedProvider(Throttled(), limiter(concurrency=1))

        async def report(percent, message):
            pass

        with pytest.raises(ProviderError) as raised:
            await provider.generate(None, report)
        assert raised.value.code == RATE_LIMITED  # still the worker's to retry, with the attempt given back
        return await limiter().try_acquire("another-worker")

    wait_ms, reason = run(redis_url, scenario)
    assert reason == PAUSED and 0 < wait_ms <= 500
