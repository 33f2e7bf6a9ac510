"""A worker process: claims jobs in batches, runs them on the provider, keeps their leases.

Runs ``concurrency`` jobs at once on one asyncio loop. Leases are renewed by a
heartbeat; a reaper in every worker takes back jobs of workers that died. On
SIGTERM it drains: takes nothing new, hands back at once (without using up an
attempt) the jobs whose upstream call had not begun, and finishes and stores the
calls it has paid for (see :meth:`Worker._finish_running`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import time

import redis.exceptions

from s2s import photo_prep, redis_memory, timeouts
from s2s import worker_chores as chores
from s2s.backoff import Backoff
from s2s.catalog import Catalog
from s2s.claim_ahead import ClaimAhead
from s2s.claims import Claim
from s2s.metrics.counters import UPSTREAM_STARTED, WorkerMetrics
from s2s.metrics.counters import field as metrics_field
from s2s.metrics.store import ClusterMetrics
from s2s.providers.base import GeneratedImage, GenerationRequest, Provider, ProviderError, Report, call_begins
from s2s.providers.health import ProviderHealth
from s2s.queue import Queue
from s2s.settings import Settings
from s2s.storage import BlobStore
from s2s.webhooks import delivery as webhook_delivery

log = logging.getLogger("s2s.worker")

UNEXPECTED_ERROR = "Something went wrong while making the picture."
WAIT_FOR_WORK_S = 1.0  # the longest an idle worker blocks on the waiting list (its pool reads allow for it)


class Worker:
    def __init__(self, *, settings: Settings, queue: Queue, provider: Provider, catalog: Catalog,
                 concurrency: int | None = None, worker_id: str | None = None, blobs: BlobStore | None = None):
        self.settings = settings
        self.queue = queue
        self.blobs = blobs or queue.blobs  # photos and pictures (S2S_STORAGE_URL), as the job records name them
        self.provider = provider
        self.provider_health = ProviderHealth(queue.redis, queue.keys, provider.name)
        self.catalog = catalog
        self.photos = photo_prep.PhotoPrep(settings.decode_memory_mb * 1024 * 1024, settings.max_image_pixels)
        self.concurrency = concurrency or settings.worker_concurrency
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.started_at = time.time()
        self._running: dict[str, tuple[Claim, asyncio.Task]] = {}
        self._stop_reason: dict[str, str] = {}  # job id -> "lost" | "cancelled" | "shutdown"
        self._calling: set[str] = set()  # jobs whose upstream call has begun: paid for, never handed back unfinished
        self._settling: set[str] = set()  # jobs whose last write (complete-and-claim, fail) is on its way: slot free
        self._store_full = False  # Redis past its high-water mark (s2s.redis_memory): claim nothing new
        self._slot_free = asyncio.Event()
        self._wake = asyncio.Event()
        self._draining = False
        self.completed = 0
        self.failed = 0
        self.metrics = WorkerMetrics()  # counted in memory, added to the cluster's counters with the heartbeat
        self.cluster_metrics = ClusterMetrics(queue.redis, queue.keys)
        self.ahead = ClaimAhead(settings.worker_claim_ahead, self.concurrency, queue.release_soon,  # s2s/claim_ahead.py
                                self.metrics.job_released)
        self._started_field = metrics_field(UPSTREAM_STARTED, provider=provider.name)

    # ---- life cycle ------------------------------------------------------------------
    def run(self) -> None:
        """Command-line entry: run until SIGTERM/SIGINT, then drain."""
        asyncio.run(self._run_with_signals())

    async def _run_with_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.drain)
        try:
            await self.run_async()
        finally:
            await self.provider.close()
            await self.queue.close()

    def drain(self) -> None:
        """Take no new job; let ``run_async`` finish the running ones and return."""
        if not self._draining:
            log.info("draining", extra={"worker": self.id, "running": len(self._running)})
            self._draining = True
            self.ahead.hand_back_all()
            self._wake.set()
            self._slot_free.set()

    async def run_async(self) -> None:
        log.info("worker started", extra={"worker": self.id, "concurrency": self.concurrency,
                                          "provider": self.provider.name})
        await self.queue.load_scripts()
        await self._heartbeat_once()
        helpers = [asyncio.ensure_future(self._heartbeat_loop()),
                   asyncio.ensure_future(chores.follow_commands(self.queue, self.id, self._stop, self._wake)),
                   asyncio.ensure_future(chores.sweep_blobs(self.queue, self.blobs, self.id)),
                   *webhook_delivery.tasks(self.settings, self.queue, self.metrics.counts)]  # s2s/webhooks/
        fetcher = asyncio.ensure_future(self._fetch_loop())
        try:
            watched = {fetcher, *helpers}
            while not self._draining and watched:
                # a loop that ended without an error (the blob sweep, with Redis storage) is watched no more:
                # waiting on a finished task again would return at once, and spin
                done, watched = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled() and task.exception():
                        raise task.exception()
        finally:
            fetcher.cancel()
            await asyncio.gather(fetcher, return_exceptions=True)
            await self._finish_running()
            for task in helpers:
                timeouts.cancel(task)  # the loops also check cancel_requested(): 3.10 can swallow a cancel
            await asyncio.gather(*helpers, return_exceptions=True)
            await self.queue.lanes.drain()
            await chores.leave(self.queue, self.id, lambda: self.cluster_metrics.send(self.metrics.counts))
            log.info("worker stopped", extra={"worker": self.id, "completed": self.completed, "failed": self.failed})

    async def _finish_running(self) -> None:
        """Hand back the jobs whose upstream call has not begun; finish those whose call has.

        A call in flight ends by itself within S2S_UPSTREAM_TIMEOUT_MS; S2S_SHUTDOWN_GRACE_MS more is
        left for storing its picture (through a Redis outage, say). Whatever is still running then is
        handed back. Until ``_running`` is empty: a complete-and-claim in flight when the drain began
        may still bring a job, which goes back too.
        """
        deadline = time.monotonic() + (self.settings.upstream_timeout_ms + self.settings.shutdown_grace_ms) / 1000
        self._draining = True  # jobs a complete-and-claim brings from now on go back at once (_place)
        self.ahead.hand_back_all()
        while self._running:
            late = time.monotonic() >= deadline
            for job_id, (_, task) in list(self._running.items()):
                if late or (job_id not in self._calling and job_id not in self._stop_reason):
                    self._stop_reason.setdefault(job_id, "shutdown")
                    timeouts.cancel(task)  # again each second once late: Python 3.10 may swallow one
            tasks = [task for _, task in self._running.values()]
            wait_s = 1.0 if late else max(0.0, min(1.0, deadline - time.monotonic()))  # once late: a second apart
            await asyncio.wait(tasks, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)

    # ---- fetching --------------------------------------------------------------------
    async def _fetch_loop(self) -> None:
        """Claim while slots are free; with none to claim, wait for work and claim in the same pipeline."""
        wait_s = None  # set: the last claim found nothing, so the next one waits for work first
        while not self._draining:
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            if self._store_full:  # the heartbeat loop reads how full Redis is, once a second
                await asyncio.sleep(1.0)
                continue
            waiting, wait_s = wait_s, None
            try:
                if waiting is None:
                    batch = await self.queue.claim(self.id, free)
                else:
                    batch = await self.queue.wait_and_claim(self.id, free, waiting)
            except redis.exceptions.RedisError as exc:
                if redis_memory.is_out_of_memory(exc):
                    self._note_store(self.queue.memory.refused())
                    continue
                log.warning("cannot claim jobs; retrying", extra={"worker": self.id, "error": str(exc)})
                await asyncio.sleep(1.0)
                continue
            for claim in batch.claims:
                self._place(claim)
            if batch.claims:
                continue
            if batch.paused:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    pass
                continue
            wait_s = WAIT_FOR_WORK_S
            if batch.next_delayed_ms is not None:
                wait_s = min(wait_s, max(0.01, (batch.next_delayed_ms - batch.now_ms) / 1000))

    def _place(self, claim: Claim) -> None:
        """A claimed job: started if a slot is free, else buffered (claim-ahead), or back at once if draining."""
        if self._draining:
            self.ahead.hand_back(claim)
        elif len(self._running) - len(self._settling) < self.concurrency:
            self._start(claim)
        else:
            self.ahead.put(claim)

    def _fill_slots(self) -> bool:
        """Start buffered jobs in the free slots (a job's slot is free once its provider call has ended)."""
        filled = False
        while self.ahead and not self._draining and len(self._running) - len(self._settling) < self.concurrency:
            self._start(self.ahead.take())
            filled = True
        return filled

    def _start(self, claim: Claim) -> None:
        task = asyncio.ensure_future(self._run_job(claim))
        self._running[claim.job_id] = (claim, task)
        task.add_done_callback(lambda _t, job_id=claim.job_id: self._done(job_id))

    def _done(self, job_id: str) -> None:
        self._running.pop(job_id, None)
        self._stop_reason.pop(job_id, None)
        self._calling.discard(job_id)
        self._settling.discard(job_id)
        self._fill_slots()
        self._slot_free.set()

    # ---- one job ---------------------------------------------------------------------
    async def _run_job(self, claim: Claim) -> None:
        ctx = {"job": claim.job_id, "attempt": claim.attempt, "worker": self.id}
        started = time.monotonic()
        log.info("job started", extra=ctx)
        last = 0

        async def report(percent: int, message: str) -> None:
            # not awaited: the provider goes on at once; a lost lease stops the job when the answer comes
            nonlocal last
            last = max(last, min(100, int(percent)))
            self.queue.progress(claim, last, message).add_done_callback(
                lambda f: f.exception() is None and not f.result() and self._stop(claim.job_id, "lost"))

        try:
            photo = claim.photo  # brought by the claim script, or read now (through an outage)
            if photo is None:
                photo = await chores.settle(claim.job_id, self.id, lambda: self.queue.load_photo(claim.job_id))
            if timeouts.cancel_requested():  # a cancel swallowed inside redis-py's wait_for (Python < 3.12)
                raise asyncio.CancelledError
            if photo is None:
                raise ProviderError("The uploaded photo is no longer available.", retryable=False,
                                    code="photo_missing")
            theme, style = self.catalog.themes.get(claim.theme_id), self.catalog.styles.get(claim.style_key)
            kind = self.catalog.kinds.get(claim.kind)
            if theme is None or style is None or kind is None:
                unknown = [repr(v) for v, found in ((claim.theme_id, theme), (claim.style_key, style),
                                                    (claim.kind, kind)) if found is None]
                raise ProviderError(f"This job names an unknown theme, style or kind ({', '.join(unknown)}).",
                                    retryable=False, code="unknown_choice")
            photo = await self._prepared(photo, claim.photo_type)  # decoded, upright, sRGB, shrunk: before the call
            request = GenerationRequest(
                job_id=claim.job_id, hero_name=claim.hero_name, theme=theme, style=style, kind=kind,
                photo=photo.data, photo_content_type=photo.content_type, attempt=claim.attempt)
            image = await self._generate(claim, request, report)
            self.ahead.note_run(time.monotonic() - started)
            self._settling.add(claim.job_id)  # the slot is free: a buffered job takes it now
            own = 0 if self._fill_slots() else 1  # else the next job for it comes in the same round trip
            extra = 0 if self._draining or self._store_full else self.ahead.ask()  # and refill the buffer
            wanted = 0 if self._draining or self._store_full else own + extra
            await self.provider_health.succeeded()
            try:
                ok, batch = await chores.settle(claim.job_id, self.id, lambda: self.queue.complete_and_claim(
                    claim, image.data, image.content_type, self.provider.name, worker_id=self.id, count=wanted))
            finally:
                self.ahead.answered(extra)
            for follower in batch.claims:
                self._place(follower)
            if ok:
                seconds = time.monotonic() - started
                self.completed += 1
                self.metrics.job_completed(seconds)
                log.info("job completed", extra={**ctx, "duration_ms": round(seconds * 1000)})
            else:
                log.info("job finished after its lease was lost; result dropped", extra=ctx)
        except asyncio.CancelledError:
            reason = self._stop_reason.get(claim.job_id, "shutdown")
            if reason == "shutdown":
                await asyncio.shield(self.queue.release(claim))
                self.metrics.job_released()
                log.info("job handed back at shutdown", extra=ctx)
            else:  # cancelled by an operator, or lost: its lease was taken back
                log.info("job stopped", extra={**ctx, "reason": reason})
        except ProviderError as exc:
            if exc.code != "unknown_choice":
                await self.provider_health.failed(exc, self.id)
            await self._record_failure(claim, exc.message, exc.code, retryable=exc.retryable,
                                       retry_after=exc.retry_after, refund=exc.code == "rate_limited", ctx=ctx)
        except Exception:
            log.exception("job raised", extra=ctx)
            await self._record_failure(claim, UNEXPECTED_ERROR, "internal_error", retryable=True, ctx=ctx)

    async def _prepared(self, photo: bytes, photo_type: str) -> photo_prep.Prepared:
        """The provider's copy of the stored photo (s2s/photo_prep.py); one that does not decode ends the job."""
        if not getattr(self.provider, "takes_photo", True):
            return photo_prep.Prepared(photo, photo_type)
        try:
            return await self.photos.prepare(photo)
        except photo_prep.PrepFailed as exc:
            log.info("photo not prepared", extra={"code": exc.code, "error": exc.detail})
            raise ProviderError(exc.message, retryable=exc.retryable, code=exc.code, detail=exc.detail) from None

    async def _generate(self, claim: Claim, request: GenerationRequest, report: Report) -> GeneratedImage:
        """The provider call, counted as it begins (on the job, for /metrics) and by outcome (for /metrics)."""
        name = self.provider.name

        def begins() -> None:
            self._calling.add(claim.job_id)
            self.queue.upstream_call(claim, self._started_field).add_done_callback(chores.quiet)

        call_begins.set(begins)  # this task's own context: one job per task
        if not getattr(self.provider, "announces_calls", False):
            begins()
        try:
            image = await self.provider.generate(request, report)
        except ProviderError as exc:
            self.metrics.upstream_call(name, exc.code, exc.status)
            raise
        except Exception:
            self.metrics.upstream_call(name, "internal_error")
            raise
        self.metrics.upstream_call(name, "ok")
        return image

    async def _record_failure(self, claim: Claim, message: str, code: str, *, retryable: bool,
                              retry_after: float | None = None, refund: bool = False, ctx: dict) -> None:
        delay = int(retry_after * 1000) if retry_after else int(Backoff(
            self.settings.retry_base_ms, self.settings.retry_max_ms, jitter=True).delay(claim.attempt))
        self._settling.add(claim.job_id)
        self._fill_slots()
        outcome = await chores.settle(claim.job_id, self.id, lambda: self.queue.fail(
            claim, message, code, retryable=retryable, delay_ms=delay, refund=refund))
        if outcome == 3:
            self.failed += 1
            log.info("job failed", extra={**ctx, "code": code, "error": message})
        elif outcome == 2:
            log.info("job will be retried", extra={**ctx, "code": code, "error": message, "delay_ms": delay})
        else:
            log.info("job attempt failed after its lease was lost; not recorded", extra={**ctx, "code": code})

    # ---- leases and presence ---------------------------------------------------------
    def _info(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "concurrency": self.concurrency,
                "jobs": len(self._running), "provider": self.provider.name,
                "state": "draining" if self._draining else "running", "startedAt": int(self.started_at * 1000)}

    async def _heartbeat_once(self) -> None:
        claims = [claim for claim, _ in self._running.values()] + self.ahead.claims()
        lost = await self.queue.heartbeat(self.id, self._info(), claims)
        for job_id in lost:
            self._stop(job_id, "lost")

    def _stop(self, job_id: str, reason: str) -> None:
        """Cancel a running job (lost lease, operator's cancel) unless its last write is on its way; drop a buffered
        one.

        That write is fenced, so it is refused if the job is no longer ours; cancelled while its answer
        comes in, the jobs that complete-and-claim took over for this slot would be dropped (and wait
        a lease for the reaper). A heartbeat sent beside a completion reports that job as no longer
        held: the completion ended it.
        """
        if self.ahead.drop(job_id):
            log.info("buffered job dropped", extra={"job": job_id, "worker": self.id, "reason": reason})
            return
        entry = self._running.get(job_id)
        if entry and job_id not in self._settling:
            self._stop_reason[job_id] = reason
            timeouts.cancel(entry[1])

    async def _heartbeat_loop(self) -> None:
        """Renew leases every third of the lease time; reap other workers' expired leases."""
        interval = self.settings.lease_ms / 3000
        reap_every = min(1.0, interval)
        next_beat = time.monotonic() + interval
        while not timeouts.cancel_requested():
            await asyncio.sleep(reap_every)
            try:
                self._note_store(await self.queue.memory.fill(fresh=True))
                self.ahead.hand_back_overdue()  # slots busier than expected: waited a second already
                if time.monotonic() >= next_beat:  # after a Redis error next_beat is 0: renew before any reap
                    next_beat = time.monotonic() + interval
                    await self._heartbeat_once()
                reaped = await self.queue.reap()
                if reaped:
                    log.info("took back jobs of a stopped worker", extra={"worker": self.id, "jobs": reaped})
                # not cut short by a shutdown: half a send would be sent again by the last one
                try:
                    await asyncio.shield(self.cluster_metrics.send(self.metrics.counts))
                except redis.exceptions.RedisError as exc:
                    if not redis_memory.is_out_of_memory(exc):
                        raise
                    # a full store refuses the counters' MULTI: they are kept and sent once it has room
            except redis.exceptions.RedisError as exc:
                next_beat = 0
                log.warning("heartbeat failed", extra={"worker": self.id, "error": str(exc)})

    def _note_store(self, fill: redis_memory.Fill) -> None:
        if fill.full != self._store_full:
            log.warning("job store full; claims paused" if fill.full else "job store has room again; claims resume",
                        extra={"worker": self.id, "used_bytes": fill.used, "max_bytes": fill.limit})
        self._store_full = fill.full

