"""A fake OpenAI Images API: ``POST /v1/images/edits`` as documented.

Multipart form with an ``image`` file part (png/jpeg/webp; ``application/octet-stream``
is refused with 400 ``unsupported_file_mimetype``, as the real API does) and text
parts (``prompt`` required, ``model``, ``size``, ``quality``, ``stream`` as "true",
``partial_images``...). ``Authorization: Bearer KEY`` must carry the expected key,
else 401 ``invalid_api_key``. Answers carry ``x-request-id``. With ``stream=true``
the answer is server-sent events: ``image_edit.partial_image`` events, then
``image_edit.completed``; errors are ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time

from aiohttp import web
from attrs import frozen

from tests.fakes.server import FakeUpstream, Seen, png

FINAL_IMAGE = png((40, 160, 90))
PARTIAL_IMAGE = png((200, 200, 200))
ALLOWED_TYPES = ("image/png", "image/jpeg", "image/webp")


@frozen
class Reply:
    status: int = 200
    code: str | None = None
    type: str = "invalid_request_error"
    message: str = ""
    param: str | None = None
    retry_after: str | None = None  # the Retry-After header of an error
    delay: float = 0.0  # seconds before answering
    hang: bool = False  # never answer before the client gives up
    hang_after_partials: bool = False  # stream the partial images, then keep the client waiting
    error_after_partials: str | None = None  # stream the partials, then an error event with this code


def rate_limited(retry_after: str = "1") -> Reply:
    return Reply(429, "rate_limit_exceeded", "requests", "Rate limit reached for images per minute.",
                 retry_after=retry_after)


def quota_exhausted() -> Reply:
    return Reply(429, "insufficient_quota", "insufficient_quota", "You exceeded your current quota.")


def server_error() -> Reply:
    return Reply(500, "server_error", "server_error", "The server had an error while processing your request.")


def moderation_blocked() -> Reply:
    return Reply(400, "moderation_blocked", "image_generation_user_error",
                 "Your request was rejected by the safety system.")


def invalid_image() -> Reply:
    return Reply(400, "invalid_image_format", "invalid_request_error", "Invalid image file or mode.", "image")


def _error_body(reply: Reply) -> dict:
    return {"error": {"message": reply.message, "type": reply.type, "param": reply.param, "code": reply.code}}


class FakeOpenAI(FakeUpstream):
    def __init__(self, key: str = "sk-test-openai-0123456789", stream_gap_s: float = 0.05):
        super().__init__(Reply())
        self.key = key
        self.stream_gap_s = stream_gap_s

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/edits", self.tracked(self.edits))

    async def edits(self, request: web.Request) -> web.StreamResponse:
        seen = self.record(request, await self.seen(request))
        request_id = f"req_{secrets.token_hex(8)}"
        reply, refused = await self.answer_for(seen)
        if refused or reply.status != 200:
            return self._error(reply, request_id)
        if seen.fields.get("stream") == "true":
            return await self._stream(request, seen, reply, request_id)
        return web.json_response({"created": int(time.time()), "data": [{"b64_json": _b64(FINAL_IMAGE)}],
                                  "output_format": "png", "usage": _usage()}, headers={"x-request-id": request_id})

    def _contract(self, seen: Seen) -> Reply | None:
        if seen.headers.get("Authorization") != f"Bearer {self.key}":
            return Reply(401, "invalid_api_key", message="Incorrect API key provided: sk-wr***ng.")
        if "image" not in seen.files:
            return Reply(400, "missing_required_parameter", message="Missing required parameter: 'image'.",
                         param="image")
        if seen.files["image"][1] not in ALLOWED_TYPES:
            return Reply(400, "unsupported_file_mimetype", param="image",
                         message=f"Invalid file 'image': unsupported mimetype ('{seen.files['image'][1]}').")
        if not seen.fields.get("prompt"):
            return Reply(400, "missing_required_parameter", message="Missing required parameter: 'prompt'.",
                         param="prompt")
        return None

    def _error(self, reply: Reply, request_id: str) -> web.Response:
        headers = {"x-request-id": request_id}
        if reply.retry_after is not None:
            headers["Retry-After"] = reply.retry_after
        return web.json_response(_error_body(reply), status=reply.status, headers=headers)

    async def _stream(self, request: web.Request, seen: Seen, reply: Reply, request_id: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-request-id": request_id})
        await resp.prepare(request)
        partials = int(seen.fields.get("partial_images", "0"))
        common = {"background": "opaque", "created_at": int(time.time()), "output_format": "png",
                  "quality": seen.fields.get("quality", "auto"), "size": seen.fields.get("size", "auto")}
        for index in range(partials):
            await _event(resp, "image_edit.partial_image", {
                "type": "image_edit.partial_image", "b64_json": _b64(PARTIAL_IMAGE), "partial_image_index": index,
                **common})
            await asyncio.sleep(self.stream_gap_s)
        if reply.hang_after_partials:
            await self.hang()
        if reply.error_after_partials:
            await _event(resp, "error", {"type": "error", "error": _error_body(
                Reply(code=reply.error_after_partials, type="image_generation_user_error",
                      message="Your request was rejected by the safety system."))["error"]})
        else:
            await _event(resp, "image_edit.completed", {"type": "image_edit.completed",
                                                        "b64_json": _b64(FINAL_IMAGE), "usage": _usage(), **common})
        await resp.write_eof()
        return resp


async def _event(resp: web.StreamResponse, name: str, data: dict) -> None:
    await resp.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _usage() -> dict:
    return {"input_tokens": 50, "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
            "output_tokens": 50, "total_tokens": 100}
