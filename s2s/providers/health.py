"""The worker's side of the provider's health record (:mod:`s2s.provider_state`): raise it, clear it."""

from __future__ import annotations

import json
import logging
import time

import redis.asyncio as aioredis
import redis.exceptions

from s2s.keys import Keys
from s2s.provider_state import MISCONFIGURED_TTL_S
from s2s.providers.base import ProviderError
from s2s.providers.failures import MISCONFIGURED

log = logging.getLogger("s2s.provider_state")


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
        # cleared once: the jobs that succeed while the DEL is out send none of their own (fifty jobs ending
        # together on a fresh worker took fifty pooled connections, each opened then, for one key)
        self._maybe_flagged = False
        try:
            await self._redis.delete(self._key)
        except redis.exceptions.RedisError as exc:
            self._maybe_flagged = True
            log.warning("cannot clear the provider's state", extra={"provider": self._provider, "error": str(exc)})
