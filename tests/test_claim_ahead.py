"""The claim-ahead buffer (s2s/claim_ahead.py): a worker's jobs claimed before a slot frees.

In-process workers on the real redis-server, with a provider the test holds: a buffered job keeps its
lease, is dropped on a cancel or a lost lease, goes back unstarted on a drain or after waiting too
long, and no job runs twice with the buffer on.
"""

from __future__ import annotations

import asyncio
import collections
import random

import attrs
import pytest

from s2s import claim_ahead
from s2s.catalog import Catalog
from s2s.claim_ahead import ClaimAhead
from s2s.job_requests import NewJob
from s2s.providers.base import GeneratedImage
from s2s.queue import Queue
from s2s.worker import Worker
from tests.helpers import photo_bytes, wait_until_async

PICTURE = photo_bytes("PNG", (8, 8))


class HeldProvider:
    """The first job ends at once (the worker learns its jobs are short: it claims ahead); the next is held
    until ``release`` is set; the rest end at once. ``calls`` counts the jobs each call was for."""

    name = "noop"
    takes_photo = False

    def __init__(self):
        self.calls: collections.Counter[str] = collections.Counter()
        self.release = asyncio.Event()
        self.held = asyncio.Event()  # the held job is in its call

    async def generate(self, request, report) -> GeneratedImage:
        self.calls[request.job_id] += 1
        if len(self.calls) == 2:
            self.held.set()
            await asyncio.wait_for(self.release.wait(), 30)
        return GeneratedImage(PICTURE, "image/png")

    async def close(self) -> None:
        pass


async def _enqueue(queue: Queue, n: int) -> list[str]:
    job = NewJob("Mia", "space", "cartoon", "cover", photo_bytes(), "image/jpeg")
    return [(await queue.enqueue(job))[0] for _ in range(n)]


async def _one_buffered(settings, provider: HeldProvider) -> tuple[Queue, Worker, asyncio.Task, list[str]]:
    """One slot: the first job done, the second held in its call, the third claimed ahead into the buffer."""
    queue = Queue.connect(settings)
    worker = Worker(settings=attrs.evolve(settings, worker_claim_ahead=1), queue=queue, provider=provider,
                    catalog=Catalog.load(None), concurrency=1)
    ids = await _enqueue(queue, 3)
    task = asyncio.ensure_future(worker.run_async())
    await asyncio.wait_for(provider.held.wait(), 10)
    await wait_until_async(lambda: [c.job_id for c in worker.ahead.claims()] == [ids[2]], what="a buffered job")
    return queue, worker, task, ids


async def _field(queue: Queue, job_id: str, name: str) -> str | None:
    value = await queue.redis.hget(queue.keys.job(job_id), name)
    return value.decode() if value is not None else None


async def _is(queue: Queue, job_id: str, status: str) -> bool:
    return await _field(queue, job_id, "status") == status


def test_the_depth_follows_how_soon_slots_free():
    ahead = ClaimAhead(None, 50, release=None, on_release=None)
    assert ahead.limit == 5 and ahead.depth() == 0, "nothing claimed ahead before a job has run"
    ahead.note_run(0.050)  # 50 ms jobs on 50 slots: one frees every ms
    assert ahead.depth() == 5
    ahead.note_run(30.0)
    assert ahead.depth() == 0, "jobs of seconds: no job waits in the buffer"
    one_slot = ClaimAhead(None, 1, release=None, on_release=None)
    one_slot.note_run(2.0)
    assert one_slot.limit == 1 and one_slot.depth() == 0
    off = ClaimAhead(0, 50, release=None, on_release=None)
    off.note_run(0.0)
    assert off.depth() == 0


def test_a_buffered_jobs_lease_is_renewed(settings, redis_client, monkeypatch):
    monkeypatch.setattr(claim_ahead, "MAX_WAIT_S", 60.0)  # kept in the buffer past several leases

    async def run() -> tuple:
        provider = HeldProvider()
        queue, worker, task, ids = await _one_buffered(settings, provider)
        first_deadline = await queue.redis.zscore(queue.keys.active, ids[2])
        fence = await _field(queue, ids[2], "fence")
        await asyncio.sleep(2 * settings.lease_ms / 1000)  # two leases: the reaper would have taken it back
        renewed = await queue.redis.zscore(queue.keys.active, ids[2])
        still = ([c.job_id for c in worker.ahead.claims()], await _field(queue, ids[2], "status"),
                 await _field(queue, ids[2], "fence"))
        provider.release.set()
        await wait_until_async(lambda: _is(queue, ids[2], "completed"), what="the third job")
        worker.drain()
        await task
        jobs = [(await queue.get(i)).to_json() for i in ids]
        await queue.close()
        return first_deadline, renewed, fence, still, jobs, provider.calls

    first_deadline, renewed, fence, still, jobs, calls = asyncio.run(asyncio.wait_for(run(), 60))
    assert renewed > first_deadline, "the heartbeat extended the buffered job's lease"
    assert still[0] and still[1:] == ("processing", fence), "still buffered, still ours, same fence"
    assert [(j["status"], j["attempts"], j["upstreamCalls"]) for j in jobs] == [("completed", 1, 1)] * 3
    assert set(calls.values()) == {1}


def test_a_cancelled_buffered_job_never_runs(settings, redis_client, monkeypatch):
    monkeypatch.setattr(claim_ahead, "MAX_WAIT_S", 60.0)  # only the cancel, lease or drain empties the buffer

    async def run() -> tuple:
        provider = HeldProvider()
        queue, worker, task, ids = await _one_buffered(settings, provider)
        assert await queue.cancel(ids[2]) == "processing"
        await wait_until_async(lambda: not worker.ahead.claims(), what="the cancel to reach the worker")
        provider.release.set()
        await wait_until_async(lambda: _is(queue, ids[1], "completed"), what="the held job")
        await asyncio.sleep(0.2)  # a freed slot would start a buffered job at once
        worker.drain()
        await task
        jobs = [(await queue.get(i)).to_json() for i in ids]
        await queue.close()
        return jobs, provider.calls

    jobs, calls = asyncio.run(asyncio.wait_for(run(), 60))
    assert (jobs[2]["status"], jobs[2]["upstreamCalls"]) == ("cancelled", 0), jobs[2]
    assert jobs[2]["jobId"] not in calls, "the cancelled job never reached the provider"
    assert [j["status"] for j in jobs[:2]] == ["completed", "completed"]


def test_a_buffered_job_whose_lease_was_lost_is_dropped(settings, redis_client, monkeypatch):
    monkeypatch.setattr(claim_ahead, "MAX_WAIT_S", 60.0)  # only the cancel, lease or drain empties the buffer

    async def run() -> tuple:
        provider = HeldProvider()
        queue, worker, task, ids = await _one_buffered(settings, provider)
        # another worker's now (as after the reaper took it back and another claimed it)
        await queue.redis.hincrby(queue.keys.job(ids[2]), "fence", 1)
        await queue.redis.zrem(queue.keys.active, ids[2])
        await wait_until_async(lambda: not worker.ahead.claims(), timeout=10, what="the heartbeat to report it")
        provider.release.set()
        await wait_until_async(lambda: _is(queue, ids[1], "completed"), what="the held job")
        await asyncio.sleep(0.2)
        worker.drain()
        await task
        await queue.close()
        return ids, provider.calls

    ids, calls = asyncio.run(asyncio.wait_for(run(), 60))
    assert ids[2] not in calls, "a job no longer ours never starts here"


def test_a_draining_worker_hands_back_its_buffered_jobs_at_once_unstarted(settings, redis_client, monkeypatch):
    monkeypatch.setattr(claim_ahead, "MAX_WAIT_S", 60.0)  # only the cancel, lease or drain empties the buffer

    async def run() -> tuple:
        provider = HeldProvider()
        queue, worker, task, ids = await _one_buffered(settings, provider)
        worker.drain()
        # back in the queue while the held job's call still runs: handed back at once, not after it
        await wait_until_async(lambda: _is(queue, ids[2], "queued"), what="the hand-back")
        held_status = await _field(queue, ids[1], "status")
        provider.release.set()
        await task
        jobs = [(await queue.get(i)).to_json() for i in ids]
        events = [e["status"] for e in await queue.events(ids[2])]
        await queue.close()
        return held_status, jobs, events, provider.calls

    held_status, jobs, events, calls = asyncio.run(asyncio.wait_for(run(), 60))
    assert held_status == "processing"
    assert (jobs[1]["status"], jobs[1]["upstreamCalls"]) == ("completed", 1), "the call begun is finished"
    assert (jobs[2]["status"], jobs[2]["attempts"], jobs[2]["upstreamCalls"]) == ("queued", 0, 0), jobs[2]
    assert jobs[2]["jobId"] not in calls
    assert events[-2:] == ["processing", "queued"]


def test_a_buffered_job_waiting_too_long_goes_back_and_runs_later(settings, redis_client, monkeypatch):
    monkeypatch.setattr(claim_ahead, "MAX_WAIT_S", 0.2)

    async def run() -> tuple:
        provider = HeldProvider()
        queue, worker, task, ids = await _one_buffered(settings, provider)
        await wait_until_async(lambda: _is(queue, ids[2], "queued"), what="the hand-back")
        attempts = await _field(queue, ids[2], "attempts")
        provider.release.set()
        await wait_until_async(lambda: _is(queue, ids[2], "completed"), what="the third job")
        worker.drain()
        await task
        job = (await queue.get(ids[2])).to_json()
        await queue.close()
        return attempts, job, provider.calls

    attempts, job, calls = asyncio.run(asyncio.wait_for(run(), 60))
    assert attempts == "0", "handed back without using an attempt"
    assert (job["attempts"], job["upstreamCalls"], calls[job["jobId"]]) == (1, 1, 1)


@pytest.mark.parametrize("seed", [1, 2])
def test_no_job_runs_twice_with_the_buffer_on(settings, redis_client, seed):
    rng = random.Random(seed)

    class Jittery:
        name = "noop"
        takes_photo = False

        def __init__(self):
            self.calls: collections.Counter[str] = collections.Counter()

        async def generate(self, request, report) -> GeneratedImage:
            self.calls[request.job_id] += 1
            await asyncio.sleep(rng.choice((0, 0, 0.001, 0.003)))
            return GeneratedImage(PICTURE, "image/png")

        async def close(self) -> None:
            pass

    async def run() -> tuple:
        queue = Queue.connect(settings)
        provider = Jittery()
        worker = Worker(settings=attrs.evolve(settings, worker_claim_ahead=3), queue=queue, provider=provider,
                        catalog=Catalog.load(None), concurrency=8)
        buffered = []
        put = worker.ahead.put
        worker.ahead.put = lambda claim: (buffered.append(claim.job_id), put(claim))
        ids = await _enqueue(queue, 300)
        task = asyncio.ensure_future(worker.run_async())
        done = lambda: queue.redis.hget(queue.keys.totals, "completed")  # noqa: E731
        await wait_until_async(lambda: _at_least(done(), 300), timeout=60, what="the 300 jobs")
        worker.drain()
        await task
        jobs = [(await queue.get(i)).to_json() for i in ids]
        seqs = [[e["seq"] for e in await queue.events(i)] for i in ids]
        await queue.close()
        return jobs, seqs, provider.calls, buffered

    jobs, seqs, calls, buffered = asyncio.run(asyncio.wait_for(run(), 90))
    assert buffered, "the buffer was used"
    assert {(j["status"], j["attempts"], j["upstreamCalls"]) for j in jobs} == {("completed", 1, 1)}
    assert len(calls) == 300 and set(calls.values()) == {1}, "every job called the provider exactly once"
    assert all(s == list(range(1, len(s) + 1)) for s in seqs)


async def _at_least(value, n: int) -> bool:
    return int(await value or 0) >= n
