"""REST handlers: thin, each one validates, calls the queue and answers.

Every error leaves through :meth:`ApiHandler.fail` in the contract's shape
``{"error", "code", "details"?}``; Tornado's own errors (404, 405, 500) are
turned into that shape too, never an HTML page or a stack trace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import redis.exceptions
import tornado.web
from attrs import Factory, field, frozen

from s2s import logs, provider_state, redis_memory
from s2s.admission import Admission
from s2s.catalog import Catalog
from s2s.models import JOB_ID_PATTERN, JobStatus
from s2s.queue import Queue
from s2s.settings import Settings
from s2s.storage import BlobStore
from s2s.timeouts import within
from s2s.web.access import bearer_token, check_operator, origin_allowed
from s2s.web.describe import NO_STORE, answer, describe, error, operation
from s2s.web.upload_gate import UploadGate

log = logging.getLogger("s2s.api")

JOB_ID = rf"(?P<job_id>{JOB_ID_PATTERN})"  # a route segment; the handler gets it as job_id
HEALTH_PROBE_S = 0.8  # health answers within a second, Redis or not: the probe gets this, the answer the rest
PREFLIGHT_HEADERS = "Content-Type, Idempotency-Key, Authorization, Last-Event-ID"  # what a browser may send
_STATUS_NAMES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
                 429: "rate_limited", 500: "internal_error", 503: "unavailable"}


@frozen
class AppContext:
    """What every handler needs, passed in through the route table."""

    settings: Settings
    queue: Queue
    catalog: Catalog
    admission: Admission = field(default=Factory(
        lambda self: Admission(self.queue.redis, self.queue.keys, self.settings), takes_self=True))
    #: where photos and pictures live (S2S_STORAGE_URL): the queue's store, which job records refer to
    blobs: BlobStore = field(default=Factory(lambda self: self.queue.blobs, takes_self=True))
    uploads: UploadGate = field(default=Factory(lambda self: UploadGate(self.settings), takes_self=True))


class ApiHandler(tornado.web.RequestHandler):
    ctx: AppContext

    def initialize(self, ctx: AppContext) -> None:
        self.ctx = ctx

    # ---- CORS ------------------------------------------------------------------------
    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")

    def prepare(self) -> None:
        self.set_cors_headers()

    def set_cors_headers(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin:
            allowed = self.ctx.settings.cors_origins
            if "*" in allowed:
                self.set_header("Access-Control-Allow-Origin", "*")
            elif origin_allowed(origin, allowed):
                self.set_header("Access-Control-Allow-Origin", origin)
                self.set_header("Vary", "Origin")
            self.set_header("Access-Control-Expose-Headers", "Location, Retry-After")

    def options(self, *args, **kwargs) -> None:
        """CORS preflight: which methods and headers a browser may use here."""
        self.set_header("Access-Control-Allow-Methods", self._allowed_methods())
        self.set_header("Access-Control-Allow-Headers", PREFLIGHT_HEADERS)
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()

    def _allowed_methods(self) -> str:
        return ", ".join(m for m in ("GET", "POST", "DELETE", "OPTIONS") if m == "OPTIONS" or self._implements(m))

    def _implements(self, method: str) -> bool:
        return getattr(type(self), method.lower()) is not getattr(tornado.web.RequestHandler, method.lower())

    # ---- answers ---------------------------------------------------------------------
    def answer(self, body: dict, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body))

    def fail(self, status: int, code: str, message: str, details: dict | None = None) -> None:
        body = {"error": message, "code": code}
        if details:
            body["details"] = details
        self.clear_header("Content-Disposition")
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.answer(body, status)

    async def operator_job(self, job_id: str) -> bool:
        """An operator route's checks: the caller is the operator (401/403 otherwise) and the job exists (404);
        False when answered here."""
        if not self.require_operator():
            return False
        if await self.ctx.queue.get(job_id) is None:
            self.job_not_found(job_id)
            return False
        return True

    def job_not_found(self, job_id: str, also: str = "") -> None:
        """The 404 for a job id that names no job (now): it expired, was deleted, or never was."""
        self.fail(404, "job_not_found", f"No job {job_id!r} (it may have expired{also}).")

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_cors_headers()  # send_error() cleared them: a browser must still be able to read the error
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if status_code == 405:
            self.set_header("Allow", self._allowed_methods())  # RFC 9110: a 405 says what is allowed
        if redis_memory.is_out_of_memory(exc):
            self.set_header("Retry-After", str(redis_memory.STORAGE_FULL_RETRY_S))
            self.fail(503, "storage_full", "The job store is full; try again in a little while.")
        elif isinstance(exc, redis.exceptions.RedisError):
            self.fail(503, "redis_unavailable", "The job store is not reachable; try again shortly.")
        elif isinstance(exc, tornado.web.HTTPError) and exc.log_message and status_code < 500:
            self.fail(status_code, _STATUS_NAMES.get(status_code, "error"), exc.log_message % exc.args)
        elif status_code == 405:
            self.fail(405, "method_not_allowed", f"{self.request.method} is not allowed on {self.request.path}.")
        elif status_code < 500:
            self.fail(status_code, _STATUS_NAMES.get(status_code, "error"), self._reason)
        else:
            self.fail(status_code, "internal_error", "Something went wrong on our side.")

    def log_exception(self, typ, value, tb) -> None:
        """Tornado's, without its request summary: the URI would write the job id and the query string."""
        where = logs.request_fields(self)
        if isinstance(value, redis.exceptions.RedisError):
            log.warning("redis unavailable", extra={**where, "error": str(value)})
        elif isinstance(value, tornado.web.HTTPError):
            if value.log_message:
                log.warning("request refused", extra={**where, "status": value.status_code,
                                                      "error": value.log_message % value.args})
        else:
            log.error("uncaught exception", exc_info=(typ, value, tb), extra=where)

    def base_url(self) -> str:
        return self.ctx.settings.public_url or f"{self.request.protocol}://{self.request.host}"

    def require_operator(self) -> bool:
        """Bearer S2S_ADMIN_TOKEN: 401 without it, 403 wrong; the endpoints are off when it is unset."""
        denied = check_operator(self.ctx.settings.admin_token, bearer_token(self.request.headers.get("Authorization")),
                                "Authorization: Bearer ...")
        if denied is None:
            return True
        if denied.status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="s2s"')
        self.fail(denied.status, denied.code, denied.message)
        return False


@describe("/api/jobs/{jobId}/status", get=operation(
    "getJobStatus", "jobs", "A job's status, progress, place in line and, once completed, where its picture is",
    {200: answer("Job", "The job.", headers=NO_STORE), 404: "JobNotFound", 503: "RedisUnavailable"}))
class JobStatusHandler(ApiHandler):
    async def get(self, job_id: str) -> None:
        job = await self.ctx.queue.get(job_id)
        if job is None:
            return self.job_not_found(job_id)
        body = job.to_json(self.base_url())
        if job.status is JobStatus.QUEUED:
            place = await self.ctx.queue.line.place(job_id)
            if place.queued:
                body.update(place.fields())
            else:  # it started (or ended, or went) between the two reads: answer what it is now
                job = await self.ctx.queue.get(job_id)
                if job is None:
                    return self.job_not_found(job_id)
                body = job.to_json(self.base_url())
        self.set_header("Cache-Control", "no-store")
        self.answer(body)


@describe("/api/jobs/{jobId}/image", get=lambda settings, catalog: operation(
    "getJobImage", "jobs", "The picture of a completed job (what `result.imageUrl` points to)",
    description=f"Kept for S2S_RETENTION_SECONDS ({settings.retention_seconds} s) after the job ended. With S3 "
                "storage the answer is a 302 to a presigned link valid for S2S_STORAGE_LINK_SECONDS "
                f"({settings.storage_link_seconds} s): the picture's bytes come from the bucket, not through the API.",
    responses={
        200: {"description": "The image bytes with their type: PNG from the built-in providers; an upstream "
                             "provider may answer JPEG or WebP.",
              "headers": {"Content-Disposition": {"required": True, "schema": {"type": "string",
                                                                               "pattern": "^inline; filename="}},
                          "Cache-Control": {"required": True, "schema": {"type": "string"}}},
              "content": {t: {} for t in ("image/png", "image/jpeg", "image/webp", "image/*")}},
        302: {"description": "S3 storage: the picture is at `Location`, a presigned link that stops working after "
                             "S2S_STORAGE_LINK_SECONDS; ask this route again for a fresh one.",
              "headers": {"Location": {"required": True, "schema": {"type": "string", "format": "uri"}},
                          "Cache-Control": {"required": True, "schema": {"const": "no-store"}}}},
        404: error("No image: unknown job, a job that did not complete, or expired.", "image_not_found", "not_found"),
        409: error("The job has not ended yet.", "job_not_finished"),
        503: error("Redis or the blob store is not answering.", "redis_unavailable", "storage_unavailable")}))
class JobImageHandler(ApiHandler):
    """GET behind ``result.imageUrl``: the image bytes with their Content-Type, or a link to them (S3)."""

    async def get(self, job_id: str) -> None:
        found = await self.ctx.queue.picture(job_id)
        if found is None:
            job = await self.ctx.queue.get(job_id)
            if job is not None and not job.status.ended:
                return self.fail(409, "job_not_finished", f"Job {job_id!r} is {job.status.value}; no image yet.")
            return self._gone(job_id)
        key, content_type = found
        try:
            link = await self.ctx.blobs.url(key, ttl_s=self.ctx.settings.storage_link_seconds)
            data = None if link else await self.ctx.blobs.get(key)
        except redis.exceptions.RedisError:
            raise  # Redis storage: answered as Redis being down is
        except Exception as exc:  # noqa: BLE001 (a file or S3 store failing: disk, network, bucket; each its own type)
            log.warning("blob store unavailable", extra={"store": self.ctx.blobs.scheme, "error": str(exc)})
            return self.fail(503, "storage_unavailable", "The picture store is not answering; try again shortly.")
        if link:  # the link expires: the redirect itself must not be kept
            self.set_header("Cache-Control", "no-store")
            return self.redirect(link, status=302)
        if data is None:
            return self._gone(job_id)
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "private, max-age=3600, immutable")
        # not the id: a saved picture gets shared, and its name would be the key to the job (and the hero's name)
        self.set_header("Content-Disposition",
                        f'inline; filename="snap2story-{logs.job_digest(job_id)}.{content_type.split("/")[-1]}"')
        self.finish(data)

    def _gone(self, job_id: str) -> None:
        self.fail(404, "image_not_found", f"No image for job {job_id!r} (it may have expired).")


@describe("/api/jobs/stats", get=operation(
    "getStats", "queue", "How many jobs are in each state, run times, and whether the queue is paused",
    {200: answer("Stats", "The figures, read at one instant.", headers=NO_STORE), 503: "RedisUnavailable"}))
class StatsHandler(ApiHandler):
    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.answer(await self.ctx.queue.overview.snapshot())


@describe("/api/jobs/health", get=operation(
    "getHealth", "queue", "Whether this API can serve: Redis and blob store round trips, live workers, queue depth, "
                          "provider",
    description="A provider flagged `misconfigured` (its key refused) still answers 200: that is the operator's to "
                "fix, not a reason for a load balancer to pull the API.",
    responses={200: answer("Health", "Healthy.", headers=NO_STORE),
               503: answer("Unhealthy", "Not able to serve; `reason` says why.")}))
class HealthHandler(ApiHandler):
    """Redis and blob store round trips, live workers, queue depth and the provider's state, within one second.

    503 when Redis or the blob store does not answer, and when no worker has been alive for S2S_WORKER_ABSENT_MS
    (see :meth:`s2s.fleet.Fleet.absence_ms`): jobs would be accepted that nothing runs.
    """

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        storage = asyncio.ensure_future(self._probe_storage())  # at the same time: both within the budget
        try:
            body = await within(HEALTH_PROBE_S, self._probe())
        except (redis.exceptions.RedisError, OSError, asyncio.TimeoutError) as exc:
            reason = str(exc) or "no answer within 1 s"
            return self.answer({"status": "unhealthy", "reason": f"Redis is not answering: {reason}",
                                "redis": {"ok": False}, "storage": await storage}, 503)
        body["storage"] = await storage
        if not body["storage"]["ok"]:
            return self.answer({"status": "unhealthy", "reason": f"The blob store ({body['storage']['scheme']}) is "
                                f"not answering: {body['storage']['reason']}", **body}, 503)
        limit = self.ctx.settings.worker_absent_ms
        absent = body["workers"]["absentMs"]
        if limit and absent > limit:
            return self.answer({"status": "unhealthy", "reason": (
                f"No worker has been alive for {absent / 1000:.1f} s (S2S_WORKER_ABSENT_MS={limit}): "
                "jobs are accepted but no worker runs them."), **body}, 503)
        # a refused key is the operator's to fix, not a reason for a load balancer to pull the API: still 200
        self.answer({"status": "ok", **body})

    async def _probe_storage(self) -> dict:
        """Where photos and pictures are kept, and whether it answers (S2S_STORAGE_URL)."""
        blobs = self.ctx.blobs
        started = time.perf_counter()
        try:
            await within(HEALTH_PROBE_S, blobs.ping())
        except Exception as exc:  # noqa: BLE001 (disk, network or bucket: each backend has its own errors)
            return {"ok": False, "scheme": blobs.scheme, "reason": str(exc) or "no answer within 1 s"}
        return {"ok": True, "scheme": blobs.scheme, "rttMs": round((time.perf_counter() - started) * 1000, 2)}

    async def _probe(self) -> dict:
        """The reads at once, each on a pooled connection: one after another they were seven round trips,
        each waiting behind whatever Redis was busy with (a 9 MB photo being stored, say)."""
        queue = self.ctx.queue

        async def rtt_ms() -> float:
            started = time.perf_counter()
            await queue.redis.ping()
            return (time.perf_counter() - started) * 1000

        rtt, workers, depth, oldest, provider, fill = await asyncio.gather(
            rtt_ms(), queue.fleet.workers(), queue.redis.llen(queue.keys.waiting),
            queue.overview.oldest_waiting_age_ms(),
            provider_state.read(queue.redis, queue.keys, self.ctx.settings.effective_provider),
            queue.memory.fill(fresh=True))
        absent = await queue.fleet.absence_ms(alive=bool(workers))  # no round trip while a worker is alive
        return {"redis": {"ok": True, "rttMs": round(rtt, 2)}, "workers": {"alive": len(workers), "absentMs": absent},
                "queue": {"waiting": depth, "oldestWaitingAgeMs": oldest}, "provider": provider.to_json(),
                "store": fill.to_json()}


@describe("/api/catalog", get=lambda settings, catalog: operation(
    "getCatalog", "jobs", "The themes, styles and kinds a submission may choose",
    {200: answer("Catalog", "The choices, with the defaults.", example=catalog.to_json())}))
class CatalogHandler(ApiHandler):
    """GET /api/catalog: the themes, styles and kinds a client may choose."""

    def get(self) -> None:
        self.set_header("Cache-Control", "public, max-age=300")
        self.answer(self.ctx.catalog.to_json())


@describe("/api/jobs/{jobId}/cancel", post=operation(
    "cancelJob", "operator", "Cancel a job: a queued one never runs; a running one is stopped",
    {200: answer("Job", "The job, now cancelled."), 404: "JobNotFound",
     409: error("The job already ended.", "job_already_ended"), 503: "RedisUnavailable"}))
class CancelHandler(ApiHandler):
    async def post(self, job_id: str) -> None:
        if not self.require_operator():
            return
        before = await self.ctx.queue.cancel(job_id)
        if not before:
            return self.fail(404, "job_not_found", f"No job {job_id!r}.")
        if before not in (JobStatus.QUEUED.value, JobStatus.PROCESSING.value):
            return self.fail(409, "job_already_ended", f"Job {job_id!r} already ended as {before}.")
        log.info("job cancelled", extra={"job": job_id, "was": before})
        self.answer((await self.ctx.queue.get(job_id)).to_json(self.base_url()))


@describe("/api/jobs/{jobId}/retry", post=operation(
    "retryJob", "operator", "Queue a failed or cancelled job again",
    {202: answer("Job", "The job, queued again."), 404: "JobNotFound", 503: "RedisUnavailable",
     409: error("Only failed or cancelled jobs can be retried (`job_not_retryable`), and only while their photo is "
                "kept (`photo_expired`).", "job_not_retryable", "photo_expired")}))
class RetryHandler(ApiHandler):
    async def post(self, job_id: str) -> None:
        if not self.require_operator():
            return
        before = await self.ctx.queue.retry(job_id)
        if not before:
            return self.fail(404, "job_not_found", f"No job {job_id!r}.")
        if before == "gone":
            return self.fail(409, "photo_expired", f"Job {job_id!r} can no longer be retried: its photo expired.")
        if before not in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
            return self.fail(409, "job_not_retryable", f"Job {job_id!r} is {before}; only failed or cancelled "
                                                       "jobs can be retried.")
        log.info("job retried by operator", extra={"job": job_id, "was": before})
        self.set_status(202)
        self.answer((await self.ctx.queue.get(job_id)).to_json(self.base_url()), 202)


@describe("/api/queue/pause", post=operation(
    "pauseQueue", "operator", "Workers stop taking jobs; submissions are still accepted",
    {200: answer("QueueCounts", "The queue, now paused."), 503: "RedisUnavailable"}))
class PauseHandler(ApiHandler):
    async def post(self) -> None:
        if self.require_operator():
            await self.ctx.queue.pause()
            log.info("queue paused")
            self.answer((await self.ctx.queue.stats()).to_json())


@describe("/api/queue/resume", post=operation(
    "resumeQueue", "operator", "Workers take jobs again",
    {200: answer("QueueCounts", "The queue, running."), 503: "RedisUnavailable"}))
class ResumeHandler(ApiHandler):
    async def post(self) -> None:
        if self.require_operator():
            await self.ctx.queue.resume()
            log.info("queue resumed")
            self.answer((await self.ctx.queue.stats()).to_json())


class NotFoundHandler(ApiHandler):
    def prepare(self) -> None:
        super().prepare()
        if self.request.method != "OPTIONS":
            self.fail(404, "not_found", f"Nothing at {self.request.path}.")
