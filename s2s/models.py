"""Jobs as the wire sees them: statuses, the job record and its JSON shapes.

Redis keeps a job as a hash of strings (times in ms since the epoch); this is
the one place that turns it into the contract's camelCase JSON.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from datetime import datetime, timezone

from attrs import field, frozen


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


def iso_ms(ms: int | None) -> str | None:
    """Milliseconds since the epoch as ISO 8601 UTC with a ``Z``."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


JOB_ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"  # what a job id may be, wherever one comes in (a route, a /ws frame)
_JOB_ID = re.compile(JOB_ID_PATTERN)


def is_job_id(text: str) -> bool:
    return _JOB_ID.fullmatch(text) is not None


def image_path(job_id: str) -> str:
    """Path of the GET that serves a completed job's image (also built in the Lua scripts)."""
    return f"/api/jobs/{job_id}/image"


def status_path(job_id: str) -> str:
    return f"/api/jobs/{job_id}/status"


def _int(raw: str | None) -> int | None:
    return int(raw) if raw not in (None, "") else None


@frozen
class Job:
    id: str
    status: JobStatus
    progress: int
    message: str
    hero_name: str
    theme_id: str
    style_key: str
    kind: str
    created_at: int
    attempts: int
    max_attempts: int
    started_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    cancelled_at: int | None = None
    retry_at: int | None = None
    error: str | None = None
    error_code: str | None = None
    provider: str | None = None
    seq: int = 0
    upstream_calls: int = 0

    @classmethod
    def from_redis(cls, h: Mapping[str, str]) -> Job:
        return cls(
            id=h["id"],
            status=JobStatus(h["status"]),
            progress=int(h.get("progress") or 0),
            message=h.get("message", ""),
            hero_name=h.get("heroName", ""),
            theme_id=h.get("themeId", ""),
            style_key=h.get("styleKey", ""),
            kind=h.get("kind", ""),
            created_at=int(h["createdAt"]),
            attempts=int(h.get("attempts") or 0),
            max_attempts=int(h.get("maxAttempts") or 1),
            started_at=_int(h.get("startedAt")),
            completed_at=_int(h.get("completedAt")),
            failed_at=_int(h.get("failedAt")),
            cancelled_at=_int(h.get("cancelledAt")),
            retry_at=_int(h.get("retryAt")),
            error=h.get("error") or None,
            error_code=h.get("errorCode") or None,
            provider=h.get("provider") or None,
            seq=int(h.get("seq") or 0),
            upstream_calls=int(h.get("upstreamCalls") or 0),
        )

    def to_json(self, base_url: str = "") -> dict:
        """The body of GET /api/jobs/<id>/status."""
        out: dict = {
            "jobId": self.id,
            "status": self.status.value,
            "progress": self.progress,
            "message": self.message,
            "createdAt": iso_ms(self.created_at),
            "attempts": self.attempts,
            "maxAttempts": self.max_attempts,
            "upstreamCalls": self.upstream_calls,
            "heroName": self.hero_name,
            "themeId": self.theme_id,
            "styleKey": self.style_key,
            "kind": self.kind,
            "seq": self.seq,
        }
        if self.started_at is not None:
            out["startedAt"] = iso_ms(self.started_at)
        if self.retry_at is not None and self.status is JobStatus.QUEUED:
            out["retryAt"] = iso_ms(self.retry_at)
        if self.provider:
            out["provider"] = self.provider
        if self.status is JobStatus.COMPLETED:
            out["completedAt"] = iso_ms(self.completed_at)
            out["result"] = {"imageUrl": base_url + image_path(self.id)}
        elif self.status is JobStatus.FAILED:
            out["failedAt"] = iso_ms(self.failed_at)
            out["error"] = self.error or "The picture could not be made."
            if self.error_code:
                out["errorCode"] = self.error_code
        elif self.status is JobStatus.CANCELLED:
            out["cancelledAt"] = iso_ms(self.cancelled_at)
        elif self.error:
            out["lastError"] = self.error  # a retry is pending: say why
        return out


@frozen
class Accepted:
    """A submission's job (the 202): its id, whether this call made it (not a replay), its delete token."""

    job_id: str
    created: bool
    delete_token: str | None = field(repr=False)  # None only replaying an entry from before delete tokens


@frozen
class Stats:
    """How many jobs are in each state, whether the queue is paused, and its lifetime totals."""

    waiting: int
    active: int
    delayed: int
    completed: int
    failed: int
    cancelled: int
    paused: bool
    totals: Mapping[str, int]

    def to_json(self) -> dict:
        return {
            "waiting": self.waiting,
            "active": self.active,
            "completed": self.completed,
            "failed": self.failed,
            "delayed": self.delayed,
            "cancelled": self.cancelled,
            "paused": self.paused,
            "totals": dict(self.totals),
        }


@frozen
class StatsSnapshot(Stats):
    """The body of GET /api/jobs/stats (and of the /ws ``queue_stats`` frame): the counts, the
    oldest wait and the run times of recently completed jobs. The console parses it with
    :meth:`from_json`, so the API and the console share this one declaration."""

    oldest_waiting_age_ms: int | None = None
    p50_ms: int | None = None
    p95_ms: int | None = None
    duration_sample: int = 0

    def to_json(self) -> dict:
        return {**super().to_json(), "oldestWaitingAgeMs": self.oldest_waiting_age_ms,
                "durationMs": {"p50": self.p50_ms, "p95": self.p95_ms, "sample": self.duration_sample}}

    @classmethod
    def from_json(cls, body: Mapping) -> StatsSnapshot:
        durations = body.get("durationMs") or {}
        return cls(
            waiting=int(body["waiting"]), active=int(body["active"]), delayed=int(body.get("delayed", 0)),
            completed=int(body["completed"]), failed=int(body["failed"]), cancelled=int(body.get("cancelled", 0)),
            paused=bool(body.get("paused", False)),
            totals={str(k): int(v) for k, v in (body.get("totals") or {}).items()},
            oldest_waiting_age_ms=body.get("oldestWaitingAgeMs"),
            p50_ms=durations.get("p50"), p95_ms=durations.get("p95"), duration_sample=int(durations.get("sample", 0)))
