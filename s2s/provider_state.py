"""Whether the image provider accepts our credentials, as the health endpoint reports it.

A 401/403 (or a model the account cannot use) fails every job until an operator
acts, so a worker that meets one records it in Redis, and ``GET /api/jobs/health``
says ``misconfigured`` with the reason. The record expires (``MISCONFIGURED_TTL_S``)
so a fixed key does not stay flagged when no jobs run, and the first success of a
worker process clears it at once.
"""

from __future__ import annotations

import json
import logging
import time

import redis.asyncio as aioredis
import redis.exceptions
from attrs import frozen

from s2s.keys import Keys
from s2s.providers.base import ProviderError
from s2s.providers.failures import MISCONFIGURED

log = logging.getLogger("s2s.provider_state")

MISCONFIGURED_TTL_S = 15 * 60


@frozen
class ProviderState:
    name: str
    state: str  # "ok" or "misconfigured"
    reason: str | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "state": self.state, "reason": self.reason}


async def read(redis: aioredis.Redis, keys: Keys, provider: str) -> ProviderState:
    raw = await redis.get(keys.provider_state(provider))
    if raw is None:
        return ProviderState(provider, "ok")
    return ProviderState(provider, "misconfigured", json.loads(raw).get("reason"))


class ProviderHealth:
    """The worker's side: raise the flag on a credentials failure, clear it after a success.

    Costs one Redis write per process and per flag, not one per job.
    """

    def __init__(self, redis: aioredis.Redis, keys: Keys, provider: str):
        self._redis = redis
        self._key = keys.provider_state(provider)
        self._provider = provider
        self._maybe_flagged = True  # another process may have raised it: the first success checks

    async def failed(self, exc: ProviderError, worker_id: str) -> None:
        if exc.code != MISCONFIGURED:
            return
        record = {"reason": exc.detail or exc.message, "worker": worker_id, "at": int(time.time() * 1000)}
        try:
            await self._redis.set(self._key, json.dumps(record), ex=MISCONFIGURED_TTL_S)
            self._maybe_flagged = True
        except redis.exceptions.RedisError as exc_:
            log.warning("cannot record the provider's state", extra={"provider": self._provider, "error": str(exc_)})

    async def succeeded(self) -> None:
        if not self._maybe_flagged:
            return
        try:
            await self._redis.delete(self._key)
            self._maybe_flagged = False
        except redis.exceptions.RedisError as exc:
            log.warning("cannot clear the provider's state", extra={"provider": self._provider, "error": str(exc)})
