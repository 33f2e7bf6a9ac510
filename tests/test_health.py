"""GET /api/jobs/health and the worker fleet: 503 once no worker has been alive for S2S_WORKER_ABSENT_MS.

Real API and worker processes on the test Redis. The absence is counted from the
latest of the API's start, the newest heartbeat in the workers registry and the last
time the API saw a worker alive, so a fresh API is never 503 just for starting first.
"""

from __future__ import annotations

import os
import signal
import time

from tests.api_client import health
from tests.helpers import wait_until


def health_becomes(url: str, code: int, what: str) -> dict:
    """Poll health until it answers ``code``; return that body."""
    return wait_until(lambda: (got := health(url))[0] == code and got[1], timeout=15, what=what)


def test_no_worker_for_the_threshold_is_503_naming_the_workers_and_a_worker_makes_it_200(stack):
    started = time.monotonic()
    url = stack.api(S2S_WORKER_ABSENT_MS=1500)  # answered 200 already: a fresh API is given the full threshold

    def unhealthy():
        code, body = health(url)
        assert code == 503 or body["workers"]["absentMs"] <= 1500, body
        return body if code == 503 else None

    body = wait_until(unhealthy, timeout=15, what="health to turn 503 without a worker")
    assert time.monotonic() - started >= 1.5
    assert body["status"] == "unhealthy"
    assert "No worker has been alive" in body["reason"] and "S2S_WORKER_ABSENT_MS=1500" in body["reason"]
    assert body["redis"]["ok"] is True  # Redis is fine: the reason is the workers
    assert body["workers"]["alive"] == 0 and body["workers"]["absentMs"] > 1500

    worker = stack.worker(S2S_PROVIDER="noop")
    body = health_becomes(url, 200, "health back to 200 with a worker")
    assert body["status"] == "ok"
    assert body["workers"] == {"alive": 1, "absentMs": 0}

    # a crash (no goodbye): the worker stays listed until its lease runs out, then its last heartbeat dates it
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)
    killed = time.monotonic()
    body = health_becomes(url, 503, "health to turn 503 after the worker died")
    assert time.monotonic() - killed >= 1.5
    assert "No worker has been alive" in body["reason"]


def test_a_drained_worker_is_absent_from_when_the_api_last_saw_it_not_from_the_api_start(stack):
    url = stack.api(S2S_WORKER_ABSENT_MS=3000)
    api_started = time.monotonic()
    worker = stack.worker(S2S_PROVIDER="noop")
    # the API has been up longer than the threshold: its own start no longer shields it
    wait_until(lambda: time.monotonic() - api_started > 3.5, timeout=10, what="the API to be older than 3 s")
    seen_alive = time.monotonic()  # the API's clock and ours are the machine's one monotonic clock
    code, body = health(url)
    assert code == 200 and body["workers"]["alive"] == 1, body  # the API sees the worker alive
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert not stack.redis.zrange(stack.keys.workers, 0, -1), "a drained worker leaves the registry"

    code, body = health(url)  # a rolling restart's gap
    since_seen_ms = (time.monotonic() - seen_alive) * 1000
    absent = body["workers"]["absentMs"]
    assert body["workers"]["alive"] == 0, body
    # counted from when the API last saw the worker, not from its start (over 3.5 s before seen_alive)
    assert absent <= since_seen_ms, (absent, since_seen_ms)
    assert code == (200 if absent <= 3000 else 503), body  # so not 503 at once: only once the gap is 3 s long
    body = health_becomes(url, 503, "health to turn 503 without a worker")
    assert "No worker has been alive" in body["reason"]


def test_a_threshold_of_0_never_turns_health_503_for_want_of_workers(stack):
    url = stack.api(S2S_WORKER_ABSENT_MS=0)

    def long_absent():
        code, body = health(url)
        assert code == 200 and body["status"] == "ok", body
        return body["workers"]["absentMs"] > 2500

    wait_until(long_absent, timeout=15, what="2.5 s without a worker")
    assert health(url)[1]["workers"]["alive"] == 0
