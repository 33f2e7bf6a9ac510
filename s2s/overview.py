"""What the queue holds, for the operator and GET /api/jobs/stats: job lists, the oldest
wait, and the run-time percentiles of recently completed jobs.

Read-only: every change of a job's state goes through :class:`s2s.queue.Queue`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import asdict

from s2s.models import Job, StatsSnapshot
from s2s.replies import now_ms, text

if TYPE_CHECKING:
    from s2s.queue import Queue

DURATION_SAMPLE = 200  # completed jobs whose run times make the percentiles


class Overview:
    """Listings and snapshots of one :class:`~s2s.queue.Queue`."""

    def __init__(self, queue: Queue):
        self.queue = queue
        self.redis = queue.redis
        self.keys = queue.keys

    async def list_jobs(self, state: str, limit: int = 50) -> list[Job]:
        """The newest ``limit`` jobs in one state (waiting: oldest first, as they will run)."""
        k = self.keys
        if state == "waiting":
            ids = list(reversed(await self.redis.lrange(k.waiting, -limit, -1)))
        else:
            ids = await self.redis.zrevrange({"active": k.active, "delayed": k.delayed, "completed": k.completed,
                                              "failed": k.failed, "cancelled": k.cancelled}[state], 0, limit - 1)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(k.job(text(job_id)))
        jobs = []
        for raw in await pipe.execute():
            if raw and b"id" in raw:
                jobs.append(Job.from_redis({text(a): text(b) for a, b in raw.items()}))
        return jobs

    async def oldest_waiting_age_ms(self) -> int | None:
        """How long the next job in line has waited, or None when nothing waits."""
        oldest = await self.redis.lindex(self.keys.waiting, -1)
        if oldest is None:
            return None
        created = await self.redis.hget(self.keys.job(text(oldest)), "createdAt")
        return max(0, await now_ms(self.redis) - int(created)) if created else None

    async def snapshot(self) -> dict:
        """The body of GET /api/jobs/stats: counts, plus the oldest wait and recent run times."""
        stats = await self.queue.stats()
        oldest = await self.oldest_waiting_age_ms()
        durations = sorted(await self.recent_durations_ms())
        return StatsSnapshot(
            **asdict(stats, recurse=False), oldest_waiting_age_ms=oldest,
            p50_ms=durations[len(durations) // 2] if durations else None,
            p95_ms=durations[min(len(durations) - 1, int(len(durations) * 0.95))] if durations else None,
            duration_sample=len(durations)).to_json()

    async def recent_durations_ms(self, sample: int = DURATION_SAMPLE) -> list[int]:
        """Run times (start to completion) of the most recently completed jobs."""
        ids = await self.redis.zrevrange(self.keys.completed, 0, sample - 1)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self.keys.job(text(job_id)), "startedAt", "completedAt")
        return [int(done) - int(start) for start, done in await pipe.execute() if start and done]
