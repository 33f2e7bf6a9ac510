"""The queue's guarantees, exercised through its own API against a real Redis."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import attrs
import pytest
import redis.exceptions

from s2s import line
from s2s import queue as queue_module
from s2s.job_requests import IdempotencyConflict, IdempotencyKey, NewJob
from s2s.models import JobStatus
from s2s.queue import MAX_REFUNDS, Queue
from s2s.replies import now_ms
from s2s.storage import job_blob
from tests.helpers import photo_bytes, redis_clock_past, wait_until_async

PHOTO = photo_bytes("PNG", (64, 64))


def job(hero: str = "Mia") -> NewJob:
    return NewJob(hero_name=hero, theme_id="adventure", style_key="watercolor", kind="cover", photo=PHOTO,
                  photo_type="image/png")


def run(settings, body, **changes):
    """Run ``body(queue)`` on a fresh event loop with a queue built from (evolved) settings."""

    async def main():
        queue = Queue.connect(attrs.evolve(settings, **changes))
        try:
            return await body(queue)
        finally:
            await queue.close()

    return asyncio.run(main())


def test_claim_moves_a_job_from_waiting_to_processing(settings):
    async def body(q: Queue):
        job_id, created = await q.enqueue(job())
        assert created and (await q.stats()).waiting == 1
        batch = await q.claim("w1", 10)
        assert [c.job_id for c in batch.claims] == [job_id]
        assert batch.claims[0].attempt == 1 and batch.claims[0].hero_name == "Mia"
        stats = await q.stats()
        assert (stats.waiting, stats.active) == (0, 1)
        state = await q.get(job_id)
        assert state.status is JobStatus.PROCESSING and state.started_at is not None
        assert (await q.claim("w2", 10)).claims == []

    run(settings, body)


def test_jobs_are_claimed_oldest_first_in_batches(settings):
    async def body(q: Queue):
        ids = [(await q.enqueue(job(f"h{i}")))[0] for i in range(5)]
        first = await q.claim("w1", 3)
        second = await q.claim("w1", 3)
        assert [c.job_id for c in first.claims] == ids[:3]
        assert [c.job_id for c in second.claims] == ids[3:]

    run(settings, body)


def test_claimed_jobs_bring_their_photos_while_they_fit_the_budget_and_the_rest_are_read(settings, monkeypatch):
    """With the photos in Redis a claim (and complete-and-claim) hands each job its photo, so it starts at once."""
    monkeypatch.setattr(queue_module, "CLAIM_PHOTO_BUDGET", len(PHOTO) * 2)

    async def body(q: Queue):
        assert q.blobs_inline, "the test settings keep the photos in Redis"
        ids = [(await q.enqueue(job(f"h{i}")))[0] for i in range(5)]
        await q.blobs.delete(job_blob(ids[0], "photo"))  # as its expiry would
        claims = (await q.claim("w1", 4)).claims
        assert [c.job_id for c in claims] == ids[:4]
        assert [c.photo for c in claims] == [None, PHOTO, PHOTO, None], "gone, two within the budget, past it"
        assert await q.load_photo(ids[0]) is None and await q.load_photo(ids[3]) == PHOTO
        assert PHOTO not in repr(claims[1]).encode(), "a photo is never in a claim's repr (logs)"
        ok, batch = await q.complete_and_claim(claims[1], b"picture", "image/png", "noop", worker_id="w1", count=1)
        assert ok and [(c.job_id, c.photo) for c in batch.claims] == [(ids[4], PHOTO)]

    run(settings, body)


def test_a_worker_whose_lease_was_taken_cannot_finish_the_job(settings):
    async def body(q: Queue):
        job_id, _ = await q.enqueue(job())
        (stale,) = (await q.claim("worker-a", 1)).claims
        # worker-a stops renewing its lease; the reaper takes the job back
        await wait_until_async(q.reap, what="lease expiry")
        (fresh,) = (await q.claim("worker-b", 1)).claims
        assert fresh.fence != stale.fence and fresh.attempt == 2
        assert not await q.progress(stale, 90, "still here")
        assert not await q.complete(stale, b"stale image", "image/png", "noop")
        assert await q.heartbeat("worker-a", {}, [stale]) == [job_id]
        assert await q.complete(fresh, b"fresh image", "image/png", "noop")
        assert not await q.complete(fresh, b"again", "image/png", "noop")
        assert await q.result(job_id) == (b"fresh image", "image/png")
        events = await q.events(job_id)
        assert [e["type"] for e in events].count("job_completed") == 1
        assert (await q.stats()).totals["completed"] == 1

    run(settings, body, lease_ms=500)


def test_heartbeat_keeps_a_lease_alive(settings):
    """Two jobs claimed together; only one is renewed. Judged on Redis's clock, the one the reaper uses."""

    async def body(q: Queue):
        await q.enqueue(job("kept"))
        await q.enqueue(job("dropped"))
        kept, dropped = (await q.claim("w1", 2)).claims
        claimed_at = await now_ms(q.redis)
        lease = q.settings.lease_ms
        reaped = 0

        async def renew_and_reap():
            nonlocal reaped
            beat = await now_ms(q.redis)
            assert await q.heartbeat("w1", {"pid": 1}, [kept]) == []
            assert await q.redis.zscore(q.keys.active, kept.job_id) >= beat + lease, "the lease moved on"
            await wait_until_async(lambda: redis_clock_past(q, beat + lease // 4), what="a quarter lease")
            reaped += await q.reap()  # the kept job was renewed a quarter lease ago: never taken
            now = await now_ms(q.redis)
            # both leases as first claimed are long over, and the reaper's second look (reap_confirm_ms
            # after its first) has come and gone
            return now > claimed_at + 2 * lease + q.reap_confirm_ms()

        await wait_until_async(renew_and_reap, timeout=30, interval=0, what="two lease times of heartbeats")
        assert reaped == 1, "the job without heartbeats was taken back, the renewed one was not"
        assert (await q.get(dropped.job_id)).status is JobStatus.QUEUED
        assert await q.complete(kept, b"img", "image/png", "noop")
        assert not await q.complete(dropped, b"img", "image/png", "noop")

    run(settings, body, lease_ms=1000)


def test_failures_retry_with_backoff_then_fail_with_the_error_kept(settings):
    async def body(q: Queue):
        job_id, _ = await q.enqueue(job())
        not_before, early = 0, []  # on Redis's clock: no claim of the next attempt before its delay is over
        for attempt in (1, 2, 3):
            (claim,) = early or (await wait_until_async(lambda: _claims(q), what=f"attempt {attempt}")).claims
            assert await now_ms(q.redis) >= not_before, f"attempt {attempt} was claimed before its delay was over"
            assert claim.attempt == attempt
            if attempt == 3:
                break
            not_before = await now_ms(q.redis) + 300
            assert await q.fail(claim, f"upstream broke {attempt}", "upstream", retryable=True, delay_ms=300) == 2
            state = await q.get(job_id)
            assert state.status is JobStatus.QUEUED and state.retry_at >= not_before
            assert state.to_json()["lastError"] == f"upstream broke {attempt}"
            assert (await q.stats()).delayed == 1
            early = (await q.claim("w", 1)).claims  # at once: nothing, unless this test stalled past the delay
        assert await q.fail(claim, "upstream broke 3", "upstream", retryable=True, delay_ms=300) == 3
        state = await q.get(job_id)
        assert state.status is JobStatus.FAILED and state.attempts == 3
        assert state.to_json()["error"] == "upstream broke 3"
        stats = await q.stats()
        assert (stats.failed, stats.delayed, stats.waiting, stats.active) == (1, 0, 0, 0)
        assert [e["type"] for e in await q.events(job_id)][-1] == "job_failed"

    run(settings, body, max_attempts=3)


async def _claims(q: Queue):
    batch = await q.claim("w", 1)
    return batch if batch.claims else None


def test_a_non_retryable_error_fails_at_once(settings):
    async def body(q: Queue):
        job_id, _ = await q.enqueue(job())
        (claim,) = (await q.claim("w", 1)).claims
        assert await q.fail(claim, "The photo was refused.", "content_policy", retryable=False, delay_ms=0) == 3
        assert (await q.get(job_id)).status is JobStatus.FAILED

    run(settings, body, max_attempts=5)


def test_a_job_handed_back_at_shutdown_keeps_its_attempt_and_goes_first(settings):
    async def body(q: Queue):
        first, _ = await q.enqueue(job("first"))
        second, _ = await q.enqueue(job("second"))
        (claim,) = (await q.claim("w", 1)).claims
        assert claim.job_id == first
        assert await q.release(claim)
        state = await q.get(first)
        assert state.status is JobStatus.QUEUED and state.attempts == 0
        again = (await q.claim("w", 1)).claims[0]
        assert again.job_id == first and again.attempt == 1
        assert not await q.complete(claim, b"x", "image/png", "noop")  # the released claim is fenced out
        assert (await q.stats()).waiting == 1 and second

    run(settings, body)


def test_a_rate_limited_attempt_is_refunded(settings):
    async def body(q: Queue):
        job_id, _ = await q.enqueue(job())
        (claim,) = (await q.claim("w", 1)).claims
        assert await q.fail(claim, "Busy upstream", "rate_limited", retryable=True, delay_ms=10, refund=True) == 2
        assert (await q.get(job_id)).attempts == 0

    run(settings, body, max_attempts=1)


def test_refunds_stop_after_a_limit_so_an_endless_429_still_ends(settings):
    async def body(q: Queue):
        job_id, _ = await q.enqueue(job())
        outcomes = []
        for _ in range(MAX_REFUNDS + 2):
            (claim,) = (await wait_until_async(lambda: _claims(q), what="the retry")).claims
            outcomes.append(await q.fail(claim, "Busy upstream", "rate_limited", retryable=True, delay_ms=0,
                                         refund=True))
            if outcomes[-1] == 3:
                break
        assert outcomes == [2] * MAX_REFUNDS + [2, 3]  # then attempts count: 2 of them at max_attempts 2
        assert (await q.get(job_id)).status is JobStatus.FAILED

    run(settings, body, max_attempts=2)


def test_progress_never_goes_down(settings):
    async def body(q: Queue):
        job_id, _ = await q.enqueue(job())
        (claim,) = (await q.claim("w", 1)).claims
        for percent in (10, 40, 30, 80):
            assert await q.progress(claim, percent, f"at {percent}")
        state = await q.get(job_id)
        assert state.progress == 80
        seen = [e["progress"] for e in await q.events(job_id) if e["status"] == "processing"]
        assert seen == sorted(seen) and seen[-1] == 80
        assert [e["seq"] for e in await q.events(job_id)] == list(range(1, 7))

    run(settings, body)


def test_ended_jobs_and_their_images_expire_after_the_retention_time(settings, redis_client):
    async def body(q: Queue):
        job_id, _ = await q.enqueue(job())
        (claim,) = (await q.claim("w", 1)).claims
        await q.complete(claim, b"img", "image/png", "noop")
        ttl = redis_client.pttl(q.keys.job(job_id))
        assert 0 < ttl <= 1000
        picture = q.keys.blob(redis_client.hget(q.keys.job(job_id), "picture").decode())
        assert 0 < redis_client.pttl(picture) <= 1000  # Redis storage: the picture is a key with a TTL
        assert not redis_client.exists(q.keys.blob(job_blob(job_id, "photo"))), "a completed job's photo is deleted"
        assert (await q.stats()).completed == 1

        async def gone():
            return await q.get(job_id) is None and await q.result(job_id) is None

        await wait_until_async(gone, timeout=5, what="expiry")
        assert (await q.stats()).completed == 0

    run(settings, body, retention_seconds=1)


def test_pause_stops_claims_and_resume_restarts_them(settings):
    async def body(q: Queue):
        await q.enqueue(job())
        await q.pause()
        batch = await q.claim("w", 5)
        assert batch.paused and batch.claims == []
        assert (await q.stats()).paused
        await q.resume()
        assert len((await q.claim("w", 5)).claims) == 1

    run(settings, body)


def test_a_cancelled_job_never_runs_and_a_running_one_is_fenced_out(settings):
    async def body(q: Queue):
        queued, _ = await q.enqueue(job("queued"))
        running, _ = await q.enqueue(job("running"))
        assert await q.cancel(queued) == "queued"
        (claim,) = (await q.claim("w", 5)).claims
        assert claim.job_id == running
        assert await q.cancel(running) == "processing"
        assert not await q.complete(claim, b"x", "image/png", "noop")
        assert await q.cancel(running) == "cancelled"  # already ended: nothing changes
        stats = await q.stats()
        assert (stats.waiting, stats.active, stats.cancelled) == (0, 0, 2)
        assert (await q.events(running))[-1]["type"] == "job_cancelled"
        assert await q.retry(queued) == "cancelled"
        assert (await q.claim("w", 5)).claims[0].job_id == queued

    run(settings, body)


def test_idempotency_key_returns_the_same_job_even_when_racing(settings):
    async def body(q: Queue):
        key = IdempotencyKey("203.0.113.1", "key-1")
        results = await asyncio.gather(*[q.enqueue(job(), key) for _ in range(20)])
        assert len({job_id for job_id, _ in results}) == 1
        assert sum(created for _, created in results) == 1
        assert (await q.stats()).waiting == 1
        with pytest.raises(IdempotencyConflict):
            await q.enqueue(job("someone else"), key)
        other, created = await q.enqueue(job(), IdempotencyKey("203.0.113.2", "key-1"))  # another client's key
        assert created and other != results[0][0]

    run(settings, body)


def test_stats_stay_exact_while_many_workers_race(settings):
    """Every snapshot accounts for every job exactly once while 8 workers claim, fail and finish."""
    total = 300

    async def body(q: Queue):
        await asyncio.gather(*[q.enqueue(job(f"h{i}")) for i in range(total)])
        rng = random.Random(7)
        done = asyncio.Event()

        async def worker(name: str):
            while not done.is_set():
                batch = await q.claim(name, rng.randint(1, 8))
                if not batch.claims:
                    await asyncio.sleep(0.005)
                    continue
                for claim in batch.claims:
                    if rng.random() < 0.2:
                        await q.fail(claim, "flaky", "x", retryable=True, delay_ms=rng.randint(0, 30))
                    else:
                        await q.complete(claim, b"img", "image/png", "noop")

        async def auditor():
            snapshots = 0
            while True:
                s = await q.stats()
                assert s.waiting + s.active + s.delayed + s.completed + s.failed == total, s
                snapshots += 1
                if s.completed + s.failed == total:
                    return snapshots
                await asyncio.sleep(0)

        workers = [asyncio.ensure_future(worker(f"w{i}")) for i in range(8)]
        snapshots = await asyncio.wait_for(auditor(), timeout=60)
        done.set()
        await asyncio.gather(*workers)
        stats = await q.stats()
        assert stats.completed + stats.failed == total and snapshots > 10
        assert stats.totals["completed"] == stats.completed

    run(settings, body, max_attempts=3)


def test_every_event_is_published_with_a_rising_seq(settings):
    async def body(q: Queue):
        pubsub = q.redis.pubsub()
        await pubsub.subscribe(q.keys.events_channel)
        confirmed = await wait_until_async(lambda: pubsub.get_message(timeout=0.5), what="the subscription")
        assert confirmed["type"] == "subscribe"  # from now on nothing published is missed
        job_id, _ = await q.enqueue(job())
        (claim,) = (await q.claim("w", 1)).claims
        await q.progress(claim, 50, "Halfway")
        await q.complete(claim, b"img", "image/png", "noop")
        frames = []
        while len(frames) < 4:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=10)
            assert message is not None, f"only {frames} arrived"
            frames.append(json.loads(message["data"]))
        await pubsub.aclose()
        assert [f["seq"] for f in frames] == [1, 2, 3, 4]
        assert [f["type"] for f in frames] == ["job_progress"] * 3 + ["job_completed"]
        assert frames[-1]["result"]["imageUrl"] == f"/api/jobs/{job_id}/image"
        assert frames == await q.events(job_id)

    run(settings, body)


def test_a_jobs_progress_and_completion_reach_redis_in_the_order_made_while_several_pipelines_are_out(settings):
    # forty jobs finish at once, each reporting progress (not waited for) just before its completion: the
    # worker's calls go out on several pipelines at a time, yet no job's completion overtakes its progress
    async def body(q: Queue):
        ids = [(await q.enqueue(job(f"h{i}")))[0] for i in range(40)]
        claims = (await q.claim("w", 40)).claims

        async def finish(claim):
            reported = q.progress(claim, 60, "nearly")
            ok, _ = await q.complete_and_claim(claim, b"picture", "image/png", "noop", worker_id="w", count=0)
            return ok, await reported

        assert await asyncio.gather(*[finish(c) for c in claims]) == [(True, 1)] * 40
        for job_id in ids:
            assert [(e["type"], e["progress"]) for e in await q.events(job_id)][-2:] == [
                ("job_progress", 60), ("job_completed", 100)], job_id

    run(settings, body)


def test_after_redis_forgets_its_scripts_each_pipeline_out_runs_again_only_what_was_refused(settings, redis_client):
    # two lanes' pipelines out at once when Redis has just been restarted (SCRIPT FLUSH): each runs again
    # only its refused script calls; the plain commands beside them ran once
    async def body(q: Queue):
        ids = [(await q.enqueue(job(f"h{i}")))[0] for i in range(12)]
        claims = (await q.claim("w", 12)).claims
        lanes = {id(q.lanes.of(c.job_id)) for c in claims}
        assert len(lanes) > 1, "the jobs spread over more than one lane"
        await q.redis.script_flush()
        counted = [q.lanes.of(c.job_id).command("INCR", q.keys.job(c.job_id) + ":n") for c in claims]
        reported = [q.progress(c, 30, "drawing") for c in claims]
        assert await asyncio.gather(*counted) == [1] * 12
        assert await asyncio.gather(*reported) == [1] * 12
        for job_id in ids:
            assert int(redis_client.get(q.keys.job(job_id) + ":n")) == 1
            assert [e["progress"] for e in await q.events(job_id) if e["type"] == "job_progress"][-1] == 30

    run(settings, body)


def test_jobs_that_finish_together_are_settled_by_one_script_call_each_on_its_own(settings, redis_client):
    # twenty jobs finish at once, one of them cancelled meanwhile: each lane's completions ride as one
    # complete.lua call, yet every job is settled (or refused) on its own, with its own events and stats
    async def body(q: Queue):
        ids = [(await q.enqueue(job(f"h{i}")))[0] for i in range(20)]
        claims = (await q.claim("w", 20)).claims
        assert await q.cancel(ids[7]) == "processing"
        await queue_module.scripts.load_all(q.redis)  # as a worker does at start: no call is refused and sent again
        redis_client.config_resetstat()
        answers = await asyncio.gather(*[
            q.complete_and_claim(c, f"picture {c.job_id}".encode(), "image/png", "noop", worker_id="w", count=0)
            for c in claims])
        calls = redis_client.info("commandstats")["cmdstat_evalsha"]["calls"]
        assert calls <= queue_module.scripts.LANES, f"{calls} script calls settled 20 jobs"
        assert [ok for ok, _ in answers] == [job_id != ids[7] for job_id in ids]
        for job_id in ids:
            events = [e["type"] for e in await q.events(job_id)]
            if job_id == ids[7]:
                assert events[-1] == "job_cancelled" and "job_completed" not in events
                assert await q.result(job_id) is None
            else:
                assert events[-1] == "job_completed" and events.count("job_completed") == 1
                assert await q.result(job_id) == (f"picture {job_id}".encode(), "image/png")
        stats = await q.stats()
        assert (stats.active, stats.totals["completed"], stats.cancelled) == (0, 19, 1)

    run(settings, body)


def test_completions_in_one_call_share_the_jobs_they_claim_in_the_order_they_asked(settings):
    # three completions on one lane ask for 2, 0 and 1 next jobs: with three waiting each gets what it
    # asked for; with two waiting the first asker gets both
    async def body(q: Queue):
        for waiting in (3, 2):
            first = [(await q.enqueue(job(f"a{i}")))[0] for i in range(40)]
            claims = (await q.claim("w", 40)).claims
            lane = q.lanes.of(claims[0].job_id)
            same = [c for c in claims if q.lanes.of(c.job_id) is lane][:3]
            assert len(same) == 3, "forty jobs put three on one lane"
            nxt = [(await q.enqueue(job(f"b{i}")))[0] for i in range(waiting)]
            answers = await asyncio.gather(*[
                q.complete_and_claim(c, b"p", "image/png", "noop", worker_id="w", count=n)
                for c, n in zip(same, (2, 0, 1), strict=True)])
            shares = [[c.job_id for c in batch.claims] for _, batch in answers]
            assert all(ok for ok, _ in answers)
            assert shares == ([nxt[:2], [], nxt[2:]] if waiting == 3 else [nxt, [], []])
            for share in answers:
                for claim in share[1].claims:
                    assert (await q.get(claim.job_id)).status is JobStatus.PROCESSING
                    assert await q.complete(claim, b"p", "image/png", "noop")
            others = [c for c in claims if c not in same]
            await asyncio.gather(*[q.complete(c, b"p", "image/png", "noop") for c in others])
            assert (await q.stats()).active == 0 and len(first) == 40

    run(settings, body)


def test_run_times_keep_the_latest_sample_trimmed_now_and_then(settings, redis_client):
    # the queue's ETA reads the latest RUN_TIME_SAMPLE run times; the list is trimmed back to that many
    # once it holds twice as many, and always expires with the retention time
    lua = (Path(queue_module.__file__).parent / "lua" / "_run_times.lua").read_text()
    assert f"local RUN_TIME_SAMPLE = {line.RUN_TIME_SAMPLE}\n" in lua, "one sample size, in Lua and in s2s.line"

    async def body(q: Queue):
        key = q.keys.run_times("noop")
        lengths = []
        for i in range(3 * line.RUN_TIME_SAMPLE):
            await q.enqueue(job(f"h{i}"))
            (claim,) = (await q.claim("w", 1)).claims
            assert await q.complete(claim, b"p", "image/png", "noop")
            lengths.append(redis_client.llen(key))
        n = line.RUN_TIME_SAMPLE
        assert lengths[:2 * n] == list(range(1, 2 * n + 1))
        assert max(lengths) == 2 * n and min(lengths[2 * n:]) == n
        assert 0 < redis_client.pttl(key) <= settings.retention_seconds * 1000

    run(settings, body)


def test_a_lane_whose_connection_was_dropped_sends_its_next_calls_once_on_a_fresh_one(settings, redis_client):
    # each lane keeps one connection; Redis dropping them all between round trips (a failover, a restart,
    # an idle timeout) costs no call: the next pipeline of each lane goes out once more on a new connection
    async def body(q: Queue):
        ids = [(await q.enqueue(job(f"h{i}")))[0] for i in range(12)]
        claims = (await q.claim("w", 12)).claims
        assert await asyncio.gather(*[q.progress(c, 10, "sketching") for c in claims]) == [1] * 12
        mine = [c for c in redis_client.client_list() if c["name"] == "" and c["cmd"] in ("evalsha", "eval")]
        assert mine, "the lanes' connections are open"
        for client in mine:
            redis_client.client_kill_filter(_id=client["id"])
        counted = [q.lanes.of(c.job_id).command("INCR", q.keys.job(c.job_id) + ":n") for c in claims]
        assert await asyncio.gather(*[q.progress(c, 40, "drawing") for c in claims]) == [1] * 12
        assert await asyncio.gather(*counted) == [1] * 12
        for job_id in ids:
            assert int(redis_client.get(q.keys.job(job_id) + ":n")) == 1
            progress = [e["progress"] for e in await q.events(job_id) if e["type"] == "job_progress"]
            assert progress[-2:] == [10, 40] and progress.count(40) == 1

    run(settings, body)


def test_upstream_calls_that_begin_together_are_counted_by_one_script_call_each_on_its_own(settings, redis_client):
    # twelve jobs' paid calls begin at once, one of those jobs deleted meanwhile: each lane counts its
    # calls in one upstream.lua call, each job's count its own, the metrics counter by the jobs still there
    field = 's2s_upstream_calls_started_total{provider="noop"}'

    async def body(q: Queue):
        ids = [(await q.enqueue(job(f"h{i}")))[0] for i in range(12)]
        claims = (await q.claim("w", 12)).claims
        redis_client.delete(q.keys.job(ids[5]))
        await queue_module.scripts.load_all(q.redis)
        redis_client.config_resetstat()
        counts = await asyncio.gather(*[q.upstream_call(c, field) for c in claims])
        calls = redis_client.info("commandstats")["cmdstat_evalsha"]["calls"]
        assert calls <= queue_module.scripts.LANES, f"{calls} script calls counted 12 upstream calls"
        assert counts == [0 if job_id == ids[5] else 1 for job_id in ids]
        assert await asyncio.gather(*[q.upstream_call(c, field) for c in claims[:3]]) == [2, 2, 2]
        assert int(redis_client.hget(q.keys.metrics_counters, field)) == 11 + 3
        assert [(await q.get(job_id)).upstream_calls for job_id in ids[:3]] == [2, 2, 2]

    run(settings, body)


def test_upstream_calls_that_begin_while_redis_is_full_are_still_counted(settings, redis_client):
    # Redis at maxmemory (noeviction) refuses a script's first write that may grow memory: the counts
    # begin with writes that cannot, so a full store still counts every paid call (none looks unpaid)
    field = 's2s_upstream_calls_started_total{provider="noop"}'

    async def body(q: Queue):
        ids = [(await q.enqueue(job(f"h{i}")))[0] for i in range(8)]
        claims = (await q.claim("w", 8)).claims
        await queue_module.scripts.load_all(q.redis)
        redis_client.config_set("maxmemory", int(redis_client.info("memory")["used_memory"]) - 64 * 1024)
        try:
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                redis_client.set("something-new", "x")  # the store is full indeed
            assert await asyncio.gather(*[q.upstream_call(c, field) for c in claims]) == [1] * 8
        finally:
            redis_client.config_set("maxmemory", 0)
        assert [(await q.get(job_id)).upstream_calls for job_id in ids] == [1] * 8
        assert int(redis_client.hget(q.keys.metrics_counters, field)) == 8

    run(settings, body)


def test_a_pipeline_puts_each_merged_kind_where_its_first_or_its_last_call_was():
    # a completion (last) comes after every call its job made; an upstream count (first) before them
    class Kind:
        def __init__(self, name, first):
            self.name, self.first = name, first

        def command(self, items):
            return (self.name, *items)

        def split(self, reply, items):
            return reply

    counts, ends = Kind("COUNT", True), Kind("END", False)
    batch = [(None, ("GET", "a"), None), (counts, "j1", None), (ends, "j1", None), (None, ("GET", "b"), None),
             (counts, "j2", None), (ends, "j2", None), (None, ("GET", "c"), None)]
    commands, owners = queue_module.scripts._assemble(batch)
    assert commands == [("GET", "a"), ("COUNT", "j1", "j2"), ("GET", "b"), ("END", "j1", "j2"), ("GET", "c")]
    assert [(kind, items) for kind, items, _ in owners] == [
        (None, None), (counts, ["j1", "j2"]), (None, None), (ends, ["j1", "j2"]), (None, None)]
