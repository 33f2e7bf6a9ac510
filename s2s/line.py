"""A queued job's place in line and when its picture should be ready (``queuePosition``, ``etaSeconds``).

The waiting LIST is LPUSHed by enqueue and RPOPed by claims, so the list's last id
starts next (position 1). A retry waiting out its backoff sits in the delayed ZSET,
not in line: it has no position, and when due it goes to the front of the line.

The estimate (:func:`estimate`), with S slots over the live workers, mean run time T of
the latest completed jobs of their providers, position p:

* each slot is free at ``f_j``: 0 for an idle slot, ``max(T - elapsed, 0)`` for one running
  a job that started ``elapsed`` ago (the S most recently started running jobs count);
* then every slot takes a job every T, so the p-th job in line starts at
  ``f[(p - 1) mod S] + floor((p - 1) / S) * T`` (``f`` sorted), about ``ceil(p / S)`` rounds;
* ETA = that start + T; a delayed retry: ``max(due in, f[0]) + T``.

No estimate (null) when it cannot be made honestly: the queue is paused, no worker is alive,
no run time was recorded for the live workers' providers yet, or the job is not in line.
It does not foresee retries that will jump ahead of the line, nor providers' per-minute limits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from attrs import frozen

from s2s import scripts
from s2s.replies import text

if TYPE_CHECKING:
    from s2s.queue import Queue

CAPACITY_TTL_S = 2.0  # the live workers and their run times are read at most this often per process
RUN_TIME_SAMPLE = 20  # the latest run times an ETA is made of (s2s/lua/_run_times.lua keeps as many, and up to twice)
MAX_IDS_PER_READ = 2000  # job ids per places script: each read (one pass over the list at most) stays short


@frozen
class Capacity:
    """What the line moves with: slots over the live workers and their mean run time (s)."""

    slots: int
    run_s: float | None


@frozen
class Place:
    """One job's state as the line reading saw it; ``position``/``eta_s`` only while it is queued."""

    status: str  # '' when the job is unknown
    seq: int
    message: str
    position: int | None = None
    eta_s: int | None = None

    @property
    def queued(self) -> bool:
        return self.status == "queued"

    def fields(self) -> dict:
        """``queuePosition`` and ``etaSeconds`` as GET /status and the job_progress frames carry them."""
        return {"queuePosition": self.position, "etaSeconds": self.eta_s}

    def worth_telling(self, told: tuple[int | None, int | None]) -> bool:
        """Whether a subscriber told ``told`` (position, eta) should hear of this place: a new position, an
        estimate appearing or going, or one moved by at least 5 s and a fifth (not every second's drift)."""
        position, eta = told
        if self.position != position or (self.eta_s is None) != (eta is None):
            return True
        return self.eta_s is not None and abs(self.eta_s - eta) >= max(5, 0.2 * eta)


def estimate(position: int | None, due_in_s: float | None, capacity: Capacity, running_s: Sequence[float],
             paused: bool) -> int | None:
    """Seconds until the job's picture should be ready (see the module's docstring); None: no honest figure."""
    slots, run_s = capacity.slots, capacity.run_s
    if paused or slots < 1 or run_s is None or (position is None and due_in_s is None):
        return None
    busy = sorted(running_s)[:slots]  # the most recent starts: those of dead workers are the oldest
    free_at = sorted([0.0] * (slots - len(busy)) + [max(run_s - elapsed, 0.0) for elapsed in busy])
    if position is not None:
        rounds, slot = divmod(position - 1, slots)
        start = free_at[slot] + rounds * run_s
    else:
        start = max(due_in_s, free_at[0])
    return max(1, math.ceil(start + run_s))


def provider_slots(settings, provider: str, slots: int) -> int:
    """A provider's slots, capped by its account-wide concurrency limit (S2S_OPENAI_CONCURRENCY, ...)."""
    cap = {"openai": settings.openai_concurrency, "qwen": settings.qwen_concurrency}.get(provider, 0)
    return min(slots, cap) if cap else slots


class Line:
    """Reads places for the status route and the /ws position feed of one API process."""

    def __init__(self, queue: Queue):
        self.queue = queue
        self._capacity: tuple[float, Capacity] | None = None

    async def capacity(self) -> Capacity:
        """Slots of the live workers (by provider, capped by its limit) and their run times' slot-weighted mean."""
        mono = time.monotonic()
        if self._capacity is not None and mono - self._capacity[0] < CAPACITY_TTL_S:
            return self._capacity[1]
        slots: dict[str, int] = {}
        for worker in await self.queue.fleet.workers():
            name = str(worker.get("provider") or "")
            slots[name] = slots.get(name, 0) + int(worker.get("concurrency") or 0)
        slots = {name: provider_slots(self.queue.settings, name, n) for name, n in slots.items()}
        pipe = self.queue.redis.pipeline(transaction=False)
        for name in slots:
            pipe.lrange(self.queue.keys.run_times(name), 0, RUN_TIME_SAMPLE - 1)
        weighted, weight = 0.0, 0
        for n, samples in zip(slots.values(), await pipe.execute(), strict=True):
            if samples and n:
                weighted += n * sum(int(s) for s in samples) / len(samples) / 1000
                weight += n
        found = Capacity(slots=sum(slots.values()), run_s=weighted / weight if weight else None)
        self._capacity = (mono, found)
        return found

    async def places(self, job_ids: Sequence[str]) -> dict[str, Place]:
        """Each job's place, read at one instant per :data:`MAX_IDS_PER_READ` ids."""
        out: dict[str, Place] = {}
        if not job_ids:
            return out
        capacity = await self.capacity()
        k = self.queue.keys
        for first in range(0, len(job_ids), MAX_IDS_PER_READ):
            chunk = job_ids[first:first + MAX_IDS_PER_READ]
            raw = await scripts.call(self.queue.redis, "places", [k.waiting, k.delayed, k.active, k.paused],
                                     [k.job(""), *chunk])
            now, paused, running = int(raw[0]), bool(raw[1]), [int(ms) / 1000 for ms in raw[2]]
            for i, job_id in enumerate(chunk):
                status, seq, position, due, message = raw[3 + 5 * i: 8 + 5 * i]
                status = text(status)
                place = Place(status=status, seq=int(seq), message=text(message))
                if status == "queued":
                    pos = int(position) or None
                    due_in = max(0.0, (int(due) - now) / 1000) if int(due) >= 0 else None
                    place = Place(status=status, seq=int(seq), message=text(message), position=pos,
                                  eta_s=estimate(pos, due_in, capacity, running, paused))
                out[job_id] = place
        return out

    async def place(self, job_id: str) -> Place:
        return (await self.places([job_id]))[job_id]
