"""Read-only views for the on-call console: workers, job lists, a job's event history,
and the bulk action "retry every failed job". All behind the operator token."""

from __future__ import annotations

import logging
import re

from s2s.web.describe import COUNT, answer, describe, error, operation, ref
from s2s.web.handlers import JOB_ID, ApiHandler

log = logging.getLogger("s2s.api")

JOB_STATES = ("waiting", "active", "delayed", "completed", "failed", "cancelled")


@describe("/api/workers", get=operation(
    "listWorkers", "operator", "Every worker process seen in the last hour; dead ones have `alive: false`",
    {200: answer("WorkerList", "The workers."), 503: "RedisUnavailable"}), schemas={
    "Worker": {
        "type": "object",
        "description": "A worker process as its last heartbeat described it.",
        "required": ["id", "alive", "lastSeenMs"],
        "properties": {
            "id": {"type": "string"},
            "alive": {"type": "boolean", "description": "Heard from within the lease time."},
            "lastSeenMs": {**COUNT, "description": "Age of its last heartbeat."},
            "host": {"type": "string"},
            "pid": {"type": "integer"},
            "concurrency": {"type": "integer", "minimum": 1},
            "jobs": {**COUNT, "description": "Jobs in hand."},
            "provider": {"type": "string"},
            "state": {"enum": ["running", "draining"]},
            "startedAt": {"type": "integer", "description": "Milliseconds since the epoch."},
        },
    },
    "WorkerList": {"type": "object", "required": ["workers", "alive"],
                   "properties": {"workers": {"type": "array", "items": ref("Worker")}, "alive": COUNT}},
})
class WorkersHandler(ApiHandler):
    """GET /api/workers: every worker process seen in the last hour, dead ones marked."""

    async def get(self) -> None:
        if self.require_operator():
            workers = await self.ctx.queue.fleet.workers(include_dead=True)
            self.answer({"workers": workers, "alive": sum(w["alive"] for w in workers)})


@describe("/api/jobs", get=operation(
    "listJobs", "operator", "The newest jobs in one state (waiting: in the order they will run, with queuePosition)",
    parameters=[{"name": "state", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": list(JOB_STATES), "default": "active"}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}}],
    responses={200: answer("JobList", "The jobs."), 503: "RedisUnavailable",
               400: error("`state` or `limit` is not one of the accepted values.", "invalid_state", "invalid_limit")}),
    schemas={"JobList": {"type": "object", "required": ["state", "jobs"], "properties": {
        "state": {"enum": list(JOB_STATES)}, "jobs": {"type": "array", "items": ref("Job")}}}})
class JobListHandler(ApiHandler):
    """GET /api/jobs?state=failed&limit=50: the newest jobs in one state."""

    async def get(self) -> None:
        if not self.require_operator():
            return
        state = self.get_query_argument("state", "active")
        if state not in JOB_STATES:
            return self.fail(400, "invalid_state", f"state must be one of {', '.join(JOB_STATES)}.",
                             {"field": "state"})
        raw_limit = self.get_query_argument("limit", "50")
        if not re.fullmatch(r"[0-9]{1,3}", raw_limit) or not 1 <= int(raw_limit) <= 500:  # not isdigit(): "²"
            return self.fail(400, "invalid_limit", "limit must be a whole number from 1 to 500.",
                             {"field": "limit"})
        jobs = [job.to_json(self.base_url()) for job in await self.ctx.queue.overview.list_jobs(state, int(raw_limit))]
        if state == "waiting":  # listed in line order: the place in line is the row's
            for position, job in enumerate(jobs, 1):
                job["queuePosition"] = position
        self.answer({"state": state, "jobs": jobs})


@describe("/api/jobs/{jobId}/events", get=operation(
    "getJobEvents", "operator", "A job's kept event history, oldest first (the frames /ws sends)",
    {200: answer("JobEvents", "The events."), 404: "JobNotFound", 503: "RedisUnavailable"}),
    schemas={"JobEvents": {"type": "object", "required": ["jobId", "events"], "properties": {
        "jobId": {"type": "string"}, "events": {"type": "array", "items": ref("JobEvent")}}}})
class JobEventsHandler(ApiHandler):
    """GET /api/jobs/<id>/events: the job's kept event history, oldest first."""

    async def get(self, job_id: str) -> None:
        if not await self.operator_job(job_id):
            return
        self.answer({"jobId": job_id, "events": await self.ctx.queue.events(job_id)})


@describe("/api/jobs/retry-failed", post=operation(
    "retryFailedJobs", "operator", "Queue every kept failed job again (up to 500)",
    {202: answer("RetryFailedResult", "What was queued again."), 503: "RedisUnavailable"}),
    schemas={"RetryFailedResult": {"type": "object", "required": ["retried", "expired"], "properties": {
        "retried": {"type": "array", "items": {"type": "string"}, "description": "Queued again."},
        "expired": {"type": "array", "items": {"type": "string"},
                    "description": "Their photo expired: they cannot run again."}}}})
class RetryFailedHandler(ApiHandler):
    """POST /api/jobs/retry-failed: queue every kept failed job again."""

    async def post(self) -> None:
        if not self.require_operator():
            return
        retried, gone = [], []
        for job in await self.ctx.queue.overview.list_jobs("failed", 500):
            outcome = await self.ctx.queue.retry(job.id)
            (gone if outcome == "gone" else retried).append(job.id)
        log.info("failed jobs retried by operator", extra={"retried": len(retried), "expired": len(gone)})
        self.answer({"retried": retried, "expired": gone}, 202)


def operator_routes(ctx) -> list:
    return [
        (r"/api/workers", WorkersHandler, {"ctx": ctx}),
        (r"/api/jobs", JobListHandler, {"ctx": ctx}),
        (r"/api/jobs/retry-failed", RetryFailedHandler, {"ctx": ctx}),
        (r"/api/jobs/" + JOB_ID + r"/events", JobEventsHandler, {"ctx": ctx}),
    ]
