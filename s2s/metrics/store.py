"""The cluster's counters and the API processes' gauges, in Redis.

Counters are one hash, added to with HINCRBY in a MULTI (never a round trip per
job), so no total ever goes down; an API process's gauges live under a key that
expires soon after the process is gone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

import redis.asyncio as aioredis
from attrs import frozen

from s2s.keys import Keys
from s2s.metrics.counters import Counts
from s2s.replies import text


@frozen
class ProcessGauges:
    """An API process's own gauges, kept in Redis for ``ttl_s`` unless reported again."""

    process_id: str
    values: Mapping[str, float]
    ttl_s: int


class ClusterMetrics:
    """The cluster's counters and the API processes' gauges, in Redis."""

    def __init__(self, redis: aioredis.Redis, keys: Keys):
        self.redis = redis
        self.keys = keys
        self._sending = asyncio.Lock()  # two flushes at once would both send the same difference

    async def send(self, counts: Counts, gauges: ProcessGauges | None = None) -> None:
        """Add what ``counts`` gained since the last send (and report ``gauges``), atomically."""
        async with self._sending:
            deltas = counts.unsent()
            if not deltas and gauges is None:
                return
            k = self.keys
            async with self.redis.pipeline(transaction=True) as pipe:
                for name, delta in deltas.items():
                    if isinstance(delta, int):
                        pipe.hincrby(k.metrics_counters, name, delta)
                    else:
                        pipe.hincrbyfloat(k.metrics_counters, name, delta)
                if gauges is not None:
                    pipe.set(k.metrics_process(gauges.process_id), json.dumps(dict(gauges.values)), ex=gauges.ttl_s)
                    pipe.sadd(k.metrics_processes, gauges.process_id)
                await pipe.execute()
            counts.sent(deltas)

    async def forget(self, process_id: str) -> None:
        """A process stopping: its gauges go at once rather than when they expire."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.metrics_process(process_id))
            pipe.srem(self.keys.metrics_processes, process_id)
            await pipe.execute()

    async def read(self) -> tuple[dict[tuple[str, tuple], float], list[dict]]:
        """The counters as {(name, sorted label pairs): value}, and each live API process's gauges."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            raw, members = await pipe.hgetall(k.metrics_counters).smembers(k.metrics_processes).execute()
        counters: dict[tuple[str, tuple], float] = {}
        for key, value in raw.items():
            name, labels = json.loads(key)
            counters[(name, tuple(sorted(labels.items())))] = float(value)
        ids = sorted(text(m) for m in members)
        processes = []
        if ids:
            reports = await self.redis.mget([k.metrics_process(i) for i in ids])
            gone = [i for i, report in zip(ids, reports, strict=True) if report is None]
            processes = [json.loads(report) for report in reports if report is not None]
            if gone:
                await self.redis.srem(k.metrics_processes, *gone)
        return counters, processes
