"""The job queue on Redis: enqueue, claim with a lease, report, finish, retry, reap.

A job id moves between a waiting LIST and a processing ZSET of leases, one Lua
script per move (s2s/lua/). Each claim hands out a fencing token: a worker whose
lease was taken away (it hung, or was killed) cannot report or finish the job
afterwards, so a job completes at most once, and the reaper puts it back in line.

Reading what the queue holds is elsewhere: the worker registry in :mod:`s2s.fleet`,
job lists and the stats snapshot in :mod:`s2s.overview`, places in line in :mod:`s2s.line`
(``queue.fleet``, ``queue.overview``, ``queue.line``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from s2s import connections, deletion, scripts
from s2s.claims import Claim, ClaimBatch, parse_claims
from s2s.completions import Completions
from s2s.fleet import WORKER_MEMORY_MS, Fleet
from s2s.job_requests import IdempotencyConflict, IdempotencyKey, NewJob, new_job_id
from s2s.keys import Keys
from s2s.line import Line
from s2s.models import Accepted, Job, Stats, image_path
from s2s.overview import Overview
from s2s.redis_memory import StoreMemory
from s2s.replies import text
from s2s.settings import Settings
from s2s.storage import BlobStore, job_blob, open_store
from s2s.upstream_counts import UpstreamCounts
from s2s.webhooks import store as webhook_store

log = logging.getLogger("s2s.queue")

MAX_EVENTS = 200  # per-job event log bound; a job has a dozen in a normal life
MAX_REFUNDS = 20  # rate-limited attempts given back per job; past that they count
REAP_CONFIRM_SLACK_MS = 2000  # see Queue.reap_confirm_ms
#: the longest a photo is kept for a job that has not ended, beyond the retention time: a job queued longer
#: than this fails with photo_missing. Photos are put with retention + this, counted from intake, so an ended
#: job's photo (kept for an operator's retry) is gone at most this long after its record.
QUEUED_PHOTO_S = 86400
#: bytes of photos one claim reply may carry (the photos in this Redis): the claimed jobs start without
#: reading them in another round trip; those past it are read as before (Worker._run_job)
CLAIM_PHOTO_BUDGET = 8 * 1024 * 1024


class Queue:
    """Every job operation, for the API and the workers alike."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, blobs: BlobStore | None = None):
        self.redis = redis
        self.blobs = blobs or open_store(settings, redis=redis)  # photos and pictures (S2S_STORAGE_URL)
        self.keys = Keys(settings.key_prefix)
        self.settings = settings
        self.retention_ms = settings.retention_seconds * 1000
        self._completions: dict[str, Completions] = {}  # by worker id
        self._upstream_counts: dict[str, UpstreamCounts] = {}  # by metrics field
        self.lanes = scripts.Lanes(redis)  # the worker's calls, batched into pipelines (a job's on its own lane)
        #: the blobs live in this very Redis: scripts and the pipelines read and write them with the job
        self.blobs_inline = self.blobs.scheme == "redis" and getattr(self.blobs, "redis", None) is redis
        k = self.keys
        self._job_prefix = k.job("")
        self._events_suffix = k.job_events("x")[len(k.job("x")):]
        #: what the claim script puts before a photo's blob key to read it ('': the photos are elsewhere)
        self._blob_prefix = self.blobs.redis_key("x")[:-1] if self.blobs_inline else ""
        self.memory = StoreMemory(redis, settings.store_high_water_percent)  # how full Redis is
        self.max_block_s = settings.redis_timeout_ms / 2000  # a BLMOVE must end before the read timeout does
        self.fleet = Fleet(redis, self.keys, settings.lease_ms)  # the workers' registry, read
        self.overview = Overview(self)  # job lists and snapshots, read
        self.line = Line(self)  # queued jobs' places in line and ETAs, read

    @classmethod
    def connect(cls, settings: Settings, url: str | None = None, *, blocking_s: float = 0.0) -> Queue:
        """On a bounded pool (:mod:`s2s.connections`); ``blocking_s``: the longest BLMOVE this process makes."""
        queue = cls(connections.async_client(settings, url, blocking_s=blocking_s), settings)
        queue.max_block_s = max(queue.max_block_s, blocking_s)
        return queue

    async def close(self) -> None:
        await self.lanes.drain()
        await self.blobs.close()
        await self.redis.aclose()

    def _common(self) -> list:
        return [self.keys.events_channel, self.retention_ms, MAX_EVENTS]

    # ---- the API side ----------------------------------------------------------------
    @property
    def photo_ttl_s(self) -> int:
        """A photo's expiry, from intake: the retention time plus :data:`QUEUED_PHOTO_S` (never without one)."""
        return self.settings.retention_seconds + QUEUED_PHOTO_S

    async def accept(self, job: NewJob, idempotency: IdempotencyKey | None = None) -> Accepted:
        """Store the photo, then queue the job with its delete token. A repeated key answers its first job.

        The photo goes to the blob store first, with its expiry: the record only names it, and a worker
        can claim the job the moment the script has run. Refused or failed, the photo is deleted again.
        """
        job_id = new_job_id()
        k = self.keys
        token = deletion.new_token()
        idem_key = k.idempotency(idempotency.client, idempotency.key) if idempotency else k.job(job_id) + ":noidem"
        photo_key = job_blob(job_id, "photo")
        fields = ["heroName", job.hero_name, "themeId", job.theme_id, "styleKey", job.style_key, "kind", job.kind,
                  "inputType", job.photo_type, "maxAttempts", self.settings.max_attempts, "photo", photo_key,
                  "deleteHash", deletion.token_digest(token), *(["idemKey", idem_key] if idempotency else []),
                  *webhook_store.job_fields(job.webhook_url, self.settings)]
        # the Idempotency-Key's entry (s2s/deletion.py): the request's fingerprint and the sealed token
        entry = deletion.entry(job.fingerprint(), token, idempotency, job_id) if idempotency else ""
        await self.blobs.put(photo_key, job.photo, ttl_s=self.photo_ttl_s, content_type=job.photo_type)
        try:
            created, value = await scripts.call(
                self.redis, "enqueue", [k.job(job_id), k.waiting, idem_key, k.job_events(job_id)],
                [job_id, entry, self.retention_ms, k.events_channel, MAX_EVENTS, *fields])
        except BaseException:
            await asyncio.shield(self._forget_photo(photo_key))
            raise
        if created:
            return Accepted(job_id, True, token)
        await self._forget_photo(photo_key)  # the key's first job has its own
        fingerprint, seen_id, seen_token = deletion.read_entry(text(value), idempotency)
        if fingerprint != job.fingerprint():
            raise IdempotencyConflict
        return Accepted(seen_id, False, seen_token)

    async def enqueue(self, job: NewJob, idempotency: IdempotencyKey | None = None) -> tuple[str, bool]:
        """:meth:`accept`, answering (job id, created) only."""
        accepted = await self.accept(job, idempotency)
        return accepted.job_id, accepted.created

    async def get(self, job_id: str) -> Job | None:
        raw = await self.redis.hgetall(self.keys.job(job_id))
        if not raw or b"id" not in raw:
            return None
        return Job.from_redis({text(a): text(b) for a, b in raw.items()})

    async def _forget_photo(self, key: str) -> None:
        try:
            await self.blobs.delete(key)
        except Exception:  # noqa: BLE001 (the job was not made; the photo expires with its TTL anyway)
            log.warning("could not delete the photo of a job not queued", exc_info=True)

    async def picture(self, job_id: str) -> tuple[str, str] | None:
        """Where a completed job's picture is in the blob store, and its content type; None if it has none."""
        key, content_type = await self.redis.hmget(self.keys.job(job_id), "picture", "resultType")
        return (text(key), text(content_type)) if key and content_type else None

    async def result(self, job_id: str) -> tuple[bytes, str] | None:
        """The finished image and its content type, while it is kept."""
        found = await self.picture(job_id)
        data = await self.blobs.get(found[0]) if found else None
        return (data, found[1]) if data is not None else None

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
                     totals={text(a): int(b) for a, b in zip(pairs, pairs, strict=True)})

    async def cancel(self, job_id: str) -> str:
        """Cancel a queued or running job; return the status it had ('' if unknown)."""
        k = self.keys
        return text(await scripts.call(
            self.redis, "cancel",
            [k.job(job_id), k.job_events(job_id), k.waiting, k.delayed, k.active, k.cancelled, k.totals],
            [*self._common(), k.control_channel]))

    async def retry(self, job_id: str) -> str:
        """Queue a failed or cancelled job again; return the status it had ('' unknown, 'gone' photo expired)."""
        k = self.keys
        expires = await self.blobs.expires_at(job_blob(job_id, "photo"))
        kept = expires is not None and expires > time.time() + 1  # not about to go as the job is queued
        return text(await scripts.call(
            self.redis, "retry", [k.job(job_id), k.job_events(job_id), k.waiting, k.failed, k.cancelled],
            [*self._common(), int(kept)]))

    async def pause(self) -> None:
        await self.redis.set(self.keys.paused, b"1")

    async def resume(self) -> None:
        await self.redis.delete(self.keys.paused)
        await self.redis.publish(self.keys.control_channel, json.dumps({"type": "resume"}))

    # ---- the worker side -------------------------------------------------------------
    async def load_scripts(self) -> None:
        """Load every script once at start: a fresh Redis would refuse the first pipelines of every lane."""
        await scripts.load_all(self.redis)

    def _claim_args(self, worker_id: str, count: int) -> tuple[list, list]:
        k = self.keys
        return ([k.waiting, k.active, k.delayed, k.paused],
                [count, self.settings.lease_ms, worker_id, self._job_prefix, self._events_suffix, *self._common(),
                 self._blob_prefix, CLAIM_PHOTO_BUDGET])

    def _completions_of(self, worker_id: str) -> Completions:
        """The kind of this worker's completions: those that meet in a pipeline are one script call."""
        kind = self._completions.get(worker_id)
        if kind is None:
            (waiting, active, delayed, paused), args = self._claim_args(worker_id, 0)
            k = self.keys
            kind = self._completions[worker_id] = Completions(
                (active, k.completed, k.totals, waiting, delayed, paused), args[1:])
        return kind

    async def claim(self, worker_id: str, count: int) -> ClaimBatch:
        keys, args = self._claim_args(worker_id, count)
        return parse_claims(await scripts.call(self.redis, "claim", keys, args))

    async def wait_and_claim(self, worker_id: str, count: int, timeout: float) -> ClaimBatch:
        """Block until the waiting list is non-empty (or ``timeout`` s pass), then claim up to ``count`` jobs.

        One pipeline: a BLMOVE from the list to itself (a blocking peek: it rotates one id back in place,
        taking nothing), then the claim script. Redis holds the script behind the blocked command and runs
        it the moment a job arrives, so an idle worker's job starts in Redis' own event loop, not one round
        trip to the worker and back later.
        The claim always runs and its answer is never dropped. A wait refused at once (a full Redis refuses
        BLMOVE) with nothing claimed raises its error, so the caller backs off instead of spinning.
        """
        k = self.keys
        keys, args = self._claim_args(worker_id, count)
        pipe = self.redis.pipeline(transaction=False)
        pipe.blmove(k.waiting, k.waiting, min(timeout, self.max_block_s), "RIGHT", "RIGHT")
        pipe.execute_command(*scripts.evalsha("claim", keys, args))
        waited, claimed = await pipe.execute(raise_on_error=False)
        if isinstance(claimed, NoScriptError):  # a restarted Redis forgot the script: it did not run
            return await self.claim(worker_id, count)
        if isinstance(claimed, Exception):
            raise claimed
        batch = parse_claims(claimed)
        if isinstance(waited, Exception) and not batch.claims:
            raise waited
        return batch

    async def load_photo(self, job_id: str) -> bytes | None:
        """The job's prepared photo from the blob store; None once it expired or was deleted.

        In Redis the GET joins the worker's next pipeline (one round trip for many jobs' calls).
        """
        key = job_blob(job_id, "photo")
        if self.blobs_inline:
            return await self.lanes.of(job_id).command("GET", self.blobs.redis_key(key))
        return await self.blobs.get(key)

    async def forget_photo(self, job_id: str) -> None:
        """A completed job needs its photo no more: delete it now rather than at its expiry."""
        await self.blobs.delete(job_blob(job_id, "photo"))

    async def sweep_blobs(self, every_s: float) -> int | None:
        """Remove the blob store's expired blobs, if no other process did in the last ``every_s`` seconds.

        A lock key with that TTL makes one sweep per round in the whole cluster; None: not our turn.
        (Expired blobs are already invisible to every read: the sweep frees their space.)
        """
        if not await self.redis.set(self.keys.blob_sweep, b"1", nx=True, px=int(every_s * 1000)):
            return None
        # every blob s2s puts lives at least the retention time: younger ones are not even looked at
        return await self.blobs.sweep(min_age_s=self.settings.retention_seconds)

    async def heartbeat(self, worker_id: str, info: dict, holding: Iterable[Claim]) -> list[str]:
        """Renew the leases of the jobs in hand and the worker's presence; return ids no longer ours."""
        k = self.keys
        args: list = [self.settings.lease_ms, self._job_prefix, worker_id, WORKER_MEMORY_MS, json.dumps(info)]
        for claim in holding:
            args += [claim.job_id, claim.fence]
        lost = await self.lanes.shared.call("extend", [k.active, k.workers, k.worker(worker_id)], args)
        return [text(x) for x in lost]

    def progress(self, claim: Claim, percent: int, message: str) -> asyncio.Future:
        """Record progress; the future answers 1, or 0 when this worker no longer holds the job.

        A plain future, so a worker may go on without waiting for the answer.
        """
        k = self.keys
        return self.lanes.of(claim.job_id).call("progress", [k.job(claim.job_id), k.job_events(claim.job_id)],
                                   [claim.fence, int(percent), message, *self._common()])

    def upstream_call(self, claim: Claim, metrics_field: str) -> asyncio.Future:
        """Count an upstream call beginning, on the job and in the metrics counter ``metrics_field``; the
        future answers the job's upstream calls so far (0: the job is gone). Calls that begin together
        are counted by one script call."""
        kind = self._upstream_counts.get(metrics_field)
        if kind is None:
            kind = self._upstream_counts[metrics_field] = UpstreamCounts(self.keys.metrics_counters, metrics_field)
        return self.lanes.of(claim.job_id).merged(kind, (self.keys.job(claim.job_id), claim.fence))

    async def complete(self, claim: Claim, data: bytes, content_type: str, provider: str) -> bool:
        """Store the image and end the job; False when this worker no longer holds it."""
        ok, _ = await self.complete_and_claim(claim, data, content_type, provider, worker_id="", count=0)
        return ok

    async def store_picture(self, claim: Claim, data: bytes, content_type: str) -> str:
        """Put a picture in the blob store, kept for the retention time; return its key.

        Every write has a key of its own (fence and random): a late or repeated completion cannot
        replace the picture a finished job names; the record names the one the script accepted.
        """
        key = job_blob(claim.job_id, f"picture-{claim.fence}-{secrets.token_hex(4)}")
        if not self.blobs_inline:  # Redis storage: complete.lua writes it, in the same script
            await self.blobs.put_or_undo(key, data, ttl_s=self.settings.retention_seconds, content_type=content_type)
        return key

    async def complete_and_claim(self, claim: Claim, data: bytes, content_type: str, provider: str, *,
                                 worker_id: str, count: int) -> tuple[bool, ClaimBatch]:
        """Complete a job and claim up to ``count`` next ones in the same round trip.

        The picture is stored first; the script names it in the record only if this worker still holds
        the job. If not, this attempt's picture is deleted (it names no job; its expiry is the backstop).
        Completed, the photo is deleted: nothing reads it again. With Redis storage the script itself
        writes the picture (and deletes the photo), only if the job is still ours: a full Redis (noeviction)
        refuses a plain SET, but not a script's writes once its first (a shrinking ZREM) is done
        (s2s.redis_memory).
        """
        k, j = self.keys, claim.job_id
        key = await self.store_picture(claim, data, content_type)
        inline = self.blobs_inline
        ok, batch = await self.lanes.of(j).merged(self._completions_of(worker_id), Completions.Item(
            keys=(k.job(j), k.job_events(j), self.blobs.redis_key(key) if inline else k.job(j), k.run_times(provider),
                  self.blobs.redis_key(job_blob(j, "photo")) if inline else k.job(j)),
            args=(claim.fence, key, content_type, image_path(j), provider, data if inline else "", int(inline)),
            count=count))
        if inline:  # the script deleted the photo, and wrote the picture only if the job was still ours
            return ok, batch
        try:
            if ok:
                await self.forget_photo(j)
            elif text(await self.redis.hget(k.job(j), "picture") or b"") != key:  # not ours: a lost reply's retry
                await self.blobs.delete(key)
        except Exception:  # noqa: BLE001 (the job is settled; the blob expires anyway)
            log.warning("could not delete a blob after completing", exc_info=True)
        return ok, batch

    async def fail(self, claim: Claim, error: str, code: str, *, retryable: bool, delay_ms: int,
                   refund: bool = False) -> int:
        """Record a failed attempt: 2 retry scheduled, 3 failed for good, 0 no longer ours."""
        k, j = self.keys, claim.job_id
        return int(await self.lanes.of(j).call(
            "fail", [k.job(j), k.job_events(j), k.active, k.delayed, k.failed, k.totals],
            [claim.fence, error, code, int(retryable), int(delay_ms), self.retention_ms, k.events_channel,
             MAX_EVENTS, int(refund), MAX_REFUNDS]))

    async def release(self, claim: Claim) -> bool:
        """Give a job back (shutdown): front of the queue, attempt not counted."""
        return bool(await self.release_soon(claim))

    def release_soon(self, claim: Claim) -> asyncio.Future:
        """:meth:`release`, made now on the job's lane; the future answers 1, or 0 if the job was not ours."""
        k, j = self.keys, claim.job_id
        return self.lanes.of(j).call("release", [k.job(j), k.job_events(j), k.active, k.waiting],
                                     [claim.fence, *self._common()])

    async def reap(self, limit: int = 100) -> int:
        """Take back jobs whose lease expired and stayed so for :meth:`reap_confirm_ms`; return how many."""
        k = self.keys
        return int(await scripts.call(
            self.redis, "reap", [k.active, k.waiting, k.failed, k.totals, k.completed, k.cancelled],
            [self._job_prefix, self._events_suffix, *self._common(), limit,
             self.reap_confirm_ms()]))

    def reap_confirm_ms(self) -> int:
        """How long an expired lease stays suspected before it is taken back: a heartbeat interval and
        two seconds, which a live worker needs to renew after Redis comes back from an outage."""
        return self.settings.lease_ms // 3 + REAP_CONFIRM_SLACK_MS
