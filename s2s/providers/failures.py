"""The few ways an upstream call fails, as the worker must treat them.

Each provider maps its own statuses and codes onto these, so retry policy lives
in one place: a 429 waits and keeps the attempt (``rate_limited``: the worker
refunds it), 5xx and timeouts retry with backoff, a refusal of the content or
the photo ends the job with a sentence a parent can read, and bad credentials
end it and flag the provider for the operator.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Mapping

from attrs import frozen

from s2s.providers.base import ProviderError

log = logging.getLogger("s2s.providers")

RATE_LIMITED = "rate_limited"  # the worker gives the attempt back for this code
MISCONFIGURED = "provider_misconfigured"  # the worker flags the provider for the health endpoint
UNAVAILABLE = "upstream_unavailable"
TIMED_OUT = "upstream_timeout"
BAD_ANSWER = "upstream_bad_answer"
CONTENT_REFUSED = "content_refused"
INVALID_PHOTO = "invalid_photo"
REJECTED = "upstream_rejected"

#: The longest Retry-After we take at its word; beyond it the worker's own backoff applies.
MAX_RETRY_AFTER_S = 600.0

_SECRET_LIKE = re.compile(r"\bsk-[A-Za-z0-9_*\-]{4,}")  # OpenAI and DashScope keys both start sk-


@frozen
class Upstream:
    """What the logs and the operator need to know about one failed upstream answer."""

    provider: str
    job_id: str
    status: int | None = None  # HTTP status; None for timeouts and dropped connections
    code: str | None = None
    request_id: str | None = None
    message: str | None = None

    def describe(self) -> str:
        parts = [f"{self.provider} answered {self.status}" if self.status else f"{self.provider} call failed"]
        if self.code:
            parts.append(f"code {self.code}")
        if self.request_id:
            parts.append(f"request {self.request_id}")
        text = ", ".join(parts)
        return f"{text}: {redact(self.message)[:300]}" if self.message else text


def redact(text: str | None) -> str:
    """Upstream messages may echo part of a key ("Incorrect API key provided: sk-ab***yz"): mask it."""
    return _SECRET_LIKE.sub("[redacted]", text or "")


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date); None if absent or odd."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        if "retry-after-ms" in lower:
            seconds = float(lower["retry-after-ms"]) / 1000
        elif "retry-after" in lower:
            raw = lower["retry-after"].strip()
            try:
                seconds = float(raw)
            except ValueError:
                when = email.utils.parsedate_to_datetime(raw)
                seconds = when.timestamp() - time.time()
        else:
            return None
    except (TypeError, ValueError, OverflowError):
        return None
    if seconds != seconds or seconds < 0:  # NaN or in the past
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


def _logged(error: ProviderError, upstream: Upstream) -> ProviderError:
    error.status = upstream.status  # every failure passes here: the one place that knows both
    log.warning("upstream call failed", extra={
        "job": upstream.job_id, "provider": upstream.provider, "status": upstream.status,
        "upstream_code": upstream.code, "request_id": upstream.request_id, "code": error.code,
        "retryable": error.retryable, "retry_after": error.retry_after, "error": redact(upstream.message)[:300]})
    return error


def rate_limited(upstream: Upstream, retry_after: float | None) -> ProviderError:
    return _logged(ProviderError("The picture service is busy right now; we will try again shortly.",
                                 retryable=True, retry_after=retry_after, code=RATE_LIMITED,
                                 detail=upstream.describe()), upstream)


def unavailable(upstream: Upstream, retry_after: float | None = None) -> ProviderError:
    return _logged(ProviderError("The picture service is not answering right now; we will try again shortly.",
                                 retryable=True, retry_after=retry_after, code=UNAVAILABLE,
                                 detail=upstream.describe()), upstream)


def timed_out(upstream: Upstream) -> ProviderError:
    return _logged(ProviderError("The picture service took too long to answer; we will try again.",
                                 retryable=True, code=TIMED_OUT, detail=upstream.describe()), upstream)


def bad_answer(upstream: Upstream) -> ProviderError:
    return _logged(ProviderError("The picture service sent back something we could not read; we will try again.",
                                 retryable=True, code=BAD_ANSWER, detail=upstream.describe()), upstream)


def content_refused(upstream: Upstream) -> ProviderError:
    return _logged(ProviderError(
        "The picture service's safety check turned this picture down. Please try another photo or hero name.",
        retryable=False, code=CONTENT_REFUSED, detail=upstream.describe()), upstream)


def invalid_photo(upstream: Upstream) -> ProviderError:
    return _logged(ProviderError(
        "The picture service could not use this photo. Please try a clear JPEG or PNG photo of the child.",
        retryable=False, code=INVALID_PHOTO, detail=upstream.describe()), upstream)


def misconfigured(upstream: Upstream) -> ProviderError:
    return _logged(ProviderError("The picture service is not set up correctly right now; please try again later.",
                                 retryable=False, code=MISCONFIGURED, detail=upstream.describe()), upstream)


def rejected(upstream: Upstream) -> ProviderError:
    return _logged(ProviderError("The picture service could not make this picture.", retryable=False,
                                 code=REJECTED, detail=upstream.describe()), upstream)
