"""Worker processes for real: end to end, SIGKILL, SIGSTOP, retries, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import io
import json
import signal

import psutil
import pytest
from PIL import Image

from s2s import scripts
from s2s.job_requests import NewJob
from s2s.queue import Queue
from tests.api_client import job as status
from tests.api_client import submit
from tests.helpers import http_json, photo_bytes, wait_until

NEW_JOB = NewJob(hero_name="Mia", theme_id="adventure", style_key="watercolor", kind="cover",
                 photo=photo_bytes("PNG", (64, 64)), photo_type="image/png")


def wait_status(url: str, job_id: str, wanted: str, timeout: float = 30.0) -> dict:
    def check():
        job = status(url, job_id)
        assert job["status"] in (wanted, "queued", "processing"), job
        return job if job["status"] == wanted else None

    return wait_until(check, timeout=timeout, what=f"job {job_id} to be {wanted}")


def test_a_photo_becomes_a_storybook_cover_end_to_end(stack):
    url = stack.api()
    stack.worker(S2S_PROVIDER="local")
    job_id = submit(url, heroName="Ada", styleKey="cartoon", themeId="space", kind="cover")
    seen = []

    def finished():
        job = status(url, job_id)
        seen.append(job["progress"])
        return job if job["status"] == "completed" else None

    job = wait_until(finished, timeout=60, interval=0.05, what="the cover")
    assert seen == sorted(seen), "progress went down"
    assert job["provider"] == "local" and job["attempts"] == 1 and job["completedAt"].endswith("Z")
    assert job["result"]["imageUrl"] == f"{url}/api/jobs/{job_id}/image"
    code, headers, image = http_json("GET", job["result"]["imageUrl"])
    assert code == 200 and headers["Content-Type"] == "image/png"
    picture = Image.open(io.BytesIO(image))
    assert picture.format == "PNG" and picture.height > picture.width  # a portrait cover
    progress = [e for e in stack.events(job_id) if e["type"] == "job_progress" and e["status"] == "processing"]
    assert len(progress) >= 4, "the renderer reports its real steps"
    assert all(e["message"] for e in progress)
    assert [e["progress"] for e in progress] == sorted(e["progress"] for e in progress)
    assert [e["seq"] for e in stack.events(job_id)] == list(range(1, len(stack.events(job_id)) + 1))


def test_a_job_for_an_idle_worker_starts_though_redis_forgot_the_claim_script_while_it_waited(stack, redis_client):
    """An idle worker's wait (BLMOVE) and claim go out as one pipeline, the claim held in Redis behind the
    wait. A Redis that forgot its scripts meanwhile (a restart; here SCRIPT FLUSH) refuses that claim with
    NOSCRIPT when the job comes; the worker claims again, and the job runs once."""
    url = stack.api()
    worker = stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=0)
    wait_until(lambda: any(client.get("cmd") == "blmove" for client in redis_client.client_list()),
               timeout=30, what="the worker to wait for work")
    redis_client.script_flush()
    job = wait_status(url, submit(url, heroName="Ada"), "completed")
    assert (job["attempts"], job["provider"]) == (1, "noop"), job
    assert "cannot claim jobs" not in worker.log_path.read_text(), "the refused claim was taken for a failure"


@pytest.mark.drill  # a process killed, frozen or drained: tox's drills env
def test_a_job_whose_worker_is_killed_completes_once_on_another(stack):
    url = stack.api()
    doomed = stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=20000)
    job_id = submit(url)
    wait_status(url, job_id, "processing")
    assert stack.job(job_id)["worker"] == stack.worker_id(doomed)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(5)
    rescuer = stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=100)
    job = wait_status(url, job_id, "completed", timeout=30)  # lease 1.5 s in tests; 15 s by default
    assert job["attempts"] == 2
    assert stack.job(job_id)["worker"] == stack.worker_id(rescuer)
    assert [e["type"] for e in stack.events(job_id)].count("job_completed") == 1
    stats = json.loads(http_json("GET", url + "/api/jobs/stats")[2])
    assert (stats["completed"], stats["active"], stats["waiting"]) == (1, 0, 0)


@pytest.mark.drill  # a process killed, frozen or drained: tox's drills env
def test_a_frozen_worker_cannot_complete_a_job_taken_over_by_another(stack):
    url = stack.api()
    frozen = stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=3000)
    job_id = submit(url)
    wait_status(url, job_id, "processing")
    frozen.send_signal(signal.SIGSTOP)  # alive but silent: its lease runs out
    try:
        stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=100)
        wait_status(url, job_id, "completed", timeout=30)
    finally:
        frozen.send_signal(signal.SIGCONT)
    # the frozen worker wakes up, finds its lease gone and gives the job up
    gave_up = ("reason=lost", "no longer held", "lease was lost")
    wait_until(lambda: any(s in frozen.log_path.read_text() for s in gave_up), timeout=15,
               what="the stale worker to notice")
    assert [e["type"] for e in stack.events(job_id)].count("job_completed") == 1
    assert status(url, job_id)["attempts"] == 2


def test_failures_are_retried_then_the_job_fails_with_its_error(stack):
    url = stack.api()
    stack.worker(S2S_PROVIDER="noop", S2S_NOOP_FAIL_ATTEMPTS=10)  # S2S_MAX_ATTEMPTS=3 by default
    job_id = submit(url)
    job = wait_status(url, job_id, "failed")
    assert job["attempts"] == 3
    assert job["error"] == "Simulated upstream failure on attempt 3."
    assert job["failedAt"].endswith("Z")
    retries = [e for e in stack.events(job_id) if e["type"] == "job_progress" and e["status"] == "queued"]
    assert len(retries) == 3  # queued once at submit, then after attempts 1 and 2
    assert stack.events(job_id)[-1]["type"] == "job_failed"


def test_a_job_that_fails_once_completes_on_its_second_attempt(stack):
    url = stack.api()
    stack.worker(S2S_PROVIDER="noop", S2S_NOOP_FAIL_ATTEMPTS=1)
    job = wait_status(url, submit(url), "completed")
    assert job["attempts"] == 2


@pytest.mark.drill  # a process killed, frozen or drained: tox's drills env
def test_sigterm_lets_a_running_job_finish_then_exits(stack):
    url = stack.api()
    worker = stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=1500, S2S_SHUTDOWN_GRACE_MS=10000)
    job_id = submit(url)
    # its provider call has begun (a job claimed but not yet calling is handed back at once instead)
    wait_until(lambda: status(url, job_id).get("upstreamCalls", 0) >= 1, what="the provider call to begin")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert status(url, job_id)["status"] == "completed"
    assert not stack.redis.zrange(stack.keys.workers, 0, -1), "a drained worker leaves the registry"


@pytest.mark.drill  # a process killed, frozen or drained: tox's drills env
def test_sigterm_past_the_upstream_timeout_and_grace_hands_the_job_back_without_using_an_attempt(stack):
    url = stack.api()
    worker = stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=30000, S2S_UPSTREAM_TIMEOUT_MS=1000,
                          S2S_SHUTDOWN_GRACE_MS=300)
    job_id = submit(url)
    wait_status(url, job_id, "processing")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    job = status(url, job_id)
    assert (job["status"], job["attempts"]) == ("queued", 0)
    stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=50)
    assert wait_status(url, job_id, "completed")["attempts"] == 1


def test_a_worker_runs_worker_concurrency_jobs_at_once(stack):
    url = stack.api()
    stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=2000, WORKER_CONCURRENCY=3)
    ids = [submit(url, heroName=f"Kid {i}") for i in range(5)]

    def three_active():
        stats = json.loads(http_json("GET", url + "/api/jobs/stats")[2])
        assert stats["active"] <= 3, stats
        return stats if stats["active"] == 3 else None

    stats = wait_until(three_active, timeout=15, what="three jobs running")
    assert stats["waiting"] == 2
    for job_id in ids:
        wait_status(url, job_id, "completed")


def test_fifty_jobs_ending_together_keep_a_workers_redis_connections_to_a_few(stack):
    # a worker at concurrency 50 whose fifty jobs start and end together: its calls share a few pipelines,
    # not a pooled connection each (Redis counts a worker's clients; before, 50 ending jobs opened 50)
    async def queue_jobs() -> None:
        queue = Queue.connect(stack.settings)
        await asyncio.gather(*[queue.enqueue(NEW_JOB) for _ in range(100)])
        await queue.close()

    asyncio.run(queue_jobs())
    worker = psutil.Process(stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=50, WORKER_CONCURRENCY=50).pid)
    redis_port = stack.redis.connection_pool.connection_kwargs["port"]
    most = []

    def all_done():
        # the worker's own sockets to Redis, not Redis' client count, which other clients' closing skews
        most.append(sum(1 for c in worker.net_connections("tcp") if c.raddr and c.raddr.port == redis_port))
        return int(stack.redis.hget(stack.keys.totals, "completed") or 0) == 100

    wait_until(all_done, timeout=30, interval=0.01, what="the hundred jobs to complete")
    # a pipeline per lane and the shared one; the fetch loop's claims and blocking peek, the control
    # channel's subscription, the heartbeat loop's reads and reaps, the webhook loop's claims
    assert max(most) <= scripts.LANES + 1 + 5, most
