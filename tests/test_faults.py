"""Fault drills where every upstream call is a paid picture: each one must be bought once.

Real processes throughout (tests/fault_scenarios.py): a redis-server of the test's own, frozen
with SIGSTOP or given a small maxmemory; ``s2s serve`` and ``s2s worker``; a fake OpenAI that
counts its calls. Leases are short (3 s) so the drills take seconds; the rules are the real ones.
Also here: the review findings in the worker, each with the test that caught it.
"""

from __future__ import annotations

import asyncio
import json
import time

import attrs
import pytest
import redis.exceptions

from s2s import scripts
from s2s.catalog import Catalog
from s2s.job_requests import NewJob
from s2s.keys import Keys
from s2s.providers.base import GeneratedImage
from s2s.queue import Queue
from s2s.worker import UNEXPECTED_ERROR, Worker
from tests import fault_scenarios as drills
from tests.fault_scenarios import Rig
from tests.helpers import http_json, photo_bytes
from tests.test_ws import ORIGIN, Client

pytestmark = pytest.mark.drill


# ---- the drills ---------------------------------------------------------------------------------
def test_a_redis_frozen_past_the_lease_pays_each_picture_once(tmp_path):
    with Rig(tmp_path, lease_ms=3000, call_s=4.0) as rig:
        out = drills.frozen_redis(rig, freeze_s=8.0)  # every lease has run out when Redis answers again
    assert (out.accepted, out.completed) == (6, 6)
    assert out.upstream_calls == 6, "no picture paid twice"
    assert out.job_calls == [1] * 6 and out.attempts == [1] * 6


def test_a_deploy_finishes_the_calls_it_began_and_hands_back_the_rest(tmp_path):
    with Rig(tmp_path, call_s=6.0, shutdown_grace_ms=2000) as rig:  # the calls outlast the grace
        out = drills.deploy(rig)
    assert (out.accepted, out.completed) == (3, 3)
    assert out.upstream_calls == 3, "the calls in flight at SIGTERM were finished and stored, not made again"
    assert out.notes["old_worker_exit"] == 0
    assert len(out.notes["handed_back"]) == 1, "only the job whose call had not begun went back"
    assert out.job_calls == [1, 1, 1] and out.attempts == [1, 1, 1]


def test_a_worker_killed_mid_call_is_the_one_fault_that_pays_twice(tmp_path):
    with Rig(tmp_path, lease_ms=1500, call_s=2.0) as rig:
        out = drills.killed_worker(rig)
    assert (out.accepted, out.completed) == (1, 1)
    assert out.upstream_calls == 2 and out.job_calls == [2], "the killed worker's call counted as it began"
    assert out.attempts == [2]
    assert out.notes["operator_view_calls"] == [2], "operator views show it"
    # what an operator graphs: calls begun over completed jobs
    metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in out.notes["metrics"].splitlines() if line and not line.startswith("#")}
    assert metrics['s2s_upstream_calls_started_total{provider="openai"}'] == 2
    assert metrics['s2s_jobs_total{outcome="completed"}'] == 1


def test_a_full_redis_is_named_and_survived(tmp_path):
    with Rig(tmp_path, lease_ms=1500, call_s=6.0) as rig:  # calls outlast lease and reaper's confirmation
        out = drills.full_redis(rig)
    assert (out.accepted, out.completed) == (3, 3)
    assert out.upstream_calls == 3, "a full store never looks like a dead worker: no lease taken back"
    assert out.attempts == [1, 1, 1] and out.job_calls == [1, 1, 1]
    assert out.notes["waiting_while_full"] == "queued", "claims pause while the store is full"
    for code, body in out.notes["refused"]:
        assert (code, body["code"]) == (503, "storage_full"), body
        assert int(body["retryAfter"]) > 0
    assert out.notes["health_while_full"], "health says the store is full"
    for body in out.notes["health_while_full"]:
        assert body["status"] == "ok" and body["workers"]["alive"] >= 1, body
        assert "full" in body["store"]["reason"]
    assert not [h for code, h in out.notes["health"] if code != 200], "no 'no worker alive', no 503"
    assert out.notes["metrics_while_full"] == 200, "an operator can still graph it"


def test_an_expired_lease_is_taken_back_only_on_a_second_look(settings, redis_client):
    """The reaper's first pass only suspects an expired lease; one renewal in between clears it."""

    async def run() -> list:
        queue = Queue.connect(settings)
        await _enqueue(queue, 1)
        [claim] = (await queue.claim("worker-a", 1)).claims
        seen = []
        await wait_for(lambda: queue.redis.zscore(queue.keys.active, claim.job_id), lambda deadline: deadline
                       < queue_now(redis_client))
        seen.append(await queue.reap())  # expired, first look: suspected only
        assert await queue.heartbeat("worker-a", {}, [claim]) == []  # its worker is alive after all
        await wait_for(lambda: queue.redis.zscore(queue.keys.active, claim.job_id), lambda deadline: deadline
                       < queue_now(redis_client))
        seen.append(await queue.reap())  # expired again: a fresh suspicion, not the old one
        started = time.monotonic()
        while not (taken := await queue.reap()):
            await asyncio.sleep(0.05)
        seen.append((taken, time.monotonic() - started >= queue.reap_confirm_ms() / 1000 * 0.9))
        await queue.close()
        return seen

    assert asyncio.run(asyncio.wait_for(run(), 30)) == [0, 0, (1, True)]


# ---- bounded waits ------------------------------------------------------------------------------
def test_a_black_holed_redis_gets_answers_within_bounds(tmp_path):
    """Frozen Redis, connections open: a submit's 503 within 3 s, health's within 1 s, /ws 'unavailable'
    within 3 s. Each bound is the client's own patience: it gives up (and the test fails) past it."""
    with Rig(tmp_path) as rig:
        url = rig.api()
        job_id = drills.accepted_ids(rig.submit(url, 1))[0]

        async def subscribe() -> dict:
            client = await Client.connect(url, origin=ORIGIN)
            rig.freeze_redis()
            try:
                await client.send(type="subscribe_to_job", jobId=job_id)
                return await client.recv(timeout=3.0)
            finally:
                client.ws.close()

        frame = asyncio.run(subscribe())
        assert (frame["type"], frame["code"]) == ("error", "unavailable"), frame
        code, _, raw = http_json("GET", url + "/api/jobs/health", timeout=1.0)
        assert (code, json.loads(raw)["status"]) == (503, "unhealthy")
        for _ in range(2):  # a fresh connection and a pooled one
            code, body = rig.submit(url, 1, timeout=3.0)[0]
            assert (code, body["code"]) == (503, "redis_unavailable"), body
        rig.thaw_redis()
        assert rig.submit(url, 1)[0][0] == 202, "and all is well once it answers again"


def test_a_worker_lane_on_a_frozen_redis_times_out_and_a_late_answer_is_never_taken_for_the_next(tmp_path):
    """Frozen Redis, connections open: a worker's pipelined call fails with Redis's timeout (the worker tries
    a job's write again, s2s.worker_chores.settle) within the caller's own patience; once Redis thaws, the
    frozen call's late answer is not read as the next call's: the lane goes on on a fresh connection."""
    with Rig(tmp_path) as rig:
        async def run() -> list:
            queue = Queue.connect(attrs.evolve(rig.settings, redis_timeout_ms=300))
            lane = queue.lanes.of("job-1")
            try:
                answers = [await lane.command("INCR", "n")]
                rig.freeze_redis()
                try:
                    with pytest.raises(redis.exceptions.TimeoutError):
                        await asyncio.wait_for(lane.command("INCR", "n"), 3.0)  # past 3 s: asyncio's, and a failure
                finally:
                    rig.thaw_redis()
                answers.append(await lane.command("INCR", "n"))
                return answers
            finally:
                await queue.close()

        assert asyncio.run(run()) == [1, 3], "the frozen INCR ran once Redis thawed; its answer went nowhere"


# ---- review findings ----------------------------------------------------------------------------
def test_a_submit_whose_enqueue_fails_keeps_no_rate_limit_token(tmp_path):
    """Redis refuses the job (full) after the limit took the client's token: the token goes back."""
    with Rig(tmp_path) as rig:
        url = rig.api(S2S_SUBMIT_PER_MINUTE=1, S2S_STORE_HIGH_WATER_PERCENT=0)  # only Redis's own refusal
        rig.fill_redis()  # the rate limit's script begins with a write that cannot grow memory: it takes its token
        code, body = rig.submit(url, 1)[0]
        assert (code, body.get("code")) == (503, "storage_full"), (code, body)
        rig.redis.config_set("maxmemory", 0)
        assert rig.submit(url, 1)[0][0] == 202, "the refused submit did not use up the client's minute"


class _Provider:
    """An in-process provider: ``behaviour`` is awaited for each job."""

    name = "noop"

    def __init__(self, behaviour):
        self.behaviour = behaviour

    async def generate(self, request, report) -> GeneratedImage:
        return await self.behaviour(request)

    async def close(self) -> None:
        pass


def queue_now(r) -> int:
    seconds, micros = r.time()
    return seconds * 1000 + micros // 1000


async def wait_for(read, done, timeout: float = 10.0) -> None:
    """Poll ``await read()`` until ``done(value)``, within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not done(await read()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _enqueue(queue: Queue, n: int) -> list[str]:
    photo = photo_bytes()
    return [(await queue.enqueue(NewJob("Mia", "space", "cartoon", "cover", photo, "image/jpeg")))[0]
            for _ in range(n)]


def test_a_keyerror_bug_in_the_provider_is_not_called_an_unknown_theme(settings, redis_client):
    async def buggy(request):
        return {}["missing"]  # a bug, not a bad choice of theme

    async def run() -> dict:
        queue = Queue.connect(settings)
        worker = Worker(settings=settings, queue=queue, provider=_Provider(buggy), catalog=Catalog.load(None))
        [job_id] = await _enqueue(queue, 1)
        task = asyncio.ensure_future(worker.run_async())
        while not (await queue.redis.hget(queue.keys.job(job_id), "errorCode")):
            await asyncio.sleep(0.02)
        worker.drain()
        await task
        job = await queue.get(job_id)
        await queue.close()
        return job.to_json()

    job = asyncio.run(asyncio.wait_for(run(), 30))
    assert job["lastError"] == UNEXPECTED_ERROR and job["status"] == "queued", job  # retried, not failed for good


def test_a_job_claimed_while_the_drain_begins_is_finished_not_cut_at_teardown(settings, redis_client):
    """SIGTERM lands while a complete-and-claim is on its way: the job it brings is run to its end."""

    class SigtermDuringRoundTrip(Queue):
        worker: Worker | None = None

        async def complete_and_claim(self, *args, **kwargs):
            if self.worker is not None and not self.worker._draining:
                self.worker.drain()  # SIGTERM just as the round trip leaves, asking for the next job
                await asyncio.sleep(0.3)  # a slow answer: the drain is under way when it comes
            return await super().complete_and_claim(*args, **kwargs)

    async def draw(request):
        await asyncio.sleep(0.5)
        return GeneratedImage(photo_bytes("PNG"), "image/png")

    async def run() -> list[dict]:
        queue = SigtermDuringRoundTrip.connect(settings)
        worker = Worker(settings=settings, queue=queue, provider=_Provider(draw), catalog=Catalog.load(None),
                        concurrency=1)
        queue.worker = worker
        ids = await _enqueue(queue, 2)
        await worker.run_async()  # returns once drained
        jobs = [(await queue.get(i)).to_json() for i in ids]
        await queue.close()
        return jobs

    first, second = asyncio.run(asyncio.wait_for(run(), 30))
    assert (first["status"], first["upstreamCalls"]) == ("completed", 1), first
    # the job that came with the answer either ran to its end or went back unstarted: never left running
    assert (second["status"], second["upstreamCalls"]) in (("completed", 1), ("queued", 0)), second
    if second["status"] == "queued":
        assert second["attempts"] == 0


def test_a_lease_report_beside_a_completion_does_not_drop_the_job_it_claimed(settings, redis_client):
    """A heartbeat in the pipeline after a completion says the job is no longer held (it ended): the
    worker must not cancel the task then, or the job complete-and-claim took over waits for the reaper."""

    class LostReportWithTheAnswer(Queue):
        worker: Worker | None = None
        reported = False

        async def complete_and_claim(self, claim, *args, **kwargs):
            answer = await super().complete_and_claim(claim, *args, **kwargs)
            if not self.reported:
                self.reported = True
                self.worker._stop(claim.job_id, "lost")  # the heartbeat's answer, read before ours resumes
                await asyncio.sleep(0)
            return answer

    async def draw(request):
        return GeneratedImage(photo_bytes("PNG"), "image/png")

    async def run() -> list[dict]:
        queue = LostReportWithTheAnswer.connect(settings)
        worker = Worker(settings=settings, queue=queue, provider=_Provider(draw), catalog=Catalog.load(None),
                        concurrency=1)
        queue.worker = worker
        ids = await _enqueue(queue, 2)
        task = asyncio.ensure_future(worker.run_async())
        jobs = []
        for _ in range(300):  # until both ended (a reaped job would end too, on its second attempt)
            jobs = [(await queue.get(i)).to_json() for i in ids]
            if all(job["status"] == "completed" for job in jobs):
                break
            await asyncio.sleep(0.1)
        worker.drain()
        await task
        await queue.close()
        return jobs

    first, second = asyncio.run(asyncio.wait_for(run(), 60))
    assert (first["status"], first["attempts"]) == ("completed", 1), first
    assert (second["status"], second["attempts"], second["upstreamCalls"]) == ("completed", 1, 1), second


def test_the_pipeliner_runs_again_only_what_redis_refused_for_an_unknown_script(redis_client, redis_url, settings):
    k = Keys("pipeliner-test")

    async def run() -> tuple:
        queue = Queue.connect(settings)
        await queue.redis.script_flush()  # as after a Redis restart
        pipeliner = scripts.Pipeliner(queue.redis)
        counted = pipeliner.command("INCR", k.totals + ":n")
        stats = pipeliner.call("stats", [k.waiting, k.active, k.delayed, k.completed, k.failed, k.cancelled,
                                         k.paused, k.totals], [1000])
        answers = await counted, await stats
        await queue.close()
        return answers

    counted, stats = asyncio.run(run())
    assert counted == 1 and int(redis_client.get(k.totals + ":n")) == 1, "the INCR ran once"
    assert stats[0] == 0
