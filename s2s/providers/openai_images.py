"""OpenAI image edit through the official SDK, streamed so partial images become real progress.

The photo goes out as ``(filename, bytes, content_type)``: bare bytes would be sent
as ``application/octet-stream``, which the API refuses. The SDK's own retries are
off (``max_retries=0``): the worker owns retries and backoff, and two layers of
them would multiply. Every SDK error becomes a :class:`ProviderError` here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

import openai

from s2s.catalog import Kind
from s2s.providers import failures
from s2s.providers.base import GeneratedImage, GenerationRequest, Report
from s2s.providers.failures import Upstream
from s2s.providers.prompts import build_prompt
from s2s.settings import Settings
from s2s.timeouts import within

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
_MODERATION_CODES = {"moderation_blocked", "content_policy_violation"}
_PHOTO_CODES = {"invalid_image", "invalid_image_format", "invalid_image_file", "unsupported_file_mimetype",
                "image_too_large", "image_file_too_large", "invalid_image_size"}
_MISCONFIG_CODES = {"insufficient_quota", "billing_hard_limit_reached", "invalid_api_key", "model_not_found"}


def openai_size(kind: Kind) -> str:
    """The standard size closest to the kind's shape (every GPT image model takes these three)."""
    if kind.height > kind.width:
        return "1024x1536"
    return "1536x1024" if kind.width > kind.height else "1024x1024"


def photo_file(request: GenerationRequest) -> tuple[str, bytes, str]:
    ext = _EXTENSIONS.get(request.photo_content_type, "png")
    return f"hero.{ext}", request.photo, request.photo_content_type


class OpenAIProvider:
    name = "openai"

    def __init__(self, settings: Settings):
        self.model = settings.openai_model
        self.size = settings.openai_size
        self.quality = settings.openai_quality
        self.partial_images = settings.openai_partial_images
        self.timeout_s = settings.upstream_timeout_ms / 1000
        self._client = openai.AsyncOpenAI(
            api_key=settings.openai_api_key, base_url=settings.openai_base_url or DEFAULT_BASE_URL, max_retries=0,
            timeout=openai.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)))

    async def generate(self, request: GenerationRequest, report: Report) -> GeneratedImage:
        try:
            b64 = await within(self.timeout_s, self._edit(request, report))
        except asyncio.TimeoutError:
            message = f"no image within {self.timeout_s:g} s"
            raise failures.timed_out(Upstream(self.name, request.job_id, message=message)) from None
        except openai.APIError as exc:
            raise map_error(exc, request.job_id) from None
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            message = "the final image is not base64"
            raise failures.bad_answer(Upstream(self.name, request.job_id, message=message)) from None
        await report(98, "Your picture is ready")
        return GeneratedImage(data=data, content_type="image/png")

    async def _edit(self, request: GenerationRequest, report: Report) -> str:
        """Stream the edit; return the final image's base64."""
        await report(5, "Sending the photo to the illustrator")
        stream = await self._client.images.edit(
            image=photo_file(request), prompt=build_prompt(request), model=self.model, n=1,
            size=self.size or openai_size(request.kind), quality=self.quality, output_format="png",
            stream=True, partial_images=self.partial_images)
        drafts = max(1, self.partial_images)
        async with stream:
            async for event in stream:
                if event.type == "image_edit.partial_image":
                    step = min(event.partial_image_index + 1, drafts)
                    await report(10 + 80 * step // (drafts + 1), f"Sketching the picture (draft {step} of {drafts})")
                elif event.type == "image_edit.completed":
                    return event.b64_json
        message = "the stream ended without the final image"
        raise failures.bad_answer(Upstream(self.name, request.job_id, message=message))

    async def close(self) -> None:
        await self._client.close()


def map_error(exc: openai.APIError, job_id: str) -> Exception:
    """An SDK error as the worker must treat it (see :mod:`s2s.providers.failures`)."""
    if isinstance(exc, openai.APITimeoutError):
        return failures.timed_out(Upstream("openai", job_id, message=str(exc)))
    if isinstance(exc, openai.APIConnectionError):
        return failures.unavailable(Upstream("openai", job_id, message=str(exc)))
    status = getattr(exc, "status_code", None)
    headers = exc.response.headers if isinstance(exc, openai.APIStatusError) else {}
    upstream = Upstream("openai", job_id, status=status, code=exc.code or getattr(exc, "type", None),
                        request_id=getattr(exc, "request_id", None), message=exc.message)
    code = exc.code or ""
    if code in _MODERATION_CODES:
        return failures.content_refused(upstream)
    if code in _MISCONFIG_CODES or status in (401, 403, 404):
        return failures.misconfigured(upstream)
    if status == 429 or code == "rate_limit_exceeded":
        return failures.rate_limited(upstream, failures.retry_after_seconds(headers))
    if status is None or status in (408, 409) or status >= 500:  # a failure inside the stream carries no status
        return failures.unavailable(upstream, failures.retry_after_seconds(headers))
    if code in _PHOTO_CODES or exc.param in ("image", "image[]"):
        return failures.invalid_photo(upstream)
    return failures.rejected(upstream)
