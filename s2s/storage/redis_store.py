"""Blobs as Redis strings with a TTL (``redis://``): for a small deployment with no object store.

Redis expires them itself. The key names come from :meth:`s2s.keys.Keys.blob`. Deleting by
prefix walks the keyspace with SCAN, which is fine for the few keys per job s2s keeps;
the photo and picture of a job are deleted by name where the names are known.
"""

from __future__ import annotations

import re
import time

import redis.asyncio as aioredis

from s2s.keys import Keys
from s2s.settings import Settings
from s2s.storage import BlobStore, check_key

SCAN_COUNT = 500


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class RedisStore(BlobStore):
    scheme = "redis"

    def __init__(self, redis: aioredis.Redis, keys: Keys, *, owned: bool = False):
        self.redis = redis
        self.keys = keys
        self._owned = owned  # close the client on close() only if this store opened it
        self._base = keys.blob("")

    @classmethod
    def from_settings(cls, settings: Settings, *, redis: aioredis.Redis | None = None) -> RedisStore:
        """``redis://`` alone: the Redis of REDIS_URL (``redis`` if given); a full URL: that Redis."""
        url = settings.storage_url or "redis://"
        keys = Keys(settings.key_prefix)
        if url.rstrip("/") in ("redis:", "rediss:"):
            if redis is not None:
                return cls(redis, keys)
            url = settings.redis_url or "redis://127.0.0.1:6379/0"
        return cls(aioredis.Redis.from_url(url, protocol=2), keys, owned=True)

    def redis_key(self, key: str) -> str:
        """The Redis key a blob lives under (for a script that writes one with its other writes)."""
        return self.keys.blob(check_key(key))

    async def put(self, key: str, data: bytes, *, ttl_s: int, content_type: str = "application/octet-stream") -> None:
        await self.redis.set(self.keys.blob(check_key(key)), data, px=int(ttl_s * 1000))

    async def get(self, key: str) -> bytes | None:
        return await self.redis.get(self.keys.blob(check_key(key)))

    async def expires_at(self, key: str) -> float | None:
        pttl = await self.redis.pttl(self.keys.blob(check_key(key)))
        if pttl == -2:
            return None
        return float("inf") if pttl == -1 else time.time() + pttl / 1000

    async def delete(self, *keys: str) -> None:
        if keys:
            await self.redis.delete(*(self.keys.blob(check_key(k)) for k in keys))

    async def _scan(self, prefix: str | None) -> list[bytes]:
        pattern = _glob_escape(self.keys.blob(f"{check_key(prefix)}/") if prefix else self._base) + "*"
        return [k async for k in self.redis.scan_iter(match=pattern, count=SCAN_COUNT)]

    async def delete_prefix(self, prefix: str) -> int:
        found = [*await self._scan(prefix), self.keys.blob(check_key(prefix)).encode()]
        return await self.redis.delete(*found)

    async def list(self, prefix: str | None = None) -> list[str]:
        return sorted({k.decode()[len(self._base):] for k in await self._scan(prefix)})

    async def ping(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        if self._owned:
            await self.redis.aclose()
