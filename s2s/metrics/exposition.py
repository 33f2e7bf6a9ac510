"""What one scrape of /metrics shows, read from Redis and rendered as Prometheus metric families.

Job outcomes come from the queue's own lifetime totals (kept by the Lua scripts,
exact) plus what only a worker knows; queue depth and live workers from the queue
at scrape time; the rest from the cluster's counters and gauges.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

from attrs import frozen
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from s2s.metrics.counters import (
    DURATION_BUCKETS,
    EVENTS_DELIVERED,
    JOB_DURATION,
    JOBS,
    UPSTREAM_CALLS,
    UPSTREAM_STARTED,
    WEBHOOK_DELIVERIES,
)
from s2s.metrics.store import ClusterMetrics
from s2s.models import Stats
from s2s.queue import Queue

#: Outcomes always shown (0 until they happen, so that rate() works from the first scrape):
#: the queue's lifetime totals (s2s:q:totals) and what only a worker knows (released at shutdown).
OUTCOMES = ("completed", "failed", "retried", "requeued", "cancelled", "released")

QUEUE_STATES = ("waiting", "active", "delayed", "completed", "failed", "cancelled")


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
        started = CounterMetricFamily(UPSTREAM_STARTED, "Calls to the image provider begun, counted as each one "
                                                        "starts (a worker killed mid-call still counted it): "
                                                        "divided by completed jobs, the pictures paid per job.",
                                      labels=["provider"])
        for labels, value in self._samples(UPSTREAM_STARTED):
            started.add_metric([labels.get("provider", "")], value)
        yield started
        webhooks = CounterMetricFamily(WEBHOOK_DELIVERIES, "Webhook delivery attempts by outcome: delivered (2xx), "
                                                           "retry, failed (schedule or retention used up), disabled "
                                                           "(410 Gone), skipped (its URL disabled).",
                                       labels=["outcome"])
        for labels, value in self._samples(WEBHOOK_DELIVERIES):
            webhooks.add_metric([labels.get("outcome", "")], value)
        yield webhooks

        yield GaugeMetricFamily("s2s_api_processes", "API processes reporting (each one every few seconds).",
                                value=len(self.processes))
        yield GaugeMetricFamily("s2s_websockets_active", "Open /ws sockets, summed over every API process.",
                                value=sum(p.get("sockets", 0) for p in self.processes))
        yield GaugeMetricFamily("s2s_event_streams_active", "Open GET /api/jobs/<id>/stream answers, summed over "
                                                            "every API process.",
                                value=sum(p.get("streams", 0) for p in self.processes))
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
