"""DELETE /api/jobs/<id>: the parent removes a job, its photo and its picture, everywhere.

Opened by the job's delete token (the submit's ``deleteToken``, :mod:`s2s.deletion`) or the
operator token. An unknown id is 404 whatever the token: the id is itself a secret, and
GET /status already tells anyone holding it whether the job exists, so a 403 for a wrong
token on a known id reveals nothing new.
"""

from __future__ import annotations

import logging

from s2s import deletion
from s2s.web.access import bearer_token, check_operator
from s2s.web.describe import describe, error, operation, retry_after
from s2s.web.handlers import ApiHandler

log = logging.getLogger("s2s.api")

STORAGE_RETRY_S = 5


@describe("/api/jobs/{jobId}", delete=lambda settings, catalog: operation(
    "deleteJob", "jobs", "Delete a job: stop it if it runs, and remove its photo, picture, events and record",
    description="`Authorization: Bearer <deleteToken>`, the token the submission answered with"
    + (", or the operator token" if settings.admin_token else "") + ". Afterwards the job's status and image "
    "answer 404 and /ws subscribers get `job_not_found`; a subscriber watching it live when it had not ended hears "
    "`job_cancelled`. An unknown id is 404 whatever the token (the id is itself the key to the job).",
    security=[{"deleteToken": []}, *([{"operatorToken": []}] if settings.admin_token else [])],
    responses={
        204: {"description": "Deleted: nothing of the job is kept, in Redis or in blob storage."},
        401: error("No token: send `Authorization: Bearer <deleteToken>`.", "unauthorized",
                   headers={"WWW-Authenticate": {"$ref": "#/components/headers/WWWAuthenticate"}}),
        403: error("The token opens another job, or none: nothing was changed.", "forbidden"),
        404: "JobNotFound",
        405: error("`jobId` names another route (`stats`, `health`, ...), which DELETE does not serve.",
                   "method_not_allowed"),
        503: error("The job store (`redis_unavailable`) or the blob store (`storage_unavailable`, with `Retry-After`; "
                   "nothing was deleted) is not reachable: send the DELETE again.",
                   "redis_unavailable", "storage_unavailable", headers=retry_after(required=False))}))
class JobDeleteHandler(ApiHandler):
    async def delete(self, job_id: str) -> None:
        given = bearer_token(self.request.headers.get("Authorization"))
        if not given:
            self.set_header("WWW-Authenticate", 'Bearer realm="s2s"')
            return self.fail(401, "unauthorized", "Deleting a job needs its delete token (Authorization: Bearer ...).")
        owner = await deletion.owner(self.ctx.queue.redis, self.ctx.queue.keys, job_id)
        if owner is None:
            return self.job_not_found(job_id, " or been deleted")
        operator = check_operator(self.ctx.settings.admin_token, given, "") is None
        if not operator and not deletion.token_matches(given, owner.delete_digest):
            return self.fail(403, "forbidden", "This token does not open this job; nothing was changed.")
        try:
            was = await deletion.delete_job(self.ctx.queue, job_id, owner.idem_key)
        except deletion.StorageUnavailable as exc:
            log.warning("blob store unavailable; job not deleted", extra={"job": job_id, "error": str(exc)})
            self.set_header("Retry-After", str(STORAGE_RETRY_S))
            return self.fail(503, "storage_unavailable", "The blob store is not reachable; nothing was deleted. "
                                                         "Try again shortly.")
        log.info("job deleted", extra={"job": job_id, "was": was or "gone", "by": "operator" if operator else "owner"})
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()
