"""A worker process: claims jobs in batches, runs them on the provider, keeps their leases.

Runs ``concurrency`` jobs at once on one asyncio loop. Leases are renewed by a
heartbeat; a reaper in every worker takes back jobs of workers that died. On
SIGTERM it drains: takes nothing new, lets running jobs finish within the grace
period, and hands the rest back to the queue without using up an attempt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import secrets
import signal
import socket
import time

import redis.exceptions

from s2s import timeouts
from s2s.catalog import Catalog
from s2s.metrics import ClusterMetrics, WorkerMetrics
from s2s.providers.base import GeneratedImage, GenerationRequest, Provider, ProviderError, Report
from s2s.providers.health import ProviderHealth
from s2s.queue import Claim, Queue
from s2s.settings import Settings

log = logging.getLogger("s2s.worker")

UNEXPECTED_ERROR = "Something went wrong while making the picture."


def backoff_ms(attempt: int, base_ms: int, max_ms: int, rng: random.Random = random._inst) -> int:
    """Exponential backoff with equal jitter: half fixed, half random, capped."""
    ceiling = min(max_ms, base_ms * (2 ** max(0, attempt - 1)))
    return int(ceiling / 2 + rng.random() * ceiling / 2)


class Worker:
    def __init__(self, *, settings: Settings, queue: Queue, provider: Provider, catalog: Catalog,
                 concurrency: int | None = None, worker_id: str | None = None):
        self.settings = settings
        self.queue = queue
        self.provider = provider
        self.provider_health = ProviderHealth(queue.redis, queue.keys, provider.name)
        self.catalog = catalog
        self.concurrency = concurrency or settings.worker_concurrency
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.started_at = time.time()
        self._running: dict[str, tuple[Claim, asyncio.Task]] = {}
        self._stop_reason: dict[str, str] = {}  # job id -> "lost" | "cancelled" | "shutdown"
        self._slot_free = asyncio.Event()
        self._wake = asyncio.Event()
        self._draining = False
        self.completed = 0
        self.failed = 0
        self.metrics = WorkerMetrics()  # counted in memory, added to the cluster's counters with the heartbeat
        self.cluster_metrics = ClusterMetrics(queue.redis, queue.keys)

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
            self._wake.set()
            self._slot_free.set()

    async def run_async(self) -> None:
        log.info("worker started", extra={"worker": self.id, "concurrency": self.concurrency,
                                          "provider": self.provider.name})
        await self._heartbeat_once()
        helpers = [asyncio.ensure_future(self._heartbeat_loop()), asyncio.ensure_future(self._control_loop())]
        fetcher = asyncio.ensure_future(self._fetch_loop())
        try:
            while not self._draining:
                await asyncio.wait([fetcher, *helpers], return_when=asyncio.FIRST_COMPLETED)
                for task in (fetcher, *helpers):
                    if task.done() and not task.cancelled() and task.exception():
                        raise task.exception()
        finally:
            fetcher.cancel()
            await asyncio.gather(fetcher, return_exceptions=True)
            await self._finish_running()
            for task in helpers:
                timeouts.cancel(task)  # the loops also check cancel_requested(): 3.10 can swallow a cancel
            await asyncio.gather(*helpers, return_exceptions=True)
            await self.queue.pipeliner.drain()
            await self._leave()
            log.info("worker stopped", extra={"worker": self.id, "completed": self.completed, "failed": self.failed})

    async def _finish_running(self) -> None:
        tasks = [task for _, task in self._running.values()]
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_ms / 1000)
        for job_id, (_, task) in list(self._running.items()):
            if task in pending:
                self._stop_reason[job_id] = "shutdown"
                timeouts.cancel(task)
        await asyncio.gather(*pending, return_exceptions=True)

    async def _leave(self) -> None:
        k = self.queue.keys
        try:
            await self.cluster_metrics.send(self.metrics.counts)  # the last counts first
            await self.queue.redis.zrem(k.workers, self.id)
            await self.queue.redis.delete(k.worker(self.id))
        except redis.exceptions.RedisError:
            pass

    # ---- fetching --------------------------------------------------------------------
    async def _fetch_loop(self) -> None:
        while not self._draining:
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                batch = await self.queue.claim(self.id, free)
            except redis.exceptions.RedisError as exc:
                log.warning("cannot claim jobs; retrying", extra={"worker": self.id, "error": str(exc)})
                await asyncio.sleep(1.0)
                continue
            for claim in batch.claims:
                self._start(claim)
            if batch.claims:
                continue
            if batch.paused:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    pass
                continue
            timeout = 1.0
            if batch.next_delayed_ms is not None:
                timeout = min(timeout, max(0.01, (batch.next_delayed_ms - batch.now_ms) / 1000))
            try:
                await self.queue.wait_for_work(timeout)
            except redis.exceptions.RedisError:
                await asyncio.sleep(0.5)

    def _start(self, claim: Claim) -> None:
        task = asyncio.ensure_future(self._run_job(claim))
        self._running[claim.job_id] = (claim, task)
        task.add_done_callback(lambda _t, job_id=claim.job_id: self._done(job_id))

    def _done(self, job_id: str) -> None:
        self._running.pop(job_id, None)
        self._stop_reason.pop(job_id, None)
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
            photo = claim.photo or await self.queue.load_photo(claim.job_id)
            if timeouts.cancel_requested():  # a cancel swallowed inside redis-py's wait_for (Python < 3.12)
                raise asyncio.CancelledError
            if photo is None:
                raise ProviderError("The uploaded photo is no longer available.", retryable=False,
                                    code="photo_missing")
            request = GenerationRequest(
                job_id=claim.job_id, hero_name=claim.hero_name, theme=self.catalog.themes[claim.theme_id],
                style=self.catalog.styles[claim.style_key], kind=self.catalog.kinds[claim.kind],
                photo=photo, photo_content_type=claim.photo_type, attempt=claim.attempt)
            image = await self._generate(request, report)
            await self.provider_health.succeeded()
            # take over our own slot: the next job is claimed in the same round trip
            wanted = 0 if self._draining else 1
            ok, batch = await self._settle(claim, lambda: self.queue.complete_and_claim(
                claim, image.data, image.content_type, self.provider.name, worker_id=self.id, count=wanted))
            for follower in batch.claims:
                self._start(follower)
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
            await self.provider_health.failed(exc, self.id)
            await self._record_failure(claim, exc.message, exc.code, retryable=exc.retryable,
                                       retry_after=exc.retry_after, refund=exc.code == "rate_limited", ctx=ctx)
        except KeyError as exc:
            await self._record_failure(claim, f"This job names an unknown theme, style or kind ({exc}).",
                                       "unknown_choice", retryable=False, ctx=ctx)
        except Exception:
            log.exception("job raised", extra=ctx)
            await self._record_failure(claim, UNEXPECTED_ERROR, "internal_error", retryable=True, ctx=ctx)

    async def _generate(self, request: GenerationRequest, report: Report) -> GeneratedImage:
        """The provider call, counted by outcome for /metrics."""
        name = self.provider.name
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

    async def _settle(self, claim: Claim, write):
        """A write that ends a job's attempt (complete, fail), retried while Redis is unreachable.

        An outage does not throw a made picture away: the lease keeps the job ours meanwhile (the
        heartbeat renews it once Redis is back); if the reaper took it back first, the fencing token
        refuses the late write and the job runs again. Bounded at shutdown by the grace period.
        """
        delay = 0.25
        while True:
            try:
                return await write()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.log(logging.WARNING if delay == 0.25 else logging.DEBUG, "cannot reach Redis to settle a job; "
                        "retrying", extra={"job": claim.job_id, "worker": self.id, "error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _record_failure(self, claim: Claim, message: str, code: str, *, retryable: bool,
                              retry_after: float | None = None, refund: bool = False, ctx: dict) -> None:
        delay = int(retry_after * 1000) if retry_after else backoff_ms(
            claim.attempt, self.settings.retry_base_ms, self.settings.retry_max_ms)
        outcome = await self._settle(claim, lambda: self.queue.fail(claim, message, code, retryable=retryable,
                                                                    delay_ms=delay, refund=refund))
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
        claims = [claim for claim, _ in self._running.values()]
        lost = await self.queue.heartbeat(self.id, self._info(), claims)
        for job_id in lost:
            self._stop(job_id, "lost")

    def _stop(self, job_id: str, reason: str) -> None:
        entry = self._running.get(job_id)
        if entry:
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
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + interval
                    await self._heartbeat_once()
                reaped = await self.queue.reap()
                if reaped:
                    log.info("took back jobs of a stopped worker", extra={"worker": self.id, "jobs": reaped})
                # not cut short by a shutdown: half a send would be sent again by the last one
                await asyncio.shield(self.cluster_metrics.send(self.metrics.counts))
            except redis.exceptions.RedisError as exc:
                log.warning("heartbeat failed", extra={"worker": self.id, "error": str(exc)})

    async def _control_loop(self) -> None:
        """Operator commands over pub/sub: cancel a job we run, wake up on resume."""
        while not timeouts.cancel_requested():
            pubsub = self.queue.redis.pubsub()
            try:
                await pubsub.subscribe(self.queue.keys.control_channel)
                async for message in pubsub.listen():
                    if timeouts.cancel_requested():
                        return
                    if message.get("type") != "message":
                        continue
                    command = json.loads(message["data"])
                    if command.get("type") == "cancel":
                        self._stop(command.get("jobId", ""), "cancelled")
                    elif command.get("type") == "resume":
                        self._wake.set()
            except redis.exceptions.RedisError as exc:
                log.warning("control channel lost; resubscribing", extra={"worker": self.id, "error": str(exc)})
                await asyncio.sleep(1.0)
            finally:
                await pubsub.aclose()
