"""POST /api/jobs/generate-image: the submit, from the first header to the 202.

Refusals that need no body (rate, type, size) come before it is read; the body is then
validated and the photo checked and stripped of its metadata (:mod:`s2s.uploads`,
:mod:`s2s.photo_intake`) off the IOLoop, and only a whole, valid job is queued.
"""

from __future__ import annotations

import logging
import re

import redis.exceptions
import tornado.web

from s2s import redis_memory
from s2s.admission import Refusal, client_key
from s2s.job_requests import IdempotencyConflict, IdempotencyKey
from s2s.models import JOB_ID_PATTERN, status_path
from s2s.uploads import MAX_HERO_NAME, InputError
from s2s.web.describe import JSON, NO_STORE, answer, describe, error, operation, ref, retry_after
from s2s.web.handlers import ApiHandler
from s2s.webhooks import destinations

log = logging.getLogger("s2s.api")

#: A refused body up to this many times the limit is read and discarded before the answer (see
#: ``_refuse_before_body``); a larger one is answered at once and its connection closed.
DRAIN_FACTOR = 2
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
#: The header as sent: HTTP drops whitespace around a field value (RFC 9110 5.5), so "key " is the key "key".
_IDEMPOTENCY_HEADER = r"^[ \t]*[\x21-\x7e]{1,255}[ \t]*$"
# A 1x1 PNG: the example submission of the description is a real one (the API accepts it).
EXAMPLE_SUBMISSION = {"heroName": "Mia", "themeId": "space", "styleKey": "cartoon", "kind": "cover",
                      "originalImageBase64": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAAD"
                                             "ElEQVR4nGP4dSIAAATSAhOnfE5zAAAAAElFTkSuQmCC"}

def _schemas(settings, catalog) -> dict:
    """What a submission may carry and what it is answered, with the limits this process enforces."""
    def choice(options, default: str) -> dict:
        # null counts as "not given" (the default), so the schema admits it
        return {"enum": [*options, None], "default": default,
                "description": f"Default `{default}`; the choices are listed by GET /api/catalog."}

    return {
        "Submission": {
            "type": "object",
            "required": ["heroName", "originalImageBase64"],
            "properties": {
                "heroName": {"type": "string", "minLength": 1, "examples": ["Mia"], "description": (
                    f"1-{MAX_HERO_NAME} characters after trimming surrounding whitespace, no control characters; "
                    "drawn on the cover.")},
                "originalImageBase64": {
                    "type": "string", "minLength": 1,
                    "description": (
                        "The photo: a data URL (`data:image/jpeg;base64,...`, also png and webp) or bare "
                        "base64. It must decode to a whole, readable image of the declared type, of at most "
                        f"{settings.max_image_bytes} bytes (MAX_IMAGE_BYTES) and {settings.max_image_pixels} "
                        "pixels (S2S_MAX_IMAGE_PIXELS)."),
                },
                "themeId": choice(catalog.themes, catalog.default_theme),
                "styleKey": choice(catalog.styles, catalog.default_style),
                "kind": choice(catalog.kinds, catalog.default_kind),
                "webhookUrl": {"type": ["string", "null"], "format": "uri", "maxLength": destinations.MAX_URL_LENGTH,
                               "description": (
                    "Where this job's end is sent as a signed webhook (Standard Webhooks v1), instead of "
                    "S2S_WEBHOOK_URL. Accepted only when the deployment allows it (S2S_WEBHOOK_PER_JOB"
                    + (", on" if settings.webhook_per_job else ", off here") + "); https only, to a public "
                    "address, except hosts in S2S_WEBHOOK_HOSTS. Refused with 400 `webhook_url_not_allowed` "
                    "or `invalid_webhook_url`.")},
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["jobId", "status", "message", "statusUrl", "websocketSubscription"],
            "properties": {
                "jobId": {"type": "string", "pattern": f"^{JOB_ID_PATTERN}$",
                          "description": "Unguessable: at least 128 random bits, URL-safe."},
                "status": {"const": "queued"},
                "message": {"type": "string"},
                "statusUrl": {"type": "string", "format": "uri-reference"},
                "websocketSubscription": {"type": "string", "pattern": "^job:",
                                          "description": "The `jobId` to give `subscribe_to_job` on /ws."},
                "deleteToken": {"type": "string", "pattern": "^[A-Za-z0-9_-]{24}$", "description": (
                    "The parent's key to `DELETE /api/jobs/{jobId}` (144 random bits), shown only in this "
                    "answer: the server keeps just its SHA-256. A retry with the same Idempotency-Key shows it "
                    "again (the key's entry keeps it sealed with the key itself). Absent only when replaying "
                    "a job submitted before delete tokens existed.")},
            },
        },
    }


@describe("/api/jobs/generate-image", schemas=_schemas, post=lambda settings, catalog: operation(
    "submitJob", "jobs", "Submit a photo to be drawn as a storybook cover or page",
    description="Validated entirely before anything is queued: the photo's structure is checked from its first "
    "to its last byte (a truncated file is refused) and its metadata stripped; the worker decodes it. Answers 202 "
    f"at once; the picture is made by a worker. Requests over {settings.max_body_bytes} bytes are refused with 413 "
    "from their `Content-Length`: at once to a client that sent `Expect: 100-continue`, else after the body is "
    "read and discarded, so a client that writes it whole first can read the answer; a body over "
    f"{settings.max_body_bytes * DRAIN_FACTOR} bytes is not read, and its connection is closed.",
    parameters=[{"name": "Idempotency-Key", "in": "header", "required": False,
                 "schema": {"type": "string", "pattern": _IDEMPOTENCY_HEADER},
                 "description": "A retried POST with the same key and body from the same client (IP address, or "
                                "IPv6 /64) answers the same job (and counts once against the rate limit); the same "
                                "key with another body is a 409. Keys are scoped to the client: the same key from "
                                "another client makes another job."}],
    requestBody={"required": True, "content": {JSON: {"schema": ref("Submission"), "example": EXAMPLE_SUBMISSION}}},
    responses={
        202: answer("Accepted", "Queued (or, with a reused Idempotency-Key, already queued).",
                    headers={"Location": {"$ref": "#/components/headers/Location"}, **NO_STORE},
                    links={name: {"operationId": op, "parameters": {"jobId": "$response.body#/jobId"}} for name, op
                           in (("status", "getJobStatus"), ("image", "getJobImage"), ("cancel", "cancelJob"),
                               ("delete", "deleteJob"))}),
        400: error("A field breaks a rule; `details.field` names it and `details.reason` says why.", "invalid_json",
                   "missing_field", "invalid_field", "invalid_base64", "unsupported_image_type", "invalid_image",
                   "image_type_mismatch", "image_too_many_pixels", "unknown_themeId", "unknown_styleKey",
                   "unknown_kind", "invalid_idempotency_key", "webhook_url_not_allowed", "invalid_webhook_url"),
        409: error("This client used this Idempotency-Key for a different body. The answer names no job.",
                   "idempotency_key_reused"),
        413: error(f"The request is over {settings.max_body_bytes} bytes (`request_too_large`), or the decoded photo "
                   f"over {settings.max_image_bytes} bytes (`image_too_large`); `details.maxBytes` says the limit.",
                   "request_too_large", "image_too_large"),
        415: error("The body is not sent as `Content-Type: application/json`.", "unsupported_media_type"),
        429: error(f"This client (IP address, or IPv6 /64) submitted {settings.submit_per_minute or 'its limit of'} "
                   "jobs in the last minute (`S2S_SUBMIT_PER_MINUTE`); `Retry-After` says when the next is taken.",
                   "rate_limited", headers=retry_after(required=True)),
        503: error("Too many jobs are waiting (`queue_full`, with `Retry-After`; `S2S_MAX_WAITING`), the job store "
                   "is full (`storage_full`, with `Retry-After`; `S2S_STORE_HIGH_WATER_PERCENT`), or it is down "
                   "(`redis_unavailable`); or this process had no room to read the upload within "
                   "`S2S_UPLOAD_WAIT_MS` (`server_busy`, with `Retry-After`).", "queue_full", "storage_full",
                   "redis_unavailable", "server_busy",
                   headers=retry_after(required=False))}))
@tornado.web.stream_request_body
class GenerateImageHandler(ApiHandler):
    """POST /api/jobs/generate-image: validate, store, queue; 202 with where to look."""

    async def prepare(self) -> None:
        super().prepare()
        self._chunks: list[bytes] = []
        self._size = 0
        self._refusal: tuple | None = None  # (status, code, message, details): answered once the body is drained
        self._body_taken = 0
        self._gone = False
        if self.request.method != "POST":
            return
        self._client = client_key(self.request.remote_ip)
        limit = self.ctx.settings.max_body_bytes
        # a body past this is never read: Tornado cuts the connection; below it a refused body is read and discarded
        self.request.connection.set_max_body_size(limit * DRAIN_FACTOR)
        try:  # before the body: a refused client costs no decoding and no memory
            refusal = await self.ctx.admission.check(self._client)
            if refusal is None:  # past the high-water mark: the room left is for the jobs already running
                fill = await self.ctx.queue.memory.fill()  # read at most once a second (cached)
                refusal = redis_memory.refusal(fill) if fill.full else None
        except redis.exceptions.RedisError:
            refusal = None  # decided again before queueing; meanwhile bad input still gets its 400
        if refusal:
            log.info("submit refused", extra={"client": self._client, "code": refusal.code})
            self.set_header("Retry-After", str(refusal.retry_after_s))
            return self._refuse_before_body(refusal.status, refusal.code, refusal.message, refusal.details)
        ctype = self.request.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            return self._refuse_before_body(415, "unsupported_media_type",
                                            "Send the job as JSON (Content-Type: application/json).")
        length = self._content_length()
        if length is not None and length > limit:
            self._refuse_before_body(413, "request_too_large", f"The request is larger than {limit} bytes.",
                                     {"maxBytes": limit, "maxImageBytes": self.ctx.settings.max_image_bytes})
        if not self._finished and self._refusal is None:  # the body is read only once there is room for it
            await self._reserve_body(length if length is not None else limit)

    def _content_length(self) -> int | None:
        length = self.request.headers.get("Content-Length")
        return int(length) if length and re.fullmatch(r"[0-9]{1,18}", length) else None

    def _refuse_before_body(self, status: int, code: str, message: str, details: dict | None = None) -> None:
        """Refuse now if the client waits for it, else once its body is read and discarded.

        An answer that closes the connection under an upload reaches a client that writes its whole
        body before reading (urllib, fetch, aiohttp) as "connection reset", never as this JSON. So a body
        Tornado will read (at most ``DRAIN_FACTOR`` times the limit) is drained first; one that waits
        for ``100 Continue`` (curl) or is larger is answered at once, and its connection closed.
        """
        length = self._content_length()
        waits = self.request.headers.get("Expect", "").lower() == "100-continue"
        chunked = "chunked" in self.request.headers.get("Transfer-Encoding", "").lower()
        too_big = length is not None and length > self.ctx.settings.max_body_bytes * DRAIN_FACTOR
        if waits or too_big or (not length and not chunked):
            return self.fail(status, code, message, details)
        self._refusal = (status, code, message, details)

    async def _reserve_body(self, size: int) -> None:
        """Twice the body from the process's body budget: its chunks, and their copy on the way to a decode
        process (which parses it; what that costs there is bounded by S2S_MAX_DECODES)."""
        gate = self.ctx.uploads
        try:
            self._body_taken = await gate.reserve(gate.bodies, 2 * size)
        except InputError as exc:
            self.set_header("Retry-After", str(gate.retry_after_s))
            return self._refuse_before_body(exc.status, exc.code, exc.message, exc.details)  # read, not kept
        if self._gone:
            self._release_body()

    def _release_body(self) -> None:
        taken, self._body_taken = self._body_taken, 0
        if taken:
            self.ctx.uploads.bodies.give_back(taken)

    def on_finish(self) -> None:
        self._release_body()

    def on_connection_close(self) -> None:
        self._gone = True
        self._release_body()
        super().on_connection_close()

    def refuse(self, refusal: Refusal) -> None:
        log.info("submit refused", extra={"client": self._client, "code": refusal.code})
        self.set_header("Retry-After", str(refusal.retry_after_s))
        self.fail(refusal.status, refusal.code, refusal.message, refusal.details)

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        limit = self.ctx.settings.max_body_bytes
        if self._refusal is None and self._size > limit:  # a chunked body, or one longer than it said
            self._refusal = (413, "request_too_large", f"The request is larger than {limit} bytes.",
                             {"maxBytes": limit, "maxImageBytes": self.ctx.settings.max_image_bytes})
        if self._refusal is not None:
            self._chunks.clear()  # drained: read and dropped
        else:
            self._chunks.append(chunk)

    async def post(self) -> None:
        settings = self.ctx.settings
        if self._refusal is not None:
            return self.fail(*self._refusal)
        idempotency_key = self.request.headers.get("Idempotency-Key")
        if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
            return self.fail(400, "invalid_idempotency_key",
                             "Idempotency-Key must be 1-255 visible ASCII characters.")
        chunks, self._chunks = self._chunks, []
        gate = self.ctx.uploads
        try:  # off the IOLoop, in the decode processes (s2s/web/upload_gate.py); no pixel is decoded
            job = await gate.read_job(chunks, self.ctx.catalog, max_bytes=settings.max_image_bytes,
                                      max_pixels=settings.max_image_pixels)
            del chunks
            self._release_body()
        except InputError as exc:
            if exc.status == 503:
                self.set_header("Retry-After", str(gate.retry_after_s))
            return self.fail(exc.status, exc.code, exc.message, exc.details)
        if job.webhook_url is not None:  # where it points is checked here, off the decode processes (DNS)
            refused = await destinations.submit_refusal(job.webhook_url, settings)
            if refused:
                return self.fail(400, refused[0], f"webhookUrl {refused[1]}.",
                                 {"field": "webhookUrl", "reason": refused[1]})
        fill = await self.ctx.queue.memory.fill()
        if fill.full:  # again: it may have filled while this body was read
            return self.refuse(redis_memory.refusal(fill))
        token, refusal = await self.ctx.admission.take(self._client)  # atomic across API processes
        if refusal:
            return self.refuse(refusal)
        idempotency = IdempotencyKey(self._client, idempotency_key) if idempotency_key is not None else None
        try:
            accepted = await self.ctx.queue.accept(job, idempotency)
        except IdempotencyConflict:  # names no job: the one it made is the key to someone's picture
            await self.ctx.admission.give_back(self._client, token)
            return self.fail(409, "idempotency_key_reused",
                             "This Idempotency-Key was already used for a different request; send this one "
                             "with a new key.")
        except redis.exceptions.RedisError as exc:  # no job was made: the client keeps its submit
            try:
                await self.ctx.admission.give_back(self._client, token)
            except redis.exceptions.RedisError:
                pass  # unreachable: the token expires with its window
            if redis_memory.is_out_of_memory(exc):
                return self.refuse(redis_memory.refusal(self.ctx.queue.memory.refused()))
            raise
        job_id = accepted.job_id
        if not accepted.created:
            await self.ctx.admission.give_back(self._client, token)  # a replay of an accepted job is free
        if accepted.created:
            log.info("job queued", extra={"job": job_id, "theme": job.theme_id, "style": job.style_key,
                                          "kind": job.kind})
        self.set_header("Location", status_path(job_id))
        self.set_header("Cache-Control", "no-store")  # it carries the delete token
        body = {"jobId": job_id, "status": "queued", "message": "Job queued successfully",
                "statusUrl": status_path(job_id), "websocketSubscription": f"job:{job_id}"}
        if accepted.delete_token:
            body["deleteToken"] = accepted.delete_token
        self.answer(body, 202)
