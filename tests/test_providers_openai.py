"""The OpenAI provider end to end: API and real worker processes against a fake OpenAI on 127.0.0.1."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from PIL import Image

from tests.api_client import cancel, health, image, job, submit, wait_ended
from tests.fakes.openai_server import (
    FINAL_IMAGE,
    FakeOpenAI,
    Reply,
    invalid_image,
    moderation_blocked,
    quota_exhausted,
    rate_limited,
    server_error,
)
from tests.helpers import photo_bytes, wait_until

ADMIN = "operator-token-for-tests"


@pytest.fixture
def openai_fake():
    with FakeOpenAI() as fake:
        yield fake


def openai_env(fake: FakeOpenAI, **extra) -> dict:
    return {"S2S_PROVIDER": "openai", "OPENAI_API_KEY": fake.key, "OPENAI_BASE_URL": fake.base_url, **extra}


def test_a_cover_is_drawn_by_openai_from_the_photo_the_prompt_and_the_key(stack, openai_fake):
    url = stack.api(S2S_PROVIDER="openai")
    stack.worker(**openai_env(openai_fake))
    photo = photo_bytes(seed=7)
    job_id = submit(url, photo, heroName="{title} {0.__class__}", themeId="space", styleKey="cartoon", kind="cover")

    done = wait_ended(url, job_id)
    assert (done["status"], done["provider"], done["attempts"]) == ("completed", "openai", 1)
    assert image(url, done) == ("image/png", FINAL_IMAGE)
    (sent,) = openai_fake.requests
    assert sent.path == "/v1/images/edits" and sent.headers["Authorization"] == f"Bearer {openai_fake.key}"
    assert sent.files["image"][:2] == ("hero.jpg", "image/jpeg")
    assert Image.open(io.BytesIO(sent.files["image"][2])).size == (320, 400)  # the worker's copy (test_uploads.py)
    assert {k: sent.fields[k] for k in ("model", "size", "quality", "stream", "partial_images", "n")} == {
        "model": "gpt-image-2", "size": "1024x1536", "quality": "medium", "stream": "true", "partial_images": "2",
        "n": "1"}
    prompt = sent.fields["prompt"]
    assert 'the title "{title} {0.__class__} Among the Stars"' in prompt, "the name is data, never a template"
    assert 'named "{title} {0.__class__}"' in prompt
    assert "outer space" in prompt and "cartoon" in prompt and "front cover" in prompt
    drafts = [e["message"] for e in stack.events(job_id) if "draft" in e.get("message", "")]
    assert drafts == ["Sketching the picture (draft 1 of 2)", "Sketching the picture (draft 2 of 2)"]
    code, body = health(url)
    assert code == 200 and body["provider"] == {"name": "openai", "state": "ok", "reason": None}


def test_model_size_and_quality_come_from_settings(stack, openai_fake):
    url = stack.api()
    stack.worker(**openai_env(openai_fake, S2S_OPENAI_MODEL="gpt-image-2.5-flare", S2S_OPENAI_SIZE="1536x864",
                              S2S_OPENAI_QUALITY="high", S2S_OPENAI_PARTIAL_IMAGES=0))
    job_id = submit(url, photo_bytes(fmt="PNG"), "image/png", kind="page")
    assert wait_ended(url, job_id)["status"] == "completed"
    (sent,) = openai_fake.requests
    assert (sent.fields["model"], sent.fields["size"], sent.fields["quality"], sent.fields["partial_images"]) == (
        "gpt-image-2.5-flare", "1536x864", "high", "0")
    assert sent.files["image"][:2] == ("hero.jpg", "image/jpeg"), "every photo is prepared as a JPEG at intake"


def test_a_429_waits_for_retry_after_and_keeps_the_attempt(stack, openai_fake):
    openai_fake.plan(rate_limited(retry_after="1"))
    url = stack.api()
    stack.worker(**openai_env(openai_fake))
    job_id = submit(url)
    done = wait_ended(url, job_id)
    assert (done["status"], done["attempts"]) == ("completed", 1), "a 429 does not use up an attempt"
    first, second = openai_fake.requests
    assert second.at - first.at >= 0.9, "Retry-After: 1 was honoured"
    assert any(e["status"] == "queued" and e["message"] == "Trying again shortly" for e in stack.events(job_id))


def test_server_errors_and_timeouts_are_retried_each_with_an_attempt(stack, openai_fake):
    openai_fake.plan(server_error(), Reply(hang=True))
    url = stack.api()
    stack.worker(**openai_env(openai_fake, S2S_UPSTREAM_TIMEOUT_MS=1000))
    job_id = submit(url)
    done = wait_ended(url, job_id)
    assert (done["status"], done["attempts"]) == ("completed", 3)
    assert len(openai_fake.requests) == 3
    assert len(openai_fake.disconnects) == 1, "the timed-out call was hung up, not left running"


@pytest.mark.parametrize("reply, code, says", [
    (moderation_blocked(), "content_refused", "safety check"),
    (Reply(error_after_partials="moderation_blocked"), "content_refused", "safety check"),
    (invalid_image(), "invalid_photo", "could not use this photo"),
    (quota_exhausted(), "provider_misconfigured", "not set up correctly"),
], ids=["moderation", "moderation-mid-stream", "invalid-image", "quota-exhausted"])
def test_refusals_fail_at_once_with_a_sentence_a_parent_can_read(stack, openai_fake, reply, code, says):
    openai_fake.plan(reply)
    url = stack.api()
    stack.worker(**openai_env(openai_fake))
    done = wait_ended(url, submit(url))
    assert (done["status"], done["errorCode"], done["attempts"]) == ("failed", code, 1)
    assert says in done["error"] and done["error"].endswith(".")
    assert "openai" not in done["error"].lower() and "400" not in done["error"], "no upstream jargon for parents"
    assert len(openai_fake.requests) == 1


def test_a_refused_key_fails_at_once_and_health_says_misconfigured_until_it_works(stack, openai_fake):
    wrong = "sk-wrong-key-0123456789"
    url = stack.api(S2S_PROVIDER="openai")
    bad = stack.worker(**openai_env(openai_fake, OPENAI_API_KEY=wrong))
    done = wait_ended(url, submit(url))
    assert (done["status"], done["errorCode"], done["attempts"]) == ("failed", "provider_misconfigured", 1)
    code, body = health(url)
    assert code == 200 and body["status"] == "ok"
    assert body["provider"]["name"] == "openai" and body["provider"]["state"] == "misconfigured"
    reason = body["provider"]["reason"]
    assert "401" in reason and "invalid_api_key" in reason and "req_" in reason
    assert wrong not in reason and "sk-wr***ng" not in reason
    bad.terminate()
    bad.wait(10)
    assert wrong not in bad.log_path.read_text(), "the key never reaches a log"

    stack.worker(**openai_env(openai_fake))  # the operator fixed the key
    assert wait_ended(url, submit(url))["status"] == "completed"
    assert health(url)[1]["provider"] == {"name": "openai", "state": "ok", "reason": None}


def test_cancelling_a_job_hangs_up_on_openai_and_ends_it_cancelled(stack, openai_fake):
    openai_fake.plan(Reply(hang_after_partials=True))
    url = stack.api(S2S_ADMIN_TOKEN=ADMIN)
    worker = stack.worker(**openai_env(openai_fake))
    job_id = submit(url)
    wait_until(lambda: job(url, job_id)["progress"] >= 63, what="the second draft")
    assert cancel(url, job_id, ADMIN)["status"] == "cancelled"
    wait_until(lambda: openai_fake.disconnects, timeout=10, what="the worker to hang up on OpenAI")
    wait_until(lambda: "reason=cancelled" in worker.log_path.read_text(), what="the worker to stop the job")
    found = job(url, job_id)
    assert (found["status"], found["attempts"]) == ("cancelled", 1)
    assert stack.redis.zcard(stack.keys.delayed) == 0 and len(openai_fake.requests) == 1, "no retry"
    assert stack.redis.zcard(stack.keys.rate_slots("openai")) == 0, "its rate-limit slot was given back"


def test_every_worker_shares_one_limit_of_calls_in_flight(stack, openai_fake):
    url = stack.api()
    env = openai_env(openai_fake, S2S_OPENAI_CONCURRENCY=1, WORKER_CONCURRENCY=2)
    stack.worker(**env)
    stack.worker(**env)
    job_ids = [submit(url, heroName=f"Hero {n}") for n in range(4)]
    assert [wait_ended(url, j)["status"] for j in job_ids] == ["completed"] * 4
    assert openai_fake.max_in_flight == 1, "two workers with two slots each still made one call at a time"
    waits = [e for j in job_ids for e in stack.events(j) if e.get("message", "").startswith("Waiting")]
    assert waits, "a waiting job tells the parent why"
    assert all(image(url, job(url, j)) == ("image/png", FINAL_IMAGE) for j in job_ids)


def test_a_worker_told_to_use_openai_without_a_key_stops_at_start_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "S2S_PROVIDER": "openai", "REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run([sys.executable, "-m", "s2s", "worker"], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "s2s: bad setting: OPENAI_API_KEY: must be set when S2S_PROVIDER=openai"]
