"""/metrics: one scrape of any API process shows the whole system, counted as it happened."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from s2s.embedded import free_port
from s2s.metrics.counters import WorkerMetrics
from tests.api_client import submit, wait_ended
from tests.fakes.openai_server import FakeOpenAI, Reply, rate_limited, server_error
from tests.helpers import child_env, http_json, wait_until
from tests.test_ws import Client

ADMIN = "operator-token-for-tests"
NOOP_FAILING_ONCE = {"S2S_PROVIDER": "noop", "S2S_NOOP_FAIL_ATTEMPTS": 1}


class Scrape(dict):
    """The samples of one scrape: {(name, sorted label pairs): value}."""

    def __call__(self, name: str, **labels: str) -> float | None:
        return self.get((name, tuple(sorted(labels.items()))))

    def family(self, name: str) -> dict[tuple, float]:
        return {labels: value for (sample, labels), value in self.items() if sample == name}


def scrape(url: str, token: str | None = None) -> Scrape:
    code, headers, body = http_json("GET", url + "/metrics", headers={"Authorization": f"Bearer {token}"}
                                    if token else {})
    assert code == 200, body
    assert headers["Content-Type"].startswith("text/plain; version="), headers
    samples = Scrape()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"{key} twice"
            samples[key] = sample.value
    return samples


def test_either_api_counts_every_workers_jobs_even_after_a_worker_is_killed(stack):
    url_a = stack.api(S2S_MAX_ATTEMPTS=3)
    url_b = stack.api(S2S_MAX_ATTEMPTS=1)  # its jobs fail for good on their first failure
    first = stack.worker(**NOOP_FAILING_ONCE)
    first_job = wait_ended(url_a, submit(url_a))
    assert first_job["attempts"] == 2
    wait_until(lambda: scrape(url_b)("s2s_job_duration_seconds_count") == 1, what="the first worker's counts")
    first.send_signal(signal.SIGKILL)  # nothing more to send: what it counted must stay counted
    first.wait(10)

    stack.worker(**NOOP_FAILING_ONCE)
    ended = [wait_ended(url, job_id) for url, job_id in
             [(url_a, submit(url_a)), (url_a, submit(url_a)), (url_b, submit(url_b))]]
    assert [(job["status"], job["attempts"]) for job in ended] == [("completed", 2)] * 2 + [("failed", 1)]

    calls = sum(job["upstreamCalls"] for job in [first_job, *ended])  # what the jobs say they cost

    def settled():  # a worker sends its counts with its heartbeat: wait for every call the jobs made
        got = scrape(url_a)
        reported = sum(got.family("s2s_upstream_calls_total").values())
        return got if (got("s2s_job_duration_seconds_count"), reported, got("s2s_workers_alive")) == (
            3, calls, 1) else None

    got = wait_until(settled, timeout=15, what="the second worker's counts, and the first one gone")
    assert got.family("s2s_jobs_total") == {
        (("outcome", "completed"),): 3, (("outcome", "failed"),): 1, (("outcome", "retried"),): 3,
        (("outcome", "requeued"),): 0, (("outcome", "cancelled"),): 0, (("outcome", "released"),): 0}
    assert got.family("s2s_upstream_calls_total") == {
        (("outcome", "ok"), ("provider", "noop"), ("status", "none")): 3,
        (("outcome", "noop_failure"), ("provider", "noop"), ("status", "none")): 4}
    buckets = [value for labels, value in got.family("s2s_job_duration_seconds_bucket").items()]
    assert buckets == sorted(buckets) and buckets[-1] == 3, "cumulative, +Inf last"
    assert got(("s2s_job_duration_seconds_bucket"), le="+Inf") == 3
    assert 0 < got("s2s_job_duration_seconds_sum") < 3 * 5, "noop jobs take milliseconds"
    assert {labels[0][1]: value for labels, value in got.family("s2s_queue_jobs").items()} == {
        "waiting": 0, "active": 0, "delayed": 0, "completed": 3, "failed": 1, "cancelled": 0}
    assert (got("s2s_queue_paused"), got("s2s_queue_oldest_waiting_seconds")) == (0, 0)
    assert (got("s2s_api_processes"), got("s2s_websockets_active"), got("s2s_ws_events_delivered_total")) == (2, 0, 0)
    assert scrape(url_b) == got, "every API process answers for the whole system"


def test_sockets_and_delivered_events_of_one_api_show_in_the_others_scrape(stack):
    url_a, url_b = stack.api(), stack.api()
    job_id = submit(url_a)  # no worker yet: the job waits

    async def scenario():
        loop = asyncio.get_running_loop()

        async def off_loop(call, *args):
            return await loop.run_in_executor(None, call, *args)

        async def until(check, what):
            return await off_loop(lambda: wait_until(check, timeout=15, what=what))

        client = await Client.connect(url_a)
        await client.send(type="subscribe_to_job", jobId=job_id)
        assert (await client.recv())["status"] == "queued"  # the job's state, read from Redis
        await until(lambda: scrape(url_b)("s2s_websockets_active") == 1, "the socket to be counted")
        assert scrape(url_a)("s2s_websockets_active") == 1, "the socket's own process counts it at once"

        await off_loop(lambda: stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=600))
        live = await client.until(lambda frame: frame["type"] == "job_completed")
        assert len(live) >= 3, live  # processing, progress steps, completed: each handed over by the registry
        await until(lambda: scrape(url_b)("s2s_ws_events_delivered_total") == len(live),
                    "the delivered events to be counted")
        await client.close()
        await until(lambda: scrape(url_b)("s2s_websockets_active") == 0, "the closed socket to be uncounted")
        assert scrape(url_a)("s2s_ws_events_delivered_total") == len(live), "a counter never goes down"

    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.fixture
def openai_fake():
    with FakeOpenAI() as fake:
        yield fake


def test_upstream_answers_are_counted_by_outcome_and_http_status(stack, openai_fake):
    openai_fake.plan(rate_limited(retry_after="1"), server_error(), Reply(hang=True))
    url = stack.api()
    stack.worker(S2S_PROVIDER="openai", OPENAI_API_KEY=openai_fake.key, OPENAI_BASE_URL=openai_fake.base_url,
                 S2S_UPSTREAM_TIMEOUT_MS=1000)
    done = wait_ended(url, submit(url))
    assert (done["status"], done["attempts"]) == ("completed", 3), "the 429 kept its attempt"

    def counted():
        calls = scrape(url).family("s2s_upstream_calls_total")
        return calls if sum(calls.values()) == 4 else None

    calls = wait_until(counted, what="four upstream calls")
    assert {tuple(value for _, value in labels): count for labels, count in calls.items()} == {
        ("rate_limited", "openai", "429"): 1, ("upstream_unavailable", "openai", "500"): 1,
        ("upstream_timeout", "openai", "none"): 1, ("ok", "openai", "none"): 1}


def test_a_job_handed_back_at_shutdown_counts_as_released(stack):
    url = stack.api()
    worker = stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=20000, S2S_UPSTREAM_TIMEOUT_MS=1000,
                          S2S_SHUTDOWN_GRACE_MS=200)
    job_id = submit(url)
    wait_until(lambda: stack.job(job_id).get("status") == "processing", what="the job to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    got = scrape(url)  # the worker sent its last counts before it left
    assert got("s2s_jobs_total", outcome="released") == 1
    assert got("s2s_queue_jobs", state="waiting") == 1 and got("s2s_workers_alive") == 0


def test_with_an_admin_token_metrics_need_it(stack):
    url = stack.api(S2S_ADMIN_TOKEN=ADMIN)
    code, headers, body = http_json("GET", url + "/metrics")
    assert code == 401 and json.loads(body)["code"] == "unauthorized"
    assert "Bearer" in {k.lower(): v for k, v in headers.items()}["www-authenticate"]
    code, _, body = http_json("GET", url + "/metrics", headers={"Authorization": "Bearer wrong"})
    assert code == 403 and json.loads(body)["code"] == "forbidden"
    assert scrape(url, ADMIN)("s2s_workers_alive") == 0


def test_metrics_are_open_without_an_admin_token(stack):
    assert scrape(stack.api())("s2s_jobs_total", outcome="completed") == 0


def test_without_redis_metrics_answer_503_in_the_error_shape(settings, processes):
    port = free_port()
    env = child_env(settings, PORT=port, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    api = processes.start(["serve"], env, name="api-no-redis")
    url = f"http://127.0.0.1:{port}"

    def answering():
        assert api.poll() is None, api.log_path.read_text()
        try:
            return http_json("GET", url + "/metrics", timeout=5)
        except OSError:
            return None

    code, _, body = wait_until(answering, timeout=20, what="the API to answer")
    assert code == 503 and json.loads(body)["code"] == "redis_unavailable"


def test_a_worker_sorts_run_times_into_buckets_and_sends_only_what_is_new():
    metrics = WorkerMetrics()
    for seconds in (0.01, 0.05, 0.07, 400.0):
        metrics.job_completed(seconds)
    metrics.upstream_call("openai", "rate_limited", 429)
    values = metrics.counts.unsent()
    bucket = '["s2s_job_duration_seconds_bucket",{"le":"%s"}]'
    assert values[bucket % "0.05"] == 2, "le is inclusive"
    assert values[bucket % "0.1"] == 1 and values[bucket % "+Inf"] == 1
    assert values['["s2s_upstream_calls_total",{"outcome":"rate_limited","provider":"openai","status":"429"}]'] == 1
    metrics.counts.sent(values)
    assert metrics.counts.unsent() == {}
    metrics.job_completed(0.2)
    assert metrics.counts.unsent() == {bucket % "0.25": 1, '["s2s_job_duration_seconds_sum",{}]': pytest.approx(0.2)}
