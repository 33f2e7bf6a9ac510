"""GET /metrics: the whole system in the Prometheus text format, from any one API process.

Behind a load balancer a scrape reaches one instance at random, so every number
is the cluster's (see :mod:`s2s.metrics`): each API process reports its own
sockets and delivered events to Redis every few seconds, and once more right
before it answers a scrape. Open when S2S_ADMIN_TOKEN is unset (a laptop scrapes
it as is); with the token set it needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket

import redis.exceptions
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from s2s import redis_memory
from s2s.metrics.counters import Counts
from s2s.metrics.exposition import Snapshot
from s2s.metrics.store import ClusterMetrics, ProcessGauges
from s2s.queue import Queue
from s2s.timeouts import within
from s2s.web.describe import NO_STORE, describe, operation
from s2s.web.handlers import ApiHandler, AppContext
from s2s.web.ws import WsContext

log = logging.getLogger("s2s.api")

REPORT_EVERY_S = 2.0
PROCESS_TTL_S = 10  # five missed reports: the process is gone, and so are its sockets
SCRAPE_TIMEOUT_S = 2.0


class ProcessMetrics:
    """This API process's share of the metrics: its open sockets and the events it delivered."""

    def __init__(self, queue: Queue, live: WsContext | None = None, delivered: Counts | None = None):
        self.cluster = ClusterMetrics(queue.redis, queue.keys)
        self.live = live
        self.delivered = delivered or Counts()
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._task: asyncio.Task | None = None

    @classmethod
    async def start(cls, queue: Queue, live: WsContext) -> ProcessMetrics:
        """Begin reporting every REPORT_EVERY_S; the registry actor hands over its delivery counter once."""
        delivered = await asyncio.get_running_loop().run_in_executor(
            None, lambda: live.actors.registry.proxy().delivered.get(timeout=5))
        process = cls(queue, live, delivered)
        process._task = asyncio.ensure_future(process._report_loop())
        return process

    async def report(self) -> None:
        sockets = len(self.live.sockets) if self.live is not None else 0
        streams = len(self.live.streams) if self.live is not None else 0
        await self.cluster.send(self.delivered, ProcessGauges(self.id, {"sockets": sockets, "streams": streams},
                                                              PROCESS_TTL_S))

    async def _report_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            try:
                await within(REPORT_EVERY_S, self.report())
                failing = False
            except (redis.exceptions.RedisError, OSError, asyncio.TimeoutError) as exc:
                if not failing:  # once per outage, not every two seconds
                    log.warning("cannot report metrics", extra={"error": str(exc) or type(exc).__name__})
                failing = True

    async def stop(self) -> None:
        """Stop reporting; send the last counts and take this process's sockets out of the sum."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await within(2.0, self._last_report())
        except (redis.exceptions.RedisError, OSError, asyncio.TimeoutError):
            pass

    async def _last_report(self) -> None:
        await self.cluster.send(self.delivered)
        await self.cluster.forget(self.id)


@describe("/metrics", get=lambda settings, catalog: operation(
    "getMetrics", "meta", "Prometheus metrics of the whole system",
    description="Cluster-wide figures: every worker's and every API process's counters are summed through Redis, so "
                "one scrape of any API process sees the whole system. When S2S_ADMIN_TOKEN is set, the operator "
                "token is required.",
    security=[{"operatorToken": []}] if settings.admin_token else [],
    responses={200: {"description": "The Prometheus text exposition format.", "headers": NO_STORE,
                     "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
               **({401: "Unauthorized", 403: "Forbidden"} if settings.admin_token else {}), 503: "RedisUnavailable"}))
class MetricsHandler(ApiHandler):
    def initialize(self, ctx: AppContext, process: ProcessMetrics | None = None) -> None:
        super().initialize(ctx)
        self.process = process
        self.cluster = process.cluster if process is not None else ClusterMetrics(ctx.queue.redis, ctx.queue.keys)

    async def get(self) -> None:
        if self.ctx.settings.admin_token and not self.require_operator():
            return
        self.set_header("Cache-Control", "no-store")
        try:
            snapshot = await within(SCRAPE_TIMEOUT_S, self._read())
        except (redis.exceptions.RedisError, OSError, asyncio.TimeoutError) as exc:
            log.warning("metrics unavailable", extra={"error": str(exc) or type(exc).__name__})
            return self.fail(503, "redis_unavailable", "The job store is not reachable; metrics are unavailable.")
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(snapshot))

    async def _read(self) -> Snapshot:
        if self.process is not None:
            try:
                await self.process.report()  # this process's own numbers are current, not up to REPORT_EVERY_S old
            except redis.exceptions.RedisError as exc:
                if not redis_memory.is_out_of_memory(exc):
                    raise  # a full store refuses the report, not the scrape: the last report stands
        return await Snapshot.read(self.ctx.queue, self.cluster)
