"""How full the job store is, and what a full one means for submits and claims.

Render's Key Value (and ``s2s up``) run with ``maxmemory-policy noeviction``: no key is
ever evicted, and once used memory passes ``maxmemory`` Redis refuses commands that may
grow it ("OOM command not allowed"). Left alone that looks like an outage: submits fail
as if Redis were unreachable, and a heartbeat refused looks like a dead worker. So:

- past a high-water mark below ``maxmemory`` (``S2S_STORE_HIGH_WATER_PERCENT``) the API
  refuses submits with ``503 storage_full`` and workers claim nothing new, leaving the
  room above it to the jobs already running (their progress, images and completion);
- the scripts a full Redis must still run begin with a write that cannot grow memory,
  since Redis refuses only a script's first write that may (s2s/lua/extend.lua);
- Redis's own refusal is recognised by name (:func:`is_out_of_memory`), not taken for an
  outage.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis
import redis.exceptions
from attrs import frozen

from s2s.admission import Refusal

STORAGE_FULL_RETRY_S = 60  # room comes back when ended jobs expire or an operator acts: not in seconds
_OOM = "OOM command not allowed"


def is_out_of_memory(exc: BaseException) -> bool:
    """Redis refused a write because it is at maxmemory (also inside a script, where it is a plain error)."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.exceptions.ResponseError) and _OOM in str(exc))


@frozen
class Fill:
    """Redis's used memory against its limit; ``limit`` 0: no maxmemory, never full."""

    used: int
    limit: int
    high_water: int  # bytes past which s2s treats the store as full (0: only Redis's own refusal)
    refused: bool = False  # Redis refused a write for memory since the last reading

    @property
    def full(self) -> bool:
        return self.refused or bool(self.high_water and self.used >= self.high_water)

    def to_json(self) -> dict:
        out = {"state": "full" if self.full else "ok", "usedBytes": self.used, "maxBytes": self.limit or None}
        if self.full:
            out["reason"] = (f"The job store is full ({self.used / 2**20:.1f} of {self.limit / 2**20:.1f} MiB): "
                             "new jobs are refused and workers take none until it has room; running jobs finish.")
        return out


def refusal(fill: Fill) -> Refusal:
    return Refusal(503, "storage_full", "We cannot take new pictures right now: our job store is full. "
                                        "Try again in a little while.", STORAGE_FULL_RETRY_S,
                   {"usedBytes": fill.used, "maxBytes": fill.limit or None})


class StoreMemory:
    """Reads ``INFO memory``, at most once per ``max_age_s`` unless asked for a fresh reading."""

    def __init__(self, redis: aioredis.Redis, high_water_percent: int, max_age_s: float = 1.0):
        self._redis = redis
        self.percent = high_water_percent
        self.max_age_s = max_age_s
        self._last: Fill | None = None
        self._read_at = 0.0
        self._hidden = False  # INFO refused (some managed Redis): never asked again

    async def fill(self, fresh: bool = False) -> Fill:
        if not self._hidden and (fresh or self._last is None or time.monotonic() - self._read_at > self.max_age_s):
            try:
                info = await self._redis.info("memory")
            except redis.exceptions.ResponseError:  # a managed Redis that hides INFO: only its own refusal counts
                self._hidden, self._last = True, Fill(0, 0, 0)
                return self._last
            used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
            self._last = Fill(used, limit, limit * self.percent // 100 if limit and self.percent else 0)
            self._read_at = time.monotonic()
        return self._last or Fill(0, 0, 0)

    def refused(self) -> Fill:
        """Redis just refused a write for memory: the last reading, marked full (not kept: the next
        reading, or the next write, says whether it still is)."""
        last = self._last or Fill(0, 0, 0)
        return Fill(last.used, last.limit, last.high_water, refused=True)
