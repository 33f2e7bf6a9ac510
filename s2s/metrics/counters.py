"""What a process counts between two sends to Redis, and how a sample is named there.

A counter's Redis field is its name and labels as canonical JSON (:func:`field`), so
every process adds to the same field and a scrape parses the labels back.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping

from prometheus_client.utils import floatToGoString

JOBS = "s2s_jobs_total"
JOB_DURATION = "s2s_job_duration_seconds"
UPSTREAM_CALLS = "s2s_upstream_calls_total"
UPSTREAM_STARTED = "s2s_upstream_calls_started_total"  # counted in Redis as each call begins (s2s/lua/upstream.lua)
EVENTS_DELIVERED = "s2s_ws_events_delivered_total"
WEBHOOK_DELIVERIES = "s2s_webhook_delivery_attempts_total"  # by outcome (s2s/webhooks/delivery.py)

#: Run time of one attempt: noop and local take well under a second, the AI providers tens of seconds.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0)


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
