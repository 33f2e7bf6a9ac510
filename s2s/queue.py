"""The job queue on Redis: enqueue, claim with a lease, report, finish, retry, reap.

A job id moves between a waiting LIST and a processing ZSET of leases, one Lua
script per move (s2s/lua/). Each claim hands out a fencing token: a worker whose
lease was taken away (it hung, or was killed) cannot report or finish the job
afterwards, so a job completes at most once, and the reaper puts it back in line.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Iterable

import redis.asyncio as aioredis
from attrs import field, frozen

from s2s import connections, scripts
from s2s.keys import Keys
from s2s.models import Job, Stats, image_path
from s2s.settings import Settings
from s2s.store import StoreMemory

MAX_EVENTS = 200  # per-job event log bound; a job has a dozen in a normal life
MAX_REFUNDS = 20  # rate-limited attempts given back per job; past that they count
WORKER_MEMORY_MS = 3600 * 1000  # a worker that stopped is still listed (as dead) for an hour
REAP_CONFIRM_SLACK_MS = 2000  # see Queue.reap_confirm_ms
INLINE_PHOTO_BYTES = 256 * 1024  # small photos come back with the claim itself, saving a round trip


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request."""

    def __init__(self, job_id: str):
        super().__init__(job_id)
        self.job_id = job_id


@frozen
class NewJob:
    hero_name: str
    theme_id: str
    style_key: str
    kind: str
    photo: bytes
    photo_type: str  # image/jpeg, image/png, image/webp

    def fingerprint(self) -> str:
        """What makes two submissions the same request (for Idempotency-Key)."""
        h = hashlib.sha256()
        for part in (self.hero_name, self.theme_id, self.style_key, self.kind, self.photo_type):
            h.update(part.encode() + b"\0")
        h.update(self.photo)
        return h.hexdigest()[:32]


@frozen
class Claim:
    """A job in a worker's hands, for one attempt."""

    job_id: str
    fence: str
    attempt: int
    max_attempts: int
    hero_name: str
    theme_id: str
    style_key: str
    kind: str
    photo_type: str
    photo: bytes | None = field(default=None, repr=False, eq=False)  # None: fetch with load_photo()


@frozen
class ClaimBatch:
    claims: list[Claim]
    paused: bool
    next_delayed_ms: int | None  # when the earliest retry becomes due (Redis clock)
    now_ms: int


def _parse_claims(reply: list) -> ClaimBatch:
    paused, next_due, now = int(reply[0]), int(reply[1]), int(reply[2])
    claims = []
    rest = reply[3:]
    for i in range(0, len(rest), 10):
        job_id, fence, attempt, hero, theme, style, kind, photo_type, max_attempts, photo = rest[i:i + 10]
        claims.append(Claim(job_id=_s(job_id), fence=_s(fence), attempt=int(attempt),
                            max_attempts=int(max_attempts or 1), hero_name=_s(hero or b""),
                            theme_id=_s(theme or b""), style_key=_s(style or b""), kind=_s(kind or b""),
                            photo_type=_s(photo_type or b"image/png"), photo=photo or None))
    return ClaimBatch(claims=claims, paused=bool(paused), next_delayed_ms=None if next_due < 0 else next_due,
                      now_ms=now)


def new_job_id() -> str:
    """Unguessable, URL-safe: 144 random bits."""
    return secrets.token_urlsafe(18)


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Queue:
    """Every queue operation, for the API and the workers alike."""

    def __init__(self, redis: aioredis.Redis, settings: Settings):
        self.redis = redis
        self.keys = Keys(settings.key_prefix)
        self.settings = settings
        self.retention_ms = settings.retention_seconds * 1000
        self.pipeliner = scripts.Pipeliner(redis)
        k = self.keys
        self._job_prefix = k.job("")
        self._events_suffix = k.job_events("x")[len(k.job("x")):]
        self._input_suffix = k.job_input("x")[len(k.job("x")):]
        self._opened = time.monotonic()  # this process's start, for worker_absence_ms
        self._worker_seen: float | None = None
        self.memory = StoreMemory(redis, settings.store_high_water_percent)  # how full Redis is
        self.max_block_s = settings.redis_timeout_ms / 2000  # a BLMOVE must end before the read timeout does

    @classmethod
    def connect(cls, settings: Settings, url: str | None = None, *, blocking_s: float = 0.0) -> Queue:
        """On a bounded pool (:mod:`s2s.connections`); ``blocking_s``: the longest BLMOVE this process makes."""
        queue = cls(connections.async_client(settings, url, blocking_s=blocking_s), settings)
        queue.max_block_s = max(queue.max_block_s, blocking_s)
        return queue

    async def close(self) -> None:
        await self.pipeliner.drain()
        await self.redis.aclose()

    def _common(self) -> list:
        return [self.keys.events_channel, self.retention_ms, MAX_EVENTS]

    # ---- the API side ----------------------------------------------------------------
    async def enqueue(self, job: NewJob, idempotency_key: str | None = None) -> tuple[str, bool]:
        """Store and queue a job; return (job id, created). A repeated key returns the first job."""
        job_id = new_job_id()
        k = self.keys
        fingerprint = job.fingerprint() if idempotency_key else ""
        idem_key = k.idempotency(hashlib.sha256(idempotency_key.encode()).hexdigest()) if idempotency_key else k.job(
            job_id) + ":noidem"
        fields = ["heroName", job.hero_name, "themeId", job.theme_id, "styleKey", job.style_key, "kind", job.kind,
                  "inputType", job.photo_type, "maxAttempts", self.settings.max_attempts]
        created, value = await scripts.call(
            self.redis, "enqueue",
            [k.job(job_id), k.job_input(job_id), k.waiting, idem_key, k.job_events(job_id)],
            [job_id, job.photo, fingerprint, self.retention_ms, k.events_channel, MAX_EVENTS, *fields])
        if created:
            return job_id, True
        seen_fingerprint, seen_id = _s(value).split(" ", 1)
        if seen_fingerprint != fingerprint:
            raise IdempotencyConflict(seen_id)
        return seen_id, False

    async def get(self, job_id: str) -> Job | None:
        raw = await self.redis.hgetall(self.keys.job(job_id))
        if not raw or b"id" not in raw:
            return None
        return Job.from_redis({_s(a): _s(b) for a, b in raw.items()})

    async def result(self, job_id: str) -> tuple[bytes, str] | None:
        """The finished image and its content type, while it is kept."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.keys.job(job_id), "resultType")
        pipe.get(self.keys.job_result(job_id))
        content_type, data = await pipe.execute()
        if data is None or content_type is None:
            return None
        return data, _s(content_type)

    async def events(self, job_id: str, after_seq: int = 0) -> list[dict]:
        """The job's kept event frames with ``seq`` above ``after_seq``, oldest first."""
        raw = await self.redis.lrange(self.keys.job_events(job_id), 0, -1)
        frames = [json.loads(r) for r in raw]
        return [f for f in frames if f["seq"] > after_seq]

    async def stats(self) -> Stats:
        k = self.keys
        waiting, active, delayed, completed, failed, cancelled, paused, totals = await scripts.call(
            self.redis, "stats",
            [k.waiting, k.active, k.delayed, k.completed, k.failed, k.cancelled, k.paused, k.totals],
            [self.retention_ms])
        pairs = iter(totals)
        return Stats(waiting=waiting, active=active, delayed=delayed, completed=completed, failed=failed,
                     cancelled=cancelled, paused=bool(paused),
                     totals={_s(a): int(b) for a, b in zip(pairs, pairs, strict=True)})

    async def cancel(self, job_id: str) -> str:
        """Cancel a queued or running job; return the status it had ('' if unknown)."""
        k = self.keys
        return _s(await scripts.call(
            self.redis, "cancel",
            [k.job(job_id), k.job_events(job_id), k.job_input(job_id), k.waiting, k.delayed, k.active,
             k.cancelled, k.totals],
            [*self._common(), k.control_channel]))

    async def retry(self, job_id: str) -> str:
        """Queue a failed or cancelled job again; return the status it had ('' unknown, 'gone' expired)."""
        k = self.keys
        return _s(await scripts.call(
            self.redis, "retry",
            [k.job(job_id), k.job_events(job_id), k.job_input(job_id), k.waiting, k.failed, k.cancelled],
            self._common()))

    async def pause(self) -> None:
        await self.redis.set(self.keys.paused, b"1")

    async def resume(self) -> None:
        await self.redis.delete(self.keys.paused)
        await self.redis.publish(self.keys.control_channel, json.dumps({"type": "resume"}))

    # ---- the worker side -------------------------------------------------------------
    def _claim_args(self, worker_id: str, count: int) -> tuple[list, list]:
        k = self.keys
        return ([k.waiting, k.active, k.delayed, k.paused],
                [count, self.settings.lease_ms, worker_id, self._job_prefix, self._events_suffix, *self._common(),
                 self._input_suffix, INLINE_PHOTO_BYTES])

    async def claim(self, worker_id: str, count: int) -> ClaimBatch:
        keys, args = self._claim_args(worker_id, count)
        return _parse_claims(await scripts.call(self.redis, "claim", keys, args))

    async def wait_for_work(self, timeout: float) -> bool:
        """Block until the waiting list is non-empty (or ``timeout`` s pass), taking nothing.

        BLMOVE from the list to itself rotates one id back in place: a blocking peek.
        """
        k = self.keys
        got = await self.redis.blmove(k.waiting, k.waiting, min(timeout, self.max_block_s), "RIGHT", "RIGHT")
        return got is not None

    async def load_photo(self, job_id: str) -> bytes | None:
        return await self.pipeliner.command("GET", self.keys.job_input(job_id))

    async def heartbeat(self, worker_id: str, info: dict, holding: Iterable[Claim]) -> list[str]:
        """Renew the leases of the jobs in hand and the worker's presence; return ids no longer ours."""
        k = self.keys
        args: list = [self.settings.lease_ms, self._job_prefix, worker_id, WORKER_MEMORY_MS, json.dumps(info)]
        for claim in holding:
            args += [claim.job_id, claim.fence]
        lost = await self.pipeliner.call("extend", [k.active, k.workers, k.worker(worker_id)], args)
        return [_s(x) for x in lost]

    def progress(self, claim: Claim, percent: int, message: str) -> asyncio.Future:
        """Record progress; the future answers 1, or 0 when this worker no longer holds the job.

        A plain future, so a worker may go on without waiting for the answer.
        """
        k = self.keys
        return self.pipeliner.call("progress", [k.job(claim.job_id), k.job_events(claim.job_id)],
                                   [claim.fence, int(percent), message, *self._common()])

    def upstream_call(self, claim: Claim, metrics_field: str) -> asyncio.Future:
        """Count an upstream call beginning, on the job and in the metrics counter ``metrics_field``."""
        return self.pipeliner.call("upstream", [self.keys.job(claim.job_id), self.keys.metrics_counters],
                                   [claim.fence, metrics_field])

    async def complete(self, claim: Claim, data: bytes, content_type: str, provider: str) -> bool:
        """Store the image and end the job; False when this worker no longer holds it."""
        ok, _ = await self.complete_and_claim(claim, data, content_type, provider, worker_id="", count=0)
        return ok

    async def complete_and_claim(self, claim: Claim, data: bytes, content_type: str, provider: str, *,
                                 worker_id: str, count: int) -> tuple[bool, ClaimBatch]:
        """Complete a job and claim up to ``count`` next ones in the same round trip."""
        k, j = self.keys, claim.job_id
        claim_keys, claim_args = self._claim_args(worker_id, count)
        reply = await self.pipeliner.call(
            "complete",
            [k.job(j), k.job_result(j), k.job_events(j), k.job_input(j), k.active, k.completed, k.totals,
             *claim_keys[:1], *claim_keys[2:]],
            [claim.fence, data, content_type, image_path(j), provider, *claim_args])
        return bool(reply[0]), _parse_claims(reply[1:])

    async def fail(self, claim: Claim, error: str, code: str, *, retryable: bool, delay_ms: int,
                   refund: bool = False) -> int:
        """Record a failed attempt: 2 retry scheduled, 3 failed for good, 0 no longer ours."""
        k, j = self.keys, claim.job_id
        return int(await self.pipeliner.call(
            "fail", [k.job(j), k.job_events(j), k.job_input(j), k.active, k.delayed, k.failed, k.totals],
            [claim.fence, error, code, int(retryable), int(delay_ms), self.retention_ms, k.events_channel,
             MAX_EVENTS, int(refund), MAX_REFUNDS]))

    async def release(self, claim: Claim) -> bool:
        """Give a job back (shutdown): front of the queue, attempt not counted."""
        k, j = self.keys, claim.job_id
        ok = await self.pipeliner.call(
            "release", [k.job(j), k.job_events(j), k.active, k.waiting],
            [claim.fence, *self._common()])
        return bool(ok)

    async def reap(self, limit: int = 100) -> int:
        """Take back jobs whose lease expired and stayed so for :meth:`reap_confirm_ms`; return how many."""
        k = self.keys
        return int(await scripts.call(
            self.redis, "reap", [k.active, k.waiting, k.failed, k.totals, k.completed, k.cancelled],
            [self._job_prefix, self._events_suffix, self._input_suffix, *self._common(), limit,
             self.reap_confirm_ms()]))

    def reap_confirm_ms(self) -> int:
        """How long an expired lease stays suspected before it is taken back: a heartbeat interval and
        two seconds, which a live worker needs to renew after Redis comes back from an outage."""
        return self.settings.lease_ms // 3 + REAP_CONFIRM_SLACK_MS

    def alive_within_ms(self) -> int:
        """A worker heard from within this long is alive (three missed heartbeats)."""
        return self.settings.lease_ms

    async def now_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return seconds * 1000 + micros // 1000

    async def workers(self, include_dead: bool = False) -> list[dict]:
        """Worker processes with what they last said of themselves; ``alive`` says if they still beat."""
        k = self.keys
        now = await self.now_ms()
        await self.redis.zremrangebyscore(k.workers, "-inf", now - WORKER_MEMORY_MS)
        low = "-inf" if include_dead else now - self.alive_within_ms()
        entries = await self.redis.zrangebyscore(k.workers, low, "+inf", withscores=True)
        if not entries:
            return []
        infos = await self.redis.mget([k.worker(_s(w)) for w, _ in entries])
        out = []
        for (wid, seen), info in zip(entries, infos, strict=True):
            if info is None:
                continue
            data = json.loads(info)
            age = now - int(seen)
            data.update(id=_s(wid), lastSeenMs=age, alive=age <= self.alive_within_ms())
            out.append(data)
        return out

    async def worker_absence_ms(self, alive: bool) -> int:
        """How long no worker has been alive (0 while one is), as far as this process can tell.

        Counted from the latest of: this process's start (workers deployed after the API get the
        full time to come up), the newest heartbeat the registry remembers (a worker that died
        without leaving stays listed for an hour, so its end is dated even by a process that never
        saw it), and the last time this process saw a worker alive (a drained worker leaves the
        registry at once). ``alive``: whether :meth:`workers` found one just now.
        """
        mono = time.monotonic()
        if alive:
            self._worker_seen = mono
            return 0
        ages_s = [mono - self._opened]
        if self._worker_seen is not None:
            ages_s.append(mono - self._worker_seen)
        newest = await self.redis.zrevrange(self.keys.workers, 0, 0, withscores=True)
        if newest:
            ages_s.append(max(0, await self.now_ms() - int(newest[0][1])) / 1000)
        return int(min(ages_s) * 1000)

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
            pipe.hgetall(k.job(_s(job_id)))
        jobs = []
        for raw in await pipe.execute():
            if raw and b"id" in raw:
                jobs.append(Job.from_redis({_s(a): _s(b) for a, b in raw.items()}))
        return jobs

    async def oldest_waiting_age_ms(self) -> int | None:
        """How long the next job in line has waited, or None when nothing waits."""
        oldest = await self.redis.lindex(self.keys.waiting, -1)
        if oldest is None:
            return None
        created = await self.redis.hget(self.keys.job(_s(oldest)), "createdAt")
        return max(0, await self.now_ms() - int(created)) if created else None

    async def snapshot(self) -> dict:
        """The body of GET /api/jobs/stats: counts, plus the oldest wait and recent run times."""
        body = (await self.stats()).to_json()
        body["oldestWaitingAgeMs"] = await self.oldest_waiting_age_ms()
        durations = sorted(await self.recent_durations_ms())
        body["durationMs"] = {
            "p50": durations[len(durations) // 2] if durations else None,
            "p95": durations[min(len(durations) - 1, int(len(durations) * 0.95))] if durations else None,
            "sample": len(durations),
        }
        return body

    async def recent_durations_ms(self, sample: int = 200) -> list[int]:
        """Run times (start to completion) of the most recently completed jobs."""
        ids = await self.redis.zrevrange(self.keys.completed, 0, sample - 1)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self.keys.job(_s(job_id)), "startedAt", "completedAt")
        return [int(done) - int(start) for start, done in await pipe.execute() if start and done]

