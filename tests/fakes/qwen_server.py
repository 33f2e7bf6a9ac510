"""A fake DashScope (Alibaba Cloud Model Studio) for Qwen image edit, as documented.

``POST /api/v1/services/aigc/multimodal-generation/generation`` with
``Authorization: Bearer KEY`` and a JSON body ``{"model", "input": {"messages":
[{"role": "user", "content": [{"image": URL or data URL}, {"text": ...}]}]},
"parameters": {...}}``. A success names a signed, expiring image URL (here on this
same server, under ``/results/``), which the client must fetch; errors are flat
``{"request_id", "code", "message"}`` with the matching status (401 InvalidApiKey,
403 AccessDenied, 400 DataInspectionFailed/InvalidParameter, 429 Throttling.RateQuota,
500 InternalError), and DashScope sometimes puts an error code in a 200.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from aiohttp import web
from attrs import frozen

from tests.fakes.server import FakeUpstream, Seen, png

ENDPOINT = "/api/v1/services/aigc/multimodal-generation/generation"
RESULT_IMAGE = png((230, 120, 40), (72, 48))
#: the query string of a signed OSS URL; the "%2B" must reach us as sent, not re-encoded
SIGNATURE = "Expires=1767225600&OSSAccessKeyId=LTAI5tFake&Signature=ab%2Bcd%3D"


@frozen
class Reply:
    status: int = 200
    code: str | None = None
    message: str = ""
    retry_after: str | None = None
    delay: float = 0.0
    hang: bool = False  # never answer before the client gives up
    error_in_ok: bool = False  # status 200, but an error body
    image_url: str | None = None  # answer this URL instead of one on this server


def throttled(retry_after: str = "1") -> Reply:
    return Reply(429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later.",
                 retry_after=retry_after)


def data_inspection_failed() -> Reply:
    return Reply(400, "DataInspectionFailed", "Input data may contain inappropriate content.")


def internal_error() -> Reply:
    return Reply(500, "InternalError", "An internal error has occured, please try again later.")


def access_denied() -> Reply:
    return Reply(403, "AccessDenied", "You do not have access to this model.")


class FakeQwen(FakeUpstream):
    def __init__(self, key: str = "sk-test-qwen-0123456789"):
        super().__init__(Reply())
        self.key = key
        self.downloads: list[Seen] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post(ENDPOINT, self.tracked(self.generate))
        app.router.add_get("/results/{name}", self.result)

    async def generate(self, request: web.Request) -> web.Response:
        seen = self.record(request, await self.seen(request))
        request_id = secrets.token_hex(8)
        reply, refused = await self.answer_for(seen)
        if refused or reply.status != 200 or reply.error_in_ok:
            return self._error(reply, request_id)
        url = reply.image_url or f"{self.url}/results/{secrets.token_hex(6)}.png?{SIGNATURE}"
        return web.json_response({
            "output": {"choices": [{"finish_reason": "stop",
                                    "message": {"role": "assistant", "content": [{"image": url}]}}]},
            "usage": {"width": 1024, "height": 1536, "image_count": 1}, "request_id": request_id})

    async def result(self, request: web.Request) -> web.Response:
        self.downloads.append(await self.seen(request))
        return web.Response(body=RESULT_IMAGE, content_type="image/png")

    def _contract(self, seen: Seen) -> Reply | None:
        if seen.headers.get("Authorization") != f"Bearer {self.key}":
            return Reply(401, "InvalidApiKey", "Invalid API-key provided.")
        body = seen.json if isinstance(seen.json, dict) else {}
        try:
            (message,) = body["input"]["messages"]
            images = [part["image"] for part in message["content"] if "image" in part]
            texts = [part["text"] for part in message["content"] if "text" in part]
        except (KeyError, TypeError, ValueError):
            return Reply(400, "InvalidParameter", "The input messages are malformed.")
        if not body.get("model") or message.get("role") != "user" or not 1 <= len(images) <= 3 or len(texts) != 1:
            return Reply(400, "InvalidParameter", "One user message with 1-3 images and one text is required.")
        for image in images:
            if not _decodes(image):
                return Reply(400, "InvalidParameter", "The image url or data is invalid.")
        return None

    @staticmethod
    def _error(reply: Reply, request_id: str) -> web.Response:
        headers = {"Retry-After": reply.retry_after} if reply.retry_after is not None else {}
        return web.json_response({"request_id": request_id, "code": reply.code, "message": reply.message},
                                 status=reply.status, headers=headers)


def _decodes(image: str) -> bool:
    if not image.startswith("data:image/"):
        return image.startswith(("https://", "http://"))
    header, _, payload = image.partition(",")
    try:
        return header.endswith(";base64") and bool(base64.b64decode(payload, validate=True))
    except (binascii.Error, ValueError):
        return False
