"""The operator's view of a job's webhooks (every delivery with its attempt log) and Redeliver."""

from __future__ import annotations

import logging

from s2s.web.describe import COUNT, answer, describe, error, operation, ref
from s2s.web.handlers import JOB_ID, ApiHandler
from s2s.webhooks.store import WebhookStore

log = logging.getLogger("s2s.api")

_OUTCOMES = ["delivered", "retry", "failed", "disabled", "skipped"]
SCHEMAS = {
    "WebhookAttempt": {"type": "object", "required": ["attempt", "at", "outcome"], "properties": {
        "attempt": {"type": "integer", "minimum": 1},
        "at": {**COUNT, "description": "Milliseconds since the epoch."},
        "outcome": {"enum": _OUTCOMES, "description": "delivered: a 2xx; retry: tried again at `nextAt`; failed: the "
                    "schedule or the job's retention is used up; disabled: 410 Gone; skipped: its URL is disabled."},
        "status": {"type": ["integer", "null"], "description": "The receiver's HTTP status; null without an answer."},
        "error": {"type": ["string", "null"]},
        "url": {"type": "string"},
        "nextAt": COUNT}},
    "WebhookDelivery": {"type": "object", "required": ["webhookId", "event", "url", "state", "attempts",
                                                      "createdAtMs", "attemptLog"], "properties": {
        "webhookId": {"type": "string", "description": "The `webhook-id` header: the same on every try."},
        "event": {"enum": ["job.started", "job.completed", "job.failed", "job.cancelled"]},
        "url": {"type": "string"},
        "state": {"enum": ["pending", *[o for o in _OUTCOMES if o != "retry"]]},
        "attempts": COUNT,
        "createdAtMs": COUNT,
        "nextAttemptAtMs": COUNT,
        "attemptLog": {"type": "array", "items": ref("WebhookAttempt")},
        "urlDisabled": {"type": "object", "description": "Why its URL gets nothing more: it answered 410 Gone.",
                        "properties": {"at": COUNT, "status": {"type": "integer"}, "webhookId": {"type": "string"},
                                       "jobId": {"type": "string"}}}}},
    "JobWebhooks": {"type": "object", "required": ["jobId", "deliveries"], "properties": {
        "jobId": {"type": "string"}, "deliveries": {"type": "array", "items": ref("WebhookDelivery")}}},
    "WebhookEvent": {"type": "object", "required": ["type", "timestamp", "data"], "properties": {
        "type": {"enum": ["job.completed", "job.failed", "job.cancelled", "job.started"],
                 "description": "job.started only with S2S_WEBHOOK_STARTED, for each attempt."},
        "timestamp": {"type": "string", "format": "date-time", "description": "When the job ended (or started)."},
        "data": {**ref("Job"), "description": "The job's status answer, as GET /api/jobs/{jobId}/status."}}},
    "Redelivered": {"type": "object", "required": ["jobId", "redelivered"], "properties": {
        "jobId": {"type": "string"}, "redelivered": {**COUNT, "description": "Deliveries scheduled again."}}},
}


def _store(handler: ApiHandler) -> WebhookStore:
    return WebhookStore(handler.ctx.queue.redis, handler.ctx.queue.keys)


@describe("/api/jobs/{jobId}/webhooks", get=operation(
    "getJobWebhooks", "operator", "A job's webhook deliveries, each with its attempts (status, time, error)",
    {200: answer("JobWebhooks", "The deliveries, oldest first (none when no webhook is configured)."),
     404: "JobNotFound", 503: "RedisUnavailable"}), schemas=SCHEMAS)
class JobWebhooksHandler(ApiHandler):
    async def get(self, job_id: str) -> None:
        if not await self.operator_job(job_id):
            return
        self.answer({"jobId": job_id, "deliveries": await _store(self).deliveries(job_id)})


@describe("/api/jobs/{jobId}/webhook/redeliver", post=operation(
    "redeliverJobWebhooks", "operator", "Send a job's ended webhook deliveries again, with the same webhook-id",
    {202: answer("Redelivered", "Scheduled now, on a fresh retry schedule; a URL disabled by a 410 is enabled again."),
     404: "JobNotFound", 409: error("The job has no ended delivery to send again.", "nothing_to_redeliver"),
     503: "RedisUnavailable"}))
class RedeliverHandler(ApiHandler):
    async def post(self, job_id: str) -> None:
        if not await self.operator_job(job_id):
            return
        count = await _store(self).redeliver(job_id)
        if not count:
            return self.fail(409, "nothing_to_redeliver", f"Job {job_id!r} has no ended webhook delivery (none was "
                                                          "made, or one is still pending).")
        log.info("webhooks redelivered by operator", extra={"job": job_id, "deliveries": count})
        self.answer({"jobId": job_id, "redelivered": count}, 202)


def _header(name: str, description: str, pattern: str) -> dict:
    return {"name": name, "in": "header", "required": True, "description": description,
            "schema": {"type": "string", "pattern": pattern}}


def openapi_webhooks(settings) -> dict:
    """The document's top-level ``webhooks``: what a receiver gets (Standard Webhooks v1)."""
    schedule = ", ".join(f"{s:g} s" for s in settings.webhook_retry_s)
    return {"jobEnded": {"post": {
        "operationId": "jobEndedWebhook", "tags": ["jobs"],
        "summary": "A job ended: sent to S2S_WEBHOOK_URL, or the job's own webhookUrl",
        "description": "Standard Webhooks v1, sent by a worker when the job ends. Verify the signature over the raw "
                       "body (e.g. with the `standardwebhooks` package) and use `webhook-id` as the idempotency "
                       f"key: a delivery is tried at once, then after {schedule} (jittered, at least the "
                       "`Retry-After` of the answer), until a 2xx or the job's retention ends.",
        "parameters": [
            _header("webhook-id", "The message's id: the same on every retry and redelivery.", "^msg_"),
            _header("webhook-timestamp", "The attempt's time, seconds since the epoch.", "^[0-9]+$"),
            _header("webhook-signature", "`v1,<base64 HMAC-SHA256 of id.timestamp.body>`, one per secret of "
                    "S2S_WEBHOOK_SECRET, space separated.", "^v1,[A-Za-z0-9+/=]+( v1,[A-Za-z0-9+/=]+)*$")],
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref("WebhookEvent")}}},
        "responses": {"2XX": {"description": "Received: the delivery ends."},
                      "410": {"description": "Gone: nothing more is sent to this URL until an operator redelivers."},
                      "default": {"description": "Anything else (or no answer within S2S_WEBHOOK_TIMEOUT_S): "
                                                 "tried again."}}}}}


def webhook_routes(ctx) -> list:
    return [(r"/api/jobs/" + JOB_ID + r"/webhooks", JobWebhooksHandler, {"ctx": ctx}),
            (r"/api/jobs/" + JOB_ID + r"/webhook/redeliver", RedeliverHandler, {"ctx": ctx})]
