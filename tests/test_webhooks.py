"""Webhooks (Standard Webhooks v1) with real processes: an API, workers and a receiver on 127.0.0.1.

Every delivery the receiver gets is verified with the reference ``standardwebhooks`` package.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from datetime import datetime, timezone

import attrs
import jsonschema
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from s2s.embedded import free_port
from s2s.settings import Settings, SettingsError
from s2s.webhooks import schedule, signing
from tests.api_client import job as status
from tests.api_client import submit, wait_ended
from tests.fakes.webhook_receiver import Answer, WebhookReceiver
from tests.helpers import Stack, data_url, http_json, photo_bytes, wait_until
from tests.test_tui import FAST as CONSOLE_FAST
from tests.test_tui import SIZE, confirm, until
from tui.app import ConsoleApp
from tui.client import ApiClient
from tui.screens import JobDetailScreen
from tui.widgets import JobsTable, WebhookLogTable

SECRET = "whsec_" + base64.b64encode(b"s2s-test-webhook-secret-0123456789").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the-secret-being-rotated-out-0001").decode()
TOKEN = "webhook-operator-token"
FAST = (0.2,) * 7  # the schedule's seven retries, fast


@pytest.fixture
def receiver():
    with WebhookReceiver() as fake:
        yield fake


def hooks_stack(stack: Stack, receiver: WebhookReceiver, **changes) -> Stack:
    port = free_port()  # imageUrl in a webhook is absolute with S2S_PUBLIC_URL, as in GET /status
    settings = attrs.evolve(stack.settings, **{
        "webhook_url": receiver.hook_url, "webhook_secret": (SECRET,), "webhook_hosts": ("127.0.0.1",),
        "webhook_retry_s": FAST, "admin_token": TOKEN, "public_url": f"http://127.0.0.1:{port}", **changes})
    out = Stack(settings, stack.processes, stack.redis)
    out.port = port
    return out


def api(stack: Stack) -> str:
    return stack.api(stack.port)


def verified(delivery, secret: str = SECRET) -> dict:
    """The delivery's body as the receiver's standardwebhooks.Webhook(secret).verify() gives it."""
    return Webhook(secret).verify(delivery.body, delivery.headers)


def deliveries_of(url: str, job_id: str) -> list[dict]:
    code, _, raw = http_json("GET", f"{url}/api/jobs/{job_id}/webhooks", headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 200, raw
    return json.loads(raw)["deliveries"]


def settled(url: str, job_id: str, state: str) -> list[dict]:
    def check():
        found = deliveries_of(url, job_id)
        return found if found and all(d["state"] == state for d in found) else None

    return wait_until(check, timeout=30, what=f"the webhook of {job_id} to be {state}")


def test_a_receiver_that_fails_three_times_gets_one_webhook_id_in_four_verified_attempts(stack, receiver):
    stack = hooks_stack(stack, receiver)
    url = api(stack)
    stack.worker(S2S_PROVIDER="noop")
    receiver.plan(Answer(500), Answer(503, headers={"Retry-After": "1"}), Answer(502))
    job_id = submit(url)
    wait_until(lambda: len(receiver.deliveries) >= 4, timeout=30, what="four attempts")
    attempts = list(receiver.deliveries)
    bodies = [verified(d) for d in attempts]
    assert len({d.headers["webhook-id"] for d in attempts}) == 1
    assert job_id not in attempts[0].headers["webhook-id"], "a receiver's logs of webhook-ids hold no job id"
    assert all(body == bodies[0] for body in bodies), "every try sends the same message"
    assert bodies[0]["type"] == "job.completed"
    assert bodies[0]["data"] == status(url, job_id)  # the status answer of the job
    doc = json.loads(http_json("GET", url + "/api/openapi.json")[2])  # the body is the one described
    jsonschema.Draft202012Validator({"$ref": "#/components/schemas/WebhookEvent",
                                     "components": doc["components"]}).validate(bodies[0])
    assert doc["webhooks"]["jobEnded"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WebhookEvent"}
    assert datetime.fromisoformat(bodies[0]["timestamp"].replace("Z", "+00:00")).tzinfo == timezone.utc
    assert attempts[2].at - attempts[1].at >= 1.0, "Retry-After: 1 was honoured"
    (delivery,) = settled(url, job_id, "delivered")
    assert [(a["attempt"], a["outcome"], a["status"]) for a in delivery["attemptLog"]] == [
        (1, "retry", 500), (2, "retry", 503), (3, "retry", 502), (4, "delivered", 204)]
    assert delivery["webhookId"] == attempts[0].headers["webhook-id"] and delivery["event"] == "job.completed"
    assert all(a["error"] == f"the receiver answered {a['status']}" for a in delivery["attemptLog"][:3])
    def metrics() -> str:
        return http_json("GET", url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})[2].decode()

    wait_until(lambda: 'outcome="delivered"' in metrics(), timeout=15, what="the delivery in the metrics")
    metrics = metrics()
    assert 's2s_webhook_delivery_attempts_total{outcome="retry"} 3.0' in metrics
    assert 's2s_webhook_delivery_attempts_total{outcome="delivered"} 1.0' in metrics


def test_failed_and_cancelled_jobs_are_told_too(stack, receiver):
    stack = hooks_stack(stack, receiver, max_attempts=1)
    url = api(stack)
    operator = {"Authorization": f"Bearer {TOKEN}"}
    assert http_json("POST", f"{url}/api/queue/pause", b"", operator)[0] == 200
    stack.worker(S2S_PROVIDER="noop", S2S_NOOP_FAIL_ATTEMPTS=5)
    job_id = submit(url)  # cancelled while queued
    code, _, raw = http_json("POST", f"{url}/api/jobs/{job_id}/cancel", b"", operator)
    assert code == 200, raw
    wait_until(lambda: receiver.deliveries, timeout=20, what="the cancelled webhook")
    assert http_json("POST", f"{url}/api/queue/resume", b"", operator)[0] == 200
    failed = submit(url)
    wait_until(lambda: len(receiver.deliveries) >= 2, timeout=30, what="the failed webhook")
    cancelled, failing = (verified(d) for d in receiver.deliveries)
    assert cancelled["type"] == "job.cancelled" and cancelled["data"]["jobId"] == job_id
    assert cancelled["data"]["status"] == "cancelled"
    assert failing["type"] == "job.failed" and failing["data"] == wait_ended(url, failed)


def test_a_410_disables_the_url_and_the_operator_sees_why(stack, receiver):
    stack = hooks_stack(stack, receiver)
    url = api(stack)
    stack.worker(S2S_PROVIDER="noop")
    receiver.plan(Answer(410))
    first = submit(url)
    (gone,) = settled(url, first, "disabled")
    assert [(a["outcome"], a["status"]) for a in gone["attemptLog"]] == [("disabled", 410)]
    second = submit(url)
    (skipped,) = settled(url, second, "skipped")
    assert len(receiver.deliveries) == 1, "nothing more is sent to a URL that answered 410"
    assert "410 Gone" in skipped["attemptLog"][0]["error"] and gone["webhookId"] in skipped["attemptLog"][0]["error"]
    assert skipped["urlDisabled"]["webhookId"] == gone["webhookId"]
    # the operator's Redeliver enables the URL again and sends the same message
    code, _, raw = http_json("POST", f"{url}/api/jobs/{second}/webhook/redeliver", b"",
                             {"Authorization": f"Bearer {TOKEN}"})
    assert code == 202 and json.loads(raw) == {"jobId": second, "redelivered": 1}, raw
    wait_until(lambda: len(receiver.deliveries) == 2, timeout=20, what="the redelivery")
    assert receiver.deliveries[1].headers["webhook-id"] == skipped["webhookId"]
    assert verified(receiver.deliveries[1])["data"]["jobId"] == second
    (again,) = settled(url, second, "delivered")
    assert [a["outcome"] for a in again["attemptLog"]] == ["skipped", "delivered"]


@pytest.mark.drill
def test_a_worker_killed_while_delivering_leaves_the_webhook_to_another(stack, receiver):
    stack = hooks_stack(stack, receiver, webhook_timeout_s=5)
    url = api(stack)
    doomed = stack.worker(S2S_PROVIDER="noop")
    receiver.plan(Answer(hang=True))
    job_id = submit(url)
    wait_until(lambda: receiver.deliveries, timeout=30, what="the first attempt")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(5)
    assert status(url, job_id)["status"] == "completed"
    stack.worker(S2S_PROVIDER="noop")
    wait_until(lambda: len(receiver.deliveries) >= 2, timeout=40, what="the delivery by the other worker")
    first, second = receiver.deliveries[:2]
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert verified(second)["data"]["jobId"] == job_id
    (delivery,) = settled(url, job_id, "delivered")
    assert [a["outcome"] for a in delivery["attemptLog"]] == ["delivered"]  # the killed attempt left no outcome
    assert len(receiver.deliveries) == 2


def _submit_raw(url: str, **fields) -> tuple[int, dict]:
    body = {"heroName": "Mia", "originalImageBase64": data_url(photo_bytes()), **fields}
    code, _, raw = http_json("POST", url + "/api/jobs/generate-image", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
    return code, json.loads(raw)


def test_a_per_job_url_is_refused_unless_allowed_and_public(stack, receiver):
    closed = hooks_stack(stack, receiver)
    url = api(closed)
    code, body = _submit_raw(url, webhookUrl="https://hooks.example.com/s2s")
    assert code == 400 and body["code"] == "webhook_url_not_allowed", body
    assert body["details"]["field"] == "webhookUrl" and "S2S_WEBHOOK_PER_JOB" in body["error"]
    code, body = _submit_raw(url)  # without the field nothing changed
    assert code == 202 and set(body) == {"jobId", "status", "message", "statusUrl", "websocketSubscription",
                                         "deleteToken"}

    open_ = hooks_stack(stack, receiver, webhook_per_job=True, webhook_url=None)
    url = api(open_)
    for refused in ("http://hooks.example.com/s2s", "https://10.1.2.3/hook", "https://169.254.169.254/latest",
                    "https://[::1]:8443/hook", "https://localhost/hook", "https://user:pw@hooks.example.com/",
                    "ftp://hooks.example.com/", "not a url"):
        code, body = _submit_raw(url, webhookUrl=refused)
        assert code == 400 and body["code"] == "invalid_webhook_url", (refused, body)
        assert body["details"]["field"] == "webhookUrl" and body["details"]["reason"], body
    code, body = _submit_raw(url, webhookUrl=12)
    assert code == 400 and body["details"]["field"] == "webhookUrl", body
    open_.worker(S2S_PROVIDER="noop")
    own = receiver.url + "/hooks?job=mine"  # 127.0.0.1 is in S2S_WEBHOOK_HOSTS: plain http accepted
    job_id = submit(url, webhookUrl=own)
    mine = wait_until(lambda: [d for d in receiver.deliveries if verified(d)["data"]["jobId"] == job_id],
                      timeout=30, what="the per-job webhook")
    assert [d.path for d in mine] == ["/hooks?job=mine"]
    assert settled(url, job_id, "delivered")[0]["url"] == own


def test_deleting_a_job_drops_its_pending_deliveries(stack, receiver):
    stack = hooks_stack(stack, receiver, webhook_retry_s=(60.0,))
    url = api(stack)
    stack.worker(S2S_PROVIDER="noop")
    receiver.plan(Answer(500))
    code, body = _submit_raw(url)
    job_id = body["jobId"]
    (pending,) = wait_until(lambda: [d for d in deliveries_of(url, job_id) if d["attemptLog"]], timeout=30,
                            what="a failed first attempt")
    assert pending["state"] == "pending" and pending["nextAttemptAtMs"] > pending["createdAtMs"]
    code, _, raw = http_json("DELETE", f"{url}/api/jobs/{job_id}", headers={"Authorization":
                                                                             f"Bearer {body['deleteToken']}"})
    assert code == 204, raw
    k = stack.keys
    assert stack.redis.zcard(k.webhook_due) == 0
    assert not stack.redis.exists(k.webhook(pending["webhookId"]), k.webhook_log(pending["webhookId"]),
                                  k.job_webhooks(job_id))


def test_our_signature_verifies_with_each_of_two_secrets_in_the_reference_package():
    body = b'{"type":"job.completed","timestamp":"2026-12-01T00:00:00.000Z","data":{}}'
    now = int(datetime.now(timezone.utc).timestamp())
    headers = signing.headers((SECRET, OLD_SECRET), "msg_abc_7", now, body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, OLD_SECRET):
        assert Webhook(secret).verify(body, headers)["type"] == "job.completed"
        expected = Webhook(secret).sign("msg_abc_7", datetime.fromtimestamp(now, timezone.utc), body.decode())
        assert expected in headers["webhook-signature"].split(" ")
    other = "whsec_" + base64.b64encode(b"someone-else-entirely-000000000").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"{}", b'{"x":1}'), headers)


def test_the_console_shows_a_jobs_webhook_log_and_redelivers(stack, receiver):
    stack = hooks_stack(stack, receiver)
    url = api(stack)
    stack.worker(S2S_PROVIDER="noop")
    receiver.plan(Answer(500))
    job_id = submit(url)
    settled(url, job_id, "delivered")

    def rows(table: WebhookLogTable) -> list[list[str]]:
        return [[str(cell) for cell in table.get_row(key)] for key in table.rows]

    async def scenario():
        async with ApiClient(url, TOKEN) as client:
            app = ConsoleApp(client, **CONSOLE_FAST)
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: job_id in app.main.query_one(JobsTable).rows, "the job listed")
                assert app.main.query_one(JobsTable).select_job(job_id)
                await pilot.press("enter")
                detail = await until(pilot, lambda: isinstance(app.screen, JobDetailScreen) and app.screen, "details")
                table = detail.query_one(WebhookLogTable)
                await until(pilot, lambda: len(table.rows) == 2, "the two attempts on screen")
                (event, first, _, retry, status, error, msg), second = rows(table)
                assert (event, first, retry, status, error) == ("job.completed", "1", "retry", "500",
                                                                 "the receiver answered 500")
                assert msg == receiver.deliveries[0].headers["webhook-id"]
                assert (second[1], second[3], second[4]) == ("2", "delivered", "204")
                await confirm(pilot, "w")
                await until(pilot, lambda: len(table.rows) == 3, "the redelivery on screen", timeout=20)
                assert rows(table)[2][3] == "delivered"
        assert len(receiver.deliveries) == 3
        assert {d.headers["webhook-id"] for d in receiver.deliveries} == {msg}

    asyncio.run(scenario())


def test_a_destination_is_checked_again_against_the_address_each_delivery_connects_to(stack, receiver):
    # https to a name, not an address: accepted by its shape; it resolves to loopback when the worker connects
    # (as a name rebound after the submit's check would), and 'localhost' is not in S2S_WEBHOOK_HOSTS
    rebound = f"https://localhost:{receiver.port}/hooks"
    stack = hooks_stack(stack, receiver, webhook_url=rebound, webhook_retry_s=(60.0,))
    url = api(stack)
    stack.worker(S2S_PROVIDER="noop")
    job_id = submit(url)
    (pending,) = wait_until(lambda: [d for d in deliveries_of(url, job_id) if d["attemptLog"]], timeout=30,
                            what="the first attempt")
    (attempt,) = pending["attemptLog"]
    assert attempt["outcome"] == "retry" and attempt["status"] is None
    assert "resolves to a loopback, private or link-local address" in attempt["error"], attempt
    assert receiver.requests == [] and receiver.deliveries == []


def test_the_retry_schedule_is_the_specs_jittered_and_waits_out_retry_after():
    steps = Settings.from_env({}, dotenv=None).webhook_retry_s
    assert steps == (5, 300, 1800, 7200, 18000, 36000, 36000)  # after the first try, at once: 8 tries in all
    for tries, step in enumerate(steps, start=1):
        waits = [schedule.next_delay_s(steps, tries) for _ in range(50)]
        assert all(step / 2 <= w <= step for w in waits) and len(set(waits)) > 1, (tries, waits)
    assert schedule.next_delay_s(steps, len(steps) + 1) is None  # the schedule is used up
    assert schedule.next_delay_s(steps, 1, retry_after_s=120) == 120
    assert schedule.retry_after("7") == 7 and schedule.retry_after("soon") is None
    assert schedule.retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480) == 30


def test_webhook_settings_are_checked_at_start_up():
    both = Settings.from_env({"S2S_WEBHOOK_SECRET": f"{SECRET} {OLD_SECRET}",
                              "S2S_WEBHOOK_HOSTS": "127.0.0.1, Hooks.Local", "S2S_WEBHOOK_RETRY_S": "0.2,1"},
                             dotenv=None)
    assert both.webhook_secret == (SECRET, OLD_SECRET) and both.webhook_hosts == ("127.0.0.1", "hooks.local")
    assert both.webhook_retry_s == (0.2, 1.0) and Settings.from_env(both.environ(), dotenv=None) == both
    for bad in ({"S2S_WEBHOOK_SECRET": "not-a-whsec"}, {"S2S_WEBHOOK_SECRET": "whsec_c2hvcnQ="},
                {"S2S_WEBHOOK_RETRY_S": "5,soon"}, {"S2S_WEBHOOK_URL": "hooks.example.com"}):
        with pytest.raises(SettingsError, match=next(iter(bad))):
            Settings.from_env(bad, dotenv=None)


def test_deliveries_are_bounded_per_worker_and_a_silent_receiver_times_out(stack, receiver):
    stack = hooks_stack(stack, receiver, webhook_concurrency=2, webhook_timeout_s=3)
    url = api(stack)
    receiver.plan(Answer(hang=True), *[Answer(delay=1.0)] * 6)  # well within the 3 s timeout
    jobs = [submit(url) for _ in range(6)]
    for job_id in jobs:  # no worker yet: six deliveries due at once when the first worker starts
        code, _, raw = http_json("POST", f"{url}/api/jobs/{job_id}/cancel", b"", {"Authorization": f"Bearer {TOKEN}"})
        assert code == 200, raw
    assert stack.redis.zcard(stack.keys.webhook_due) == 6
    stack.worker(S2S_PROVIDER="noop")
    for job_id in jobs:
        settled(url, job_id, "delivered")
    assert receiver.max_in_flight == 2, "S2S_WEBHOOK_CONCURRENCY bounds one worker's deliveries in flight"
    timed_out = [a for job_id in jobs for d in deliveries_of(url, job_id) for a in d["attemptLog"]
                 if a["outcome"] == "retry"]
    assert [(a["status"], a["error"]) for a in timed_out] == [(None, "no answer within 3 s")]
    assert len(receiver.deliveries) == 7 and len(receiver.disconnects) == 1  # the silent one was hung up on


def test_job_started_is_sent_too_when_the_deployment_asks(stack, receiver):
    stack = hooks_stack(stack, receiver, webhook_started=True)
    url = api(stack)
    stack.worker(S2S_PROVIDER="noop")
    job_id = submit(url)
    wait_until(lambda: len(receiver.deliveries) >= 2, timeout=30, what="job.started and job.completed")
    bodies = {verified(d)["type"]: d for d in receiver.deliveries}
    assert set(bodies) == {"job.started", "job.completed"} and len(receiver.deliveries) == 2
    assert bodies["job.started"].headers["webhook-id"] != bodies["job.completed"].headers["webhook-id"]
    assert all(verified(d)["data"]["jobId"] == job_id for d in receiver.deliveries)
    assert sorted(d["event"] for d in settled(url, job_id, "delivered")) == ["job.completed", "job.started"]


@pytest.mark.drill
def test_a_job_the_reaper_gives_up_on_is_told_as_failed(stack, receiver):
    stack = hooks_stack(stack, receiver, max_attempts=1)
    url = api(stack)
    doomed = stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=30000)
    job_id = submit(url)
    wait_until(lambda: status(url, job_id)["status"] == "processing", timeout=30, what="the job to start")
    doomed.send_signal(signal.SIGKILL)  # on its last attempt: the reaper of the next worker fails the job
    doomed.wait(5)
    stack.worker(S2S_PROVIDER="noop")
    wait_until(lambda: receiver.deliveries, timeout=40, what="the failed webhook")
    (delivery,) = receiver.deliveries
    body = verified(delivery)
    assert body["type"] == "job.failed" and body["data"]["errorCode"] == "worker_lost"
    assert body["data"] == wait_ended(url, job_id)
