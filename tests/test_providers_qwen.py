"""The Qwen image edit provider end to end: API and real worker processes against a fake DashScope."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.api_client import cancel, health, image, job, submit, wait_ended
from tests.fakes.qwen_server import (
    ENDPOINT,
    RESULT_IMAGE,
    SIGNATURE,
    FakeQwen,
    Reply,
    access_denied,
    data_inspection_failed,
    internal_error,
    throttled,
)
from tests.helpers import photo_bytes, wait_until

ADMIN = "operator-token-for-tests"


@pytest.fixture
def qwen_fake():
    with FakeQwen() as fake:
        yield fake


def qwen_env(fake: FakeQwen, **extra) -> dict:
    return {"S2S_PROVIDER": "qwen", "QWEN_3_IMAGE_EDIT_KEY": fake.key, "QWEN_BASE_URL": fake.url, **extra}


def test_a_page_is_drawn_by_qwen_and_its_picture_fetched_from_the_url_it_names(stack, qwen_fake):
    url = stack.api(S2S_PROVIDER="qwen")
    stack.worker(**qwen_env(qwen_fake))
    photo = photo_bytes(fmt="PNG", seed=3)
    job_id = submit(url, photo, "image/png", heroName="Ada {hero}", themeId="ocean", styleKey="watercolor",
                    kind="page")

    done = wait_ended(url, job_id)
    assert (done["status"], done["provider"], done["attempts"]) == ("completed", "qwen", 1)
    assert image(url, done) == ("image/png", RESULT_IMAGE)
    (sent,) = qwen_fake.requests
    assert sent.path == ENDPOINT and sent.headers["Authorization"] == f"Bearer {qwen_fake.key}"
    body = sent.json
    assert body["model"] == "qwen-image-edit-plus"
    assert body["parameters"]["n"] == 1 and body["parameters"]["size"] == "1536*1024"
    (message,) = body["input"]["messages"]
    (picture, text) = message["content"]
    header, _, payload = picture["image"].partition(",")
    assert header == "data:image/jpeg;base64", "the worker prepares every photo as a JPEG (test_uploads.py)"
    assert Image.open(io.BytesIO(base64.b64decode(payload))).size == Image.open(io.BytesIO(photo)).size
    assert 'named "Ada {hero}"' in text["text"] and "coral reefs" in text["text"] and "watercolor" in text["text"]
    (download,) = qwen_fake.downloads
    assert download.raw_path.endswith("?" + SIGNATURE), "the signed URL was fetched exactly as given"
    assert "Authorization" not in download.headers, "the key never goes to the image host"
    assert health(url)[1]["provider"] == {"name": "qwen", "state": "ok", "reason": None}


def test_the_model_comes_from_settings(stack, qwen_fake):
    url = stack.api()
    stack.worker(**qwen_env(qwen_fake, S2S_QWEN_MODEL="qwen-image-edit"))
    assert wait_ended(url, submit(url))["status"] == "completed"
    (sent,) = qwen_fake.requests
    assert sent.json["model"] == "qwen-image-edit" and "size" not in sent.json["parameters"]


@pytest.mark.parametrize("reply", [throttled(retry_after="1"), Reply(error_in_ok=True, code="Throttling.RateQuota",
                                                                    retry_after="1")],
                         ids=["429", "throttled-inside-a-200"])
def test_throttling_waits_for_retry_after_and_keeps_the_attempt(stack, qwen_fake, reply):
    qwen_fake.plan(reply)
    url = stack.api()
    stack.worker(**qwen_env(qwen_fake))
    done = wait_ended(url, submit(url))
    assert (done["status"], done["attempts"]) == ("completed", 1)
    first, second = qwen_fake.requests
    assert second.at - first.at >= 0.9


def test_internal_errors_and_timeouts_are_retried_each_with_an_attempt(stack, qwen_fake):
    qwen_fake.plan(internal_error(), Reply(hang=True))
    url = stack.api()
    stack.worker(**qwen_env(qwen_fake, S2S_UPSTREAM_TIMEOUT_MS=1000))
    done = wait_ended(url, submit(url))
    assert (done["status"], done["attempts"]) == ("completed", 3)
    assert len(qwen_fake.disconnects) == 1, "the timed-out call was hung up"


@pytest.mark.parametrize("reply, code, says", [
    (data_inspection_failed(), "content_refused", "safety check"),
    (Reply(400, "InvalidParameter", "The size of the input image is too small."), "invalid_photo",
     "could not use this photo"),
    (Reply(400, "Arrearage", "Access denied, please make sure your account is in good standing."),
     "provider_misconfigured", "not set up correctly"),
], ids=["data-inspection", "invalid-image", "arrearage"])
def test_refusals_fail_at_once_with_a_sentence_a_parent_can_read(stack, qwen_fake, reply, code, says):
    qwen_fake.plan(reply)
    url = stack.api()
    stack.worker(**qwen_env(qwen_fake))
    done = wait_ended(url, submit(url))
    assert (done["status"], done["errorCode"], done["attempts"]) == ("failed", code, 1)
    assert says in done["error"] and "qwen" not in done["error"].lower()
    assert len(qwen_fake.requests) == 1 and not qwen_fake.downloads


@pytest.mark.parametrize("wrong_key, reply, status", [
    ("sk-wrong-qwen-key-000", None, "401"),
    (None, access_denied(), "403"),
], ids=["invalid-key", "access-denied"])
def test_a_refused_key_fails_at_once_and_health_says_misconfigured(stack, qwen_fake, wrong_key, reply, status):
    if reply:
        qwen_fake.plan(reply)
    url = stack.api(S2S_PROVIDER="qwen")
    worker = stack.worker(**qwen_env(qwen_fake, **({"QWEN_3_IMAGE_EDIT_KEY": wrong_key} if wrong_key else {})))
    done = wait_ended(url, submit(url))
    assert (done["status"], done["errorCode"]) == ("failed", "provider_misconfigured")
    code, body = health(url)
    assert code == 200 and body["provider"]["state"] == "misconfigured" and status in body["provider"]["reason"]
    for secret in (qwen_fake.key, wrong_key or qwen_fake.key):
        assert secret not in body["provider"]["reason"] and secret not in worker.log_path.read_text()


def test_cancelling_a_job_hangs_up_on_dashscope_and_ends_it_cancelled(stack, qwen_fake):
    qwen_fake.plan(Reply(hang=True))
    url = stack.api(S2S_ADMIN_TOKEN=ADMIN)
    worker = stack.worker(**qwen_env(qwen_fake))
    job_id = submit(url)
    wait_until(lambda: qwen_fake.requests, what="the call to reach DashScope")
    assert cancel(url, job_id, ADMIN)["status"] == "cancelled"
    wait_until(lambda: qwen_fake.disconnects, timeout=10, what="the worker to hang up on DashScope")
    wait_until(lambda: "reason=cancelled" in worker.log_path.read_text(), what="the worker to stop the job")
    assert job(url, job_id)["status"] == "cancelled"
    assert stack.redis.zcard(stack.keys.delayed) == 0 and len(qwen_fake.requests) == 1, "no retry"
    assert stack.redis.zcard(stack.keys.rate_slots("qwen")) == 0, "its rate-limit slot was given back"


def test_an_answer_naming_a_non_web_url_is_not_followed(stack, qwen_fake):
    qwen_fake.plan(Reply(image_url="file:///etc/passwd"))
    url = stack.api(S2S_MAX_ATTEMPTS=1)
    stack.worker(**qwen_env(qwen_fake))
    done = wait_ended(url, submit(url))
    assert (done["status"], done["errorCode"]) == ("failed", "upstream_bad_answer")
    assert not qwen_fake.downloads
