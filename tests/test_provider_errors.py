"""Upstream failures mapped to what the worker does: wait, retry, or stop with a sentence for the parent."""

from __future__ import annotations

import email.utils
import time

import httpx2
import openai
import pytest

from s2s.catalog import Catalog
from s2s.providers import failures, openai_images, qwen_images
from s2s.providers.failures import Upstream

KIND = Catalog.load().kinds


def openai_error(status: int, code: str | None, headers: dict | None = None, param: str | None = None):
    request = httpx2.Request("POST", "https://api.openai.com/v1/images/edits")
    response = httpx2.Response(status, headers={"x-request-id": "req_42", **(headers or {})}, request=request)
    body = {"message": f"upstream says {code}", "type": "invalid_request_error", "param": param, "code": code}
    cls = {400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
           404: openai.NotFoundError, 429: openai.RateLimitError}.get(status, openai.InternalServerError)
    return cls(f"Error code: {status}", response=response, body=body)  # as the SDK raises them


def timeout_error():
    return openai.APITimeoutError(request=httpx2.Request("POST", "https://api.openai.com/v1/images/edits"))


@pytest.mark.parametrize("exc, code, retryable, retry_after", [
    (openai_error(429, "rate_limit_exceeded", {"retry-after": "7"}), "rate_limited", True, 7.0),
    (openai_error(429, "rate_limit_exceeded", {"retry-after-ms": "1500"}), "rate_limited", True, 1.5),
    (openai_error(429, "insufficient_quota"), "provider_misconfigured", False, None),  # retrying cannot help
    (openai_error(500, "server_error"), "upstream_unavailable", True, None),
    (openai_error(503, "slow_down", {"retry-after": "3"}), "upstream_unavailable", True, 3.0),
    (openai_error(400, "moderation_blocked"), "content_refused", False, None),
    (openai_error(400, "unsupported_file_mimetype", param="image"), "invalid_photo", False, None),
    (openai_error(400, "invalid_value", param="size"), "upstream_rejected", False, None),
    (openai_error(401, "invalid_api_key"), "provider_misconfigured", False, None),
    (openai_error(403, None), "provider_misconfigured", False, None),
    (openai_error(404, "model_not_found"), "provider_misconfigured", False, None),
    (timeout_error(), "upstream_timeout", True, None),
], ids=lambda v: v if isinstance(v, str) else None)
def test_openai_errors(exc, code, retryable, retry_after):
    error = openai_images.map_error(exc, "job-1")
    assert (error.code, error.retryable, error.retry_after) == (code, retryable, retry_after)
    assert error.message.endswith(".") and "openai" not in error.message.lower()


def test_openai_detail_names_status_code_and_request_id_for_the_operator():
    detail = openai_images.map_error(openai_error(401, "invalid_api_key"), "job-1").detail
    assert detail.startswith("openai answered 401, code invalid_api_key, request req_42")


@pytest.mark.parametrize("status, body, code, retryable", [
    (429, {"code": "Throttling.RateQuota"}, "rate_limited", True),
    (429, {"code": "Throttling.AllocationQuota"}, "rate_limited", True),
    (200, {"code": "Throttling"}, "rate_limited", True),
    (500, {"code": "InternalError"}, "upstream_unavailable", True),
    (400, {"code": "DataInspectionFailed", "message": "Input data may contain inappropriate content."},
     "content_refused", False),
    (400, {"code": "InvalidParameter", "message": "The image resolution is invalid."}, "invalid_photo", False),
    (400, {"code": "InvalidParameter", "message": "The parameter n is out of range."}, "upstream_rejected", False),
    (400, {"code": "Arrearage"}, "provider_misconfigured", False),
    (401, {"code": "InvalidApiKey"}, "provider_misconfigured", False),
    (403, {"code": "AccessDenied"}, "provider_misconfigured", False),
    (404, {"code": "ModelNotFound"}, "provider_misconfigured", False),
])
def test_qwen_errors(status, body, code, retryable):
    error = qwen_images.map_error(status, {"request_id": "r-1", "message": "", **body}, {}, "job-1")
    assert (error.code, error.retryable) == (code, retryable)
    assert "r-1" in error.detail


@pytest.mark.parametrize("headers, seconds", [
    ({}, None),
    ({"Retry-After": "2"}, 2.0),
    ({"retry-after": "0.5"}, 0.5),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the finer one wins, as the OpenAI SDK reads them
    ({"Retry-After": "soon"}, None),
    ({"Retry-After": "-3"}, None),
    ({"Retry-After": "86400"}, failures.MAX_RETRY_AFTER_S),
])
def test_retry_after(headers, seconds):
    assert failures.retry_after_seconds(headers) == seconds


def test_retry_after_as_an_http_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= failures.retry_after_seconds({"Retry-After": when}) <= 31


def test_keys_echoed_by_an_upstream_are_masked():
    upstream = Upstream("openai", "job-1", 401, "invalid_api_key", "req_1",
                        "Incorrect API key provided: sk-proj-abc***xyz. You can find your API key at ...")
    assert "sk-proj" not in upstream.describe() and "[redacted]" in upstream.describe()


@pytest.mark.parametrize("url, base, allowed", [
    ("https://dashscope-result-sh.oss-cn-shanghai.aliyuncs.com/x.png?Expires=1&Signature=a%2B", "https://d", True),
    ("http://dashscope-result.example/x.png", "https://dashscope-intl.aliyuncs.com", False),
    ("http://127.0.0.1:9/x.png", "http://127.0.0.1:9", True),
    ("file:///etc/passwd", "http://127.0.0.1:9", False),
    ("ftp://host/x.png", "https://d", False),
    ("https://user:pw@host/x.png", "https://d", False),
    ("not a url", "https://d", False),
])
def test_qwen_downloads_only_from_web_urls(url, base, allowed):
    assert qwen_images.download_allowed(url, base) is allowed


def test_sizes_follow_the_kind():
    assert (openai_images.openai_size(KIND["cover"]), openai_images.openai_size(KIND["page"])) == (
        "1024x1536", "1536x1024")
    assert (qwen_images.qwen_size(KIND["cover"]), qwen_images.qwen_size(KIND["page"])) == ("1024*1536", "1536*1024")
