"""Whether the image provider accepts our credentials, as the health endpoint reports it.

A 401/403 (or a model the account cannot use) fails every job until an operator
acts, so a worker that meets one records it in Redis, and ``GET /api/jobs/health``
says ``misconfigured`` with the reason. The record expires (``MISCONFIGURED_TTL_S``)
so a fixed key does not stay flagged when no jobs run, and the first success of a
worker process clears it at once. This is the record and its reading (for the API);
the worker writes it through :class:`s2s.providers.health.ProviderHealth`.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis
from attrs import frozen

from s2s.keys import Keys

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
