"""Qwen image edit on Alibaba Cloud Model Studio (DashScope), over aiohttp.

One synchronous call to the multimodal-generation endpoint: the photo goes in as a
data URL beside the prompt, and the answer names a signed image URL that expires
(24 h), so the picture is downloaded at once. The download goes exactly where the
answer says (the signed query string untouched, no redirects followed) and never
carries our key. DashScope reports errors as ``{"code", "message", "request_id"}``,
usually with a matching HTTP status, sometimes inside a 200.
"""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import yarl

from s2s.catalog import Kind
from s2s.providers import failures
from s2s.providers.base import GeneratedImage, GenerationRequest, ProviderError, Report
from s2s.providers.failures import Upstream
from s2s.providers.prompts import build_prompt
from s2s.settings import Settings
from s2s.timeouts import within

ENDPOINT = "/api/v1/services/aigc/multimodal-generation/generation"
MAX_DOWNLOAD_BYTES = 40 * 1024 * 1024
NEGATIVE_PROMPT = "blurry, distorted face, extra fingers, extra limbs, watermark, frightening, violent"
_MISCONFIG_CODES = {"InvalidApiKey", "AccessDenied", "AccessDenied.Unpurchased", "ModelNotFound", "Arrearage",
                    "Model.AccessDenied"}


def qwen_size(kind: Kind) -> str:
    """The kind's canvas as ``W*H``, within the 512-2048 a side the plus/max models accept."""
    return "*".join(str(max(512, min(2048, side))) for side in (kind.width, kind.height))


def request_body(request: GenerationRequest, model: str) -> dict:
    photo = f"data:{request.photo_content_type};base64,{base64.b64encode(request.photo).decode()}"
    parameters = {"n": 1, "negative_prompt": NEGATIVE_PROMPT, "prompt_extend": False, "watermark": False}
    if model != "qwen-image-edit":  # the legacy model picks its own size and refuses the parameter
        parameters["size"] = qwen_size(request.kind)
    return {"model": model,
            "input": {"messages": [{"role": "user", "content": [{"image": photo}, {"text": build_prompt(request)}]}]},
            "parameters": parameters}


def image_url(answer: dict) -> str | None:
    """The first image URL in a successful answer, or None."""
    try:
        for choice in answer["output"]["choices"]:
            for part in choice["message"]["content"]:
                if isinstance(part, dict) and isinstance(part.get("image"), str):
                    return part["image"]
    except (KeyError, TypeError):
        return None
    return None


def download_allowed(url: str, base_url: str) -> bool:
    """https only (plain http only when the API itself is plain http: a local test or dev proxy), no credentials."""
    try:
        parsed = yarl.URL(url, encoded=True)
    except (ValueError, TypeError):
        return False
    schemes = ("https", "http") if base_url.startswith("http://") else ("https",)
    return parsed.scheme in schemes and bool(parsed.host) and not parsed.user and not parsed.password


def map_error(status: int, answer: dict, headers, job_id: str) -> ProviderError:
    """A DashScope error answer as the worker must treat it (see :mod:`s2s.providers.failures`)."""
    code = str(answer.get("code") or "")
    upstream = Upstream("qwen", job_id, status=status, code=code or None, request_id=answer.get("request_id"),
                        message=str(answer.get("message") or ""))
    if "DataInspection" in code or code == "InappropriateContent":
        return failures.content_refused(upstream)
    if code in _MISCONFIG_CODES or code.startswith("AccessDenied") or status in (401, 403, 404):
        return failures.misconfigured(upstream)
    if status == 429 or code.startswith("Throttling"):
        return failures.rate_limited(upstream, failures.retry_after_seconds(headers))
    if status >= 500 or code in ("InternalError", "ServiceUnavailable", "RequestTimeOut"):
        return failures.unavailable(upstream, failures.retry_after_seconds(headers))
    message = (upstream.message or "").lower()
    if code.startswith("InvalidParameter") and any(word in message for word in ("image", "photo", "url", "pixel")):
        return failures.invalid_photo(upstream)
    return failures.rejected(upstream)


class QwenProvider:
    name = "qwen"

    def __init__(self, settings: Settings):
        self.model = settings.qwen_model
        self.base_url = settings.qwen_base_url
        self.timeout_s = settings.upstream_timeout_ms / 1000
        self._key = settings.qwen_api_key
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        # made on first use: a session belongs to the running loop
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=min(10.0, self.timeout_s), sock_read=self.timeout_s))
        return self._session

    async def generate(self, request: GenerationRequest, report: Report) -> GeneratedImage:
        try:
            await report(5, "Sending the photo to the illustrator")
            url = await within(self.timeout_s, self._edit(request))
            await report(85, "Fetching the finished picture")
            data, content_type = await within(self.timeout_s, self._download(url, request.job_id))
        except asyncio.TimeoutError:
            message = f"no answer within {self.timeout_s:g} s"
            raise failures.timed_out(Upstream(self.name, request.job_id, message=message)) from None
        except aiohttp.ClientError as exc:
            raise failures.unavailable(Upstream(self.name, request.job_id, message=repr(exc))) from None
        await report(98, "Your picture is ready")
        return GeneratedImage(data=data, content_type=content_type)

    async def _edit(self, request: GenerationRequest) -> str:
        """Ask for the edit; return the image URL of the answer."""
        headers = {"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"}
        async with self._http().post(self.base_url + ENDPOINT, json=request_body(request, self.model),
                                     headers=headers) as resp:
            raw = await resp.read()
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                upstream = Upstream(self.name, request.job_id, status=resp.status,
                                    request_id=resp.headers.get("x-request-id"), message=raw[:200].decode("replace"))
                raise (failures.unavailable if resp.status >= 500 else failures.bad_answer)(upstream)
            if resp.status != 200 or (answer.get("code") and "output" not in answer):
                raise map_error(resp.status, answer, resp.headers, request.job_id)
        url = image_url(answer)
        if url is None or not download_allowed(url, self.base_url):
            raise failures.bad_answer(Upstream(self.name, request.job_id, status=resp.status,
                                               request_id=answer.get("request_id"),
                                               message="no downloadable image URL in the answer"))
        return url

    async def _download(self, url: str, job_id: str) -> tuple[bytes, str]:
        """Fetch the finished picture from exactly the URL given: no key, no redirects, bounded size."""
        async with self._http().get(yarl.URL(url, encoded=True), allow_redirects=False) as resp:
            host = resp.url.host
            if resp.status != 200:
                raise failures.unavailable(Upstream(self.name, job_id, status=resp.status,
                                                    message=f"image download from {host} failed"))
            chunks, size = [], 0
            async for chunk in resp.content.iter_chunked(256 * 1024):
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise failures.bad_answer(Upstream(self.name, job_id, message=f"image from {host} is too large"))
                chunks.append(chunk)
            data = b"".join(chunks)
        content_type = resp.content_type if resp.content_type.startswith("image/") else _sniff(data)
        if content_type is None:
            raise failures.bad_answer(Upstream(self.name, job_id, message=f"download from {host} is not an image"))
        return data, content_type

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None
