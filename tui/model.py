"""What the console knows, as plain data: no Textual, no sockets.

Everything here is a pure function of API bodies and a clock reading, so the
numbers on screen are tested without a terminal, and snapshot tests freeze the
clock by handing in their own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from attrs import frozen

Clock = Callable[[], float]  # seconds since the epoch, like time.time

JOB_STATES = ("active", "waiting", "delayed", "failed", "cancelled", "completed")  # the order rows are shown in


def parse_iso(text: str | None) -> float | None:
    """The API's ISO 8601 ``...Z`` times as epoch seconds (Python 3.10's fromisoformat refuses the Z)."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def format_age(seconds: float | None) -> str:
    """A short human age: 0.4s, 12s, 3m05s, 2h07m, 3d04h; a dash when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_ms(ms: float | None) -> str:
    """A duration given in milliseconds: 850ms, 1.2s, 3m05s."""
    if ms is None:
        return "-"
    return f"{int(ms)}ms" if ms < 1000 else format_age(ms / 1000)


def format_rate(per_second: float | None) -> str:
    if per_second is None:
        return "-"
    return f"{per_second:.2f}/s" if per_second < 10 else f"{per_second:.0f}/s"


def progress_text(percent: int, width: int = 10) -> str:
    """A text progress bar that fits a table cell: ``██████░░░░  60%``."""
    percent = max(0, min(100, int(percent)))
    filled = round(percent * width / 100)
    return "█" * filled + "░" * (width - filled) + f" {percent:3d}%"


def retried_sentence(retried: list[str], expired: list[str]) -> str:
    """What "retry all failed" did, in a sentence."""
    text = f"Queued {len(retried)} failed job{'s' if len(retried) != 1 else ''} again"
    return text + (f"; {len(expired)} could not be retried (photo expired)." if expired else ".")


def short_id(job_id: str, length: int = 10) -> str:
    return job_id if len(job_id) <= length else job_id[:length] + "…"


# ---- API bodies (GET /api/jobs/stats: s2s.models.StatsSnapshot, shared with the API) --------
@frozen
class WorkerInfo:
    """One entry of GET /api/workers; ``seen_at`` turns the server's age into a time this console can age."""

    id: str
    host: str
    pid: int
    concurrency: int
    jobs: int
    provider: str
    state: str
    alive: bool
    seen_at: float  # console clock, when the worker last beat

    @classmethod
    def from_json(cls, body: Mapping, fetched_at: float) -> WorkerInfo:
        return cls(id=str(body["id"]), host=str(body.get("host", "?")), pid=int(body.get("pid", 0)),
                   concurrency=int(body.get("concurrency", 0)), jobs=int(body.get("jobs", 0)),
                   provider=str(body.get("provider", "")), state=str(body.get("state", "")),
                   alive=bool(body.get("alive", False)),
                   seen_at=fetched_at - int(body.get("lastSeenMs", 0)) / 1000)


@frozen
class JobInfo:
    """A job's status body, with the list (state) it was found in."""

    job_id: str
    status: str
    progress: int
    message: str
    attempts: int
    max_attempts: int
    created_at: float | None
    state: str = ""
    hero_name: str = ""
    provider: str = ""
    error: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    upstream_calls: int = 0  # paid calls to the image provider
    queue_position: int | None = None  # while waiting: the place in line, 1 = next

    @classmethod
    def from_json(cls, body: Mapping, state: str = "") -> JobInfo:
        status = str(body["status"])
        ended = body.get("completedAt") or body.get("failedAt") or body.get("cancelledAt")
        return cls(job_id=str(body["jobId"]), status=status, progress=int(body.get("progress") or 0),
                   message=str(body.get("message") or ""), attempts=int(body.get("attempts") or 0),
                   max_attempts=int(body.get("maxAttempts") or 0), created_at=parse_iso(body.get("createdAt")),
                   state=state or _state_of(status), hero_name=str(body.get("heroName") or ""),
                   provider=str(body.get("provider") or ""),
                   error=str(body.get("error") or body.get("lastError") or ""),
                   started_at=parse_iso(body.get("startedAt")), ended_at=parse_iso(ended),
                   upstream_calls=int(body.get("upstreamCalls") or 0),
                   queue_position=body.get("queuePosition") if status == "queued" else None)

    @property
    def retryable(self) -> bool:
        return self.status in ("failed", "cancelled")

    @property
    def cancellable(self) -> bool:
        return self.status in ("queued", "processing")

    def note(self) -> str:
        """What an operator wants to read about the job: the error when there is one, else its message (and
        its place in line while waiting)."""
        place = f"#{self.queue_position} in line · " if self.queue_position else ""
        return self.error or place + self.message


def _state_of(status: str) -> str:
    return {"queued": "waiting", "processing": "active"}.get(status, status)


@frozen
class JobEvent:
    """One frame of GET /api/jobs/<id>/events."""

    seq: int
    type: str
    status: str
    progress: int | None
    text: str

    @classmethod
    def from_json(cls, frame: Mapping) -> JobEvent:
        kind = str(frame.get("type", ""))
        status = frame.get("status") or {"job_completed": "completed", "job_failed": "failed",
                                         "job_cancelled": "cancelled"}.get(kind, "")
        text = frame.get("error") or frame.get("message") or ""
        if kind == "job_completed" and not text:
            text = (frame.get("result") or {}).get("imageUrl", "")
        progress = frame.get("progress")
        return cls(seq=int(frame.get("seq", 0)), type=kind, status=str(status),
                   progress=None if progress is None else int(progress), text=str(text))


@frozen
class WebhookAttempt:
    """One row of a job's webhook log (GET /api/jobs/<id>/webhooks): an attempt, or a delivery not tried yet."""

    webhook_id: str
    event: str
    state: str  # the delivery's: pending, delivered, failed, disabled, skipped
    attempt: int | None
    at: float | None  # seconds since the epoch
    outcome: str
    status: int | None
    error: str

    @classmethod
    def rows(cls, body: Mapping) -> tuple[WebhookAttempt, ...]:
        out = []
        for d in body.get("deliveries", ()):
            head = (str(d.get("webhookId", "")), str(d.get("event", "")), str(d.get("state", "")))
            log = d.get("attemptLog") or ()
            for a in log:
                out.append(cls(*head, attempt=int(a.get("attempt", 0)), at=a["at"] / 1000 if a.get("at") else None,
                               outcome=str(a.get("outcome", "")), status=a.get("status"),
                               error=str(a.get("error") or "")))
            if not log:
                out.append(cls(*head, attempt=None, at=None, outcome="not tried yet", status=None, error=""))
        return tuple(out)


@frozen
class JobDetail:
    job: JobInfo
    events: tuple[JobEvent, ...]
    webhooks: tuple[WebhookAttempt, ...] = ()


def merge_job_lists(lists: Mapping[str, Iterable[JobInfo]]) -> tuple[JobInfo, ...]:
    """One row per job, in the order an operator reads them: running first, finished last.

    The lists are fetched one request each, so a job that moved meanwhile can be in two; the
    earlier state in :data:`JOB_STATES` wins.
    """
    seen: set[str] = set()
    rows = []
    for state in JOB_STATES:
        for job in lists.get(state, ()):
            if job.job_id not in seen:
                seen.add(job.job_id)
                rows.append(job)
    return tuple(rows)


# ---- throughput ----------------------------------------------------------------------------
@frozen
class RatePoint:
    at: float
    completed: float  # per second over the interval that ended at ``at``
    failed: float


class Throughput:
    """Completed and failed per second, from successive ``totals`` counters of the stats body.

    The counters only grow; one that went down means the store was reset, so that interval is
    skipped rather than shown as a negative rate, and the averages start again.
    """

    def __init__(self, window_seconds: float = 300.0, average_seconds: float = 60.0):
        self.window_seconds = window_seconds
        self.average_seconds = average_seconds
        self.points: deque[RatePoint] = deque()
        self.readings: deque[tuple[float, int, int]] = deque()  # (at, completed, failed), for the averages

    def add(self, at: float, totals: Mapping[str, int]) -> RatePoint | None:
        reading = (at, int(totals.get("completed", 0)), int(totals.get("failed", 0)))
        previous = self.readings[-1] if self.readings else None
        if previous is not None and (reading[1] < previous[1] or reading[2] < previous[2]):
            self.readings.clear()  # a reset store: no rate across it
            previous = None
        if previous is not None and at <= previous[0]:
            return None
        self.readings.append(reading)
        while len(self.readings) > 2 and self.readings[1][0] <= at - self.average_seconds:
            self.readings.popleft()  # keep one reading at or before the start of the average's span
        if previous is None:
            return None
        elapsed = at - previous[0]
        point = RatePoint(at, (reading[1] - previous[1]) / elapsed, (reading[2] - previous[2]) / elapsed)
        self.points.append(point)
        while self.points and self.points[0].at < at - self.window_seconds:
            self.points.popleft()
        return point

    def averages(self) -> tuple[float | None, float | None]:
        """Completed and failed per second over the last ``average_seconds`` (or as long as known)."""
        if len(self.readings) < 2:
            return None, None
        (start, completed_then, failed_then), (end, completed_now, failed_now) = self.readings[0], self.readings[-1]
        return (completed_now - completed_then) / (end - start), (failed_now - failed_then) / (end - start)

    def view(self) -> ThroughputView:
        completed_avg, failed_avg = self.averages()
        return ThroughputView(completed=tuple(p.completed for p in self.points),
                              failed=tuple(p.failed for p in self.points), completed_avg=completed_avg,
                              failed_avg=failed_avg, window_seconds=self.window_seconds,
                              average_seconds=self.average_seconds)


@frozen
class ThroughputView:
    """What the sparklines draw: an immutable copy, so a reactive notices each change."""

    completed: tuple[float, ...] = ()
    failed: tuple[float, ...] = ()
    completed_avg: float | None = None
    failed_avg: float | None = None
    window_seconds: float = 300.0
    average_seconds: float = 60.0

    @property
    def completed_now(self) -> float | None:
        return self.completed[-1] if self.completed else None

    @property
    def failed_now(self) -> float | None:
        return self.failed[-1] if self.failed else None


@frozen
class ActionOutcome:
    """The last operator action's result line: a sentence, and whether it went well."""

    text: str
    ok: bool = True
