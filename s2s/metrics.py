"""Metrics for Prometheus: one scrape of any API process sees the whole system.

No process keeps a number that a scrape would have to go and ask it for. Every
process adds its increments to cluster-wide counters in one Redis hash
(HINCRBY in a MULTI, batched with the heartbeat, never a round trip per job), so
a worker that dies takes at most its last unsent second with it and no total
ever goes down, as Prometheus counters must not. Job outcomes come from the
queue's own lifetime totals (kept by the Lua scripts, exact), queue depth and
live workers from the queue at scrape time, and each API process reports its
open sockets under a key that expires soon after the process is gone.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
from collections.abc import Iterator, Mapping

import redis.asyncio as aioredis
from attrs import frozen
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from s2s.keys import Keys
from s2s.models import Stats
from s2s.queue import Queue

JOBS = "s2s_jobs_total"
JOB_DURATION = "s2s_job_duration_seconds"
UPSTREAM_CALLS = "s2s_upstream_calls_total"
EVENTS_DELIVERED = "s2s_ws_events_delivered_total"

#: Run time of one attempt: noop and local take well under a second, the AI providers tens of seconds.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0)

#: Outcomes always shown (0 until they happen, so that rate() works from the first scrape):
#: the queue's lifetime totals (s2s:q:totals) and what only a worker knows (released at shutdown).
OUTCOMES = ("completed", "failed", "retried", "requeued", "cancelled", "released")

QUEUE_STATES = ("waiting", "active", "delayed", "completed", "failed", "cancelled")


def field(name: str, **labels: str) -> str:
    """The Redis hash field of one sample: its name and labels as canonical JSON."""
    return json.dumps([name, labels], sort_keys=True, separators=(",", ":"))


EVENTS_DELIVERED_FIELD = field(EVENTS_DELIVERED)


class Counts:
    """Counters one process adds to, and how much of them Redis already has.

    One thread adds (the worker's loop, or the registry actor); another may read:
    :meth:`unsent` copies the dict first, which CPython does without letting the
    writer in. Sending only the difference means a flush that failed is simply
    part of the next one.
    """

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self._sent: dict[str, float] = {}

    def add(self, key: str, amount: float = 1) -> None:
        self.values[key] = self.values.get(key, 0) + amount

    def unsent(self) -> dict[str, float]:
        now = dict(self.values)
        return {k: v - self._sent.get(k, 0) for k, v in now.items() if v != self._sent.get(k, 0)}

    def sent(self, deltas: Mapping[str, float]) -> None:
        for key, delta in deltas.items():
            self._sent[key] = self._sent.get(key, 0) + delta


class WorkerMetrics:
    """What a worker counts as jobs run: a few dict updates per job, sent with the heartbeat."""

    def __init__(self) -> None:
        self.counts = Counts()
        self._buckets = [field(JOB_DURATION + "_bucket", le=floatToGoString(b)) for b in (*DURATION_BUCKETS, math.inf)]
        self._sum = field(JOB_DURATION + "_sum")
        self._released = field(JOBS, outcome="released")
        self._upstream: dict[tuple[str, str, int | None], str] = {}

    def job_completed(self, seconds: float) -> None:
        self.counts.add(self._buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)])
        self.counts.add(self._sum, float(seconds))

    def job_released(self) -> None:
        self.counts.add(self._released)

    def upstream_call(self, provider: str, outcome: str, status: int | None = None) -> None:
        """One call to the provider: ``outcome`` ok or its failure code, ``status`` the HTTP status of a failure."""
        key = (provider, outcome, status)
        name = self._upstream.get(key)
        if name is None:
            name = self._upstream[key] = field(UPSTREAM_CALLS, provider=provider, outcome=outcome,
                                               status=str(status) if status else "none")
        self.counts.add(name)


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
        ids = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        processes = []
        if ids:
            reports = await self.redis.mget([k.metrics_process(i) for i in ids])
            gone = [i for i, report in zip(ids, reports, strict=True) if report is None]
            processes = [json.loads(report) for report in reports if report is not None]
            if gone:
                await self.redis.srem(k.metrics_processes, *gone)
        return counters, processes


@frozen
class Snapshot:
    """Everything one scrape shows, read from Redis."""

    stats: Stats
    oldest_waiting_ms: int | None
    workers_alive: int
    counters: Mapping[tuple[str, tuple], float]
    processes: list[Mapping[str, float]]

    @classmethod
    async def read(cls, queue: Queue, cluster: ClusterMetrics) -> Snapshot:
        stats = await queue.stats()
        oldest = await queue.overview.oldest_waiting_age_ms()
        workers = await queue.fleet.workers()
        counters, processes = await cluster.read()
        return cls(stats=stats, oldest_waiting_ms=oldest, workers_alive=len(workers), counters=counters,
                   processes=processes)

    def collect(self) -> Iterator[Metric]:
        """The metric families, for ``prometheus_client.generate_latest`` (which takes any object with collect())."""
        outcomes = dict.fromkeys(OUTCOMES, 0.0)
        for outcome, value in self.stats.totals.items():
            outcomes[outcome] = outcomes.get(outcome, 0.0) + value
        for labels, value in self._samples(JOBS):
            outcome = labels.get("outcome", "")
            outcomes[outcome] = outcomes.get(outcome, 0.0) + value
        jobs = CounterMetricFamily(JOBS, "Jobs by outcome: completed; failed for good; retried (an attempt failed, "
                                         "it runs again); requeued (its lease ran out: the reaper took it back); "
                                         "cancelled by an operator; released (handed back at a worker's shutdown).",
                                   labels=["outcome"])
        for outcome, value in outcomes.items():
            jobs.add_metric([outcome], value)
        yield jobs
        yield self._duration()

        queue = GaugeMetricFamily("s2s_queue_jobs", "Jobs in each state now (completed, failed and cancelled: "
                                                    "those still kept, S2S_RETENTION_SECONDS).", labels=["state"])
        for state in QUEUE_STATES:
            queue.add_metric([state], getattr(self.stats, state))
        yield queue
        yield GaugeMetricFamily("s2s_queue_paused", "1 while an operator has paused the queue.",
                                value=int(self.stats.paused))
        yield GaugeMetricFamily("s2s_queue_oldest_waiting_seconds",
                                "How long the next job in line has waited (0 when none waits).",
                                value=(self.oldest_waiting_ms or 0) / 1000)
        yield GaugeMetricFamily("s2s_workers_alive", "Worker processes heard from within the lease time.",
                                value=self.workers_alive)

        upstream = CounterMetricFamily(UPSTREAM_CALLS, "Calls to the image provider by outcome (ok, or the failure "
                                                       "code: rate_limited, upstream_unavailable, upstream_timeout, "
                                                       "...) and the HTTP status of a failed answer (none without "
                                                       "one).", labels=["provider", "outcome", "status"])
        for labels, value in self._samples(UPSTREAM_CALLS):
            upstream.add_metric([labels.get("provider", ""), labels.get("outcome", ""), labels.get("status", "")],
                                value)
        yield upstream

        yield GaugeMetricFamily("s2s_api_processes", "API processes reporting (each one every few seconds).",
                                value=len(self.processes))
        yield GaugeMetricFamily("s2s_websockets_active", "Open /ws sockets, summed over every API process.",
                                value=sum(p.get("sockets", 0) for p in self.processes))
        delivered = CounterMetricFamily(EVENTS_DELIVERED, "Job events handed to subscribed sockets, summed over "
                                                          "every API process.")
        delivered.add_metric([], sum(value for _, value in self._samples(EVENTS_DELIVERED)))
        yield delivered

    def _samples(self, name: str) -> Iterator[tuple[dict, float]]:
        for (sample, labels), value in self.counters.items():
            if sample == name:
                yield dict(labels), value

    def _duration(self) -> HistogramMetricFamily:
        counts = {float(labels["le"]): value for labels, value in self._samples(JOB_DURATION + "_bucket")}
        for bound in (*DURATION_BUCKETS, math.inf):
            counts.setdefault(bound, 0.0)
        buckets, running = [], 0.0
        for bound in sorted(counts):
            running += counts[bound]
            buckets.append((floatToGoString(bound), running))
        total = sum(value for _, value in self._samples(JOB_DURATION + "_sum"))
        return HistogramMetricFamily(JOB_DURATION, "Run time of completed jobs' successful attempt, from the claim "
                                                   "to the stored image.", buckets=buckets, sum_value=total)
