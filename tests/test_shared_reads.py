"""The read a job's new subscribers share (s2s.web.subscribing.SharedReads) against a real Redis: a timeout
that is the API loop's own stall is not Redis failing, and a Redis that does not answer still fails in bounds.

A storm of 1,500 catch-ups once held a slow CI machine's API loop for over a second; the read in flight
then timed out although Redis had answered, and its few hundred sockets were told ``unavailable``
(tests/test_storms.py, py312 and py313 on CI, 2026-12-03).
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from s2s.queue import Queue
from s2s.web.subscribing import SharedReads
from tests.test_ws import emit, seed_job

TIMEOUT_S = 0.2  # the Redis client's read timeout in these tests
PAUSE_S = 0.1  # Redis holds the read this long: it answers in the loop's stall
STALL_S = 3 * TIMEOUT_S  # a loop pass this long: Redis' answer arrives during it, the deadline passes in it


def shared_reads(settings, url: str) -> SharedReads:
    client = aioredis.Redis.from_url(url, protocol=2, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
    return SharedReads(Queue(client, settings))


def test_a_read_out_while_the_loop_stalls_past_the_redis_timeout_still_gets_its_answer(settings, redis_client):
    seed_job(redis_client, "stalled", seq=0)
    for seq in (1, 2, 3):
        emit(redis_client, "stalled", seq)

    async def scenario():
        reads = shared_reads(settings, settings.redis_url)
        await reads.queue.redis.ping()  # a pooled connection: the read goes out within a few loop passes
        # Redis holds every command for PAUSE_S (less than the timeout), so the read is still out when the
        # loop stalls; Redis answers during the stall, and the read's deadline passes in it
        redis_client.execute_command("CLIENT", "PAUSE", int(PAUSE_S * 1000), "ALL")
        reading = asyncio.ensure_future(reads.job_and_events("stalled", 1))
        asyncio.get_running_loop().call_later(PAUSE_S / 3, time.sleep, STALL_S)
        try:
            job, kept = await asyncio.wait_for(reading, 10)
        finally:
            await reads.queue.redis.aclose()
        return reads, job, kept

    reads, job, kept = asyncio.run(scenario())
    assert job is not None and job.id == "stalled"
    assert [frame["seq"] for frame in kept] == [2, 3]
    assert (reads.reads, reads.retried, reads.lag.stalls) == (1, 1, 1), "one shared read, tried again once"


def test_a_redis_that_never_answers_fails_the_read_at_its_timeout_when_the_loop_is_idle(settings):
    """A black hole (the port accepts, nothing answers): no stall of ours, so no second try."""
    with socket.create_server(("127.0.0.1", 0)) as hole:
        port = hole.getsockname()[1]

        async def scenario():
            reads = shared_reads(settings, f"redis://127.0.0.1:{port}/0")
            started = time.monotonic()
            try:
                with pytest.raises(redis.exceptions.TimeoutError):
                    await asyncio.wait_for(reads.job_and_events("anything", 0), 10)
            finally:
                await reads.queue.redis.aclose()
            return reads, time.monotonic() - started

        reads, took = asyncio.run(scenario())
    assert (reads.reads, reads.retried) == (1, 0)
    assert took >= TIMEOUT_S, "it waited the client's own timeout"
