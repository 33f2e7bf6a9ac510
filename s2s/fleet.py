"""The worker fleet as the API sees it: who beat lately, and for how long none has.

Each worker writes its presence with every heartbeat (the ``extend`` script, see
:meth:`s2s.queue.Queue.heartbeat`): a ZSET of worker ids scored by their last
beat, and a short JSON of what the worker says of itself. This module only reads
that registry, and keeps the one piece of state a reader needs: when this process
last saw a worker alive.
"""

from __future__ import annotations

import json
import time

import redis.asyncio as aioredis

from s2s.keys import Keys
from s2s.replies import now_ms, text

WORKER_MEMORY_MS = 3600 * 1000  # a worker that stopped is still listed (as dead) for an hour


class Fleet:
    """The registry of worker processes, read for /api/workers, /api/jobs/health and /metrics."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, lease_ms: int):
        self.redis = redis
        self.keys = keys
        self.lease_ms = lease_ms
        self._opened = time.monotonic()  # this process's start, for absence_ms
        self._worker_seen: float | None = None

    def alive_within_ms(self) -> int:
        """A worker heard from within this long is alive (three missed heartbeats)."""
        return self.lease_ms

    async def workers(self, include_dead: bool = False) -> list[dict]:
        """Worker processes with what they last said of themselves; ``alive`` says if they still beat."""
        k = self.keys
        now = await now_ms(self.redis)
        await self.redis.zremrangebyscore(k.workers, "-inf", now - WORKER_MEMORY_MS)
        low = "-inf" if include_dead else now - self.alive_within_ms()
        entries = await self.redis.zrangebyscore(k.workers, low, "+inf", withscores=True)
        if not entries:
            return []
        infos = await self.redis.mget([k.worker(text(w)) for w, _ in entries])
        out = []
        for (wid, seen), info in zip(entries, infos, strict=True):
            if info is None:
                continue
            data = json.loads(info)
            age = max(0, now - int(seen))  # a beat landing between our clock read and the listing
            data.update(id=text(wid), lastSeenMs=age, alive=age <= self.alive_within_ms())
            out.append(data)
        return out

    async def absence_ms(self, alive: bool) -> int:
        """How long no worker has been alive (0 while one is), as far as this process can tell.

        Counted from the latest of: this process's start (workers deployed after the API get the
        full time to come up), the newest heartbeat the registry remembers (a worker that died
        without leaving stays listed for an hour, so its end is dated even by a process that never
        saw it), and the last time this process saw a worker alive (a drained worker leaves the
        registry at once). ``alive``: whether :meth:`workers` found one just now.
        """
        mono = time.monotonic()
        if alive:
            self._worker_seen = mono
            return 0
        ages_s = [mono - self._opened]
        if self._worker_seen is not None:
            ages_s.append(mono - self._worker_seen)
        newest = await self.redis.zrevrange(self.keys.workers, 0, 0, withscores=True)
        if newest:
            ages_s.append(max(0, await now_ms(self.redis) - int(newest[0][1])) / 1000)
        return int(min(ages_s) * 1000)
