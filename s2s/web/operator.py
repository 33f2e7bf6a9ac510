"""Read-only views for the on-call console: workers, job lists, a job's event history,
and the bulk action "retry every failed job". All behind the operator token."""

from __future__ import annotations

import logging
import re

from s2s.web.handlers import JOB_ID, ApiHandler

log = logging.getLogger("s2s.api")

JOB_STATES = ("waiting", "active", "delayed", "completed", "failed", "cancelled")


class WorkersHandler(ApiHandler):
    """GET /api/workers: every worker process seen in the last hour, dead ones marked."""

    async def get(self) -> None:
        if self.require_operator():
            workers = await self.ctx.queue.fleet.workers(include_dead=True)
            self.answer({"workers": workers, "alive": sum(w["alive"] for w in workers)})


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
        jobs = await self.ctx.queue.overview.list_jobs(state, int(raw_limit))
        self.answer({"state": state, "jobs": [job.to_json(self.base_url()) for job in jobs]})


class JobEventsHandler(ApiHandler):
    """GET /api/jobs/<id>/events: the job's kept event history, oldest first."""

    async def get(self, job_id: str) -> None:
        if not self.require_operator():
            return
        if await self.ctx.queue.get(job_id) is None:
            return self.fail(404, "job_not_found", f"No job {job_id!r} (it may have expired).")
        self.answer({"jobId": job_id, "events": await self.ctx.queue.events(job_id)})


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
